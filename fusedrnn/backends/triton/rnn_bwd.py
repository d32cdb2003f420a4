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
``dpre_prev`` are the ``(B, H)`` slices of the step.
"""

import triton
import triton.language as tl

from .cell_math import load_tile, matmul, store_tile


@triton.jit
def derivative(y, RELU: tl.constexpr):
    """The activation's derivative at the pre-activation that produced ``y``."""
    if RELU:
        return (y > 0.0).to(tl.float32)
    return 1.0 - y * y


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
        d = dh * derivative(load_tile(y, at, hcols, hidden, row_ok, h_ok), RELU)
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
    if HAS_LENGTHS:
        length = tl.load(lengths + rows, mask=row_ok, other=0)
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
        if HAS_LENGTHS:
            carry = tl.where((t_prev < length)[:, None], carry,
                             load_tile(dh_cur, rows, hcols, hidden, row_ok, h_ok))
    dh = carry + load_tile(grad_y_t, rows, hcols, hidden, row_ok, h_ok)
    d = dh * derivative(load_tile(y_t, rows, hcols, hidden, row_ok, h_ok), RELU)
    if HAS_LENGTHS:
        active = (t < length)[:, None]
        dh = tl.where(active, dh, carry)
        d = tl.where(active, d, 0.0)
    store_tile(dh_next, dh, rows, hcols, hidden, row_ok, h_ok)
    store_tile(dpre_t, d, rows, hcols, hidden, row_ok, h_ok)
