"""Small Triton kernels the Triton tests launch around fusedrnn's device functions (a module
of their own, imported by the tests that need them: the interpreter looks names up in a
kernel's module globals, and Triton is imported only where it is installed)."""

import triton
import triton.language as tl

from fusedrnn.backends.triton import cell_math


@triton.jit
def store_column(src, dst, N: tl.constexpr):
    """``dst[:N] = src[:N]`` through ``cell_math.store_tile``, as an ``(N, 1)`` tile."""
    rows = tl.arange(0, N)
    column = tl.arange(0, 1)
    value = tl.load(src + rows[:, None] + column[None, :])
    cell_math.store_tile(dst, value, rows, column, 1, rows < N, column < 1)
