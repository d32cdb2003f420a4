"""GRU, reference: forward and hand-written backward for one layer and direction.

Gates in PyTorch's order r, z, n::

    r, z = sigmoid(x W_{ir,iz}^T + b_{ir,iz} + h W_{hr,hz}^T + b_{hr,hz})
    n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
    h' = (1 - z) * n + z * h, computed as torch computes it: n + z * (h - n)
"""

import torch

from ..common import (active_mask, backward_masks, empty, input_and_weight_grads,
                     input_projection, hold_forward, previous_states, recurrent_grad,
                     time_order, zero_inactive_, active_only)


def gru_forward(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse):
    steps, batch, _ = x.shape
    hidden = w_ih.shape[0] // 3
    mask = active_mask(lengths, steps)
    bias = None
    if b_ih is not None:  # b_hr and b_hz add to the input side; b_hn stays inside r * (...)
        bias = b_ih + torch.cat([b_hh[: 2 * hidden], torch.zeros_like(b_hh[2 * hidden :])])
    gates = input_projection(x, w_ih, bias)  # becomes the activated gates, in place
    hidden_n = x.new_empty(steps, batch, hidden)
    y = x.new_empty(steps, batch, hidden)
    w_rz_t, w_n_t = w_hh[: 2 * hidden].t(), w_hh[2 * hidden :].t()
    b_hn = None if b_hh is None else b_hh[2 * hidden :]
    rz = gates[:, :, : 2 * hidden].unbind(0)
    r_g, z_g, n_g = (part.unbind(0) for part in gates.chunk(3, 2))
    hn_steps, y_steps = hidden_n.unbind(0), y.unbind(0)
    h = h0
    for t in time_order(steps, reverse):
        rz[t].addmm_(h, w_rz_t)
        if b_hn is None:
            torch.mm(h, w_n_t, out=hn_steps[t])
        else:
            torch.addmm(b_hn, h, w_n_t, out=hn_steps[t])
        rz[t].sigmoid_()
        n_g[t].addcmul_(r_g[t], hn_steps[t]).tanh_()
        # torch's order, not lerp's: at z = 1, h = inf it is inf, where lerp's h - (h - n)(1 - z)
        # is inf - inf * 0 = NaN
        torch.sub(h, n_g[t], out=y_steps[t]).mul_(z_g[t]).add_(n_g[t])
        h = hold_forward(mask, t, y_steps[t], h, y_steps[t])
    return y, h.clone(), empty(x), gates, hidden_n


def gru_backward(grad_y, grad_hn, grad_cn, x, w_ih, w_hh, w_hr, h0, c0, lengths,
                 y, gates, hidden_n, reverse, has_bias):
    steps, batch, _ = x.shape
    hidden = hidden_n.shape[2]
    mask = active_mask(lengths, steps)
    r, z, n = gates.chunk(3, 2)
    h_prev = previous_states(y, h0, mask, reverse)
    # Chain-rule factors for all steps at once:
    # (dz_pre, dn_pre) = dh * dzn_from_h;  dr_pre = dn_pre * dr_from_n;  the hidden-side
    # gradient is the input-side one with its n block scaled by r; dh passes to the
    # previous step as dh * dh_keep + dgates_hidden @ w_hh.
    dzn_from_h = torch.cat([(h_prev - n) * z * (1 - z), (1 - z) * (1 - n * n)], 2)
    dzn_from_h = dzn_from_h.view(steps, batch, 2, hidden)
    dr_from_n = hidden_n * r * (1 - r)
    hidden_scale = torch.cat([torch.ones_like(gates[:, :, : 2 * hidden]), r], 2)
    grad_y, inactive = backward_masks(mask, grad_y)
    dh_keep = z
    if inactive is not None:
        for factors in (dzn_from_h, dr_from_n, hidden_scale):
            zero_inactive_(factors, inactive)
        dh_keep = z.masked_fill(inactive, 0)
    dgates_in = torch.empty_like(gates)
    dgates_hid = torch.empty_like(gates)
    dzn_steps = dgates_in[:, :, hidden:].view(steps, batch, 2, hidden).unbind(0)
    dr_steps, dn_steps = dgates_in[:, :, :hidden].unbind(0), dgates_in[:, :, 2 * hidden :].unbind(0)
    din_steps, dhid_steps = dgates_in.unbind(0), dgates_hid.unbind(0)
    order = time_order(steps, not reverse)
    dh = grad_y[order[0]] + grad_hn
    for k, t in enumerate(order):
        dh_in = active_only(dh, inactive, t)
        torch.mul(dh_in.unsqueeze(1), dzn_from_h[t], out=dzn_steps[t])
        torch.mul(dn_steps[t], dr_from_n[t], out=dr_steps[t])
        torch.mul(din_steps[t], hidden_scale[t], out=dhid_steps[t])
        new = recurrent_grad(order, k, grad_y, dhid_steps[t], w_hh, dh, inactive)
        dh = new.addcmul_(dh_in, dh_keep[t])
    return input_and_weight_grads(x, w_ih, dgates_in, dgates_hid, h_prev, has_bias) + (
        empty(x), dh, empty(x))
