"""Latency of the Triton grid barrier (``cell_math.grid_barrier``), the synchronisation term
of the cooperative kernels' per-step floor: ``programs`` programs (at most one per
multiprocessor) pass ``iterations`` barriers in one launch. ``benchmarks/barrier_latency.py``
reports it beside the CUDA extension's grid and cluster barriers.
"""

import torch
import triton
import triton.language as tl

from . import cooperative
from .compat import wrap_triton
from .cell_math import grid_barrier


@triton.jit(do_not_specialize=["iterations"])
def grid_barrier_bench_kernel(counter, iterations):
    for s in range(iterations):
        grid_barrier(counter, (s + 1) * tl.num_programs(0))


def run(programs, iterations, device):
    """One launch of ``programs`` programs passing ``iterations`` barriers (8 warps, as the
    cooperative kernels); returns the counter, ``programs * iterations`` after it."""
    counter = torch.zeros(1, dtype=torch.int32, device=device)
    wrap_triton(grid_barrier_bench_kernel)[(programs,)](
        counter, iterations, num_warps=8, **cooperative.launch_options(torch.device(device)))
    return counter


def latency_us(programs, iterations=2000, repeats=5):
    """Microseconds per barrier on the current GPU: the median over ``repeats`` launches of
    one launch's time over its barriers."""
    run(programs, 10, "cuda")  # compile and warm up
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(programs, iterations, "cuda")
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / iterations)
    return sorted(times)[len(times) // 2]
