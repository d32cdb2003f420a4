"""Launchers of the GRU kernels: same contract and saved tensors as the reference backend."""

import torch
import triton

from .. import common
from . import cooperative, plan
from .compat import wrap_triton
from .gru_bwd import gru_bwd_cooperative_kernel, gru_bwd_persistent_kernel, gru_bwd_step_kernel
from .gru_fwd import gru_fwd_cooperative_kernel, gru_fwd_persistent_kernel, gru_fwd_step_kernel


@cooperative.replanned
def forward(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse):
    steps, batch, _ = x.shape
    hidden = w_ih.shape[0] // 3
    bias = None
    if b_ih is not None:  # b_hr, b_hz join the input side; b_hn stays inside r * (...)
        bias = b_ih + torch.cat([b_hh[: 2 * hidden], torch.zeros_like(b_hh[2 * hidden :])])
    xproj = common.input_projection(x, w_ih, bias)
    gates = torch.empty_like(xproj)
    hidden_n = x.new_empty(steps, batch, hidden)
    y = x.new_empty(steps, batch, hidden)
    h_n = torch.empty_like(h0)
    if batch == 0:
        return y, h_n, common.empty(x), gates, hidden_n
    variant = plan.variant_for("gru", hidden, hidden, x)
    b_hn = b_hh[2 * hidden :] if b_hh is not None else h0
    flags, lens = plan.launch_flags(x, lengths, h0, variant)
    flags["HAS_BIAS"] = b_hh is not None
    if variant.kernel == "cooperative":
        h_pair, h_state = cooperative.state_pair(h0, flags), h0.float().clone()
        cooperative.launch(gru_fwd_cooperative_kernel, variant, steps,
                           (xproj, w_hh, b_hn, lens, y, gates, hidden_n, h_pair, h_state),
                           (steps, batch, hidden), REVERSE=reverse, **cooperative.tiles(variant),
                           **flags)
        h_n.copy_(h_state)
        return y, h_n, common.empty(x), gates, hidden_n
    if variant.kernel == "persistent":
        wrap_triton(gru_fwd_persistent_kernel)[(triton.cdiv(batch, plan.BLOCK_B),)](
            xproj, w_hh, b_hn, h0, lens, y, gates, hidden_n, h_n, steps, batch, hidden,
            REVERSE=reverse, BLOCK_B=plan.BLOCK_B, BLOCK_H=variant.block_h, **flags)
        return y, h_n, common.empty(x), gates, hidden_n
    h_cur, h_next = h0.float().clone(), torch.empty_like(h0, dtype=torch.float32)
    grid = (triton.cdiv(batch, plan.BLOCK_B), triton.cdiv(hidden, plan.STEP_BLOCK_H))
    for t in common.time_order(steps, reverse):
        wrap_triton(gru_fwd_step_kernel)[grid](
            xproj, w_hh, b_hn, lens, y, gates, hidden_n, h_cur, h_next, t, batch, hidden,
            BLOCK_B=plan.BLOCK_B, BLOCK_H=plan.STEP_BLOCK_H, BLOCK_K=plan.STEP_BLOCK_K, **flags)
        h_cur, h_next = h_next, h_cur
    h_n.copy_(h_cur)
    return y, h_n, common.empty(x), gates, hidden_n


@cooperative.replanned
def backward(grad_y, grad_hn, grad_cn, x, w_ih, w_hh, w_hr, h0, c0, lengths, y, gates, hidden_n,
             reverse, has_bias):
    steps, batch, _ = x.shape
    hidden = hidden_n.shape[2]
    mask = common.active_mask(lengths, steps)
    h_prev = common.previous_states(y, h0, mask, reverse)
    dgates_in, dgates_hid = torch.empty_like(gates), torch.empty_like(gates)
    dh0 = torch.empty_like(h0)
    if batch == 0:
        dgates_in.zero_()
        dgates_hid.zero_()
    else:
        variant = plan.variant_for("gru", hidden, hidden, x)
        flags, lens = plan.launch_flags(x, lengths, h0, variant)
        if variant.kernel == "cooperative":
            dh_pair = cooperative.gradient_pair(h0)
            cooperative.launch(gru_bwd_cooperative_kernel, variant, steps + 1,
                               (grad_y, grad_hn, w_hh, lens, h_prev, gates, hidden_n, dgates_in,
                                dgates_hid, dh_pair, dh0), (steps, batch, hidden),
                               REVERSE=reverse, **cooperative.tiles(variant), **flags)
        elif variant.kernel == "persistent":
            wrap_triton(gru_bwd_persistent_kernel)[(triton.cdiv(batch, plan.BLOCK_B),)](
                grad_y, grad_hn, w_hh, h0, lens, y, gates, hidden_n, dgates_in, dgates_hid, dh0,
                steps, batch, hidden, REVERSE=reverse, BLOCK_B=plan.BLOCK_B,
                BLOCK_H=variant.block_h, **flags)
        else:
            _backward_steps(grad_y, grad_hn, w_hh, lengths, h_prev, gates, hidden_n, dgates_in,
                            dgates_hid, dh0, reverse, flags)
    grads = common.input_and_weight_grads(x, w_ih, dgates_in, dgates_hid, h_prev, has_bias)
    return grads + (common.empty(x), dh0, common.empty(x))


def _backward_steps(grad_y, grad_hn, w_hh, lengths, h_prev, gates, hidden_n, dgates_in,
                    dgates_hid, dh0, reverse, flags):
    """One launch per step; the gradient of h0 is the last recurrent term, taken here."""
    steps, batch, hidden = hidden_n.shape
    order = common.time_order(steps, not reverse)
    dh_cur, dh_next = (torch.empty(batch, hidden, device=gates.device, dtype=torch.float32)
                       for _ in range(2))
    lens = lengths if lengths is not None else dh_cur
    grid = (triton.cdiv(batch, plan.BLOCK_B), triton.cdiv(hidden, plan.STEP_BLOCK_H))
    for k, t in enumerate(order):
        t_prev = order[k - 1] if k else t
        wrap_triton(gru_bwd_step_kernel)[grid](
            grad_y[t], grad_hn, w_hh, lens, h_prev[t], gates[t], hidden_n[t], gates[t_prev],
            dgates_in[t], dgates_hid[t], dgates_hid[t_prev], dh_cur, dh_next, t, t_prev,
            int(k == 0), batch, hidden,
            BLOCK_B=plan.BLOCK_B, BLOCK_H=plan.STEP_BLOCK_H, BLOCK_K=plan.STEP_BLOCK_K, **flags)
        dh_cur, dh_next = dh_next, dh_cur
    last = order[-1]
    recurrent = (torch.mm(dgates_hid[last].float(), w_hh.float())
                 + dh_cur * gates[last, :, hidden : 2 * hidden].float())
    if lengths is not None:
        recurrent = torch.where((last < lengths)[:, None], recurrent, dh_cur)
    dh0.copy_(recurrent)
