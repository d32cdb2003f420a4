"""Triton device functions shared by the forward and backward kernels of every cell."""

import triton
import triton.language as tl


@triton.jit
def tanh(x):
    """tanh through the sigmoid, the one transcendental both GPUs and the interpreter have."""
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def load_tile(ptr, rows, cols, row_stride, row_ok, col_ok):
    """A ``(rows, cols)`` tile of a row-major matrix as float32, zero outside the masks."""
    mask = row_ok[:, None] & col_ok[None, :]
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def load_transposed(ptr, rows, cols, row_stride, row_ok, col_ok):
    """The transpose of a tile: element ``[c, r]`` is ``ptr[r * row_stride + c]``."""
    mask = col_ok[:, None] & row_ok[None, :]
    return tl.load(ptr + rows[None, :] * row_stride + cols[:, None], mask=mask, other=0.0)


@triton.jit
def store_tile(ptr, value, rows, cols, row_stride, row_ok, col_ok):
    mask = row_ok[:, None] & col_ok[None, :]
    tl.store(ptr + rows[:, None] * row_stride + cols[None, :], value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def matmul(a, b, IEEE: tl.constexpr):
    """``a @ b`` with float32 accumulation: exact float32 products when ``IEEE`` (float32
    inputs), otherwise ``a`` cast to ``b``'s 16-bit type for the tensor cores."""
    if IEEE:
        return tl.dot(a, b.to(tl.float32), input_precision="ieee")
    return tl.dot(a.to(b.dtype), b, out_dtype=tl.float32)


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
