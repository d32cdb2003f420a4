"""The per-step floors of ``fusedrnn bench``.

:func:`step_floor_seconds`: the least one time step of a case can take, the ``floor us``
column: its GEMM work at the device's measured matrix rate, and on CUDA at least one kernel
launch per layer, direction and time loop for an implementation that works step by step.

:func:`persistent_floor_terms`: the floor of a persistent kernel on CUDA, term by term. A
persistent kernel (the cuda backend's, ``csrc/persistent/``) runs each layer and direction
as one launch per time loop (training runs two: the forward's and the backward's) whose
steps cost at least the larger of

* ``flops``: the step's recurrent product, ``2 x B x G x P`` (x 2 for the backward alone,
  x 3 for training, :data:`MODE_FLOP_FACTORS`), over the device's measured matrix rate in
  the dtype;
* ``barrier``: the one barrier per step of each time loop, the measured latency of a grid
  barrier over one block per multiprocessor, or of a 16-block cluster barrier on Hopper
  (the smaller);

and, for comparison, ``weights``: the bytes of ``W_hh`` over the measured copy bandwidth,
what a kernel that reads its weights from device memory every step cannot beat. Terms are
microseconds per step summed over layers and directions; the ceilings are measured once per
process, device and dtype (``benchmarks/barrier_latency.py`` measures the barriers alone).
"""

import functools
import statistics

import torch

from . import _extension
from .bench_timing import _indexed, launch_latency_seconds, time_call

MATMUL_SIZES = {"cuda": 8192, "cpu": 1024}  # square product timed for the matrix rate
COPY_ELEMENTS = 2**28  # float32 elements copied for the bandwidth (1 GiB)
BARRIER_ITERATIONS = 2000
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
# GEMM work of each mode in units of one forward (the backward is two products per forward one)
MODE_FLOP_FACTORS = {"inference": 1, "training_forward": 1, "backward": 2, "training": 3}
# time loops of each mode: training runs the forward's and then the backward's
MODE_LOOPS = {"inference": 1, "training_forward": 1, "backward": 1, "training": 2}


def step_floor_seconds(case, mode, flops, device="cpu", dtype=torch.float32):
    """The per-step floor of ``case`` in ``mode`` whose GEMM work is ``flops``
    (:func:`~fusedrnn.bench.gemm_flops`): the larger of

    * ``flops / T`` at the device's measured matrix rate (:func:`matrix_rate`; on the CPU
      the faster of the dtype's and float32's, as a CPU kernel may compute a 16-bit type in
      float32, and for float16 float32's: torch's float16 product on the CPU took 2 s for a
      1024-square product on the 2-core Zen 5 EPYC, against 10-30 ms in float32);
    * on CUDA, for an implementation that launches kernels step by step, one launch per
      layer, direction and time loop (:data:`MODE_LOOPS`) at the per-launch time of
      back-to-back tiny kernels (:func:`~fusedrnn.bench_timing.launch_latency_seconds`).
    """
    device = _indexed(torch.device(device))
    if device.type == "cuda":
        rate = matrix_rate(device, dtype)
    elif dtype == torch.float16:
        rate = matrix_rate(device, torch.float32)
    else:
        rate = max(matrix_rate(device, dtype), matrix_rate(device, torch.float32))
    floor = flops / case.steps / rate
    if device.type == "cuda":
        launches = case.num_layers * (2 if case.bidirectional else 1) * MODE_LOOPS[mode]
        floor = max(floor, launches * launch_latency_seconds(device))
    return floor


@functools.lru_cache(maxsize=None)
def matrix_rate(device, dtype):
    """FLOP/s of a large square product in ``dtype`` on ``device`` (the best of five: a rate
    a floor divides by is the fastest seen; measured once per process, device and dtype):
    ``torch.mm``'s, and on the CPU in float32 also the
    cpu backend's own (``fusedrnn::input_projection``: oneDNN's brgemm on non-Intel x86,
    where torch.mm's MKL is slow), the faster. On the 2-core Zen 5 EPYC torch.mm ran at 200
    GFLOP/s and brgemm at 430, and torch.nn's LSTM at up to 426 overall: a floor from
    torch.mm alone was above torch.nn's time, and from a median rate at times too."""
    size = MATMUL_SIZES[device.type]
    left = torch.randn(size, size, device=device).to(dtype)
    right = torch.randn(size, size, device=device).to(dtype)
    products = [lambda: torch.mm(left, right)]
    if device.type == "cpu" and dtype == torch.float32 and _extension.CPU.status()[0]:
        products.append(lambda: torch.ops.fusedrnn.input_projection(left.unsqueeze(0), right))
    return max(2 * size**3 / min(time_call(product, device, 2, 5)) for product in products)


def floor_terms(case, mode, itemsize, ceilings):
    """The terms (us per step) of ``case`` in ``mode`` with ``itemsize``-byte elements, from
    ``ceilings``: ``{"flop_per_s", "bytes_per_s", "barrier_s"}`` (``barrier_s`` may be None:
    no persistent barrier measured)."""
    state = case.proj_size or case.hidden_size
    rows = GATES[case.cell] * case.hidden_size
    launches = case.num_layers * (2 if case.bidirectional else 1)
    step_flops = 2 * case.batch * rows * state * MODE_FLOP_FACTORS[mode]
    terms = {"flops": launches * step_flops / ceilings["flop_per_s"] * 1e6,
             "weights": launches * rows * state * itemsize / ceilings["bytes_per_s"] * 1e6}
    barrier = ceilings.get("barrier_s")
    if barrier is not None:
        terms["barrier"] = launches * MODE_LOOPS[mode] * barrier * 1e6
        terms["floor"] = max(terms["flops"], terms["barrier"])
    return terms


def persistent_floor_terms(case, mode, device, dtype):
    """:func:`floor_terms` with the ceilings measured on CUDA ``device``; None on the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return floor_terms(case, mode, itemsize, device_ceilings(_indexed(device), dtype))


@functools.lru_cache(maxsize=None)
def device_ceilings(device, dtype):
    """The measured matrix rate in ``dtype``, copy bandwidth and per-step barrier latency."""
    source = torch.randn(COPY_ELEMENTS, device=device)
    target = torch.empty_like(source)
    copy_s = statistics.median(time_call(lambda: target.copy_(source), device, 2, 5))
    return {"flop_per_s": matrix_rate(device, dtype),
            "bytes_per_s": 2 * source.numel() * source.element_size() / copy_s,
            "barrier_s": _barrier_seconds(device)}


def _barrier_seconds(device):
    """The cheaper of a grid barrier (one block per multiprocessor) and, on Hopper, a
    16-block cluster barrier, in seconds; None without the CUDA extension."""
    try:
        ext = _extension.CUDA.load()
    except ImportError:
        return None
    props = torch.cuda.get_device_properties(device)
    with torch.cuda.device(device):
        latencies = [ext.barrier_latency_us("grid", props.multi_processor_count, 1,
                                            BARRIER_ITERATIONS, 3)]
        if props.major >= 9:
            try:
                latencies.append(ext.barrier_latency_us(
                    "cluster", props.multi_processor_count // 16 * 16, 16, BARRIER_ITERATIONS, 3))
            except RuntimeError:  # no sm_90 code, or a cluster of 16 the device cannot place
                pass
    return min(latencies) / 1e6
