"""The operator layer: one forward and one backward op per cell, in the ``fusedrnn`` namespace.

Ops: ``fusedrnn::{cell}_fwd`` and ``fusedrnn::{cell}_bwd`` for cell in
``lstm, gru, rnn_tanh, rnn_relu``. Each runs one layer in one direction over a padded,
time-major sequence; layers, directions, dropout and packing live above, in
``functional.py``. The schemas are defined here in Python, so they exist without any
compiled extension; a backend only adds an implementation, picked by the ``backend``
argument (a string, so ``torch.compile`` sees a constant).

Every cell shares one schema (arguments a cell does not use are ``None``)::

    {cell}_fwd(x (T,B,I), w_ih (G,I), w_hh (G,P), b_ih (G)?, b_hh (G)?, w_hr (P,H)?,
               h0 (B,P), c0 (B,H)?, lengths (B,) int64?, reverse, backend)
        -> y (T,B,P), h_n (B,P), c_n, ws_a, ws_b          (see backends/reference.py)
    {cell}_bwd(grad_y, grad_h_n, grad_c_n?, x, w_ih, w_hh, w_hr?, h0, c0?, lengths?,
               y, ws_a, ws_b, reverse, has_bias, backend)
        -> grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_hr, grad_h0, grad_c0

Absent results (no bias, no projection, no cell state) are empty ``(0,)`` tensors. The
backward op is the hand-written backpropagation through time, registered as the forward's
autograd formula.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import backends

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
# Cells whose forward saves gates and a second per-step tensor for the backward.
_SAVES_GATES = ("lstm", "gru")


def _contiguous(*tensors):
    return tuple(None if t is None else t.contiguous() for t in tensors)


def _fake_forward(cell, x, w_ih, h0):
    steps, batch = x.shape[0], x.shape[1]
    hidden = w_ih.shape[0] // GATES[cell]
    y = x.new_empty(steps, batch, h0.shape[1])
    h_n = x.new_empty(batch, h0.shape[1])
    c_n = x.new_empty(batch, hidden) if cell == "lstm" else x.new_empty(0)
    if cell in _SAVES_GATES:
        ws_a = x.new_empty(steps, batch, w_ih.shape[0])
        ws_b = x.new_empty(steps, batch, hidden)
    else:
        ws_a, ws_b = x.new_empty(0), x.new_empty(0)
    return y, h_n, c_n, ws_a, ws_b


def _like_or_empty(t, like):
    return like.new_empty(0) if t is None else torch.empty_like(t)


def _define(cell):
    @torch.library.custom_op(f"fusedrnn::{cell}_fwd", mutates_args=())
    def forward(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                b_hh: Optional[Tensor], w_hr: Optional[Tensor], h0: Tensor,
                c0: Optional[Tensor], lengths: Optional[Tensor], reverse: bool,
                backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        args = _contiguous(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths)
        return backends.get(backend).forward(cell, *args, reverse)

    @forward.register_fake
    def _(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, backend):
        return _fake_forward(cell, x, w_ih, h0)

    @torch.library.custom_op(f"fusedrnn::{cell}_bwd", mutates_args=())
    def backward(grad_y: Tensor, grad_h_n: Tensor, grad_c_n: Optional[Tensor], x: Tensor,
                 w_ih: Tensor, w_hh: Tensor, w_hr: Optional[Tensor], h0: Tensor,
                 c0: Optional[Tensor], lengths: Optional[Tensor], y: Tensor, ws_a: Tensor,
                 ws_b: Tensor, reverse: bool, has_bias: bool,
                 backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                        Tensor, Tensor]:
        args = _contiguous(grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, h0, c0, lengths,
                           y, ws_a, ws_b)
        return backends.get(backend).backward(cell, *args, reverse, has_bias)

    @backward.register_fake
    def _(grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, h0, c0, lengths, y, ws_a, ws_b,
          reverse, has_bias, backend):
        bias_grad = w_ih.new_empty(w_ih.shape[0]) if has_bias else w_ih.new_empty(0)
        return (torch.empty_like(x), torch.empty_like(w_ih), torch.empty_like(w_hh),
                bias_grad, torch.empty_like(bias_grad), _like_or_empty(w_hr, x),
                torch.empty_like(h0), _like_or_empty(c0, x))

    def setup_context(ctx, inputs, output):
        x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, backend = inputs
        y, _, _, ws_a, ws_b = output
        ctx.save_for_backward(x, w_ih, w_hh, w_hr, h0, c0, lengths, y, ws_a, ws_b)
        ctx.reverse, ctx.backend, ctx.has_bias = reverse, backend, b_ih is not None
        ctx.mark_non_differentiable(ws_a, ws_b)

    def autograd_backward(ctx, grad_y, grad_h_n, grad_c_n, _grad_ws_a, _grad_ws_b):
        x, w_ih, w_hh, w_hr, h0, c0, lengths, y, ws_a, ws_b = ctx.saved_tensors
        grad_y = torch.zeros_like(y) if grad_y is None else grad_y
        grad_h_n = torch.zeros_like(h0) if grad_h_n is None else grad_h_n
        if c0 is not None and grad_c_n is None:
            grad_c_n = torch.zeros_like(c0)
        elif c0 is None:
            grad_c_n = None
        grads = backward(grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, h0, c0, lengths, y,
                         ws_a, ws_b, ctx.reverse, ctx.has_bias, ctx.backend)
        g_x, g_w_ih, g_w_hh, g_b_ih, g_b_hh, g_w_hr, g_h0, g_c0 = grads
        if not ctx.has_bias:
            g_b_ih = g_b_hh = None
        return (g_x, g_w_ih, g_w_hh, g_b_ih, g_b_hh, None if w_hr is None else g_w_hr, g_h0,
                None if c0 is None else g_c0, None, None, None)

    forward.register_autograd(autograd_backward, setup_context=setup_context)
    return forward, backward


FORWARD = {}
BACKWARD = {}
for _cell in GATES:
    FORWARD[_cell], BACKWARD[_cell] = _define(_cell)
