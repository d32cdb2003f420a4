"""Launchers of the LSTM kernels: same contract and saved tensors as the reference backend
(``fusedrnn/backends/reference/__init__.py``), so the two are interchangeable."""

import torch
import triton

from .. import common
from . import cooperative, plan
from .compat import wrap_triton
from .lstm_bwd import (lstm_bwd_cooperative_kernel, lstm_bwd_persistent_kernel,
                       lstm_bwd_step_kernel)
from .lstm_fwd import (lstm_fwd_cooperative_kernel, lstm_fwd_persistent_kernel,
                       lstm_fwd_step_kernel)


@cooperative.replanned
def forward(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse):
    steps, batch, _ = x.shape
    hidden, state = w_ih.shape[0] // 4, h0.shape[1]
    xproj = common.input_projection(x, w_ih, None if b_ih is None else b_ih + b_hh)
    gates = torch.empty_like(xproj)
    cells = x.new_empty(steps, batch, hidden)
    y = x.new_empty(steps, batch, state)
    h_n, c_n = torch.empty_like(h0), torch.empty_like(c0)
    if batch == 0:
        return y, h_n, c_n, gates, cells
    variant = plan.variant_for("lstm", hidden, state, x)
    flags, lens = plan.launch_flags(x, lengths, h0, variant)
    if variant.kernel == "cooperative":
        h_pair = cooperative.state_pair(h0, flags)
        c_state = c0.float().clone()
        cooperative.launch(lstm_fwd_cooperative_kernel, variant, steps,
                           (xproj, w_hh, lens, y, gates, cells, h_pair, c_state),
                           (steps, batch, hidden), REVERSE=reverse, **cooperative.tiles(variant),
                           **flags)
        h_n.copy_(h_pair[steps % 2])
        c_n.copy_(c_state)
        return y, h_n, c_n, gates, cells
    if variant.kernel == "persistent":
        grid = (triton.cdiv(batch, plan.BLOCK_B),)
        wrap_triton(lstm_fwd_persistent_kernel)[grid](
            xproj, w_hh, w_hr if w_hr is not None else w_hh, h0, c0, lens, y, gates, cells,
            h_n, c_n, steps, batch, hidden, state, REVERSE=reverse, HAS_PROJ=w_hr is not None,
            BLOCK_B=plan.BLOCK_B, BLOCK_H=variant.block_h, BLOCK_P=variant.block_p, **flags)
        return y, h_n, c_n, gates, cells
    h_cur, h_next = h0.float().clone(), torch.empty_like(h0, dtype=torch.float32)
    c_state = c0.float().clone()
    grid = (triton.cdiv(batch, plan.BLOCK_B), triton.cdiv(hidden, plan.STEP_BLOCK_H))
    for t in common.time_order(steps, reverse):
        wrap_triton(lstm_fwd_step_kernel)[grid](
            xproj, w_hh, lens, y, gates, cells, h_cur, h_next, c_state, t, batch, hidden,
            BLOCK_B=plan.BLOCK_B, BLOCK_H=plan.STEP_BLOCK_H, BLOCK_K=plan.STEP_BLOCK_K, **flags)
        h_cur, h_next = h_next, h_cur
    h_n.copy_(h_cur)
    c_n.copy_(c_state)
    return y, h_n, c_n, gates, cells


@cooperative.replanned
def backward(grad_y, grad_hn, grad_cn, x, w_ih, w_hh, w_hr, h0, c0, lengths, y, gates, cells,
             reverse, has_bias):
    steps, batch, _ = x.shape
    hidden, state = cells.shape[2], y.shape[2]
    dgates = torch.empty_like(gates)
    dh_steps = torch.empty_like(y) if w_hr is not None else None
    dh0, dc0 = torch.empty_like(h0), torch.empty_like(c0)
    if batch == 0:
        dgates.zero_()
    else:
        variant = plan.variant_for("lstm", hidden, state, x)
        flags, lens = plan.launch_flags(x, lengths, h0, variant)
        if variant.kernel == "cooperative":
            dh_pair = cooperative.gradient_pair(h0)
            dc_state = grad_cn.float().clone()
            cooperative.launch(lstm_bwd_cooperative_kernel, variant, steps + 1,
                               (grad_y, grad_hn, w_hh, c0, lens, gates, cells, dgates, dh_pair,
                                dc_state, dh0), (steps, batch, hidden), REVERSE=reverse,
                               **cooperative.tiles(variant), **flags)
            dc0.copy_(dc_state)
        elif variant.kernel == "persistent":
            grid = (triton.cdiv(batch, plan.BLOCK_B),)
            wrap_triton(lstm_bwd_persistent_kernel)[grid](
                grad_y, grad_hn, grad_cn, w_hh, w_hr if w_hr is not None else w_hh, c0, lens,
                gates, cells, dgates, dh_steps if dh_steps is not None else dgates, dh0, dc0,
                steps, batch, hidden, state, REVERSE=reverse, HAS_PROJ=w_hr is not None,
                BLOCK_B=plan.BLOCK_B, BLOCK_H=variant.block_h, BLOCK_P=variant.block_p, **flags)
        else:
            _backward_steps(grad_y, grad_hn, grad_cn, w_hh, c0, lengths, gates, cells, dgates,
                            dh0, dc0, reverse, flags)
    mask = common.active_mask(lengths, steps)
    h_prev = common.previous_states(y, h0, mask, reverse)
    grads = common.input_and_weight_grads(x, w_ih, dgates, dgates, h_prev, has_bias)
    grad_w_hr = common.empty(x)
    if w_hr is not None:
        grad_w_hr = common.projection_weight_grad(dh_steps, gates, cells, mask)
    return grads + (grad_w_hr, dh0, dc0)


def _backward_steps(grad_y, grad_hn, grad_cn, w_hh, c0, lengths, gates, cells, dgates, dh0, dc0,
                    reverse, flags):
    """One launch per step; the gradient of h0 is the last recurrent product, taken here."""
    steps, batch, hidden = cells.shape
    order = common.time_order(steps, not reverse)
    dh_cur, dh_next = (torch.empty(batch, hidden, device=cells.device, dtype=torch.float32)
                       for _ in range(2))
    dc_state = grad_cn.float().clone()
    lens = lengths if lengths is not None else dc_state
    grid = (triton.cdiv(batch, plan.BLOCK_B), triton.cdiv(hidden, plan.STEP_BLOCK_H))
    for k, t in enumerate(order):
        t_prev = order[k - 1] if k else t
        forward_prev = t + 1 if reverse else t - 1
        c_prev = cells[forward_prev] if 0 <= forward_prev < steps else c0
        wrap_triton(lstm_bwd_step_kernel)[grid](
            grad_y[t], grad_hn, w_hh, lens, gates[t], cells[t], c_prev, dgates[t],
            dgates[t_prev], dh_cur, dh_next, dc_state, t, t_prev, int(k == 0), batch, hidden,
            BLOCK_B=plan.BLOCK_B, BLOCK_H=plan.STEP_BLOCK_H, BLOCK_K=plan.STEP_BLOCK_K, **flags)
        dh_cur, dh_next = dh_next, dh_cur
    last = order[-1]
    recurrent = torch.mm(dgates[last].float(), w_hh.float())
    if lengths is not None:
        recurrent = torch.where((last < lengths)[:, None], recurrent, dh_cur)
    dh0.copy_(recurrent)
    dc0.copy_(dc_state)
