"""LSTM, reference: forward and hand-written backward for one layer and direction.

Gates in PyTorch's order i, f, g, o; with a projection (``w_hr`` ``(P, H)``) the state h is
``w_hr @ (o * tanh(c))``.
"""

import torch

from ..common import (PreviousStates, active_mask, backward_masks, empty,
                     input_and_weight_grads, input_projection, hold_forward, previous_states,
                     projection_weight_grad, recurrent_grad, time_order, zero_inactive_,
                     active_only)


def lstm_forward(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse):
    steps, batch, _ = x.shape
    hidden = w_ih.shape[0] // 4
    mask = active_mask(lengths, steps)
    bias = None if b_ih is None else b_ih + b_hh
    gates = input_projection(x, w_ih, bias)  # becomes the activated gates, in place
    cells = x.new_empty(steps, batch, hidden)
    y = x.new_empty(steps, batch, h0.shape[1])
    tanh_c = x.new_empty(batch, hidden)
    r = tanh_c if w_hr is None else x.new_empty(batch, hidden)  # o * tanh(c) before projection
    gate_steps = gates.unbind(0)
    i_f = gates[:, :, : 2 * hidden].unbind(0)
    i_g, f_g, g_g, o_g = (part.unbind(0) for part in gates.chunk(4, 2))
    cell_steps, y_steps = cells.unbind(0), y.unbind(0)
    w_hh_t = w_hh.t()
    low_precision = x.dtype in (torch.bfloat16, torch.float16)
    h, c = h0, c0
    for t in time_order(steps, reverse):
        gate_steps[t].addmm_(h, w_hh_t)
        c_t = cell_steps[t]
        if low_precision:
            r = _cell_in_float32(gate_steps[t], c, c_t, None if mask is None else mask[t])
        else:
            i_f[t].sigmoid_()
            g_g[t].tanh_()
            o_g[t].sigmoid_()
            torch.mul(f_g[t], c, out=c_t)
            c_t.addcmul_(i_g[t], g_g[t])
            if mask is not None:
                c_t.copy_(torch.where(mask[t], c_t, c))
            torch.tanh(c_t, out=tanh_c)
            torch.mul(o_g[t], tanh_c, out=y_steps[t] if w_hr is None else r)
        if w_hr is not None:
            torch.mm(r.to(x.dtype), w_hr.t(), out=y_steps[t])
        elif low_precision:
            y_steps[t].copy_(r)
        h = hold_forward(mask, t, y_steps[t], h, y_steps[t])
        c = c_t
    return y, h.clone(), c.clone(), gates, cells


def _cell_in_float32(gates_t, c, c_t, mask_t):
    """One step's cell in float32 for bfloat16 and float16 (as torch's CPU kernels and the
    CUDA step kernel compute it): ``gates_t`` (pre-activations) becomes the activated gates
    and ``c_t`` the new cell state, both rounded to their dtype; returns ``o * tanh(c)`` in
    float32. In place, in low precision, every operation would round (2x torch's error)."""
    hidden = c.shape[1]
    gates = gates_t.float()
    gates[:, : 2 * hidden].sigmoid_()
    gates[:, 2 * hidden : 3 * hidden].tanh_()
    gates[:, 3 * hidden :].sigmoid_()
    i, f, g, o = gates.chunk(4, 1)
    c_new = torch.addcmul(f * c, i, g)  # float32: c is promoted
    if mask_t is not None:
        c_new = torch.where(mask_t, c_new, c)
    gates_t.copy_(gates)
    c_t.copy_(c_new)
    return c_new.tanh_().mul_(o)


def lstm_backward(grad_y, grad_hn, grad_cn, x, w_ih, w_hh, w_hr, h0, c0, lengths,
                  y, gates, cells, reverse, has_bias):
    steps, batch, _ = x.shape
    hidden = cells.shape[2]
    mask = active_mask(lengths, steps)
    i, f, g, o = gates.chunk(4, 2)
    tanh_c = torch.tanh(cells)
    c_prev = previous_states(cells, c0, None, reverse)  # cells hold the state past the end
    # Chain-rule factors for all steps at once, with r = o * tanh(c) and dr = dh (@ w_hr):
    # dc += dr * dc_from_r;  do_pre = dr * do_from_r;  d{i,f,g}_pre = dc * difg_from_c;
    # the dc entering the previous step is dc * dc_keep.
    dc_from_r = o * (1 - tanh_c * tanh_c)
    do_from_r = tanh_c * o * (1 - o)
    difg_from_c = torch.cat([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)], 2)
    difg_from_c = difg_from_c.view(steps, batch, 3, hidden)
    grad_y, inactive = backward_masks(mask, grad_y)
    dc_keep = f
    if inactive is not None:
        for factors in (dc_from_r, do_from_r, difg_from_c):
            zero_inactive_(factors, inactive)
        dc_keep = torch.where(mask, f, torch.ones_like(f))
    dgates = torch.empty_like(gates)
    dgate_steps = dgates.unbind(0)
    do_steps = dgates[:, :, 3 * hidden :].unbind(0)
    difg_steps = dgates[:, :, : 3 * hidden].view(steps, batch, 3, hidden).unbind(0)
    dh_steps = torch.empty_like(y)  # the gradient of h at every step (for w_hr)
    dr = x.new_empty(batch, hidden) if w_hr is not None else None
    order = time_order(steps, not reverse)
    dc = grad_cn.clone()
    dh = torch.add(grad_y[order[0]], grad_hn, out=dh_steps[order[0]])
    for k, t in enumerate(order):
        d_r = active_only(dh if w_hr is None else torch.mm(dh, w_hr, out=dr), inactive, t)
        dc.addcmul_(d_r, dc_from_r[t])
        torch.mul(active_only(dc, inactive, t).unsqueeze(1), difg_from_c[t],
                  out=difg_steps[t])
        torch.mul(d_r, do_from_r[t], out=do_steps[t])
        dc.mul_(dc_keep[t])
        dh = recurrent_grad(order, k, grad_y, dgate_steps[t], w_hh, dh, inactive, dh_steps)
    grad_w_hr = empty(x)
    if w_hr is not None:
        if inactive is not None:  # past a row's end dh carries through
            zero_inactive_(dh_steps, inactive)
        grad_w_hr = projection_weight_grad(dh_steps, gates, cells, mask)
    h_prev = PreviousStates(y, h0, mask, reverse)
    return input_and_weight_grads(x, w_ih, dgates, dgates, h_prev, has_bias) + (
        grad_w_hr, dh, dc)
