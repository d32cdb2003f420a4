"""Triton device functions shared by the forward and backward kernels of every cell."""

import triton
import triton.language as tl

from . import plan


@triton.jit
def tanh(x):
    """tanh from the sigmoid, the one transcendental both GPUs and the interpreter have,
    where it is at least 0.55; below |x| = 0.625, where 2 sigmoid(2x) - 1 cancels (a 6e-8
    absolute error: 1e-3 relative at 1e-4), the odd minimax polynomial of
    ``csrc/cpu/cpu_math.h``, accurate to about 1 ulp."""
    z = x * x
    p = -5.70498872745e-3
    p = p * z + 2.06390887954e-2
    p = p * z - 5.37397155531e-2
    p = p * z + 1.33314422036e-1
    p = p * z - 3.33332819422e-1
    return tl.where(tl.abs(x) < 0.625, x + x * z * p, 2.0 * tl.sigmoid(2.0 * x) - 1.0)


@triton.jit
def load_tile(ptr, rows, cols, row_stride, row_ok, col_ok, PAST_L1: tl.constexpr = False):
    """A ``(rows, cols)`` tile of a row-major matrix as float32, zero outside the masks.
    ``PAST_L1`` asks to bypass the L1 cache (``.cg``), for data other programs wrote in this
    launch (a hint the pipeliner's asynchronous copies drop: what makes those writes visible
    is the acquire of ``grid_barrier``, not the hint). A flag, not the modifier's string:
    Triton before 3.8 makes a constexpr of a default value only if it is a number, a bool or
    a dtype."""
    mask = row_ok[:, None] & col_ok[None, :]
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :], mask=mask, other=0.0,
                   cache_modifier=".cg" if PAST_L1 else "").to(tl.float32)


@triton.jit
def load_transposed(ptr, rows, cols, row_stride, row_ok, col_ok):
    """The transpose of a tile: element ``[c, r]`` is ``ptr[r * row_stride + c]``."""
    mask = col_ok[:, None] & row_ok[None, :]
    return tl.load(ptr + rows[None, :] * row_stride + cols[:, None], mask=mask, other=0.0)


# Triton 3.8's interpreter casts float32 to bfloat16 by truncation (its cast_impl passes no
# rounding mode), where a GPU rounds to nearest even: about twice the error of a rounded
# store, past the low-precision rule. Under the interpreter store_tile rounds first; the
# flag is read when this module is imported, where Triton decides to interpret its kernels
# (at triton.jit), and is False in a compiled kernel, whose code it leaves as it was.
INTERPRETED = tl.constexpr(plan.interpreted())


@triton.jit
def bfloat16_nearest(x):
    """float32 ``x`` rounded to the nearest bfloat16 (ties to even), still as float32."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + (((bits >> 16) & 1) + 0x7FFF)
    rounded = ((bits >> 16) << 16).to(tl.float32, bitcast=True)
    return tl.where(x != x, x, rounded)  # NaN stays NaN


@triton.jit
def store_tile(ptr, value, rows, cols, row_stride, row_ok, col_ok):
    mask = row_ok[:, None] & col_ok[None, :]
    if INTERPRETED:
        if ptr.dtype.element_ty == tl.bfloat16:
            value = bfloat16_nearest(value.to(tl.float32))
    tl.store(ptr + rows[:, None] * row_stride + cols[None, :], value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def matmul(a, b, IEEE: tl.constexpr):
    """``a @ b`` with float32 accumulation: exact float32 products when ``IEEE`` (float32
    inputs), otherwise ``a`` cast to ``b``'s 16-bit type for the tensor cores."""
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a.to(b.dtype), b, out_dtype=tl.float32)


@triton.jit
def split_k_indices(SPLIT_K: tl.constexpr, BLOCK_KC: tl.constexpr):
    """``(SPLIT_K, BLOCK_KC)`` indices of a reduction split into ``SPLIT_K`` chunks: chunk
    ``s`` holds ``[s * BLOCK_KC, (s + 1) * BLOCK_KC)``."""
    return tl.arange(0, SPLIT_K)[:, None] * BLOCK_KC + tl.arange(0, BLOCK_KC)[None, :]


@triton.jit
def load_split(ptr, rows, ks, row_stride, row_ok, k_ok, PAST_L1: tl.constexpr = False):
    """Rows ``rows`` of a row-major matrix at split columns ``ks`` (``split_k_indices``) as a
    ``(SPLIT_K, rows, BLOCK_KC)`` tile in the matrix's dtype (an operand of ``matmul``), zero
    outside the masks; ``PAST_L1`` as in ``load_tile``."""
    mask = row_ok[None, :, None] & k_ok[:, None, :]
    return tl.load(ptr + rows[None, :, None] * row_stride + ks[:, None, :], mask=mask, other=0.0,
                   cache_modifier=".cg" if PAST_L1 else "")


@triton.jit
def split_matmul(a, b, IEEE: tl.constexpr):
    """``a @ b`` over a split reduction: ``a`` ``(SPLIT_K, M, KC)``, ``b`` ``(SPLIT_K, KC, N)``;
    the chunks' products (one per warp) are summed."""
    return tl.sum(matmul(a, b, IEEE), axis=0)


@triton.jit
def cooperative_tiles(hidden, batch, group_rows, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
                      SPLIT_K: tl.constexpr):
    """A cooperative program's hidden units (``program_id(0)``), the reduction's split
    indices (``split_k_indices``), their masks, and the rows ``[b_first, b_last)`` of its
    batch group (``program_id(1)``, ``group_rows`` rows each)."""
    hcols = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    ks = split_k_indices(SPLIT_K, BLOCK_K // SPLIT_K)
    b_first = tl.program_id(1) * group_rows
    return hcols, ks, hcols < hidden, ks < hidden, b_first, tl.minimum(b_first + group_rows, batch)


@triton.jit
def weight_slice(w_hh, gate, hcols, ks, hidden, h_ok, k_ok, COLUMNS: tl.constexpr):
    """A cooperative program's part of gate ``gate``'s ``(H, H)`` block of ``W_hh``, split
    over the reduction as ``(SPLIT_K, BLOCK_KC, BLOCK_H)``: its units' rows, transposed, for
    the forward (``[s, c, j] = W_hh[gate * H + hcols[j], ks[s, c]]``), or with ``COLUMNS``
    its units' columns for the backward (``W_hh[gate * H + ks[s, c], hcols[j]]``)."""
    block = w_hh + gate * hidden * hidden
    if COLUMNS:
        at = block + ks[:, :, None] * hidden + hcols[None, None, :]
    else:
        at = block + hcols[None, None, :] * hidden + ks[:, :, None]
    return tl.load(at, mask=k_ok[:, :, None] & h_ok[None, None, :], other=0.0)


@triton.jit
def batch_tile(b0, batch, BLOCK_B: tl.constexpr):
    """Rows ``[b0, b0 + BLOCK_B)`` and which of them exist."""
    rows = b0 + tl.arange(0, BLOCK_B)
    return rows, rows < batch


@triton.jit
def backward_times(s, steps, REVERSE: tl.constexpr):
    """The step a backward kernel processes at iteration ``s`` (reverse processing order of a
    layer that ran ``REVERSE``d or not) and the one it processed at ``s - 1``."""
    t = s if REVERSE else steps - 1 - s
    return t, t - 1 if REVERSE else t + 1


@triton.jit
def carried_back(carry, held, t_prev, lengths, rows, row_ok, HAS_LENGTHS: tl.constexpr):
    """The gradient of h carried back from step ``t_prev``: ``carry``, or ``held`` (the
    gradient from before it) on rows whose sequence had ended by ``t_prev``."""
    if HAS_LENGTHS:
        length = tl.load(lengths + rows, mask=row_ok, other=0)
        carry = tl.where((t_prev < length)[:, None], carry, held)
    return carry


@triton.jit
def pair_slots(pair, s, batch, hidden):
    """The slots of a ``(2, B, H)`` ping-pong that step ``s`` reads and writes."""
    return pair + (s % 2) * batch * hidden, pair + ((s + 1) % 2) * batch * hidden


@triton.jit
def split_product(ptr, rows, ks, row_stride, row_ok, k_ok, w, IEEE: tl.constexpr):
    """Rows ``rows`` of a matrix other programs wrote in this launch times a
    ``weight_slice`` (``.cg``: read past L1, where the compiler keeps the hint)."""
    return split_matmul(load_split(ptr, rows, ks, row_stride, row_ok, k_ok, True), w, IEEE)


@triton.jit
def gate_preactivation(xproj, gate, h, w, at, hcols, g_size, hidden, row_ok, h_ok,
                       IEEE: tl.constexpr):
    """Gate ``gate``'s input projection at rows ``at`` plus the whole state ``h``
    (``load_split``) times this program's ``weight_slice``."""
    return (load_tile(xproj + gate * hidden, at, hcols, g_size, row_ok, h_ok)
            + split_matmul(h, w, IEEE))


@triton.jit
def end_of_step(counter, s, s_begin, s_end, SYNC: tl.constexpr):
    """With ``SYNC``, the barrier of this program's batch group (its programs along axis 0,
    on counter ``program_id(1)``) after step ``s`` of a launch over ``[s_begin, s_end)``
    (none after its last step)."""
    if SYNC:
        if s + 1 < s_end:
            grid_barrier(counter + tl.program_id(1), (s - s_begin + 1) * tl.num_programs(0))


@triton.jit
def store_gates3(ptr, a, b, c, rows, cols, g_size, hidden, row_ok, col_ok):
    """Store three gate tiles of a ``(rows, 3 * hidden)`` row-major matrix, gate by gate."""
    store_tile(ptr, a, rows, cols, g_size, row_ok, col_ok)
    store_tile(ptr + hidden, b, rows, cols, g_size, row_ok, col_ok)
    store_tile(ptr + 2 * hidden, c, rows, cols, g_size, row_ok, col_ok)


@triton.jit
def store_gates4(ptr, a, b, c, d, rows, cols, g_size, hidden, row_ok, col_ok):
    """Store four gate tiles of a ``(rows, 4 * hidden)`` row-major matrix, gate by gate."""
    store_gates3(ptr, a, b, c, rows, cols, g_size, hidden, row_ok, col_ok)
    store_tile(ptr + 3 * hidden, d, rows, cols, g_size, row_ok, col_ok)


@triton.jit
def grid_barrier(counter, target):
    """Wait until ``counter`` (an int32 in global memory, zero at launch) reaches ``target``
    after adding this program's arrival: with ``target = (s + 1) * num_programs`` every
    program has finished step ``s``. The stores before it are visible to the loads after it
    (release on arrival, acquire while spinning, a CTA barrier on each side so every thread's
    stores precede the arrival and no thread reads before the wait ends). The programs must
    all be resident at once (the plan launches at most one per multiprocessor)."""
    tl.debug_barrier()
    tl.atomic_add(counter, 1, sem="release")
    arrived = tl.atomic_add(counter, 0, sem="acquire")
    while arrived < target:
        arrived = tl.atomic_add(counter, 0, sem="acquire")
    tl.debug_barrier()
