"""Launchers of the Elman RNN kernels (tanh and relu): same contract and saved tensors as the
reference backend (``y`` only), so the two are interchangeable."""

import functools

import torch
import triton

from .. import common
from . import cooperative, plan
from .compat import wrap_triton
from .rnn_bwd import rnn_bwd_cooperative_kernel, rnn_bwd_persistent_kernel, rnn_bwd_step_kernel
from .rnn_fwd import rnn_fwd_cooperative_kernel, rnn_fwd_persistent_kernel, rnn_fwd_step_kernel


@cooperative.replanned
def forward(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, relu):
    steps, batch, _ = x.shape
    hidden = w_ih.shape[0]
    xproj = common.input_projection(x, w_ih, None if b_ih is None else b_ih + b_hh)
    y = torch.empty_like(xproj)
    h_n = torch.empty_like(h0)
    if batch == 0:
        return y, h_n, common.empty(x), common.empty(x), common.empty(x)
    variant = plan.variant_for("rnn_relu" if relu else "rnn_tanh", hidden, hidden, x)
    flags, lens = plan.launch_flags(x, lengths, h0, variant)
    if variant.kernel == "cooperative":
        h_pair = cooperative.state_pair(h0, flags)
        cooperative.launch(rnn_fwd_cooperative_kernel, variant, steps, (xproj, w_hh, lens, y, h_pair),
                           (steps, batch, hidden), REVERSE=reverse, RELU=relu,
                           **cooperative.tiles(variant), **flags)
        h_n.copy_(h_pair[steps % 2])
        return y, h_n, common.empty(x), common.empty(x), common.empty(x)
    if variant.kernel == "persistent":
        wrap_triton(rnn_fwd_persistent_kernel)[(triton.cdiv(batch, plan.BLOCK_B),)](
            xproj, w_hh, h0, lens, y, h_n, steps, batch, hidden, REVERSE=reverse, RELU=relu,
            BLOCK_B=plan.BLOCK_B, BLOCK_H=variant.block_h, **flags)
        return y, h_n, common.empty(x), common.empty(x), common.empty(x)
    h_cur, h_next = h0.float().clone(), torch.empty_like(h0, dtype=torch.float32)
    grid = (triton.cdiv(batch, plan.BLOCK_B), triton.cdiv(hidden, plan.STEP_BLOCK_H))
    for t in common.time_order(steps, reverse):
        wrap_triton(rnn_fwd_step_kernel)[grid](
            xproj, w_hh, lens, y, h_cur, h_next, t, batch, hidden, RELU=relu,
            BLOCK_B=plan.BLOCK_B, BLOCK_H=plan.STEP_BLOCK_H, BLOCK_K=plan.STEP_BLOCK_K, **flags)
        h_cur, h_next = h_next, h_cur
    h_n.copy_(h_cur)
    return y, h_n, common.empty(x), common.empty(x), common.empty(x)


@cooperative.replanned
def backward(grad_y, grad_hn, grad_cn, x, w_ih, w_hh, w_hr, h0, c0, lengths, y, ws_a, ws_b,
             reverse, has_bias, relu):
    steps, batch, _ = x.shape
    hidden = y.shape[2]
    dpre = torch.empty_like(y)
    dh0 = torch.empty_like(h0)
    if batch == 0:
        dpre.zero_()
    else:
        variant = plan.variant_for("rnn_relu" if relu else "rnn_tanh", hidden, hidden, x)
        flags, lens = plan.launch_flags(x, lengths, h0, variant)
        if variant.kernel == "cooperative":
            dh_pair = cooperative.gradient_pair(h0)
            cooperative.launch(rnn_bwd_cooperative_kernel, variant, steps + 1,
                               (grad_y, grad_hn, w_hh, lens, y, dpre, dh_pair, dh0),
                               (steps, batch, hidden), REVERSE=reverse, RELU=relu,
                               **cooperative.tiles(variant), **flags)
        elif variant.kernel == "persistent":
            wrap_triton(rnn_bwd_persistent_kernel)[(triton.cdiv(batch, plan.BLOCK_B),)](
                grad_y, grad_hn, w_hh, lens, y, dpre, dh0, steps, batch, hidden,
                REVERSE=reverse, RELU=relu, BLOCK_B=plan.BLOCK_B, BLOCK_H=variant.block_h,
                **flags)
        else:
            _backward_steps(grad_y, grad_hn, w_hh, lengths, y, dpre, dh0, reverse, relu, flags)
    mask = common.active_mask(lengths, steps)
    h_prev = common.previous_states(y, h0, mask, reverse)
    grads = common.input_and_weight_grads(x, w_ih, dpre, dpre, h_prev, has_bias)
    return grads + (common.empty(x), dh0, common.empty(x))


def _backward_steps(grad_y, grad_hn, w_hh, lengths, y, dpre, dh0, reverse, relu, flags):
    """One launch per step; the gradient of h0 is the last recurrent product, taken here."""
    steps, batch, hidden = y.shape
    order = common.time_order(steps, not reverse)
    dh_cur, dh_next = (torch.empty(batch, hidden, device=y.device, dtype=torch.float32)
                       for _ in range(2))
    lens = lengths if lengths is not None else dh_cur
    grid = (triton.cdiv(batch, plan.BLOCK_B), triton.cdiv(hidden, plan.STEP_BLOCK_H))
    for k, t in enumerate(order):
        t_prev = order[k - 1] if k else t
        wrap_triton(rnn_bwd_step_kernel)[grid](
            grad_y[t], grad_hn, w_hh, lens, y[t], dpre[t], dpre[t_prev], dh_cur, dh_next, t,
            t_prev, int(k == 0), batch, hidden, RELU=relu,
            BLOCK_B=plan.BLOCK_B, BLOCK_H=plan.STEP_BLOCK_H, BLOCK_K=plan.STEP_BLOCK_K, **flags)
        dh_cur, dh_next = dh_next, dh_cur
    last = order[-1]
    recurrent = torch.mm(dpre[last].float(), w_hh.float())
    if lengths is not None:
        recurrent = torch.where((last < lengths)[:, None], recurrent, dh_cur)
    dh0.copy_(recurrent)


LAUNCHERS = {
    "rnn_tanh": (functools.partial(forward, relu=False), functools.partial(backward, relu=False)),
    "rnn_relu": (functools.partial(forward, relu=True), functools.partial(backward, relu=True)),
}
