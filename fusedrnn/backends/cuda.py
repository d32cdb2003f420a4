"""The ``cuda`` backend: the CUDA kernels of the recurrence ops, from the compiled extension
``fusedrnn._C`` (``csrc/``): persistent kernels (one launch per layer and direction, W_hh on
chip) where they fit, else per step one cuBLAS product and one fused pointwise kernel;
``cuda_plan`` chooses per call and says why."""

import torch

from .. import _extension
from . import cuda_plan
from .recurrence import RecurrenceBackend


class CudaBackend(RecurrenceBackend):
    name = "cuda"
    priority = 20
    extension = _extension.CUDA
    device_type = "cuda"
    auto_devices = ("cuda",)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    cells = ("lstm", "gru")
    projection = True

    def recurrence_op(self, cell, w_hh, backward):
        plan = cuda_plan.plan_call(cell, w_hh.shape[1], w_hh.dtype, w_hh.device.index, backward)
        if plan.kernel == "stepwise":
            return super().recurrence_op(cell, w_hh, backward)
        name = f"{cell}_persistent_{'bwd' if backward else 'fwd'}"
        return getattr(torch.ops.fusedrnn, name), (plan.units, plan.cluster)
