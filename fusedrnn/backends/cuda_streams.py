"""The two directions of a bidirectional layer on two CUDA streams, so that the GPU can run
them at the same time.

At the batch sizes RNNs are trained with one direction leaves most of the GPU idle: the
persistent cluster kernel of batch 16 occupies one cluster of at most 16 multiprocessors
of an H200's 132, and a stepwise step's product and cell kernel a handful. The forward
direction runs on the caller's stream; the reverse direction on a side stream of the same
device, which first waits for the caller's stream (so that its inputs are ready) and which
the caller's stream waits for before anything after the layer, also when a direction
raises. Side streams are per thread, device and priority (made on first use, with the
caller's stream's priority), so two threads never wait for each other's work and a CUDA
graph capture on one thread cannot take in another's kernels. The reverse direction's
results are allocated on the side stream and used on the caller's afterwards, and its
inputs come from other streams: ``record_stream`` tells the caching allocator of both, so
no memory is reused before those uses are done. That costs memory: the side stream's blocks stay in its own pool, and under
graph capture blocks freed during the capture after ``record_stream`` are not reused before
it ends.

Not for the persistent grid design: each of its cooperative launches takes one block on
every multiprocessor it needs and waits at grid-wide barriers, so two of them gain nothing
from running side by side; those run one after the other on the caller's stream.

Not yet measured on a GPU (no session has had one): the GPU check's bidirectional cases
test it for correctness; the benchmark grid's bidirectional shapes show what it gains.
"""

import threading

import torch

_local = threading.local()


def overlaps(plan):
    """Whether two directions whose kernels follow ``plan`` (``cuda_plan.Plan``) go on two
    streams: stepwise and cluster kernels yes, the grid design no."""
    return plan.kernel != "persistent" or plan.cluster


def side_stream(device, priority=0):
    """The calling thread's side stream on ``device`` (a CUDA ``torch.device``) with
    ``priority``."""
    streams = getattr(_local, "streams", None)
    if streams is None:
        streams = _local.streams = {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (index, priority)
    if key not in streams:
        streams[key] = torch.cuda.Stream(device=index, priority=priority)
    return streams[key]


def run_both(device, first, second, second_inputs=()):
    """``(first(), second())``: ``first`` on the current stream of ``device``, ``second`` on
    a side stream, joined before returning (as seen from the current stream).
    ``second_inputs``: the tensors ``second`` reads, which the allocator is told of too (a
    backward's saved tensors may come from another thread's side stream)."""
    current = torch.cuda.current_stream(device)
    side = side_stream(device, current.priority)
    side.wait_stream(current)
    for tensor in second_inputs:  # tensors, None and flags
        if getattr(tensor, "is_cuda", False):
            tensor.record_stream(side)
    try:
        first_results = first()
        with torch.cuda.stream(side):
            second_results = second()
    finally:
        current.wait_stream(side)
    for tensor in second_results:
        if tensor.is_cuda:
            tensor.record_stream(current)
    return first_results, second_results
