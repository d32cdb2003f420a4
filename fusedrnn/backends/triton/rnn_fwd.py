"""Elman RNN forward kernels (Triton): ``h' = act(xproj + h W_hh^T)``, act tanh or relu
(``RELU``), as PyTorch's ``nn.RNN``.

``rnn_fwd_persistent_kernel``: one launch, program ``p`` owns a batch tile and every hidden
unit, ``W_hh`` in registers, time loop inside. ``rnn_fwd_step_kernel``: one launch per step,
program ``(p, q)`` owns a batch tile and hidden units ``q``.

=============  ===========  =====  ==========================================================
argument       shape        dtype  role
=============  ===========  =====  ==========================================================
xproj          (T, B, H)    x      ``x @ W_ih^T + b_ih + b_hh``; read only
w_hh           (H, H)       x      recurrent weights; read only
h0             (B, H)       x      initial state; read only
lengths        (B,)         int64  per-sequence lengths (HAS_LENGTHS); read only
y              (T, B, H)    x      output: h of every step, zero past a sequence's end; the
                                   backward takes the activation's derivative from it
h_n            (B, H)       x      output: state after each sequence's last step
=============  ===========  =====  ==========================================================

The step kernel reads the previous state from ``h_cur`` and writes ``h_next`` (``(B, H)``
float32 ping-pong scratch). Accumulation is float32 throughout.
"""

import triton
import triton.language as tl

from .cell_math import (batch_tile, cooperative_tiles, end_of_step, load_tile, load_transposed,
                        matmul, pair_slots, split_product, store_tile, tanh, weight_slice)


@triton.jit
def activate(pre, RELU: tl.constexpr):
    if RELU:
        return tl.where(pre < 0.0, 0.0, pre)  # NaN passes, as in torch.relu
    return tanh(pre)


@triton.jit(do_not_specialize=["steps"])
def rnn_fwd_persistent_kernel(
    xproj, w_hh, h0, lengths, y, h_n,
    steps, batch, hidden,
    REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr, RELU: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    hcols = tl.arange(0, BLOCK_H)
    row_ok, h_ok = rows < batch, hcols < hidden
    w = load_transposed(w_hh, hcols, hcols, hidden, h_ok, h_ok)  # [k, j] = W_hh[j, k]
    h = load_tile(h0, rows, hcols, hidden, row_ok, h_ok)
    if HAS_LENGTHS:
        length = tl.load(lengths + rows, mask=row_ok, other=0)
    for s in range(steps):
        t = steps - 1 - s if REVERSE else s
        at = t * batch + rows
        h_new = activate(load_tile(xproj, at, hcols, hidden, row_ok, h_ok) + matmul(h, w, IEEE),
                         RELU)
        # Padding units stay 0: relu(inf * 0) = NaN there would reach every unit next step.
        h_new = tl.where(h_ok[None, :], h_new, 0.0)
        if HAS_LENGTHS:
            active = (t < length)[:, None]
            out = tl.where(active, h_new, 0.0)
            h = tl.where(active, h_new, h)
        else:
            out = h_new
            h = h_new
        store_tile(y, out, at, hcols, hidden, row_ok, h_ok)
    store_tile(h_n, h, rows, hcols, hidden, row_ok, h_ok)


@triton.jit(do_not_specialize=["t"])
def rnn_fwd_step_kernel(
    xproj, w_hh, lengths, y, h_cur, h_next,
    t, batch, hidden,
    HAS_LENGTHS: tl.constexpr, RELU: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    hcols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok, h_ok = rows < batch, hcols < hidden
    at = t * batch + rows
    acc = load_tile(xproj, at, hcols, hidden, row_ok, h_ok)
    for k0 in range(0, hidden, BLOCK_K):
        kcols = k0 + tl.arange(0, BLOCK_K)
        k_ok = kcols < hidden
        h_k = load_tile(h_cur, rows, kcols, hidden, row_ok, k_ok)
        acc += matmul(h_k, load_transposed(w_hh, hcols, kcols, hidden, h_ok, k_ok), IEEE)
    rnn_fwd_cell(acc, t, rows, hcols, at, row_ok, h_ok, hidden, lengths, y, h_cur, h_next,
                 HAS_LENGTHS, RELU)


@triton.jit(do_not_specialize=["s_begin", "s_end", "steps"])
def rnn_fwd_cooperative_kernel(
    xproj, w_hh, lengths, y, h_pair, counter,
    s_begin, s_end, steps, batch, hidden, group_rows,
    REVERSE: tl.constexpr, HAS_LENGTHS: tl.constexpr, RELU: tl.constexpr, IEEE: tl.constexpr,
    SYNC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    hcols, ks, h_ok, k_ok, b_first, b_last = cooperative_tiles(hidden, batch, group_rows, BLOCK_H,
                                                               BLOCK_K, SPLIT_K)
    w = weight_slice(w_hh, 0, hcols, ks, hidden, h_ok, k_ok, False)
    for s in range(s_begin, s_end):
        t = steps - 1 - s if REVERSE else s
        h_cur, h_next = pair_slots(h_pair, s, batch, hidden)
        for b0 in range(b_first, b_last, BLOCK_B):
            rows, row_ok = batch_tile(b0, batch, BLOCK_B)
            at = t * batch + rows
            acc = (load_tile(xproj, at, hcols, hidden, row_ok, h_ok)
                   + split_product(h_cur, rows, ks, hidden, row_ok, k_ok, w, IEEE))
            rnn_fwd_cell(acc, t, rows, hcols, at, row_ok, h_ok, hidden, lengths, y, h_cur, h_next,
                         HAS_LENGTHS, RELU)
        end_of_step(counter, s, s_begin, s_end, SYNC)


@triton.jit
def rnn_fwd_cell(acc, t, rows, hcols, at, row_ok, h_ok, hidden, lengths, y, h_cur, h_next,
                 HAS_LENGTHS: tl.constexpr, RELU: tl.constexpr):
    """The cell on one tile of step ``t`` from its pre-activation: writes ``y`` at rows ``at``
    and the new state (past a sequence's end: the one in ``h_cur``) to ``h_next``."""
    h_new = activate(acc, RELU)
    out = h_new
    if HAS_LENGTHS:
        active = (t < tl.load(lengths + rows, mask=row_ok, other=0))[:, None]
        h_new = tl.where(active, h_new, load_tile(h_cur, rows, hcols, hidden, row_ok, h_ok))
        out = tl.where(active, out, 0.0)
    store_tile(h_next, h_new, rows, hcols, hidden, row_ok, h_ok)
    store_tile(y, out, at, hcols, hidden, row_ok, h_ok)
