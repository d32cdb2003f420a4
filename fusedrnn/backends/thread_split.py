"""Two independent pieces of CPU work at the same time, one thread each.

The cpu backend runs the two directions of a bidirectional layer this way. At the batch
sizes RNNs are trained with, a direction's time loop is bound by the latency of its steps, not
by arithmetic: a second thread shortens it little, while the other direction, which does not
depend on it, can use that thread whole. Measured on the 2-core AVX-512 Xeon with
``fusedrnn bench`` (same day, the commit before against this one, two runs each), the
two-layer bidirectional shape B16 T64 I100 H128, ratio to torch.nn (inference, training): LSTM
1.04-1.07, 0.88-0.89 before, 0.85-0.87, 0.82-0.84 after; GRU 0.62-0.63, 0.34-0.35 before,
0.46-0.48, 0.31 after; RNN 0.79, 0.42-0.43 before, 0.52-0.53, 0.36 after (the LSTM's time:
7.4 to 6.1 ms inference, 19.9 to 18.7 ms training). The one-direction shapes did not move.

The pieces run on two threads of an OpenMP team of torch's (``fusedrnn._cpu.run_pair``), not
on a thread of Python's: after each parallel region torch's OpenMP threads spin for a while
before they sleep, and a spinning thread beside the two pieces on two cores made a 2-layer
bidirectional LSTM 1.5x slower than one direction after the other. Each piece runs under the
caller's ATen thread-local state (grad mode, dispatch keys, the profiler's recording).

Only with exactly two threads (``torch.get_num_threads()``): that is the split measured.
With more, each direction alone would give up the threads its products use; untried, so
there the directions run one after the other, each on every thread. And only from
``MIN_WORK`` multiply-adds per piece: starting the pair costs tens of microseconds (an empty
pair 34 us). Measured, one bidirectional LSTM layer, inference and training, ms, one after
the other against at once (multiply-adds of a direction's forward products): B1 T100 I32
H64 (2.5M) 0.35, 1.11 against 0.39, 1.17; B2 T100 I64 H64 (6.6M) 0.48, 1.40 against 0.48,
1.46; B4 T100 I32 H64 (9.8M) 0.67, 1.74 against 0.63, 1.74; B8 T100 I64 H64 (26M) 1.21, 2.88
against 0.94, 2.50; B4 T200 I64 H128 (79M) 2.49, 6.18 against 1.94, 4.99.
"""

import torch

from .. import _extension


MIN_WORK = 1 << 23


def concurrent(work, threads=None):
    """Whether :func:`run_both` runs two pieces of ``work`` multiply-adds each at the same
    time with ``threads`` threads (default: the calling thread's ``torch.get_num_threads()``)."""
    threads = torch.get_num_threads() if threads is None else threads
    return threads == 2 and work >= MIN_WORK


def describe(threads=None):
    """What the cpu backend does with a bidirectional layer's directions, in words."""
    threads = torch.get_num_threads() if threads is None else threads
    if threads == 2:
        return (f"both directions at once, one thread each, from {MIN_WORK:,} multiply-adds "
                "per direction (one after the other below)")
    return f"one direction after the other on {threads} thread(s) (at once only with 2)"


def run_both(first, second, work):
    """``(first(), second())``, at the same time when :func:`concurrent` for ``work``."""
    if not concurrent(work):
        return first(), second()
    return _extension.CPU.load().run_pair(first, second)
