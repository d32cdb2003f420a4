"""The cuda backend's kernels on the CPU, for tests on machines without a GPU.

``fusedrnn._cuda_emulation`` (``csrc/emulation/``) is the source of the CUDA extension's
kernels and time loops (``csrc/*_kernels.cuh``, ``csrc/recurrence.cpp``, ``csrc/persistent/``)
compiled by the host C++ compiler. A step kernel's launch runs its threads one after the
other (``csrc/elementwise_launch.cuh``); a persistent kernel's runs one host thread per CUDA
thread of every block at once, with CUDA's barriers, shared memory and warp matrix products
emulated (``csrc/emulation/block_threads.h``, ``wmma.h``); each per-step product of the
stepwise loops is ATen's on the CPU. Its ops are the CUDA extension's under the namespace
``fusedrnn_emulated``; the backend here is the cuda backend's own code
(:class:`RecurrenceBackend`) on them, with the kernels chosen when it is made: ``stepwise``,
or a persistent design, ``grid`` or ``cluster``, with block sizes from ``cuda_plan``'s rules
(for a GPU of :data:`MULTIPROCESSORS` multiprocessors, so that few threads run).

So the kernels' indexing, length masking, cell math, state passing, shared-memory layout and
barriers, the loops' buffers and order, and the Python around them run and are checked
against the reference backend without a GPU. What it cannot show: anything of the GPU itself
(timing, memory ordering beyond the barriers, the stream, cuBLAS, the tensor cores' order of
sums, the GPU's ``__expf`` and ``tanhf``, whether a launch fits).

Not registered with the backends: a test registers one (``backends.register(Backend())``)
and asks for it by name; ``auto`` never takes it.
"""

import torch

from .. import _extension
from . import cuda_plan
from .recurrence import CUDA_SCHEMAS, SCHEMAS, RecurrenceBackend

NAMESPACE = "fusedrnn_emulated"
# The ops of the CUDA extension: those on every device, the projected LSTM's backward and
# the persistent kernels.
OPS = {**SCHEMAS, **CUDA_SCHEMAS}
KERNELS = ("stepwise", "grid", "cluster")
MULTIPROCESSORS = 4  # of the GPU the grid design's block size is chosen for

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
    bias_in_projection = True
    op_namespace = NAMESPACE

    def __init__(self, kernel="stepwise"):
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        self.kernel = kernel

    def recurrence_op(self, cell, w_hh, backward):
        """The persistent op of the chosen design for the LSTM and GRU (with units as
        ``cuda_plan`` would choose them), else the stepwise op."""
        hidden = w_hh.shape[1]
        if self.kernel == "stepwise" or hidden == 0:
            return super().recurrence_op(cell, w_hh, backward)
        units = cuda_plan.design_units(self.kernel, cell, hidden, MULTIPROCESSORS, backward)
        if self.kernel == "cluster" and -(-hidden // units) > cuda_plan.MAX_CLUSTER:
            return super().recurrence_op(cell, w_hh, backward)  # as cuda_plan: no such cluster
        name = f"{cell}_persistent_{'bwd' if backward else 'fwd'}"
        return getattr(self.ops, name), (units, self.kernel == "cluster")
