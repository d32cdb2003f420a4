"""LSTM forward kernels (Triton).

``lstm_fwd_persistent_kernel``: one launch for the whole sequence. Program ``p`` owns batch
rows ``[p * BLOCK_B, (p + 1) * BLOCK_B)`` and every hidden unit, keeps ``W_hh`` (and
``W_hr``) in registers for all steps and loops over time inside the kernel, so no
synchronisation between programs is needed. Used when the weights fit one program.

``lstm_fwd_cooperative_kernel``: one launch for steps ``[s_begin, s_end)`` of the processing
order; program ``q`` owns hidden units ``[q * BLOCK_H, ...)`` for every batch row, keeps its
rows of ``W_hh`` in registers, and per step reads the whole previous state from ``h_pair``,
writes its units of the next, and (``SYNC``) waits at a grid barrier on ``counter`` (int32,
zero at launch) until every program has. Used when the weights do not fit one program but
their slices fit the co-resident programs (no projection). Without ``SYNC`` the launch
boundary is the barrier: one launch per step (how the interpreter, which runs programs one
after another, runs it).

``lstm_fwd_step_kernel``: one launch per time step; program ``(p, q)`` owns batch rows
``p`` and hidden units ``[q * BLOCK_H, ...)``, reading the whole previous state. Used for
the remaining sizes (no projection).

Tensors (contiguous, time-major; T steps, B batch, H hidden, P = proj or H, G = 4H):

=============  ===========  =====  ==========================================================
argument       shape        dtype  role
=============  ===========  =====  ==========================================================
xproj          (T, B, G)    x      ``x @ W_ih^T + b_ih + b_hh``; read only
w_hh           (G, P)       x      recurrent weights, gates i, f, g, o; read only
w_hr           (P, H)       x      projection (persistent kernel, HAS_PROJ); read only
h0, c0         (B, P), (B,H) x     initial states; read only
lengths        (B,)         int64  per-sequence lengths (HAS_LENGTHS); read only
y              (T, B, P)    x      output: h of every step, zero past a sequence's end
gates          (T, B, G)    x      output, kept for backward: activated i, f, g, o
cells          (T, B, H)    x      output, kept for backward: c of every step, held past the end
h_n, c_n       (B, P), (B,H) x     output: states after each sequence's last step
=============  ===========  =====  ==========================================================

The step kernel also takes ``h_cur`` / ``h_next`` ``(B, P)`` float32 ping-pong state
buffers (scratch; the cooperative kernel: both in ``h_pair`` ``(2, B, P)``, step ``s`` reading
``h_pair[s % 2]``) and ``c_state`` ``(B, H)`` float32, updated in place (each program
touches only its own tile). Accumulation and cell state are float32 throughout.
"""

import triton
import triton.language as tl

from .cell_math import (batch_tile, cooperative_tiles, end_of_step, gate_preactivation, load_split,
                        load_tile, load_transposed, matmul, pair_slots, store_gates4, store_tile,
                        tanh, weight_slice)


@triton.jit(do_not_specialize=["steps"])
def lstm_fwd_persistent_kernel(
    xproj, w_hh, w_hr, h0, c0, lengths, y, gates, cells, h_n, c_n,
    steps, batch, hidden, state,
    REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_PROJ: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    hcols = tl.arange(0, BLOCK_H)
    pcols = tl.arange(0, BLOCK_P)
    row_ok, h_ok, p_ok = rows < batch, hcols < hidden, pcols < state
    g_size = 4 * hidden
    # W_hh^T per gate, (BLOCK_P, BLOCK_H): element [p, j] = W_hh[k * H + j, p].
    w_i = load_transposed(w_hh, hcols, pcols, state, h_ok, p_ok)
    w_f = load_transposed(w_hh + hidden * state, hcols, pcols, state, h_ok, p_ok)
    w_g = load_transposed(w_hh + 2 * hidden * state, hcols, pcols, state, h_ok, p_ok)
    w_o = load_transposed(w_hh + 3 * hidden * state, hcols, pcols, state, h_ok, p_ok)
    if HAS_PROJ:
        w_r = load_transposed(w_hr, pcols, hcols, hidden, p_ok, h_ok)  # (BLOCK_H, BLOCK_P)
    h = load_tile(h0, rows, pcols, state, row_ok, p_ok)
    c = load_tile(c0, rows, hcols, hidden, row_ok, h_ok)
    if HAS_LENGTHS:
        length = tl.load(lengths + rows, mask=row_ok, other=0)
    for s in range(steps):
        t = steps - 1 - s if REVERSE else s
        at = t * batch + rows
        x_i = load_tile(xproj, at, hcols, g_size, row_ok, h_ok)
        x_f = load_tile(xproj + hidden, at, hcols, g_size, row_ok, h_ok)
        x_g = load_tile(xproj + 2 * hidden, at, hcols, g_size, row_ok, h_ok)
        x_o = load_tile(xproj + 3 * hidden, at, hcols, g_size, row_ok, h_ok)
        i = tl.sigmoid(x_i + matmul(h, w_i, IEEE))
        f = tl.sigmoid(x_f + matmul(h, w_f, IEEE))
        g = tanh(x_g + matmul(h, w_g, IEEE))
        o = tl.sigmoid(x_o + matmul(h, w_o, IEEE))
        c_new = f * c + i * g
        # Padding units stay 0: an infinite h times their zero weights is NaN, which the next
        # step's product would carry to every unit.
        r = tl.where(h_ok[None, :], o * tanh(c_new), 0.0)
        if HAS_PROJ:
            h_new = tl.where(p_ok[None, :], matmul(r, w_r, IEEE), 0.0)
        else:
            h_new = r
        if HAS_LENGTHS:
            active = (t < length)[:, None]
            c = tl.where(active, c_new, c)
            h = tl.where(active, h_new, h)
            out = tl.where(active, h_new, 0.0)
        else:
            c = c_new
            h = h_new
            out = h_new
        store_gates4(gates, i, f, g, o, at, hcols, g_size, hidden, row_ok, h_ok)
        store_tile(cells, c, at, hcols, hidden, row_ok, h_ok)
        store_tile(y, out, at, pcols, state, row_ok, p_ok)
    store_tile(h_n, h, rows, pcols, state, row_ok, p_ok)
    store_tile(c_n, c, rows, hcols, hidden, row_ok, h_ok)


@triton.jit(do_not_specialize=["t"])
def lstm_fwd_step_kernel(
    xproj, w_hh, lengths, y, gates, cells, h_cur, h_next, c_state,
    t, batch, hidden,
    HAS_LENGTHS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    hcols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok, h_ok = rows < batch, hcols < hidden
    g_size = 4 * hidden
    at = t * batch + rows
    acc_i = load_tile(xproj, at, hcols, g_size, row_ok, h_ok)
    acc_f = load_tile(xproj + hidden, at, hcols, g_size, row_ok, h_ok)
    acc_g = load_tile(xproj + 2 * hidden, at, hcols, g_size, row_ok, h_ok)
    acc_o = load_tile(xproj + 3 * hidden, at, hcols, g_size, row_ok, h_ok)
    for k0 in range(0, hidden, BLOCK_K):
        kcols = k0 + tl.arange(0, BLOCK_K)
        k_ok = kcols < hidden
        h_k = load_tile(h_cur, rows, kcols, hidden, row_ok, k_ok)
        acc_i += matmul(h_k, load_transposed(w_hh, hcols, kcols, hidden, h_ok, k_ok), IEEE)
        acc_f += matmul(h_k, load_transposed(w_hh + hidden * hidden, hcols, kcols, hidden, h_ok, k_ok), IEEE)
        acc_g += matmul(h_k, load_transposed(w_hh + 2 * hidden * hidden, hcols, kcols, hidden, h_ok, k_ok), IEEE)
        acc_o += matmul(h_k, load_transposed(w_hh + 3 * hidden * hidden, hcols, kcols, hidden, h_ok, k_ok), IEEE)
    lstm_fwd_cell(acc_i, acc_f, acc_g, acc_o, t, rows, hcols, at, row_ok, h_ok, hidden, lengths,
                  y, gates, cells, c_state, h_cur, h_next, HAS_LENGTHS)


@triton.jit(do_not_specialize=["s_begin", "s_end", "steps"])
def lstm_fwd_cooperative_kernel(
    xproj, w_hh, lengths, y, gates, cells, h_pair, c_state, counter,
    s_begin, s_end, steps, batch, hidden, group_rows,
    REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr, IEEE: tl.constexpr, SYNC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    hcols, ks, h_ok, k_ok, b_first, b_last = cooperative_tiles(hidden, batch, group_rows, BLOCK_H,
                                                               BLOCK_K, SPLIT_K)
    g_size = 4 * hidden
    w_i = weight_slice(w_hh, 0, hcols, ks, hidden, h_ok, k_ok, False)
    w_f = weight_slice(w_hh, 1, hcols, ks, hidden, h_ok, k_ok, False)
    w_g = weight_slice(w_hh, 2, hcols, ks, hidden, h_ok, k_ok, False)
    w_o = weight_slice(w_hh, 3, hcols, ks, hidden, h_ok, k_ok, False)
    for s in range(s_begin, s_end):
        t = steps - 1 - s if REVERSE else s
        h_cur, h_next = pair_slots(h_pair, s, batch, hidden)
        for b0 in range(b_first, b_last, BLOCK_B):
            rows, row_ok = batch_tile(b0, batch, BLOCK_B)
            at = t * batch + rows
            h = load_split(h_cur, rows, ks, hidden, row_ok, k_ok, True)
            acc_i = gate_preactivation(xproj, 0, h, w_i, at, hcols, g_size, hidden, row_ok, h_ok, IEEE)
            acc_f = gate_preactivation(xproj, 1, h, w_f, at, hcols, g_size, hidden, row_ok, h_ok, IEEE)
            acc_g = gate_preactivation(xproj, 2, h, w_g, at, hcols, g_size, hidden, row_ok, h_ok, IEEE)
            acc_o = gate_preactivation(xproj, 3, h, w_o, at, hcols, g_size, hidden, row_ok, h_ok, IEEE)
            lstm_fwd_cell(acc_i, acc_f, acc_g, acc_o, t, rows, hcols, at, row_ok, h_ok, hidden,
                          lengths, y, gates, cells, c_state, h_cur, h_next, HAS_LENGTHS)
        end_of_step(counter, s, s_begin, s_end, SYNC)


@triton.jit
def lstm_fwd_cell(acc_i, acc_f, acc_g, acc_o, t, rows, hcols, at, row_ok, h_ok, hidden, lengths,
                  y, gates, cells, c_state, h_cur, h_next, HAS_LENGTHS: tl.constexpr):
    """The cell on one tile of step ``t`` from its gate pre-activations: reads the cell state
    from ``c_state`` and (past a sequence's end) the state to hold from ``h_cur``; writes
    ``gates``, ``cells``, ``y`` at rows ``at``, the new cell state in place and h to
    ``h_next``."""
    i = tl.sigmoid(acc_i)
    f = tl.sigmoid(acc_f)
    g = tanh(acc_g)
    o = tl.sigmoid(acc_o)
    c = load_tile(c_state, rows, hcols, hidden, row_ok, h_ok)
    c_new = f * c + i * g
    h_new = o * tanh(c_new)
    out = h_new
    if HAS_LENGTHS:
        active = (t < tl.load(lengths + rows, mask=row_ok, other=0))[:, None]
        c_new = tl.where(active, c_new, c)
        h_new = tl.where(active, h_new, load_tile(h_cur, rows, hcols, hidden, row_ok, h_ok))
        out = tl.where(active, out, 0.0)
    store_gates4(gates, i, f, g, o, at, hcols, 4 * hidden, hidden, row_ok, h_ok)
    store_tile(cells, c_new, at, hcols, hidden, row_ok, h_ok)
    store_tile(c_state, c_new, rows, hcols, hidden, row_ok, h_ok)
    store_tile(h_next, h_new, rows, hcols, hidden, row_ok, h_ok)
    store_tile(y, out, at, hcols, hidden, row_ok, h_ok)
