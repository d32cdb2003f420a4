"""The two directions of a bidirectional layer on two CUDA streams, so that the GPU can run
them at the same time.

At the batch sizes RNNs are trained with one direction leaves most of the GPU idle: the
persistent cluster kernel of batch 16 occupies one cluster of at most 16 multiprocessors
of an H200's 132, and a stepwise step's product and cell kernel a handful. The forward
direction runs on the caller's stream; the reverse direction on a side stream of the same
device (one per device, made on first use), which first waits for the caller's stream (so
that its inputs are ready) and which the caller's stream waits for before anything after
the layer. The reverse direction's results are allocated on the side stream and used on the
caller's afterwards: ``record_stream`` tells the caching allocator, so their memory is not
reused before that use is done. The same fork and join works inside CUDA graph capture.

Not for the persistent grid design: each of its cooperative launches takes one block on
every multiprocessor it needs and waits at grid-wide barriers, so two of them gain nothing
from running side by side; those run one after the other on the caller's stream.

Not yet measured on a GPU (no session has had one): the GPU check's bidirectional cases
test it for correctness; the benchmark grid's bidirectional shapes show what it gains.
"""

import torch

_side_streams = {}


def overlaps(plan):
    """Whether two directions whose kernels follow ``plan`` (``cuda_plan.Plan``) go on two
    streams: stepwise and cluster kernels yes, the grid design no."""
    return plan.kernel != "persistent" or plan.cluster


def side_stream(device):
    """This process's side stream on ``device`` (a CUDA ``torch.device``)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _side_streams:
        _side_streams[index] = torch.cuda.Stream(device=index)
    return _side_streams[index]


def run_both(device, first, second):
    """``(first(), second())``: ``first`` on the current stream of ``device``, ``second`` on
    the side stream, joined before returning (as seen from the current stream)."""
    current = torch.cuda.current_stream(device)
    side = side_stream(device)
    side.wait_stream(current)
    first_results = first()
    with torch.cuda.stream(side):
        second_results = second()
    current.wait_stream(side)
    for tensor in second_results:
        if tensor.is_cuda:
            tensor.record_stream(current)
    return first_results, second_results
