"""The ``cuda`` backend: the CUDA kernels of the recurrence ops, from the compiled extension
``fusedrnn._C`` (``csrc/``): per step one cuBLAS product and one fused pointwise kernel."""

import torch

from .. import _extension
from .recurrence import RecurrenceBackend


class CudaBackend(RecurrenceBackend):
    name = "cuda"
    priority = 20
    extension = _extension.CUDA
    device_type = "cuda"
    auto_devices = ("cuda",)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    cells = ("lstm", "gru")
