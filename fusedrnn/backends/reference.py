"""Pure-PyTorch backend: the CPU fallback and the oracle every other backend is tested against.

One call runs one layer in one direction over a padded, time-major sequence.

Shapes (letters as in the rest of the package): T time, B batch, I input, H hidden,
P = proj_size or H (the size of the recurrent state h), G = gates * H.

Forward, per cell, returns ``(y, h_n, c_n, ws_a, ws_b)``:

========  ==========  ===========================================================
tensor    shape       content
========  ==========  ===========================================================
y         (T, B, P)   h after every step; zero where ``t >= lengths[b]``
h_n       (B, P)      h after each sequence's own last step
c_n       (B, H)      LSTM cell state after the last step; ``(0,)`` for other cells
ws_a      (T, B, G)   LSTM/GRU: activated gates (i,f,g,o / r,z,n); RNN: ``(0,)``
ws_b      (T, B, H)   LSTM: c after every step (held past a sequence's end);
                      GRU: ``W_hn h + b_hn`` of every step; RNN: ``(0,)``
========  ==========  ===========================================================

``ws_a``/``ws_b`` are what the hand-written backward needs; nothing else is saved.
A step ``t`` of sequence ``b`` is active when ``t < lengths[b]``; an inactive step leaves
the state unchanged, so ``h_n`` is the state at the sequence's own last step in either
direction. The backward mirrors the forward in reverse time: per step only the recurrent
product and the pointwise chain, then the weight gradients as one product over all steps.
"""

import torch

EMPTY_SHAPE = (0,)


def _empty(like):
    return like.new_empty(EMPTY_SHAPE)


def active_mask(lengths, steps):
    """``(T, B, 1)`` bool mask of active steps, or None when every sequence is full."""
    if lengths is None:
        return None
    steps_arange = torch.arange(steps, device=lengths.device)
    return (steps_arange[:, None] < lengths[None, :]).unsqueeze(-1)


def _time_order(steps, reverse):
    return range(steps - 1, -1, -1) if reverse else range(steps)


def _flat(t):
    """``(T, B, S)`` as ``(T * B, S)`` (explicit sizes: B may be 0)."""
    return t.reshape(t.shape[0] * t.shape[1], t.shape[2])


def _input_projection(x, w_ih, bias):
    """``x @ w_ih^T + bias`` for all steps at once: ``(T, B, G)``."""
    steps, batch, _ = x.shape
    flat = _flat(x)
    if bias is None:
        out = torch.mm(flat, w_ih.t())
    else:
        out = torch.addmm(bias, flat, w_ih.t())
    return out.view(steps, batch, w_ih.shape[0])


def previous_states(states, initial, mask, reverse):
    """The state each step started from: ``states`` shifted by one step in processing order.

    ``states`` is ``(T, B, S)`` with the state after each step, ``initial`` ``(B, S)``.
    In the reverse direction a sequence shorter than T starts from ``initial`` at its own
    last step, where ``states[t + 1]`` is padding; ``mask`` fixes that case.
    """
    if reverse:
        shifted = torch.cat([states[1:], initial.unsqueeze(0)], 0)
        if mask is not None:
            starts_later = torch.cat([mask[1:], torch.zeros_like(mask[:1])], 0)
            shifted = torch.where(starts_later, shifted, initial)
        return shifted
    return torch.cat([initial.unsqueeze(0), states[:-1]], 0)


def _hold(mask_t, new, old):
    """Per-row select: rows whose step is active take ``new``, the others keep ``old``."""
    return new if mask_t is None else torch.where(mask_t, new, old)


def _mask_at(mask, t):
    return None if mask is None else mask[t]


def _combined_bias(b_ih, b_hh):
    if b_ih is None:
        return None
    return b_ih + b_hh


# ---------------------------------------------------------------- LSTM


def lstm_forward(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse):
    steps, batch, _ = x.shape
    hidden = w_hh.shape[1] if w_hr is None else w_hr.shape[1]
    mask = active_mask(lengths, steps)
    gates = _input_projection(x, w_ih, _combined_bias(b_ih, b_hh))
    cells = x.new_empty(steps, batch, hidden)
    y = x.new_empty(steps, batch, h0.shape[1])
    tanh_c = x.new_empty(batch, hidden)
    out_gate = x.new_empty(batch, hidden) if w_hr is not None else None
    w_hh_t = w_hh.t()
    h, c = h0, c0
    for t in _time_order(steps, reverse):
        g = gates[t]
        g.addmm_(h, w_hh_t)
        g[:, : 2 * hidden].sigmoid_()
        g[:, 2 * hidden : 3 * hidden].tanh_()
        g[:, 3 * hidden :].sigmoid_()
        i, f, gg, o = g.chunk(4, 1)
        c_t = cells[t]
        torch.mul(f, c, out=c_t)
        c_t.addcmul_(i, gg)
        torch.tanh(c_t, out=tanh_c)
        if w_hr is None:
            torch.mul(o, tanh_c, out=y[t])
        else:
            torch.mul(o, tanh_c, out=out_gate)
            torch.mm(out_gate, w_hr.t(), out=y[t])
        m = _mask_at(mask, t)
        if m is None:
            h, c = y[t], c_t
        else:
            c_t.copy_(torch.where(m, c_t, c))
            h = torch.where(m, y[t], h)
            y[t].mul_(m)
            c = c_t
    h_n = h.clone() if mask is None else h
    return y, h_n, c.clone(), gates, cells


def lstm_backward(grad_y, grad_hn, grad_cn, x, w_ih, w_hh, w_hr, h0, c0, lengths,
                  y, gates, cells, reverse, has_bias):
    steps, batch, _ = x.shape
    hidden = cells.shape[2]
    mask = active_mask(lengths, steps)
    i, f, g, o = gates.chunk(4, 2)
    tanh_c = torch.tanh(cells)
    c_prev = previous_states(cells, c0, None, reverse)
    # Pointwise factors of the chain rule, for all steps at once:
    # dc += dr * dc_from_r;  do_pre = dr * do_from_r;  d{i,f,g}_pre = dc * difg_from_c.
    dc_from_r = o * (1 - tanh_c * tanh_c)
    do_from_r = tanh_c * o * (1 - o)
    difg_from_c = torch.cat([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)], 2)
    if mask is not None:
        grad_y = grad_y * mask
        dc_from_r.mul_(mask)
        do_from_r.mul_(mask)
        difg_from_c.mul_(mask)
    dgates = torch.empty_like(gates)
    grad_h_steps = x.new_empty(steps, batch, y.shape[2]) if w_hr is not None else None
    dc = x.new_empty(batch, hidden)
    dh_carry, dc_carry = grad_hn, grad_cn
    for t in _time_order(steps, not reverse):
        dh = grad_y[t] + dh_carry
        if w_hr is None:
            dr = dh
        else:
            grad_h_steps[t] = dh
            dr = torch.mm(dh, w_hr)
        torch.addcmul(dc_carry, dr, dc_from_r[t], out=dc)
        dg = dgates[t]
        torch.mul(dr, do_from_r[t], out=dg[:, 3 * hidden :])
        torch.mul(dc.unsqueeze(1), difg_from_c[t].view(batch, 3, hidden),
                  out=dg[:, : 3 * hidden].view(batch, 3, hidden))
        m = _mask_at(mask, t)
        dh_carry = _hold(m, torch.mm(dg, w_hh), dh)
        dc_carry = _hold(m, dc * f[t], dc)
    grad_w_hr = _empty(x)
    if w_hr is not None:
        if mask is not None:
            grad_h_steps.mul_(mask)
        grad_w_hr = torch.mm(_flat(grad_h_steps).t(),
                             (o * tanh_c).view(steps * batch, hidden))
    h_prev = previous_states(y, h0, mask, reverse)
    return _input_and_weight_grads(x, w_ih, dgates, dgates, h_prev, has_bias) + (
        grad_w_hr, dh_carry, dc_carry)


def _input_and_weight_grads(x, w_ih, dgates_input, dgates_hidden, h_prev, has_bias):
    """Gradients that are one product over all steps: input, W_ih, W_hh and biases."""
    steps, batch, _ = x.shape
    flat_in = _flat(dgates_input)
    flat_hid = _flat(dgates_hidden)
    grad_x = torch.mm(flat_in, w_ih).view_as(x)
    grad_w_ih = torch.mm(flat_in.t(), _flat(x))
    grad_w_hh = torch.mm(flat_hid.t(), _flat(h_prev))
    if has_bias:
        grad_b_ih = flat_in.sum(0)
        grad_b_hh = grad_b_ih.clone() if dgates_hidden is dgates_input else flat_hid.sum(0)
    else:
        grad_b_ih, grad_b_hh = _empty(x), _empty(x)
    return grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


# ---------------------------------------------------------------- GRU


def gru_forward(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse):
    steps, batch, _ = x.shape
    hidden = w_hh.shape[1]
    mask = active_mask(lengths, steps)
    gates = _input_projection(x, w_ih, b_ih)
    hidden_n = x.new_empty(steps, batch, hidden)
    hidden_gates = x.new_empty(batch, 3 * hidden)
    y = x.new_empty(steps, batch, hidden)
    w_hh_t = w_hh.t()
    h = h0
    for t in _time_order(steps, reverse):
        if b_hh is None:
            torch.mm(h, w_hh_t, out=hidden_gates)
        else:
            torch.addmm(b_hh, h, w_hh_t, out=hidden_gates)
        g = gates[t]
        g[:, : 2 * hidden].add_(hidden_gates[:, : 2 * hidden]).sigmoid_()
        r, z, n = g.chunk(3, 1)
        hn = hidden_n[t]
        hn.copy_(hidden_gates[:, 2 * hidden :])
        n.addcmul_(r, hn).tanh_()
        y_t = y[t]
        torch.sub(h, n, out=y_t)
        y_t.mul_(z).add_(n)
        m = _mask_at(mask, t)
        if m is None:
            h = y_t
        else:
            h = torch.where(m, y_t, h)
            y_t.mul_(m)
    return y, h.clone() if mask is None else h, _empty(x), gates, hidden_n


def gru_backward(grad_y, grad_hn, grad_cn, x, w_ih, w_hh, w_hr, h0, c0, lengths,
                 y, gates, hidden_n, reverse, has_bias):
    steps, batch, _ = x.shape
    hidden = w_hh.shape[1]
    mask = active_mask(lengths, steps)
    r, z, n = gates.chunk(3, 2)
    h_prev = previous_states(y, h0, mask, reverse)
    # dn_pre = dh * dn_from_h;  dz_pre = dh * dz_from_h;  dr_pre = dn_pre * dr_from_n.
    dn_from_h = (1 - z) * (1 - n * n)
    dz_from_h = (h_prev - n) * z * (1 - z)
    dr_from_n = hidden_n * r * (1 - r)
    # The hidden-side gate gradient is the input-side one with the n block scaled by r.
    hidden_scale = torch.cat([torch.ones_like(r), torch.ones_like(z), r], 2)
    keep = z
    if mask is not None:
        grad_y = grad_y * mask
        dn_from_h.mul_(mask)
        dz_from_h.mul_(mask)
    dgates_in = torch.empty_like(gates)
    dgates_hid = torch.empty_like(gates)
    dh_carry = grad_hn
    for t in _time_order(steps, not reverse):
        dh = grad_y[t] + dh_carry
        dgi = dgates_in[t]
        torch.mul(dh, dn_from_h[t], out=dgi[:, 2 * hidden :])
        torch.mul(dh, dz_from_h[t], out=dgi[:, hidden : 2 * hidden])
        torch.mul(dgi[:, 2 * hidden :], dr_from_n[t], out=dgi[:, :hidden])
        dgh = dgates_hid[t]
        torch.mul(dgi, hidden_scale[t], out=dgh)
        new_carry = torch.addmm(dh * keep[t], dgh, w_hh)
        dh_carry = _hold(_mask_at(mask, t), new_carry, dh)
    return _input_and_weight_grads(x, w_ih, dgates_in, dgates_hid, h_prev, has_bias) + (
        _empty(x), dh_carry, _empty(x))


# ---------------------------------------------------------------- Elman RNN


def _rnn_forward(activation):
    def forward(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse):
        steps = x.shape[0]
        mask = active_mask(lengths, steps)
        pre = _input_projection(x, w_ih, _combined_bias(b_ih, b_hh))
        y = torch.empty_like(pre)
        w_hh_t = w_hh.t()
        h = h0
        for t in _time_order(steps, reverse):
            p = pre[t]
            p.addmm_(h, w_hh_t)
            activation(p, out=y[t])
            m = _mask_at(mask, t)
            if m is None:
                h = y[t]
            else:
                h = torch.where(m, y[t], h)
                y[t].mul_(m)
        return y, h.clone() if mask is None else h, _empty(x), _empty(x), _empty(x)

    return forward


def _rnn_backward(derivative_from_output):
    def backward(grad_y, grad_hn, grad_cn, x, w_ih, w_hh, w_hr, h0, c0, lengths,
                 y, ws_a, ws_b, reverse, has_bias):
        steps = x.shape[0]
        mask = active_mask(lengths, steps)
        dpre_from_h = derivative_from_output(y)
        if mask is not None:
            grad_y = grad_y * mask
            dpre_from_h.mul_(mask)
        dpre = torch.empty_like(y)
        dh_carry = grad_hn
        for t in _time_order(steps, not reverse):
            dh = grad_y[t] + dh_carry
            torch.mul(dh, dpre_from_h[t], out=dpre[t])
            dh_carry = _hold(_mask_at(mask, t), torch.mm(dpre[t], w_hh), dh)
        h_prev = previous_states(y, h0, mask, reverse)
        return _input_and_weight_grads(x, w_ih, dpre, dpre, h_prev, has_bias) + (
            _empty(x), dh_carry, _empty(x))

    return backward


rnn_tanh_forward = _rnn_forward(torch.tanh)
rnn_relu_forward = _rnn_forward(lambda pre, out: torch.clamp_min(pre, 0, out=out))
rnn_tanh_backward = _rnn_backward(lambda y: 1 - y * y)
rnn_relu_backward = _rnn_backward(lambda y: (y > 0).to(y.dtype))

FORWARD = {
    "lstm": lstm_forward,
    "gru": gru_forward,
    "rnn_tanh": rnn_tanh_forward,
    "rnn_relu": rnn_relu_forward,
}
BACKWARD = {
    "lstm": lstm_backward,
    "gru": gru_backward,
    "rnn_tanh": rnn_tanh_backward,
    "rnn_relu": rnn_relu_backward,
}
