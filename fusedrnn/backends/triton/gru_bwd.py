"""GRU backward kernels (Triton): backpropagation through time in reverse processing order.

They produce the pre-activation gradients of the input side, ``dgates_in`` = (dr, dz, dn),
and of the hidden side, ``dgates_hid`` = (dr, dz, dn * r), both ``(T, B, 3H)`` and zero past
a sequence's end; weights, biases and input then take one product over all steps each.

=============  ===========  =====  ==========================================================
argument       shape        dtype  role
=============  ===========  =====  ==========================================================
grad_y         (T, B, H)    x      gradient of the output; read only
grad_hn        (B, H)       x      gradient of the final state; read only
w_hh           (3H, H)      x      recurrent weights; read only
h0             (B, H)       x      initial state; read only
lengths        (B,)         int64  per-sequence lengths (HAS_LENGTHS); read only
y              (T, B, H)    x      forward output (h of every step); read only
gates          (T, B, 3H)   x      saved r, z, n; read only
hidden_n       (T, B, H)    x      saved ``h W_hn^T + b_hn``; read only
dgates_in/hid  (T, B, 3H)   x      outputs
dh0            (B, H)       x      output: gradient of the initial state
=============  ===========  =====  ==========================================================

The step kernel works on the ``(B, .)`` slices of one step and keeps the gradient of h in
``dh_cur``/``dh_next`` ``(B, H)`` float32 ping-pong scratch; the recurrent term it starts
from is ``dgates_hid_prev @ W_hh + dh_cur * z_prev`` of the step processed before.
``gru_bwd_cooperative_kernel``: the same per step for processing steps ``[s_begin, s_end)``
of one launch (``s == steps``: the gradient of h0), program ``q`` owning hidden units ``q``
with its columns of ``W_hh`` in registers, reading the whole ``dgates_hid`` of the step
before, with ``dh_pair`` ``(2, B, H)`` float32 as the ping-pong (see ``lstm_bwd.py``).
"""

import triton
import triton.language as tl

from .cell_math import (backward_times, batch_tile, carried_back, cooperative_tiles, end_of_step,
                        load_tile, matmul, pair_slots, split_product, store_gates3, store_tile,
                        weight_slice)


@triton.jit
def _gru_tile_grads(dh, h_prev, active, gates, hidden_n, dgates_in, dgates_hid, rows, cols,
                    g_size, hidden, row_ok, col_ok):
    """One tile of a step: load r, z, n and ``h W_hn^T + b_hn`` (``rows`` index the ``(., G)``
    and ``(., H)`` matrices), store the pre-activation gradients (dr, dz, dn) and the hidden
    side's (dr, dz, dn * r), zero on inactive rows; return them and z for the recurrence."""
    r = load_tile(gates, rows, cols, g_size, row_ok, col_ok)
    z = load_tile(gates + hidden, rows, cols, g_size, row_ok, col_ok)
    n = load_tile(gates + 2 * hidden, rows, cols, g_size, row_ok, col_ok)
    hn = load_tile(hidden_n, rows, cols, hidden, row_ok, col_ok)
    d_n = tl.where(active, dh * (1.0 - z) * (1.0 - n * n), 0.0)
    d_z = tl.where(active, dh * (h_prev - n) * z * (1.0 - z), 0.0)
    # Selected, not multiplied by a zero d_n: an inactive step's gates came from its padding.
    d_r = tl.where(active, d_n * hn * r * (1.0 - r), 0.0)
    d_nh = tl.where(active, d_n * r, 0.0)
    store_gates3(dgates_in, d_r, d_z, d_n, rows, cols, g_size, hidden, row_ok, col_ok)
    store_gates3(dgates_hid, d_r, d_z, d_nh, rows, cols, g_size, hidden, row_ok, col_ok)
    return d_r, d_z, d_nh, z


@triton.jit(do_not_specialize=["steps"])
def gru_bwd_persistent_kernel(
    grad_y, grad_hn, w_hh, h0, lengths, y, gates, hidden_n, dgates_in, dgates_hid, dh0,
    steps, batch, hidden,
    REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    hcols = tl.arange(0, BLOCK_H)
    row_ok, h_ok = rows < batch, hcols < hidden
    g_size = 3 * hidden
    w_mask = h_ok[:, None] & h_ok[None, :]
    # W_hh per gate as (BLOCK_H, BLOCK_H): [j, p] = W_hh[k * H + j, p].
    w_r = tl.load(w_hh + hcols[:, None] * hidden + hcols[None, :], mask=w_mask, other=0.0)
    w_z = tl.load(w_hh + (hidden + hcols[:, None]) * hidden + hcols[None, :], mask=w_mask, other=0.0)
    w_n = tl.load(w_hh + (2 * hidden + hcols[:, None]) * hidden + hcols[None, :], mask=w_mask, other=0.0)
    dh_carry = load_tile(grad_hn, rows, hcols, hidden, row_ok, h_ok)
    if HAS_LENGTHS:
        length = tl.load(lengths + rows, mask=row_ok, other=0)
    for s in range(steps):
        t = s if REVERSE else steps - 1 - s
        at = t * batch + rows
        dh = dh_carry + load_tile(grad_y, at, hcols, hidden, row_ok, h_ok)
        t_prev = t + 1 if REVERSE else t - 1
        if (t_prev >= 0) & (t_prev < steps):
            h_prev = load_tile(y, t_prev * batch + rows, hcols, hidden, row_ok, h_ok)
        else:
            h_prev = load_tile(h0, rows, hcols, hidden, row_ok, h_ok)
        active = row_ok[:, None]
        if HAS_LENGTHS:
            active = (t < length)[:, None]
            dh = tl.where(active, dh, dh_carry)
            # Reversed, a shorter sequence starts from h0 at its own last step.
            h_prev = tl.where((t_prev < length)[:, None], h_prev,
                              load_tile(h0, rows, hcols, hidden, row_ok, h_ok))
        d_r, d_z, d_nh, z = _gru_tile_grads(dh, h_prev, active, gates, hidden_n, dgates_in,
                                            dgates_hid, at, hcols, g_size, hidden, row_ok, h_ok)
        rec = dh * z + matmul(d_r, w_r, IEEE) + matmul(d_z, w_z, IEEE) + matmul(d_nh, w_n, IEEE)
        rec = tl.where(h_ok[None, :], rec, 0.0)  # padding units: as in the forward
        if HAS_LENGTHS:
            dh_carry = tl.where(active, rec, dh)
        else:
            dh_carry = rec
    store_tile(dh0, dh_carry, rows, hcols, hidden, row_ok, h_ok)


@triton.jit(do_not_specialize=["t", "t_prev"])
def gru_bwd_step_kernel(
    grad_y_t, grad_hn, w_hh, lengths, h_prev_t, gates_t, hidden_n_t, gates_prev,
    dgates_in_t, dgates_hid_t, dgates_hid_prev, dh_cur, dh_next,
    t, t_prev, first, batch, hidden,
    HAS_LENGTHS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    hcols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok, h_ok = rows < batch, hcols < hidden
    g_size = 3 * hidden
    if first != 0:
        carry = load_tile(grad_hn, rows, hcols, hidden, row_ok, h_ok)
    else:
        dh_before = load_tile(dh_cur, rows, hcols, hidden, row_ok, h_ok)
        carry = dh_before * load_tile(gates_prev + hidden, rows, hcols, g_size, row_ok, h_ok)
        for k0 in range(0, g_size, BLOCK_K):
            kcols = k0 + tl.arange(0, BLOCK_K)
            k_ok = kcols < g_size
            d_k = load_tile(dgates_hid_prev, rows, kcols, g_size, row_ok, k_ok)
            carry += matmul(d_k, tl.load(w_hh + kcols[:, None] * hidden + hcols[None, :],
                                         mask=k_ok[:, None] & h_ok[None, :], other=0.0), IEEE)
        carry = carried_back(carry, dh_before, t_prev, lengths, rows, row_ok, HAS_LENGTHS)
    gru_bwd_cell(carry, t, rows, hcols, row_ok, h_ok, hidden, lengths, grad_y_t, h_prev_t,
                 gates_t, hidden_n_t, dgates_in_t, dgates_hid_t, dh_next, HAS_LENGTHS)


@triton.jit(do_not_specialize=["s_begin", "s_end", "steps"])
def gru_bwd_cooperative_kernel(
    grad_y, grad_hn, w_hh, lengths, h_prev, gates, hidden_n, dgates_in, dgates_hid, dh_pair,
    dh0, counter,
    s_begin, s_end, steps, batch, hidden, group_rows,
    REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr, IEEE: tl.constexpr, SYNC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    hcols, ks, h_ok, k_ok, b_first, b_last = cooperative_tiles(hidden, batch, group_rows, BLOCK_H,
                                                               BLOCK_K, SPLIT_K)
    g_size = 3 * hidden
    w_r = weight_slice(w_hh, 0, hcols, ks, hidden, h_ok, k_ok, True)
    w_z = weight_slice(w_hh, 1, hcols, ks, hidden, h_ok, k_ok, True)
    w_n = weight_slice(w_hh, 2, hcols, ks, hidden, h_ok, k_ok, True)
    for s in range(s_begin, s_end):
        t, t_prev = backward_times(s, steps, REVERSE)
        dh_cur, dh_next = pair_slots(dh_pair, s, batch, hidden)
        prev = dgates_hid + t_prev * batch * g_size
        for b0 in range(b_first, b_last, BLOCK_B):
            rows, row_ok = batch_tile(b0, batch, BLOCK_B)
            if s == 0:
                carry = load_tile(grad_hn, rows, hcols, hidden, row_ok, h_ok)
            else:
                dh_before = load_tile(dh_cur, rows, hcols, hidden, row_ok, h_ok)
                z_prev = load_tile(gates + t_prev * batch * g_size + hidden, rows, hcols, g_size,
                                   row_ok, h_ok)
                carry = (dh_before * z_prev
                         + split_product(prev, rows, ks, g_size, row_ok, k_ok, w_r, IEEE)
                         + split_product(prev + hidden, rows, ks, g_size, row_ok, k_ok, w_z, IEEE)
                         + split_product(prev + 2 * hidden, rows, ks, g_size, row_ok, k_ok, w_n, IEEE))
                carry = carried_back(carry, dh_before, t_prev, lengths, rows, row_ok, HAS_LENGTHS)
            if s < steps:
                at_h, at_g = t * batch * hidden, t * batch * g_size
                gru_bwd_cell(carry, t, rows, hcols, row_ok, h_ok, hidden, lengths, grad_y + at_h,
                             h_prev + at_h, gates + at_g, hidden_n + at_h, dgates_in + at_g,
                             dgates_hid + at_g, dh_next, HAS_LENGTHS)
            else:
                store_tile(dh0, carry, rows, hcols, hidden, row_ok, h_ok)
        end_of_step(counter, s, s_begin, s_end, SYNC)


@triton.jit
def gru_bwd_cell(carry, t, rows, hcols, row_ok, h_ok, hidden, lengths, grad_y_t, h_prev_t,
                 gates_t, hidden_n_t, dgates_in_t, dgates_hid_t, dh_next, HAS_LENGTHS: tl.constexpr):
    """One tile of step ``t`` from ``carry``, the gradient of h flowing back from the later
    step: adds the output's gradient, writes the gradient of h to ``dh_next`` and the gate
    gradients to ``dgates_in_t`` / ``dgates_hid_t``."""
    active = row_ok[:, None]
    dh = carry + load_tile(grad_y_t, rows, hcols, hidden, row_ok, h_ok)
    if HAS_LENGTHS:
        active = (t < tl.load(lengths + rows, mask=row_ok, other=0))[:, None]
        dh = tl.where(active, dh, carry)
    store_tile(dh_next, dh, rows, hcols, hidden, row_ok, h_ok)
    h_prev = load_tile(h_prev_t, rows, hcols, hidden, row_ok, h_ok)
    _gru_tile_grads(dh, h_prev, active, gates_t, hidden_n_t, dgates_in_t, dgates_hid_t, rows,
                    hcols, 3 * hidden, hidden, row_ok, h_ok)
