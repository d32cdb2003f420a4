"""Timing primitives of the benchmarks: honest repetitions, statistics, memory, floors.

* On the CPU a call is timed with :func:`time.perf_counter`.
* On CUDA the device is synchronised before a call, the L2 cache is flushed (a buffer
  larger than L2 is written) outside the timed region, and the call is timed with CUDA
  events recorded on the current stream around it, so only the measured call is inside.
* Peak memory: ``torch.cuda.max_memory_allocated`` above what was allocated before the
  call, on CUDA. On the CPU, where PyTorch keeps no allocator statistic, the peak of the
  allocation records of one call run under ``torch.profiler`` (``profile_memory=True``).

Nothing here queries a device at import time.
"""

import functools
import gc
import json
import os
import statistics
import tempfile
import time

import torch

NOISY_FRACTION = 0.2  # an IQR above this fraction of the median marks a measurement noisy
L2_FLUSH_MIN_BYTES = 256 * 2**20  # flush buffer: at least this, and twice the L2 size
LAUNCHES_TIMED = 200  # back-to-back tiny kernels timed for the launch latency


def synchronize(device):
    """Wait for ``device``'s pending work (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.lru_cache(maxsize=None)
def _flush_buffer(device):
    properties = torch.cuda.get_device_properties(device)
    size = max(2 * getattr(properties, "L2_cache_size", 0), L2_FLUSH_MIN_BYTES)
    return torch.empty(size, dtype=torch.uint8, device=device)


def flush_l2(device):
    """On CUDA, evict the L2 cache by writing a buffer twice its size; a no-op on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        _flush_buffer(_indexed(device)).zero_()


def _indexed(device):
    """``cuda`` as ``cuda:<current index>``, so caches keyed by device do not split."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def prepare(setup, device):
    """Everything that must happen before a timed call, outside its timing: ``setup`` (if
    any), the L2 flush on CUDA and a synchronisation."""
    if setup is not None:
        setup()
    flush_l2(device)
    synchronize(device)


def timed_once(call, setup, device):
    """Seconds of one ``call`` after :func:`prepare`; CUDA events on CUDA."""
    device = torch.device(device)
    prepare(setup, device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def for_external_timer(call, setup, device):
    """``(target, setup)`` for a timer that wraps ``target`` from outside (pytest-benchmark):
    ``setup`` is :func:`prepare`; ``target`` is ``call`` followed, on CUDA only, by the
    synchronisation without which a host timer would measure the launch, not the work."""
    device = torch.device(device)

    def setup_outside():
        prepare(setup, device)

    if device.type != "cuda":
        return call, setup_outside

    def target():
        call()
        torch.cuda.synchronize(device)
    return target, setup_outside


def time_call(fn, device="cpu", warmup=3, repeats=10, setup=None):
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones; ``setup`` (if
    given) runs before every call, outside the timed region. See :func:`time_interleaved`."""
    times = time_interleaved({"fn": (fn, setup)}, device, warmup, repeats)["fn"]
    if isinstance(times, Exception):
        raise times
    return times


def time_interleaved(calls, device="cpu", warmup=3, repeats=10):
    """Time several ``{name: (call, setup)}`` interleaved: ``{name: [seconds, ...]}``.

    Each repetition runs every call once, in an order rotated by one each repetition, each
    timed by :func:`timed_once`; garbage collection is paused while timing, as in
    ``timeit``. A call that raises is returned as ``{name: exception}`` and left out of the
    rest.
    """
    device = torch.device(device)
    names = list(calls)
    times = {name: [] for name in names}
    rounds = [names] * warmup + [names[r % len(names):] + names[:r % len(names)]
                                 for r in range(repeats)] if names else []
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for index, order in enumerate(rounds):
            for name in order:
                if isinstance(times[name], Exception):
                    continue
                try:
                    seconds = timed_once(*calls[name], device)
                except Exception as error:  # noqa: BLE001 - reported to the caller
                    times[name] = error
                    continue
                if index >= warmup:
                    times[name].append(seconds)
    finally:
        if was_enabled:
            gc.enable()
    return times


def summarize(times):
    """``{"times_s", "median_s", "iqr_s"}`` of a list of seconds (IQR: inclusive quartiles)."""
    median = statistics.median(times)
    q1, _, q3 = (statistics.quantiles(times, n=4, method="inclusive") if len(times) >= 2
                 else (median, median, median))
    return {"times_s": list(times), "median_s": median, "iqr_s": q3 - q1}


def is_noisy(summary):
    """Whether a :func:`summarize` result spreads too much to trust (needs 5+ repeats)."""
    return (len(summary["times_s"]) >= 5
            and summary["iqr_s"] > NOISY_FRACTION * summary["median_s"])


def peak_memory_bytes(call, setup, device):
    """Peak bytes one ``call`` allocates above what was allocated before it: on CUDA
    ``torch.cuda.max_memory_allocated``, on the CPU the profiler's allocation records."""
    device = torch.device(device)
    prepare(setup, device)
    if device.type != "cuda":
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    profile_memory=True) as profiler:
            call()
        return peak_allocated(trace_events(profiler), device) or 0
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    call()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


TRACE_DEVICE_TYPES = {"cpu": 0, "cuda": 1}  # "Device Type" of a trace's [memory] events


def trace_events(profiler):
    """The Chrome-trace events of a finished ``torch.profiler.profile``."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        profiler.export_chrome_trace(path)
        with open(path, encoding="utf-8") as f:
            return json.load(f)["traceEvents"]


def peak_allocated(events, device):
    """Peak bytes allocated on ``device``'s type during a trace, above the level when it
    began (``None`` if there is no allocation record): the highest running sum of the
    records' ``Bytes`` (an allocation positive, a free negative), in time order.

    Not their ``Total Allocated``: each allocator that reports to the profiler reports its
    own total (the cpu backend's workspace pool, ``csrc/cpu/workspace_pool.h``, besides
    torch's CPU allocator), so the largest total is one allocator's, not the call's."""
    wanted = TRACE_DEVICE_TYPES[torch.device(device).type]
    records = sorted((e for e in events if e.get("name") == "[memory]"
                      and e.get("args", {}).get("Device Type") == wanted), key=lambda e: e["ts"])
    if not records:
        return None
    level = peak = 0
    for record in records:
        level += record["args"]["Bytes"]
        peak = max(peak, level)
    return peak


@functools.lru_cache(maxsize=None)
def launch_latency_seconds(device):
    """Seconds per launch of back-to-back tiny CUDA kernels (measured once per process and
    device): the least a step that launches one kernel can take."""
    device = _indexed(torch.device(device))
    x = torch.zeros(1, device=device)

    def launches():
        for _ in range(LAUNCHES_TIMED):
            x.add_(1)
    times = time_call(launches, device, warmup=2, repeats=5)
    return statistics.median(times) / LAUNCHES_TIMED
