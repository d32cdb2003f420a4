"""GRU forward kernels (Triton), gates r, z, n as in PyTorch::

    r, z = sigmoid(xproj_{r,z} + h W_{hr,hz}^T)         (b_hr, b_hz folded into xproj)
    n = tanh(xproj_n + r * (h W_hn^T + b_hn));  h' = n + z * (h - n)

``gru_fwd_persistent_kernel``: one launch, program ``p`` owns a batch tile and every hidden
unit, ``W_hh`` in registers, time loop inside. ``gru_fwd_step_kernel``: one launch per step,
program ``(p, q)`` owns a batch tile and hidden units ``q``.

=============  ===========  =====  ==========================================================
argument       shape        dtype  role
=============  ===========  =====  ==========================================================
xproj          (T, B, 3H)   x      ``x @ W_ih^T + b_ih + (b_hr, b_hz, 0)``; read only
w_hh           (3H, H)      x      recurrent weights; read only
b_hn           (H,)         x      hidden bias of n (HAS_BIAS); read only
h0             (B, H)       x      initial state; read only
lengths        (B,)         int64  per-sequence lengths (HAS_LENGTHS); read only
y              (T, B, H)    x      output: h of every step, zero past a sequence's end
gates          (T, B, 3H)   x      output, kept for backward: r, z, n
hidden_n       (T, B, H)    x      output, kept for backward: ``h W_hn^T + b_hn``
h_n            (B, H)       x      output: state after each sequence's last step
=============  ===========  =====  ==========================================================

The step kernel reads the previous state from ``h_cur`` and writes ``h_next`` (``(B, H)``
float32 ping-pong scratch). ``gru_fwd_cooperative_kernel``: one launch for processing steps
``[s_begin, s_end)``, program ``q`` owning hidden units ``q`` for every batch row with its
rows of ``W_hh`` in registers (see ``lstm_fwd.py``); the whole state for the product comes
from ``h_pair`` ``(2, B, H)`` (step ``s`` reads ``[s % 2]``, in the product's dtype), its own
units' float32 state from ``h_state`` ``(B, H)``, updated in place.
"""

import triton
import triton.language as tl

from .cell_math import (batch_tile, cooperative_tiles, end_of_step, gate_preactivation, load_split,
                        load_tile, load_transposed, matmul, pair_slots, split_matmul, store_gates3,
                        store_tile, tanh, weight_slice)


@triton.jit(do_not_specialize=["steps"])
def gru_fwd_persistent_kernel(
    xproj, w_hh, b_hn, h0, lengths, y, gates, hidden_n, h_n,
    steps, batch, hidden,
    REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    hcols = tl.arange(0, BLOCK_H)
    row_ok, h_ok = rows < batch, hcols < hidden
    g_size = 3 * hidden
    w_r = load_transposed(w_hh, hcols, hcols, hidden, h_ok, h_ok)
    w_z = load_transposed(w_hh + hidden * hidden, hcols, hcols, hidden, h_ok, h_ok)
    w_n = load_transposed(w_hh + 2 * hidden * hidden, hcols, hcols, hidden, h_ok, h_ok)
    if HAS_BIAS:
        bias_n = tl.load(b_hn + hcols, mask=h_ok, other=0.0).to(tl.float32)[None, :]
    else:
        bias_n = tl.zeros((1, BLOCK_H), dtype=tl.float32)
    h = load_tile(h0, rows, hcols, hidden, row_ok, h_ok)
    if HAS_LENGTHS:
        length = tl.load(lengths + rows, mask=row_ok, other=0)
    for s in range(steps):
        t = steps - 1 - s if REVERSE else s
        at = t * batch + rows
        r = tl.sigmoid(load_tile(xproj, at, hcols, g_size, row_ok, h_ok) + matmul(h, w_r, IEEE))
        z = tl.sigmoid(load_tile(xproj + hidden, at, hcols, g_size, row_ok, h_ok) + matmul(h, w_z, IEEE))
        hn = matmul(h, w_n, IEEE) + bias_n
        n = tanh(load_tile(xproj + 2 * hidden, at, hcols, g_size, row_ok, h_ok) + r * hn)
        # Padding units stay 0: an infinite h times their zero weights is NaN, which the next
        # step's product would carry to every unit.
        h_new = tl.where(h_ok[None, :], n + z * (h - n), 0.0)
        if HAS_LENGTHS:
            active = (t < length)[:, None]
            out = tl.where(active, h_new, 0.0)
            h = tl.where(active, h_new, h)
        else:
            out = h_new
            h = h_new
        store_gates3(gates, r, z, n, at, hcols, g_size, hidden, row_ok, h_ok)
        store_tile(hidden_n, hn, at, hcols, hidden, row_ok, h_ok)
        store_tile(y, out, at, hcols, hidden, row_ok, h_ok)
    store_tile(h_n, h, rows, hcols, hidden, row_ok, h_ok)


@triton.jit(do_not_specialize=["t"])
def gru_fwd_step_kernel(
    xproj, w_hh, b_hn, lengths, y, gates, hidden_n, h_cur, h_next,
    t, batch, hidden,
    HAS_LENGTHS: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    hcols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok, h_ok = rows < batch, hcols < hidden
    g_size = 3 * hidden
    at = t * batch + rows
    acc_r = load_tile(xproj, at, hcols, g_size, row_ok, h_ok)
    acc_z = load_tile(xproj + hidden, at, hcols, g_size, row_ok, h_ok)
    hn = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        kcols = k0 + tl.arange(0, BLOCK_K)
        k_ok = kcols < hidden
        h_k = load_tile(h_cur, rows, kcols, hidden, row_ok, k_ok)
        acc_r += matmul(h_k, load_transposed(w_hh, hcols, kcols, hidden, h_ok, k_ok), IEEE)
        acc_z += matmul(h_k, load_transposed(w_hh + hidden * hidden, hcols, kcols, hidden, h_ok, k_ok), IEEE)
        hn += matmul(h_k, load_transposed(w_hh + 2 * hidden * hidden, hcols, kcols, hidden, h_ok, k_ok), IEEE)
    h = load_tile(h_cur, rows, hcols, hidden, row_ok, h_ok)
    h_new = gru_fwd_cell(xproj, b_hn, acc_r, acc_z, hn, h, t, rows, hcols, at, row_ok, h_ok,
                         hidden, lengths, y, gates, hidden_n, HAS_LENGTHS, HAS_BIAS)
    store_tile(h_next, h_new, rows, hcols, hidden, row_ok, h_ok)


@triton.jit(do_not_specialize=["s_begin", "s_end", "steps"])
def gru_fwd_cooperative_kernel(
    xproj, w_hh, b_hn, lengths, y, gates, hidden_n, h_pair, h_state, counter,
    s_begin, s_end, steps, batch, hidden, group_rows,
    REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr, SYNC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    hcols, ks, h_ok, k_ok, b_first, b_last = cooperative_tiles(hidden, batch, group_rows, BLOCK_H,
                                                               BLOCK_K, SPLIT_K)
    g_size = 3 * hidden
    w_r = weight_slice(w_hh, 0, hcols, ks, hidden, h_ok, k_ok, False)
    w_z = weight_slice(w_hh, 1, hcols, ks, hidden, h_ok, k_ok, False)
    w_n = weight_slice(w_hh, 2, hcols, ks, hidden, h_ok, k_ok, False)
    for s in range(s_begin, s_end):
        t = steps - 1 - s if REVERSE else s
        h_cur, h_next = pair_slots(h_pair, s, batch, hidden)
        for b0 in range(b_first, b_last, BLOCK_B):
            rows, row_ok = batch_tile(b0, batch, BLOCK_B)
            at = t * batch + rows
            h_all = load_split(h_cur, rows, ks, hidden, row_ok, k_ok, True)
            acc_r = gate_preactivation(xproj, 0, h_all, w_r, at, hcols, g_size, hidden, row_ok,
                                       h_ok, IEEE)
            acc_z = gate_preactivation(xproj, 1, h_all, w_z, at, hcols, g_size, hidden, row_ok,
                                       h_ok, IEEE)
            hn = split_matmul(h_all, w_n, IEEE)
            h = load_tile(h_state, rows, hcols, hidden, row_ok, h_ok)
            h_new = gru_fwd_cell(xproj, b_hn, acc_r, acc_z, hn, h, t, rows, hcols, at, row_ok,
                                 h_ok, hidden, lengths, y, gates, hidden_n, HAS_LENGTHS, HAS_BIAS)
            store_tile(h_state, h_new, rows, hcols, hidden, row_ok, h_ok)
            store_tile(h_next, h_new, rows, hcols, hidden, row_ok, h_ok)
        end_of_step(counter, s, s_begin, s_end, SYNC)


@triton.jit
def gru_fwd_cell(xproj, b_hn, acc_r, acc_z, hn, h, t, rows, hcols, at, row_ok, h_ok, hidden,
                 lengths, y, gates, hidden_n, HAS_LENGTHS: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The cell on one tile of step ``t`` from the pre-activations of r and z, ``h W_hn^T``
    (``hn``, before its bias) and the previous state ``h`` (float32): writes ``gates``,
    ``hidden_n`` and ``y`` at rows ``at`` and returns the new state (held past the end)."""
    g_size = 3 * hidden
    if HAS_BIAS:
        hn += tl.load(b_hn + hcols, mask=h_ok, other=0.0).to(tl.float32)[None, :]
    r = tl.sigmoid(acc_r)
    z = tl.sigmoid(acc_z)
    n = tanh(load_tile(xproj + 2 * hidden, at, hcols, g_size, row_ok, h_ok) + r * hn)
    h_new = n + z * (h - n)
    out = h_new
    if HAS_LENGTHS:
        active = (t < tl.load(lengths + rows, mask=row_ok, other=0))[:, None]
        h_new = tl.where(active, h_new, h)
        out = tl.where(active, out, 0.0)
    store_gates3(gates, r, z, n, at, hcols, g_size, hidden, row_ok, h_ok)
    store_tile(hidden_n, hn, at, hcols, hidden, row_ok, h_ok)
    store_tile(y, out, at, hcols, hidden, row_ok, h_ok)
    return h_new
