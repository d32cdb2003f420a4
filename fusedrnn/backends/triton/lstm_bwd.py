"""LSTM backward kernels (Triton): backpropagation through time, in reverse processing order.

Both kernels produce ``dgates`` ``(T, B, 4H)``, the gradients of the gate pre-activations
(i, f, g, o); the weight and input gradients are then one product over all steps each
(``common.input_and_weight_grads`` of the reference backend).

``lstm_bwd_persistent_kernel``: one launch; program ``p`` owns a batch tile and every
hidden unit, keeps ``W_hh`` (and ``W_hr``) in registers and loops over time.

=============  ===========  =====  ==========================================================
argument       shape        dtype  role
=============  ===========  =====  ==========================================================
grad_y         (T, B, P)    x      gradient of the output; read only
grad_hn, grad_cn (B,P),(B,H) x     gradients of the final states; read only
w_hh, w_hr     (G,P),(P,H)  x      weights; read only
c0             (B, H)       x      initial cell state; read only
lengths        (B,)         int64  per-sequence lengths (HAS_LENGTHS); read only
gates, cells   (T,B,G),(T,B,H) x   saved by the forward; read only
dgates         (T, B, G)    x      output: pre-activation gradients (zero past the end)
dh_steps       (T, B, P)    x      output (HAS_PROJ): gradient of h at every step, for W_hr
dh0, dc0       (B,P),(B,H)  x      output: gradients of the initial states
=============  ===========  =====  ==========================================================

``lstm_bwd_step_kernel``: one launch per step; program ``(p, q)`` owns a batch tile and
hidden units ``q``; it first forms the gradient of its h tile from the previous launch's
``dgates_prev @ W_hh`` (a reduction over all 4H gates), then the gate gradients of its
tile. Scratch: ``dh_cur``/``dh_next`` ``(B, H)`` float32 ping-pong, ``dc_state`` ``(B, H)``
float32 in place. ``grad_y_t``, ``gates_t``, ``cells_t``, ``c_prev``, ``dgates_t`` and
``dgates_prev`` are the ``(B, .)`` slices of the step.
"""

import triton
import triton.language as tl

from .cell_math import (backward_times, batch_tile, carried_back, cooperative_tiles, end_of_step,
                        load_tile, matmul, pair_slots, split_product, store_gates4, store_tile,
                        tanh, weight_slice)


@triton.jit(do_not_specialize=["steps"])
def lstm_bwd_persistent_kernel(
    grad_y, grad_hn, grad_cn, w_hh, w_hr, c0, lengths, gates, cells, dgates, dh_steps, dh0, dc0,
    steps, batch, hidden, state,
    REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_PROJ: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    hcols = tl.arange(0, BLOCK_H)
    pcols = tl.arange(0, BLOCK_P)
    row_ok, h_ok, p_ok = rows < batch, hcols < hidden, pcols < state
    g_size = 4 * hidden
    # W_hh per gate as (BLOCK_H, BLOCK_P): [j, p] = W_hh[k * H + j, p].
    w_i = tl.load(w_hh + hcols[:, None] * state + pcols[None, :], mask=h_ok[:, None] & p_ok[None, :], other=0.0)
    w_f = tl.load(w_hh + (hidden + hcols[:, None]) * state + pcols[None, :], mask=h_ok[:, None] & p_ok[None, :], other=0.0)
    w_g = tl.load(w_hh + (2 * hidden + hcols[:, None]) * state + pcols[None, :], mask=h_ok[:, None] & p_ok[None, :], other=0.0)
    w_o = tl.load(w_hh + (3 * hidden + hcols[:, None]) * state + pcols[None, :], mask=h_ok[:, None] & p_ok[None, :], other=0.0)
    if HAS_PROJ:
        w_r = tl.load(w_hr + pcols[:, None] * hidden + hcols[None, :], mask=p_ok[:, None] & h_ok[None, :], other=0.0)
    dh_carry = load_tile(grad_hn, rows, pcols, state, row_ok, p_ok)
    dc = load_tile(grad_cn, rows, hcols, hidden, row_ok, h_ok)
    if HAS_LENGTHS:
        length = tl.load(lengths + rows, mask=row_ok, other=0)
    for s in range(steps):
        t = s if REVERSE else steps - 1 - s
        at = t * batch + rows
        dh = dh_carry + load_tile(grad_y, at, pcols, state, row_ok, p_ok)
        if HAS_LENGTHS:
            active = (t < length)[:, None]
            dh = tl.where(active, dh, dh_carry)
        if HAS_PROJ:
            dh_kept = dh
            if HAS_LENGTHS:
                dh_kept = tl.where(active, dh, 0.0)
            store_tile(dh_steps, dh_kept, at, pcols, state, row_ok, p_ok)
            dr = matmul(dh, w_r, IEEE)
        else:
            dr = dh
        i = load_tile(gates, at, hcols, g_size, row_ok, h_ok)
        f = load_tile(gates + hidden, at, hcols, g_size, row_ok, h_ok)
        g = load_tile(gates + 2 * hidden, at, hcols, g_size, row_ok, h_ok)
        o = load_tile(gates + 3 * hidden, at, hcols, g_size, row_ok, h_ok)
        c = load_tile(cells, at, hcols, hidden, row_ok, h_ok)
        t_prev = t + 1 if REVERSE else t - 1
        if (t_prev >= 0) & (t_prev < steps):
            c_prev = load_tile(cells, t_prev * batch + rows, hcols, hidden, row_ok, h_ok)
        else:
            c_prev = load_tile(c0, rows, hcols, hidden, row_ok, h_ok)
        tc = tanh(c)
        dc_step = dc + dr * o * (1.0 - tc * tc)
        d_o = dr * tc * o * (1.0 - o)
        d_i = dc_step * g * i * (1.0 - i)
        d_f = dc_step * c_prev * f * (1.0 - f)
        d_g = dc_step * i * (1.0 - g * g)
        if HAS_LENGTHS:
            d_i = tl.where(active, d_i, 0.0)
            d_f = tl.where(active, d_f, 0.0)
            d_g = tl.where(active, d_g, 0.0)
            d_o = tl.where(active, d_o, 0.0)
            dc = tl.where(active, dc_step * f, dc)
        else:
            dc = dc_step * f
        store_gates4(dgates, d_i, d_f, d_g, d_o, at, hcols, g_size, hidden, row_ok, h_ok)
        rec = matmul(d_i, w_i, IEEE) + matmul(d_f, w_f, IEEE) + matmul(d_g, w_g, IEEE) + matmul(d_o, w_o, IEEE)
        rec = tl.where(p_ok[None, :], rec, 0.0)  # padding units: as in the forward
        if HAS_LENGTHS:
            dh_carry = tl.where(active, rec, dh)
        else:
            dh_carry = rec
    store_tile(dh0, dh_carry, rows, pcols, state, row_ok, p_ok)
    store_tile(dc0, dc, rows, hcols, hidden, row_ok, h_ok)


@triton.jit(do_not_specialize=["t", "t_prev"])
def lstm_bwd_step_kernel(
    grad_y_t, grad_hn, w_hh, lengths, gates_t, cells_t, c_prev, dgates_t, dgates_prev,
    dh_cur, dh_next, dc_state,
    t, t_prev, first, batch, hidden,
    HAS_LENGTHS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    hcols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok, h_ok = rows < batch, hcols < hidden
    g_size = 4 * hidden
    if first != 0:
        carry = load_tile(grad_hn, rows, hcols, hidden, row_ok, h_ok)
    else:
        carry = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        for k0 in range(0, g_size, BLOCK_K):
            kcols = k0 + tl.arange(0, BLOCK_K)
            k_ok = kcols < g_size
            d_k = load_tile(dgates_prev, rows, kcols, g_size, row_ok, k_ok)
            carry += matmul(d_k, tl.load(w_hh + kcols[:, None] * hidden + hcols[None, :],
                                         mask=k_ok[:, None] & h_ok[None, :], other=0.0), IEEE)
        carry = carried_back(carry, load_tile(dh_cur, rows, hcols, hidden, row_ok, h_ok), t_prev,
                             lengths, rows, row_ok, HAS_LENGTHS)
    lstm_bwd_cell(carry, t, rows, hcols, row_ok, h_ok, hidden, lengths, grad_y_t, gates_t,
                  cells_t, c_prev, dgates_t, dh_next, dc_state, HAS_LENGTHS)


@triton.jit(do_not_specialize=["s_begin", "s_end", "steps"])
def lstm_bwd_cooperative_kernel(
    grad_y, grad_hn, w_hh, c0, lengths, gates, cells, dgates, dh_pair, dc_state, dh0, counter,
    s_begin, s_end, steps, batch, hidden, group_rows,
    REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr, IEEE: tl.constexpr, SYNC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    hcols, ks, h_ok, k_ok, b_first, b_last = cooperative_tiles(hidden, batch, group_rows, BLOCK_H,
                                                               BLOCK_K, SPLIT_K)
    g_size = 4 * hidden
    w_i = weight_slice(w_hh, 0, hcols, ks, hidden, h_ok, k_ok, True)
    w_f = weight_slice(w_hh, 1, hcols, ks, hidden, h_ok, k_ok, True)
    w_g = weight_slice(w_hh, 2, hcols, ks, hidden, h_ok, k_ok, True)
    w_o = weight_slice(w_hh, 3, hcols, ks, hidden, h_ok, k_ok, True)
    for s in range(s_begin, s_end):
        t, t_prev = backward_times(s, steps, REVERSE)
        dh_cur, dh_next = pair_slots(dh_pair, s, batch, hidden)
        prev = dgates + t_prev * batch * g_size
        for b0 in range(b_first, b_last, BLOCK_B):
            rows, row_ok = batch_tile(b0, batch, BLOCK_B)
            if s == 0:
                carry = load_tile(grad_hn, rows, hcols, hidden, row_ok, h_ok)
            else:
                carry = (split_product(prev, rows, ks, g_size, row_ok, k_ok, w_i, IEEE)
                         + split_product(prev + hidden, rows, ks, g_size, row_ok, k_ok, w_f, IEEE)
                         + split_product(prev + 2 * hidden, rows, ks, g_size, row_ok, k_ok, w_g, IEEE)
                         + split_product(prev + 3 * hidden, rows, ks, g_size, row_ok, k_ok, w_o, IEEE))
                carry = carried_back(carry, load_tile(dh_cur, rows, hcols, hidden, row_ok, h_ok),
                                     t_prev, lengths, rows, row_ok, HAS_LENGTHS)
            if s < steps:
                forward_prev = t + 1 if REVERSE else t - 1
                if (forward_prev >= 0) & (forward_prev < steps):
                    c_prev = cells + forward_prev * batch * hidden
                else:
                    c_prev = c0
                lstm_bwd_cell(carry, t, rows, hcols, row_ok, h_ok, hidden, lengths,
                              grad_y + t * batch * hidden, gates + t * batch * g_size,
                              cells + t * batch * hidden, c_prev, dgates + t * batch * g_size,
                              dh_next, dc_state, HAS_LENGTHS)
            else:
                store_tile(dh0, carry, rows, hcols, hidden, row_ok, h_ok)
        end_of_step(counter, s, s_begin, s_end, SYNC)


@triton.jit
def lstm_bwd_cell(carry, t, rows, hcols, row_ok, h_ok, hidden, lengths, grad_y_t, gates_t,
                  cells_t, c_prev, dgates_t, dh_next, dc_state, HAS_LENGTHS: tl.constexpr):
    """One tile of step ``t`` from ``carry``, the gradient of h flowing back from the later
    step: adds the output's gradient, writes the gradient of h to ``dh_next``, the gate
    gradients to ``dgates_t`` and the cell state's to ``dc_state`` (in place)."""
    g_size = 4 * hidden
    dh = carry + load_tile(grad_y_t, rows, hcols, hidden, row_ok, h_ok)
    if HAS_LENGTHS:
        active = (t < tl.load(lengths + rows, mask=row_ok, other=0))[:, None]
        dh = tl.where(active, dh, carry)
    store_tile(dh_next, dh, rows, hcols, hidden, row_ok, h_ok)
    i = load_tile(gates_t, rows, hcols, g_size, row_ok, h_ok)
    f = load_tile(gates_t + hidden, rows, hcols, g_size, row_ok, h_ok)
    g = load_tile(gates_t + 2 * hidden, rows, hcols, g_size, row_ok, h_ok)
    o = load_tile(gates_t + 3 * hidden, rows, hcols, g_size, row_ok, h_ok)
    c = load_tile(cells_t, rows, hcols, hidden, row_ok, h_ok)
    cp = load_tile(c_prev, rows, hcols, hidden, row_ok, h_ok)
    dc = load_tile(dc_state, rows, hcols, hidden, row_ok, h_ok)
    tc = tanh(c)
    dc_step = dc + dh * o * (1.0 - tc * tc)
    d_o = dh * tc * o * (1.0 - o)
    d_i = dc_step * g * i * (1.0 - i)
    d_f = dc_step * cp * f * (1.0 - f)
    d_g = dc_step * i * (1.0 - g * g)
    dc_next = dc_step * f
    if HAS_LENGTHS:
        d_i = tl.where(active, d_i, 0.0)
        d_f = tl.where(active, d_f, 0.0)
        d_g = tl.where(active, d_g, 0.0)
        d_o = tl.where(active, d_o, 0.0)
        dc_next = tl.where(active, dc_next, dc)
    store_gates4(dgates_t, d_i, d_f, d_g, d_o, rows, hcols, g_size, hidden, row_ok, h_ok)
    store_tile(dc_state, dc_next, rows, hcols, hidden, row_ok, h_ok)
