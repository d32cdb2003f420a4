"""The cuda backend's stepwise path on the CPU, for tests on machines without a GPU.

``fusedrnn._cuda_emulation`` (``csrc/emulation/``) is the source of the CUDA extension's step
kernels and time loops (``csrc/*_kernels.cuh``, ``csrc/recurrence.cpp``) compiled by the host
C++ compiler: each kernel launch runs its threads one after the other
(``csrc/elementwise_launch.cuh``), each per-step product is ATen's on the CPU. Its ops are
the stepwise recurrence ops under the namespace ``fusedrnn_emulated``; the backend here is
the cuda backend's own code (:class:`RecurrenceBackend`, the stepwise choice) on them. So
the kernels' indexing, length masking, cell math and state passing, the loops' buffers and
order, and the Python around them run and are checked against the reference backend
without a GPU. What it cannot show: anything of the GPU itself (races, the stream, cuBLAS,
the GPU's ``__expf`` and ``tanhf``) and the persistent kernels, whose threads share memory.

Not registered with the backends: a test registers it (``backends.register(Backend())``)
and asks for it by name; ``auto`` never takes it.
"""

import torch

from .. import _extension
from .recurrence import CUDA_SCHEMAS, SCHEMAS, RecurrenceBackend

NAMESPACE = "fusedrnn_emulated"
# The stepwise ops of the CUDA extension: those on every device, and the projected LSTM's
# backward, which only the CUDA extension has.
OPS = {**SCHEMAS, "lstm_proj_recurrence_bwd": CUDA_SCHEMAS["lstm_proj_recurrence_bwd"]}

_library = torch.library.Library(NAMESPACE, "DEF")
for _name, _schema in OPS.items():
    _library.define(_name + _schema)


class CudaEmulationBackend(RecurrenceBackend):
    name = "cuda_emulation"
    priority = -10
    extension = _extension.CUDA_EMULATION
    device_type = "cpu"
    auto_devices = ()
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    cells = ("lstm", "gru", "rnn_tanh", "rnn_relu")
    projection = True
    op_namespace = NAMESPACE
