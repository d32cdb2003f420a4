"""One layer and direction from differentiable PyTorch ops, step by step, for what the
backends' hand-written backward ops cannot do:

- a gradient of fusedrnn's gradients (double backward: ``create_graph=True``): the ops'
  autograd formulas recompute the forward here and differentiate it, only when the graph
  of the gradients is wanted;
- a layer under ``torch.func``'s differentiating transforms (``grad``, ``vjp``, ``jacrev``,
  ``jvp``, ``jacfwd``, ``hessian``) or ``torch.autograd.forward_ad``: custom ops' autograd
  formulas have no rules for those, so the reference backend runs the layer here instead
  of through the ops (:func:`layer_op`), and the transforms differentiate torch's ops.

Same contract as the reference forward (``__init__.py``): ``y`` zero past a sequence's end,
the states held there. GRU and RNN steps are torch's own cells; the LSTM's is written out,
for ``proj_size`` (``torch.lstm_cell`` takes no projection).
"""

import torch
import torch.nn.functional as F

from ..common import time_order, without_autocast


def _lstm_step(x_t, h, c, w_ih, w_hh, b_ih, b_hh, w_hr):
    gates = F.linear(x_t, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return (h if w_hr is None else F.linear(h, w_hr)), c


def _cell_step(cell_function):
    def step(x_t, h, c, w_ih, w_hh, b_ih, b_hh, w_hr):
        return cell_function(x_t, h, w_ih, w_hh, b_ih, b_hh), c

    return step


STEPS = {"lstm": _lstm_step, "gru": _cell_step(torch.gru_cell),
         "rnn_tanh": _cell_step(torch.rnn_tanh_cell), "rnn_relu": _cell_step(torch.rnn_relu_cell)}


def forward(cell, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse):
    """``(y, h_n, c_n)`` of one layer and direction (``c_n`` None but for the LSTM)."""
    step = STEPS[cell]
    h, c = h0, c0
    outputs = [None] * x.shape[0]
    for t in time_order(x.shape[0], reverse):
        h_new, c_new = step(x[t], h, c, w_ih, w_hh, b_ih, b_hh, w_hr)
        if lengths is None:
            h, c, outputs[t] = h_new, c_new, h_new
            continue
        active = (t < lengths).unsqueeze(1)
        outputs[t] = torch.where(active, h_new, torch.zeros_like(h_new))
        h = torch.where(active, h_new, h)
        c = None if c is None else torch.where(active, c_new, c)
    return torch.stack(outputs), h, c


def layer_op(cell):
    """A function with ``fusedrnn::{cell}_fwd``'s signature and results that runs
    :func:`forward` (no workspaces: autograd or the transform differentiates its ops)."""

    def run(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, save, backend):
        with without_autocast(x.device):
            y, h_n, c_n = forward(cell, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths,
                                  reverse)
        empty = x.new_empty(0)
        return y, h_n, empty if c_n is None else c_n, empty, empty

    return run


def gradients(cell, inputs, lengths, reverse, grad_outputs):
    """The gradients of ``inputs`` = ``(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0)`` given those
    of ``(y, h_n, c_n)`` (None: unused), as differentiable functions of both; None for an
    input that is None or needs no gradient. Each argument slot is differentiated through an
    alias of its own, so that one tensor passed twice (``b_ih is b_hh``) gets each slot's
    gradient once, as the op's other inputs would; autocast is off, as in the op's body."""
    with torch.enable_grad(), without_autocast(inputs[0].device):
        aliases = [t.view_as(t) if t is not None and t.requires_grad else t for t in inputs]
        wanted = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
        outputs = forward(cell, *aliases[:8], lengths, reverse)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o is not None and g is not None]
        if not pairs or not wanted:
            return (None,) * len(inputs)
        found = torch.autograd.grad([o for o, _ in pairs], [aliases[i] for i in wanted],
                                    [g for _, g in pairs], create_graph=True, allow_unused=True)
    result = [None] * len(inputs)
    for i, grad in zip(wanted, found):
        result[i] = torch.zeros_like(inputs[i]) if grad is None else grad
    return tuple(result)
