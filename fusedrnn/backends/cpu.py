"""The ``cpu`` backend: the CPU kernels of the recurrence ops, from the compiled extension
``fusedrnn._cpu`` (``csrc/cpu/``), for every cell: per step one BLAS product and one
vectorised pass over the rows, the time loop in C++, where the reference backend pays
Python's dispatch for every operation of every step."""

import torch

from .. import _extension
from . import common, thread_split
from .recurrence import RecurrenceBackend


class CpuBackend(RecurrenceBackend):
    name = "cpu"
    priority = 5
    extension = _extension.CPU
    device_type = "cpu"
    auto_devices = ("cpu",)
    dtypes = (torch.float32, torch.float64)
    cells = ("lstm", "gru", "rnn_tanh", "rnn_relu")
    projection = True

    def forward_directions(self, cell, first, second):
        """The two directions at the same time, one thread each, where that pays
        (thread_split)."""
        x, w_ih, w_hh, _, _, w_hr = first[:6]
        return thread_split.run_both(lambda: self.forward(cell, *first),
                                     lambda: self.forward(cell, *second),
                                     _products(x, w_ih, w_hh, w_hr))

    def backward_directions(self, cell, first, second):
        x, w_ih, w_hh, w_hr = first[3:7]
        return thread_split.run_both(lambda: self.backward(cell, *first),
                                     lambda: self.backward(cell, *second),
                                     _products(x, w_ih, w_hh, w_hr))

    def input_projection(self, x, w_ih):
        """Into a workspace the extension's pool keeps for the next call."""
        return torch.ops.fusedrnn.input_projection(x, w_ih)

    def backward(self, cell, grad_y, grad_hn, grad_cn, x, w_ih, w_hh, w_hr, h0, c0, lengths, y,
                 ws_a, ws_b, reverse, has_bias):
        """One ``*_bptt`` op: the kernel runs the products over all steps (gradients of x,
        the weights and the biases) on other threads while its time loop runs."""
        self.extension.load()
        ops = torch.ops.fusedrnn
        if cell == "lstm":
            return ops.lstm_bptt(grad_y, grad_hn, grad_cn, x, w_ih, w_hh, w_hr, h0, c0, lengths,
                                 y, ws_a, ws_b, reverse, has_bias)
        if cell == "gru":
            mask = common.active_mask(lengths, x.shape[0])
            h_prev = common.previous_states(y, h0, mask, reverse).contiguous()
            *grads, dh0 = ops.gru_bptt(grad_y, grad_hn, x, w_ih, w_hh, h_prev, lengths, ws_a,
                                       ws_b, reverse, has_bias)
            return (*grads, common.empty(x), dh0, common.empty(x))
        *grads, dh0 = ops.rnn_bptt(grad_y, grad_hn, x, w_ih, w_hh, h0, lengths, y, reverse,
                                   cell == "rnn_relu", has_bias)
        return (*grads, common.empty(x), dh0, common.empty(x))


def _products(x, w_ih, w_hh, w_hr):
    """The multiply-adds of one direction's forward products over all steps."""
    per_row = w_ih.numel() + w_hh.numel() + (0 if w_hr is None else w_hr.numel())
    return x.shape[0] * x.shape[1] * per_row
