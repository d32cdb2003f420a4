"""Timing a provider as a CUDA graph replay: ``fusedrnn bench --cuda-graph``.

Eager timing charges every kernel launch to the call: at small batch a stepwise layer is
two launches per step and the host's launch rate, not the GPU, sets its speed. A CUDA
graph replays the same kernels without the host, so graphed times compare the kernels
themselves, and graphed against eager shows what capture gains (the stepwise kernels do not
capture themselves: capturing and instantiating per call costs more than the launches it
saves; a model captured once and replayed, as ``torch.cuda.graph`` and
``torch.compile(mode="reduce-overhead")`` do, is where it pays).

A call is captured as PyTorch's documentation prescribes: a few warm-up calls on a side
stream first (lazy initialisation, cuBLAS workspaces, Triton compilation must not happen
during capture), its ``setup`` once before capture, then the call itself. Training
(forward and backward) captures whole: the gradients the capture allocates are the ones
every replay writes. Only whole calls capture this way, so the modes are ``inference`` and
``training``.
"""

from dataclasses import dataclass

import torch

GRAPHED_MODES = ("inference", "training")
WARMUP_CALLS = 3  # eager calls on a side stream before capture


@dataclass
class Graphed:
    """A captured call: ``replay`` runs it again; ``peak_memory_bytes`` is what its capture
    allocated at most (a replay allocates nothing: the graph's memory is its own)."""

    graph: "torch.cuda.CUDAGraph"
    peak_memory_bytes: int

    def replay(self):
        self.graph.replay()


def check_graphable(device, modes):
    """ValueError unless ``device`` is CUDA and every mode in ``modes`` can be captured."""
    if torch.device(device).type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
    bad = [mode for mode in modes if mode not in GRAPHED_MODES]
    if bad:
        raise ValueError(f"CUDA graphs capture whole calls: modes {', '.join(GRAPHED_MODES)}, "
                         f"not {', '.join(bad)}")


def capture(call, setup, device, warmup=WARMUP_CALLS):
    """``call`` (with ``setup`` before it, if any) captured in a CUDA graph on ``device``
    after ``warmup`` eager calls on a side stream: a :class:`Graphed`."""
    device = torch.device(device)
    check_graphable(device, ())
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for _ in range(warmup):
            if setup is not None:
                setup()
            call()
    current.wait_stream(side)
    if setup is not None:
        setup()
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    torch.cuda.synchronize(device)
    return Graphed(graph, torch.cuda.max_memory_allocated(device) - before)
