"""The ``cuda`` backend: the CUDA kernels of the recurrence ops, from the compiled extension
``fusedrnn._C`` (``csrc/``): persistent kernels (one launch per layer and direction, W_hh on
chip) where they fit, else per step one cuBLAS product and one fused pointwise kernel;
``cuda_plan`` chooses per call and says why. The two directions of a bidirectional layer go
on two streams (``cuda_streams``)."""

import torch

from .. import _extension
from . import cuda_plan, cuda_streams
from .recurrence import RecurrenceBackend


class CudaBackend(RecurrenceBackend):
    name = "cuda"
    priority = 20
    extension = _extension.CUDA
    device_type = "cuda"
    auto_devices = ("cuda",)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    cells = ("lstm", "gru", "rnn_tanh", "rnn_relu")
    projection = True
    bias_in_projection = True

    def recurrence_op(self, cell, w_hh, backward):
        """The persistent op where ``cuda_plan`` chooses it (LSTM, GRU), else the stepwise."""
        plan = cuda_plan.plan_call(cell, w_hh.shape[1], w_hh.dtype, w_hh.device.index, backward)
        if plan.kernel == "stepwise":
            return super().recurrence_op(cell, w_hh, backward)
        name = f"{cell}_persistent_{'bwd' if backward else 'fwd'}"
        return getattr(torch.ops.fusedrnn, name), (plan.units, plan.cluster)

    def forward_directions(self, cell, first, second):
        x, w_hh, w_hr = first[0], first[2], first[5]
        if not self._overlap(cell, w_hh, w_hr, backward=False):
            return super().forward_directions(cell, first, second)
        return cuda_streams.run_both(x.device, lambda: self.forward(cell, *first),
                                     lambda: self.forward(cell, *second), second)

    def backward_directions(self, cell, first, second):
        x, w_hh, w_hr = first[3], first[5], first[6]
        if not self._overlap(cell, w_hh, w_hr, backward=True):
            return super().backward_directions(cell, first, second)
        return cuda_streams.run_both(x.device, lambda: self.backward(cell, *first),
                                     lambda: self.backward(cell, *second), second)

    def _overlap(self, cell, w_hh, w_hr, backward):
        """Whether the two directions go on two streams: not on the persistent grid design
        (``cuda_streams.overlaps``); the projected LSTM and the RNN always run stepwise."""
        if w_hr is not None or cell.startswith("rnn"):
            return True
        self.extension.load()
        return cuda_streams.overlaps(cuda_plan.plan_call(cell, w_hh.shape[1], w_hh.dtype,
                                                         w_hh.device.index, backward))
