"""Two independent pieces of CPU work at the same time, one thread each.

The cpu backend runs the two directions of a bidirectional layer this way. At the batch
sizes RNNs are trained with, a direction's time loop is bound by the latency of its steps, not
by arithmetic: a second thread shortens it little, while the other direction, which does not
depend on it, can use that thread whole. Measured on the 2-core AVX-512 Xeon, the two
directions of one layer one after the other on two threads against at the same time on one
thread each (float32, ms, median of 30): LSTM B16 T64 I100 H128 forward 2.85 vs 2.15,
backward 4.0 vs 3.65; B8 T200 I64 H128 forward 4.4 vs 3.0, backward 4.8 vs 4.6; B64 T50 I256
H512 forward 68.7 vs 67.7, backward 136.7 vs 133.9; GRU B16 T64 I100 H128 forward 2.3 vs 1.6,
backward 3.4 vs 3.1.

The pieces run on two threads of an OpenMP team of torch's (``fusedrnn._cpu.run_pair``), not
on a thread of Python's: after each parallel region torch's OpenMP threads spin for a while
before they sleep, and a spinning thread beside the two pieces on two cores made a 2-layer
bidirectional LSTM 1.5x slower than one direction after the other. Each piece runs under the
caller's ATen thread-local state (grad mode, dispatch keys, the profiler's recording).

Only with exactly two threads (``torch.get_num_threads()``): that is the split measured.
With more, each direction alone would give up the threads its products use; untried, so
there the directions run one after the other, each on every thread.
"""

import torch

from .. import _extension


def concurrent(threads=None):
    """Whether :func:`run_both` runs its pieces at the same time with ``threads`` threads
    (default: the calling thread's ``torch.get_num_threads()``)."""
    return (torch.get_num_threads() if threads is None else threads) == 2


def run_both(first, second):
    """``(first(), second())``, at the same time when :func:`concurrent`."""
    if not concurrent():
        return first(), second()
    return _extension.CPU.load().run_pair(first, second)
