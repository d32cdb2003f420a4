"""Elman RNN, reference: ``h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)``, act tanh or relu."""

import torch

from ..common import (PreviousStates, active_mask, backward_masks, empty,
                     input_and_weight_grads, input_projection, hold_forward, recurrent_grad,
                     time_order, zero_inactive_, active_only)


def _forward(activation):
    def rnn_forward(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse):
        mask = active_mask(lengths, x.shape[0])
        pre = input_projection(x, w_ih, None if b_ih is None else b_ih + b_hh)
        y = torch.empty_like(pre)
        pre_steps, y_steps = pre.unbind(0), y.unbind(0)
        w_hh_t = w_hh.t()
        h = h0
        for t in time_order(x.shape[0], reverse):
            pre_steps[t].addmm_(h, w_hh_t)
            activation(pre_steps[t], out=y_steps[t])
            h = hold_forward(mask, t, y_steps[t], h, y_steps[t])
        return y, h.clone(), empty(x), empty(x), empty(x)

    return rnn_forward


def _backward(relu):
    def rnn_backward(grad_y, grad_hn, grad_cn, x, w_ih, w_hh, w_hr, h0, c0, lengths,
                     y, ws_a, ws_b, reverse, has_bias):
        mask = active_mask(lengths, x.shape[0])
        grad_y, inactive = backward_masks(mask, grad_y)
        if relu:
            # Selected, as torch's threshold_backward selects: a NaN output passes dh, and
            # an infinite dh at an output of 0 gives 0 (times a 0/1 slope it would be NaN).
            dropped = y <= 0
            if inactive is not None:
                dropped |= inactive
        else:
            dpre_from_h = 1 - y * y
            if inactive is not None:
                zero_inactive_(dpre_from_h, inactive)
        dpre = torch.empty_like(y)
        dpre_steps = dpre.unbind(0)
        order = time_order(x.shape[0], not reverse)
        dh = grad_y[order[0]] + grad_hn
        for k, t in enumerate(order):
            if relu:
                dpre_steps[t].copy_(dh).masked_fill_(dropped[t], 0)
            else:
                torch.mul(active_only(dh, inactive, t), dpre_from_h[t], out=dpre_steps[t])
            dh = recurrent_grad(order, k, grad_y, dpre_steps[t], w_hh, dh, inactive)
        h_prev = PreviousStates(y, h0, mask, reverse)
        return input_and_weight_grads(x, w_ih, dpre, dpre, h_prev, has_bias) + (
            empty(x), dh, empty(x))

    return rnn_backward


rnn_tanh_forward = _forward(torch.tanh)
rnn_relu_forward = _forward(lambda pre, out: torch.clamp_min(pre, 0, out=out))
rnn_tanh_backward = _backward(relu=False)
rnn_relu_backward = _backward(relu=True)
