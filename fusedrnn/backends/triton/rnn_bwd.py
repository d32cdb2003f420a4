"""Elman RNN backward kernels (Triton): backpropagation through time in reverse processing
order.

Both kernels produce ``dpre`` ``(T, B, H)``, the gradient of the pre-activation
``xproj + h W_hh^T`` (zero past a sequence's end), taking the activation's derivative from the
forward's output (tanh: ``1 - y^2``; relu: ``y > 0``); weights, biases and input then take
one product over all steps each (``common.input_and_weight_grads``).

``rnn_bwd_persistent_kernel``: one launch; program ``p`` owns a batch tile and every hidden
unit, keeps ``W_hh`` in registers and loops over time.

=============  ===========  =====  ==========================================================
argument       shape        dtype  role
=============  ===========  =====  ==========================================================
grad_y         (T, B, H)    x      gradient of the output; read only
grad_hn        (B, H)       x      gradient of the final state; read only
w_hh           (H, H)       x      recurrent weights; read only
lengths        (B,)         int64  per-sequence lengths (HAS_LENGTHS); read only
y              (T, B, H)    x      forward output; read only
dpre           (T, B, H)    x      output: pre-activation gradients
dh0            (B, H)       x      output: gradient of the initial state
=============  ===========  =====  ==========================================================

``rnn_bwd_step_kernel``: one launch per step; program ``(p, q)`` owns a batch tile and
hidden units ``q``; it first forms the gradient of its h tile from the previous launch's
``dpre_prev @ W_hh`` (a reduction over all H units), then its tile of ``dpre_t``. Scratch:
``dh_cur``/``dh_next`` ``(B, H)`` float32 ping-pong. ``grad_y_t``, ``y_t``, ``dpre_t`` and
``dpre_prev`` are the ``(B, H)`` slices of the step. ``rnn_bwd_cooperative_kernel``: the same
per step for processing steps ``[s_begin, s_end)`` of one launch (``s == steps``: the
gradient of h0), program ``q`` owning hidden units ``q`` with its columns of ``W_hh`` in
registers, reading the whole ``dpre`` of the step before; ``dh_pair`` ``(2, B, H)`` float32
is the ping-pong (see ``lstm_bwd.py``).
"""

import triton
import triton.language as tl

from .cell_math import (backward_times, batch_tile, carried_back, cooperative_tiles, end_of_step,
                        load_tile, matmul, pair_slots, split_product, store_tile, weight_slice)


@triton.jit
def pre_activation_grad(dh, y, RELU: tl.constexpr):
    """``dh`` times the activation's derivative at the pre-activation that produced ``y``;
    relu's selected as torch's threshold_backward selects (a NaN ``y`` passes ``dh``, an
    infinite ``dh`` at ``y = 0`` gives 0, not the NaN of a product with a 0/1 slope)."""
    if RELU:
        return tl.where(y <= 0.0, 0.0, dh)
    return dh * (1.0 - y * y)


@triton.jit(do_not_specialize=["steps"])
def rnn_bwd_persistent_kernel(
    grad_y, grad_hn, w_hh, lengths, y, dpre, dh0,
    steps, batch, hidden,
    REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr, RELU: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    hcols = tl.arange(0, BLOCK_H)
    row_ok, h_ok = rows < batch, hcols < hidden
    w = tl.load(w_hh + hcols[:, None] * hidden + hcols[None, :],  # [j, k] = W_hh[j, k]
                mask=h_ok[:, None] & h_ok[None, :], other=0.0)
    dh_carry = load_tile(grad_hn, rows, hcols, hidden, row_ok, h_ok)
    if HAS_LENGTHS:
        length = tl.load(lengths + rows, mask=row_ok, other=0)
    for s in range(steps):
        t = s if REVERSE else steps - 1 - s
        at = t * batch + rows
        dh = dh_carry + load_tile(grad_y, at, hcols, hidden, row_ok, h_ok)
        d = pre_activation_grad(dh, load_tile(y, at, hcols, hidden, row_ok, h_ok), RELU)
        d = tl.where(h_ok[None, :], d, 0.0)  # padding units: as in the forward
        if HAS_LENGTHS:
            active = (t < length)[:, None]
            d = tl.where(active, d, 0.0)
            dh_carry = tl.where(active, matmul(d, w, IEEE), dh_carry)
        else:
            dh_carry = matmul(d, w, IEEE)
        store_tile(dpre, d, at, hcols, hidden, row_ok, h_ok)
    store_tile(dh0, dh_carry, rows, hcols, hidden, row_ok, h_ok)


@triton.jit(do_not_specialize=["t", "t_prev"])
def rnn_bwd_step_kernel(
    grad_y_t, grad_hn, w_hh, lengths, y_t, dpre_t, dpre_prev, dh_cur, dh_next,
    t, t_prev, first, batch, hidden,
    HAS_LENGTHS: tl.constexpr, RELU: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    hcols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok, h_ok = rows < batch, hcols < hidden
    if first != 0:
        carry = load_tile(grad_hn, rows, hcols, hidden, row_ok, h_ok)
    else:
        carry = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        for k0 in range(0, hidden, BLOCK_K):
            kcols = k0 + tl.arange(0, BLOCK_K)
            k_ok = kcols < hidden
            carry += matmul(load_tile(dpre_prev, rows, kcols, hidden, row_ok, k_ok),
                            tl.load(w_hh + kcols[:, None] * hidden + hcols[None, :],
                                    mask=k_ok[:, None] & h_ok[None, :], other=0.0), IEEE)
        carry = carried_back(carry, load_tile(dh_cur, rows, hcols, hidden, row_ok, h_ok), t_prev,
                             lengths, rows, row_ok, HAS_LENGTHS)
    rnn_bwd_cell(carry, t, rows, hcols, row_ok, h_ok, hidden, lengths, grad_y_t, y_t, dpre_t,
                 dh_next, HAS_LENGTHS, RELU)


@triton.jit(do_not_specialize=["s_begin", "s_end", "steps"])
def rnn_bwd_cooperative_kernel(
    grad_y, grad_hn, w_hh, lengths, y, dpre, dh_pair, dh0, counter,
    s_begin, s_end, steps, batch, hidden, group_rows,
    REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr, RELU: tl.constexpr, IEEE: tl.constexpr,
    SYNC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    hcols, ks, h_ok, k_ok, b_first, b_last = cooperative_tiles(hidden, batch, group_rows, BLOCK_H,
                                                               BLOCK_K, SPLIT_K)
    w = weight_slice(w_hh, 0, hcols, ks, hidden, h_ok, k_ok, True)
    for s in range(s_begin, s_end):
        t, t_prev = backward_times(s, steps, REVERSE)
        dh_cur, dh_next = pair_slots(dh_pair, s, batch, hidden)
        for b0 in range(b_first, b_last, BLOCK_B):
            rows, row_ok = batch_tile(b0, batch, BLOCK_B)
            if s == 0:
                carry = load_tile(grad_hn, rows, hcols, hidden, row_ok, h_ok)
            else:
                carry = split_product(dpre + t_prev * batch * hidden, rows, ks, hidden, row_ok,
                                      k_ok, w, IEEE)
                carry = carried_back(carry, load_tile(dh_cur, rows, hcols, hidden, row_ok, h_ok),
                                     t_prev, lengths, rows, row_ok, HAS_LENGTHS)
            if s < steps:
                at = t * batch * hidden
                rnn_bwd_cell(carry, t, rows, hcols, row_ok, h_ok, hidden, lengths, grad_y + at,
                             y + at, dpre + at, dh_next, HAS_LENGTHS, RELU)
            else:
                store_tile(dh0, carry, rows, hcols, hidden, row_ok, h_ok)
        end_of_step(counter, s, s_begin, s_end, SYNC)


@triton.jit
def rnn_bwd_cell(carry, t, rows, hcols, row_ok, h_ok, hidden, lengths, grad_y_t, y_t, dpre_t,
                 dh_next, HAS_LENGTHS: tl.constexpr, RELU: tl.constexpr):
    """One tile of step ``t`` from ``carry``, the gradient of h flowing back from the later
    step: writes the gradient of h to ``dh_next`` and the pre-activation's to ``dpre_t``."""
    dh = carry + load_tile(grad_y_t, rows, hcols, hidden, row_ok, h_ok)
    d = pre_activation_grad(dh, load_tile(y_t, rows, hcols, hidden, row_ok, h_ok), RELU)
    if HAS_LENGTHS:
        active = (t < tl.load(lengths + rows, mask=row_ok, other=0))[:, None]
        dh = tl.where(active, dh, carry)
        d = tl.where(active, d, 0.0)
    store_tile(dh_next, dh, rows, hcols, hidden, row_ok, h_ok)
    store_tile(dpre_t, d, rows, hcols, hidden, row_ok, h_ok)
