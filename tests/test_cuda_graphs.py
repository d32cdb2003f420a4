"""CUDA graphs: a fusedrnn layer captured once (``torch.cuda.graph``, through the bench's own
capture helper) and replayed on new data gives what an eager call gives, with every GPU
backend and kernel, inference and training (forward and backward in one graph); and
``torch.compile(mode="reduce-overhead")``, which captures through cudagraph trees.

A kernel that synchronises the host, allocates outside the caching allocator, reads a host
value that changes between calls, or launches on a stream that is not joined to the capture
fails here: the capture raises, or the replay repeats the captured call's numbers.
All need CUDA (they skip here).
"""

import copy

import pytest
import torch

import fusedrnn
from fusedrnn import bench, bench_graphs, testing
from fusedrnn.bench_kernels import environment, split_backend

pytestmark = pytest.mark.requires_cuda

RUNS = ["reference",
        pytest.param("cuda:stepwise", marks=pytest.mark.requires_ext),
        pytest.param("cuda:grid", marks=pytest.mark.requires_ext),
        pytest.param("cuda:cluster", marks=pytest.mark.requires_ext),
        pytest.param("triton:persistent", marks=pytest.mark.requires_triton),
        pytest.param("triton:cooperative", marks=pytest.mark.requires_triton),
        pytest.param("triton:step", marks=pytest.mark.requires_triton)]
CASES = [("LSTM", {}, 32, 6, 4),
         ("GRU", {"num_layers": 2, "bidirectional": True}, 32, 5, 3),
         ("RNN", {"batch_first": True}, 24, 7, 2)]
INPUT_SIZE = 16


@pytest.fixture
def run(request):
    """``(backend, env)`` for ``request.param``, with the environment that forces the kernel
    set for the test's duration (the capture and the eager calls alike)."""
    backend, env = split_backend(request.param)
    if request.param == "cuda:cluster" and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("thread-block clusters need compute capability 9.0")
    with environment(env):
        yield backend


def _module_and_inputs(cell, kwargs, hidden, steps, batch, backend):
    module = getattr(fusedrnn, cell)(INPUT_SIZE, hidden, device="cuda", backend=backend, **kwargs)
    generator = torch.Generator().manual_seed(1)
    inputs = [(testing.make_sequence(batch, steps, INPUT_SIZE, device="cuda", generator=generator,
                                     batch_first=kwargs.get("batch_first", False)),
               testing.make_state(module, batch, generator=generator)) for _ in range(2)]
    return module, inputs


def _copy_into(static, values):
    with torch.no_grad():
        for target, value in zip(_tensors(static), _tensors(values)):
            target.copy_(value)


def _tensors(value):
    return [value] if isinstance(value, torch.Tensor) else list(value)


@pytest.mark.parametrize("run", RUNS, indirect=True)
@pytest.mark.parametrize("cell, kwargs, hidden, steps, batch", CASES)
def test_inference_replay_matches_eager(run, cell, kwargs, hidden, steps, batch):
    module, [(x, hx), (x_new, hx_new)] = _module_and_inputs(cell, kwargs, hidden, steps, batch, run)
    module.eval()
    static_x, static_hx = x.clone(), copy.deepcopy(hx)
    kept = {}

    def infer():
        with torch.no_grad():
            kept["outputs"] = testing.flatten_outputs(module(static_x, static_hx))

    graphed = bench_graphs.capture(infer, None, "cuda")
    _copy_into(static_x, x_new)
    _copy_into(static_hx, hx_new)
    graphed.replay()
    torch.cuda.synchronize()
    with torch.no_grad():
        expected = testing.flatten_outputs(module(x_new, hx_new))
        captured_call = testing.flatten_outputs(module(x, hx))
    testing.assert_close_relative(kept["outputs"], expected, 1e-6, "replayed outputs")
    assert not torch.equal(expected[0], captured_call[0]), "the new input changed nothing"


@pytest.mark.parametrize("run", RUNS, indirect=True)
@pytest.mark.parametrize("cell, kwargs, hidden, steps, batch", CASES)
def test_training_replay_matches_eager_forward_and_backward(run, cell, kwargs, hidden, steps,
                                                            batch):
    """Forward and backward captured as one graph; two replays on new data give the eager
    outputs and gradients (each replay writes the gradients afresh, it does not add)."""
    module, [(x, hx), (x_new, hx_new)] = _module_and_inputs(cell, kwargs, hidden, steps, batch, run)
    expected_outputs, expected_grads = testing.outputs_and_grads(module, x_new, hx_new)
    static_x = x.clone().requires_grad_(True)
    static_hx = tuple(s.clone().requires_grad_(True) for s in _tensors(hx))
    leaves = [static_x, *static_hx, *module.parameters()]
    generator = torch.Generator().manual_seed(0)  # the seeds outputs_and_grads draws
    seeds = [torch.randn(o.shape, generator=generator, dtype=torch.float64).to(o)
             for o in expected_outputs]
    kept = {}

    def clear():
        for leaf in leaves:
            leaf.grad = None

    def train():
        hx_arg = static_hx if isinstance(hx, tuple) else static_hx[0]
        kept["outputs"] = testing.flatten_outputs(module(static_x, hx_arg))
        torch.autograd.backward(kept["outputs"], seeds)

    graphed = bench_graphs.capture(train, clear, "cuda")
    _copy_into(static_x, x_new)
    _copy_into(static_hx, hx_new)
    for _ in range(2):
        graphed.replay()
        torch.cuda.synchronize()
        outputs = [o.detach() for o in kept["outputs"]]
        grads = [leaf.grad for leaf in leaves]
        testing.assert_close_relative(outputs, expected_outputs, 1e-6, "replayed outputs")
        testing.assert_close_relative(grads, expected_grads, 1e-6, "replayed gradients")


def test_reduce_overhead_compile_matches_eager():
    """``torch.compile(mode="reduce-overhead")``: inductor around the custom ops, the whole
    forward and backward replayed as CUDA graphs; three steps on new data each."""
    from torch._dynamo.utils import counters

    counters.clear()
    module = fusedrnn.LSTM(INPUT_SIZE, 32, num_layers=2, bidirectional=True, device="cuda")
    compiled = torch.compile(module, mode="reduce-overhead")
    for step in range(3):
        generator = torch.Generator().manual_seed(step)
        x = testing.make_sequence(4, 6, INPUT_SIZE, device="cuda", generator=generator)
        expected_outputs, expected_grads = testing.outputs_and_grads(module, x)
        torch.compiler.cudagraph_mark_step_begin()
        outputs, grads = testing.outputs_and_grads(compiled, x)
        testing.assert_close_relative(outputs, expected_outputs, 1e-5, f"outputs, step {step}")
        testing.assert_close_relative(grads, expected_grads, 1e-5, f"gradients, step {step}")
    assert counters["inductor"]["cudagraph_skips"] == 0, "inductor ran without CUDA graphs"


@pytest.mark.parametrize("mode", bench_graphs.GRAPHED_MODES)
def test_bench_times_every_provider_as_graph_replays(mode):
    """``fusedrnn bench --cuda-graph``: torch.nn (cuDNN) and fusedrnn both capture and time."""
    case = bench.Case("lstm", 4, 8, INPUT_SIZE, 32, num_layers=2, bidirectional=True)
    result = bench.measure_case(case, mode, ["auto", "reference"], device="cuda", warmup=1,
                                repeats=3, cuda_graph=True)
    assert result["cuda_graph"]
    for entry in result["providers"]:
        assert entry["status"] == "ok", entry
        assert len(entry["times_s"]) == 3 and entry["peak_memory_bytes"] > 0
