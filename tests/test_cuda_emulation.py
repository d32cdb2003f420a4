"""The cuda backend's kernels and time loops on the CPU, through their host emulation
(fusedrnn/backends/cuda_emulation.py): the GPU tests' checks (backend_cases.py) of the
stepwise kernels, and of both designs of the persistent kernels (grid and cluster) at sizes
whose threads this CPU runs in seconds (a persistent launch runs one host thread per CUDA
thread), on every machine. Uninitialised memory is NaN here, in C++ too, so an element a
kernel forgets to write shows."""

import random

import pytest
import torch

import fusedrnn
from fusedrnn import _extension, backends, ops, testing
from fusedrnn.backends import BackendUnavailableError, Call, cuda_plan
from fusedrnn.backends.cuda_emulation import NAMESPACE, OPS, CudaEmulationBackend

from backend_cases import CASES, RNN_CASES, check_low_precision_rule, compare_with_reference

EMULATED = CudaEmulationBackend.name
needs_emulation = pytest.mark.requires_cuda_emulation
PERSISTENT = ["grid", "cluster"]
# module, options, hidden, steps, batch for the persistent kernels: blocks with fewer units
# than the others (40 = 3 x 12 + 4 in the grid design's forward), two batch tiles (two
# clusters), several blocks per cluster, one step, odd sizes
PERSISTENT_CASES = [
    ("LSTM", {}, 40, 9, 20),
    ("LSTM", {"num_layers": 2, "bidirectional": True}, 33, 7, 5),
    ("LSTM", {"batch_first": True}, 130, 4, 3),
    ("LSTM", {}, 33, 1, 1),
    ("GRU", {}, 40, 9, 20),
    ("GRU", {"num_layers": 2, "bidirectional": True, "bias": False}, 33, 7, 5),
    ("GRU", {"batch_first": True}, 130, 4, 3),
    ("GRU", {}, 33, 1, 1),
]


@pytest.fixture(autouse=True)
def emulation():
    """The backend registered for each test: the stepwise kernels unless ``design``."""
    backends.register(CudaEmulationBackend())
    yield
    backends.unregister(EMULATED)


@pytest.fixture
def design(request):
    """The backend registered with the kernels ``request.param`` (stepwise, grid, cluster)."""
    backends.register(CudaEmulationBackend(request.param))
    return request.param


@pytest.fixture(autouse=True)
def nan_filled_empty_tensors():
    """Deterministic mode fills every tensor ATen's ``empty`` makes with NaN, in C++ too."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    assert torch.utils.deterministic.fill_uninitialized_memory
    yield
    torch.use_deterministic_algorithms(before)


def test_emulation_is_built_with_the_cpu_extension():
    """One build switch makes both (setup.py), so these tests are never skipped where the
    cpu backend's are not."""
    assert _extension.CUDA_EMULATION.status()[0] == _extension.CPU.status()[0]


@needs_emulation
@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_of_the_cuda_extension_has_an_emulated_cpu_kernel(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{name}", "CPU")


@needs_emulation
@pytest.mark.parametrize("design, cell, kwargs, ops", [
    ("stepwise", "LSTM", {}, ("lstm_recurrence_fwd", "lstm_recurrence_bwd")),
    ("grid", "LSTM", {"proj_size": 3}, ("lstm_proj_recurrence_fwd", "lstm_proj_recurrence_bwd")),
    ("stepwise", "GRU", {}, ("gru_recurrence_fwd", "gru_recurrence_bwd")),
    ("cluster", "RNN", {}, ("rnn_recurrence_fwd", "rnn_recurrence_bwd")),
    ("grid", "LSTM", {}, ("lstm_persistent_fwd", "lstm_persistent_bwd")),
    ("cluster", "GRU", {}, ("gru_persistent_fwd", "gru_persistent_bwd"))], indirect=["design"])
def test_forward_and_backward_run_the_emulated_ops(design, cell, kwargs, ops):
    """The design's ops (the projected LSTM and the RNN are stepwise in every design), not
    the cpu backend's of the same names: those would match the reference too. The profiler
    records every op the dispatcher runs, nested ones included."""
    module = getattr(fusedrnn, cell)(4, 8, backend=EMULATED, **kwargs)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        module(torch.randn(3, 2, 4, requires_grad=True))[0].sum().backward()
    names = {event.name for event in profile.events()}
    assert {f"{NAMESPACE}::{op}" for op in ops} <= names
    assert not any(name.startswith("fusedrnn::") and "recurrence" in name for name in names)


@needs_emulation
@pytest.mark.parametrize("cell, gates, kwargs", [("LSTM", 4, {}), ("LSTM", 4, {"proj_size": 3}),
                                                ("RNN", 1, {})])
def test_the_input_projection_adds_the_bias(cell, gates, kwargs):
    """The LSTM's and RNN's summed bias goes into the input projection's product (addmm),
    not into a pass of the time loop's own over the (T, B, G) projection: on a GPU a read
    and a write of it and a new buffer (4.3 GB at T1024 B256 H1024 in float32), per layer
    and direction."""
    module = getattr(fusedrnn, cell)(4, 8, backend=EMULATED, **kwargs)
    x = torch.randn(5, 3, 4)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=True) as profile:
        module(x)
    adds = [event.input_shapes for event in profile.events()
            if event.name in ("aten::add", "aten::add_")]
    assert not [shapes for shapes in adds if shapes and shapes[0] == [5, 3, gates * 8]], adds
    assert "aten::addmm" in {event.name for event in profile.events()}


@needs_emulation
@pytest.mark.parametrize("cell, kwargs, hidden, steps, batch", CASES)
@pytest.mark.parametrize("packed", [False, True])
def test_stepwise_kernels_match_reference(cell, kwargs, hidden, steps, batch, packed):
    compare_with_reference(getattr(fusedrnn, cell), kwargs, hidden, steps, batch, packed,
                           backend=EMULATED, device="cpu")


@needs_emulation
@pytest.mark.parametrize("kwargs, hidden, steps, batch", RNN_CASES)
@pytest.mark.parametrize("packed", [False, True])
def test_rnn_kernels_match_reference(kwargs, hidden, steps, batch, packed):
    compare_with_reference(fusedrnn.RNN, kwargs, hidden, steps, batch, packed,
                           backend=EMULATED, device="cpu")


@needs_emulation
@pytest.mark.parametrize("design", PERSISTENT, indirect=True)
@pytest.mark.parametrize("cell, kwargs, hidden, steps, batch", PERSISTENT_CASES)
@pytest.mark.parametrize("packed", [False, True])
def test_persistent_kernels_match_reference(design, cell, kwargs, hidden, steps, batch,
                                            packed):
    compare_with_reference(getattr(fusedrnn, cell), kwargs, hidden, steps, batch, packed,
                           backend=EMULATED, device="cpu")


@needs_emulation
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_stepwise_low_precision_rule(cell, dtype):
    check_low_precision_rule(cell, dtype, steps=40, backend=EMULATED, device="cpu")


@needs_emulation
@pytest.mark.parametrize("design", PERSISTENT, indirect=True)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_persistent_low_precision_rule(design, cell, dtype):
    check_low_precision_rule(cell, dtype, steps=30, backend=EMULATED, device="cpu",
                             hidden=48, batch=20)


@needs_emulation
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_nan_input_gives_nan_where_the_reference_does(nonlinearity):
    reference = fusedrnn.RNN(3, 8, nonlinearity=nonlinearity)
    candidate = fusedrnn.RNN(3, 8, nonlinearity=nonlinearity, backend=EMULATED)
    candidate.load_state_dict(reference.state_dict())
    x = torch.randn(4, 2, 3)
    x[1, 0, 0] = float("nan")
    out, expected = candidate(x)[0], reference(x)[0]
    assert torch.equal(out.isnan(), expected.isnan()) and out.isnan().any()


def _layer_args(cell, proj, bias, reverse):
    """The forward op's arguments but the backend (T 6, B 4, I 5, H 9, state P), with lengths
    that end rows early, one of them at step 1."""
    gates, state = ops.GATES[cell] * 9, proj or 9
    w_hr = torch.randn(proj, 9) * 0.3 if proj else None
    b_ih, b_hh = (torch.randn(gates), torch.randn(gates)) if bias else (None, None)
    c0 = torch.randn(4, 9) if cell == "lstm" else None
    return [torch.randn(6, 4, 5), torch.randn(gates, 5), torch.randn(gates, state) * 0.3,
            b_ih, b_hh, w_hr, torch.randn(4, state), c0, torch.tensor([6, 1, 4, 6]), reverse,
            True]


@needs_emulation
@pytest.mark.parametrize("design", ["stepwise"] + PERSISTENT, indirect=True)
@pytest.mark.parametrize("cell, proj", [("lstm", 0), ("lstm", 4), ("gru", 0), ("rnn_tanh", 0),
                                        ("rnn_relu", 0)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_layer_ops_give_the_reference_backends_results(design, cell, proj, bias, reverse):
    """One layer's forward and backward ops: every result, the saved workspaces (their
    layout is the reference backend's, so backends are interchangeable) and the outputs past
    a row's end (zero) included, where the module's tests see only what packing keeps."""
    args = _layer_args(cell, proj, bias, reverse)
    forward = {name: ops.FORWARD[cell](*args, name) for name in ("reference", EMULATED)}
    for got, want in zip(forward[EMULATED], forward["reference"]):
        testing.assert_close_relative([got], [want], 1e-5, "forward results")
    y, h_n, c_n, ws_a, ws_b = forward["reference"]
    x, w_ih, w_hh, _, _, w_hr, h0, c0, lengths = args[:9]
    grads = (torch.randn_like(y), torch.randn_like(h_n),
             torch.randn_like(c_n) if cell == "lstm" else None)
    backward = {name: ops.BACKWARD[cell](*grads, x, w_ih, w_hh, w_hr, h0, c0, lengths, y, ws_a,
                                         ws_b, reverse, bias, name)
                for name in ("reference", EMULATED)}
    for got, want in zip(backward[EMULATED], backward["reference"]):
        testing.assert_close_relative([got], [want], 1e-5, "gradients")


def _op_calls(reverse):
    """A call of every op (batch 3, hidden 8, 5 steps, lengths), the persistent ones in both
    designs (4 units per forward block): (op, args) pairs."""
    namespace = getattr(torch.ops, NAMESPACE)
    xproj, w_hh, state = torch.randn(5, 3, 32), torch.randn(32, 8), torch.randn(3, 8)
    lengths = torch.tensor([5, 2, 4])
    calls = []
    for cell in ("lstm", "gru"):
        inputs = _inputs(cell, 8, 3, 5, torch.float32, torch.Generator().manual_seed(0))
        for plans in (None, ((4, False), (16, False)), ((4, True), (16, True))):
            _run_ops(cell, inputs, lengths, reverse, plans, calls=calls)
    w_proj, h_proj = torch.randn(32, 3), torch.randn(3, 3)
    fwd = (xproj, None, w_proj, torch.randn(3, 8), h_proj, state, lengths, reverse, True)
    y, _, _, gates, cells = namespace.lstm_proj_recurrence_fwd(*fwd)
    calls += [(namespace.lstm_proj_recurrence_fwd, fwd),
              (namespace.lstm_proj_recurrence_bwd, (torch.randn_like(y), h_proj, state, w_proj,
                                                    fwd[3], state, lengths, gates, cells,
                                                    reverse))]
    rnn_x, rnn_w = xproj[..., :8].contiguous(), w_hh[:8].contiguous()
    fwd = (rnn_x, None, rnn_w, state, lengths, reverse, True)
    y, _ = namespace.rnn_recurrence_fwd(*fwd)
    calls += [(namespace.rnn_recurrence_fwd, fwd),
              (namespace.rnn_recurrence_bwd, (torch.randn_like(y), state, rnn_w, y, lengths,
                                              reverse, True))]
    return calls


@needs_emulation
@pytest.mark.parametrize("reverse", [False, True])
def test_ops_keep_to_their_schemas(reverse):
    """No op writes to an input (the schemas declare none mutable) or returns an alias of
    one: torch.library.opcheck's schema test, for every op, both directions."""
    calls = _op_calls(reverse)
    assert {op.default.name() for op, _ in calls} == {f"{NAMESPACE}::{name}" for name in OPS}
    for op, args in calls:
        torch.library.opcheck(op.default, args, test_utils="test_schema")


@needs_emulation
def test_bad_arguments_are_refused_naming_them():
    namespace = getattr(torch.ops, NAMESPACE)
    xproj, w_hh, state = torch.randn(5, 3, 32), torch.randn(32, 8), torch.randn(3, 8)
    with pytest.raises(RuntimeError, match="w_hh"):
        namespace.lstm_recurrence_fwd(xproj, None, w_hh.double(), state, state, None, False,
                                      True)
    with pytest.raises(RuntimeError, match="units must be a positive multiple of 4, got 6"):
        namespace.lstm_persistent_fwd(xproj, None, w_hh, state, state, None, False, True, 6,
                                      False)
    with pytest.raises(RuntimeError, match=r"units .*\(16 for the backward kernels\), got 8"):
        y = torch.randn(5, 3, 8)
        namespace.lstm_persistent_bwd(y, state, state, w_hh, state, None, xproj, y, False, 8,
                                      False)


def test_auto_never_chooses_it(monkeypatch):
    """Even where it is the only backend auto could try."""
    assert backends.select(EMULATED, torch.device("cpu"), torch.float32).name == EMULATED
    monkeypatch.setattr(backends, "_BY_PRIORITY", [EMULATED])
    with pytest.raises(BackendUnavailableError, match="no backend can run this call"):
        backends.select("auto", torch.device("cpu"), torch.float32, Call("lstm", 8, 8))


def test_unknown_kernels_are_refused():
    with pytest.raises(ValueError, match="kernel must be one of stepwise, grid, cluster"):
        CudaEmulationBackend("persistent")


def _inputs(cell, hidden, batch, steps, dtype, generator):
    """Random inputs of a recurrence op's forward and backward, rounded to ``dtype``."""
    gates = ops.GATES[cell] * hidden
    shapes = {"xproj": (steps, batch, gates), "w_hh": (gates, hidden), "h0": (batch, hidden),
              "c0": (batch, hidden), "bias": (gates,), "b_hh": (gates,),
              "grad_y": (steps, batch, hidden), "grad_h": (batch, hidden),
              "h_prev": (steps, batch, hidden)}
    inputs = {name: torch.randn(*shape, generator=generator) for name, shape in shapes.items()}
    inputs["w_hh"] *= 0.9 / hidden ** 0.5  # products of order one at any hidden size
    return {name: tensor.to(dtype) for name, tensor in inputs.items()}


def _run_ops(cell, inputs, lengths, reverse, plans=None, dtype=None, calls=None):
    """The forward then the backward op of ``cell`` on ``inputs`` (cast to ``dtype``): the
    persistent ops with ``plans``, ``((units, cluster), (units, cluster))`` for the forward
    and the backward, else the stepwise ops. Returns the forward's results and the backward's;
    appends ``(op, args)`` of both calls to ``calls`` when given."""
    v = {name: tensor.to(dtype or tensor.dtype) for name, tensor in inputs.items()}
    kind = "recurrence" if plans is None else "persistent"
    fwd_plan, bwd_plan = ((), ()) if plans is None else plans
    namespace = getattr(torch.ops, NAMESPACE)
    forward, backward = (getattr(namespace, f"{cell}_{kind}_{d}") for d in ("fwd", "bwd"))
    if cell == "lstm":
        fwd_args = (v["xproj"], v["bias"], v["w_hh"], v["h0"], v["c0"], lengths, reverse, True,
                    *fwd_plan)
        out = forward(*fwd_args)
        bwd_args = (v["grad_y"], v["grad_h"], v["grad_h"], v["w_hh"], v["c0"], lengths, out[3],
                    out[4], reverse, *bwd_plan)
    else:
        fwd_args = (v["xproj"], v["bias"], v["w_hh"], v["b_hh"], v["h0"], lengths, reverse, True,
                    *fwd_plan)
        out = forward(*fwd_args)
        bwd_args = (v["grad_y"], v["grad_h"], v["w_hh"], v["h_prev"], lengths, out[2], out[3],
                    reverse, *bwd_plan)
    grads = backward(*bwd_args)
    if calls is not None:
        calls += [(forward, fwd_args), (backward, bwd_args)]
    return list(out), list(grads)


@needs_emulation
@pytest.mark.parametrize("seed", range(24))
def test_persistent_ops_match_the_stepwise_ops_on_random_shapes(seed):
    """Shapes the planner never picks too (more units than hidden units, partial blocks, one
    step, three batch tiles), both directions and designs. float32: within 1e-5 of the
    stepwise ops; bfloat16: by the low-precision rule, with the stepwise ops in float32 as
    the oracle and in bfloat16 as the reference."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    cell, dtype = rng.choice(["lstm", "gru"]), rng.choice([torch.float32, torch.bfloat16])
    hidden, batch = rng.choice([1, 3, 15, 17, 33, 48]), rng.choice([1, 5, 16, 17, 33])
    steps, units, cluster = rng.choice([1, 2, 5]), rng.choice([4, 12, 20, 64]), rng.random() < 0.5
    reverse = rng.random() < 0.5
    lengths = (torch.randint(1, steps + 1, (batch,), generator=generator)
               if rng.random() < 0.6 else None)
    inputs = _inputs(cell, hidden, batch, steps, dtype, generator)
    out, grads = _run_ops(cell, inputs, lengths, reverse, ((units, cluster), (16, cluster)))
    low_out, low_grads = _run_ops(cell, inputs, lengths, reverse)
    if dtype == torch.float32:
        testing.assert_close_relative(out, low_out, 1e-5, f"forward (seed {seed})")
        testing.assert_close_relative(grads, low_grads, 1e-5, f"backward (seed {seed})")
        return
    oracle_out, oracle_grads = _run_ops(cell, inputs, lengths, reverse, dtype=torch.float32)
    testing.assert_within_low_precision_rule(out, low_out, oracle_out, testing.OUTPUT_FACTOR,
                                             f"forward (seed {seed})")
    testing.assert_within_low_precision_rule(grads, low_grads, oracle_grads,
                                             testing.GRADIENT_FACTOR, f"backward (seed {seed})")


@needs_emulation
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_persistent_ops_at_the_anchor_hidden_size_with_an_h200_plan(cell):
    """Hidden 768 (the FlashRNN anchor's), batch 16, 3 steps, with lengths, in the geometry
    cuda_plan gives an H200: the forward in one cluster of 16 blocks of 48 units, the
    backward on a grid of 48 blocks of 16 (no cluster holds it). float32, against the
    stepwise ops. (The grid forward, 96 blocks of 8 units, matched too, in a one-off run:
    24,576 threads take 15 s here.)"""
    generator = torch.Generator().manual_seed(0)
    units = cuda_plan.cluster_units(cell, 768)
    assert -(-768 // units) == cuda_plan.MAX_CLUSTER  # the 16-block cluster this test is for
    inputs = _inputs(cell, 768, 16, 3, torch.float32, generator)
    lengths = torch.randint(1, 4, (16,), generator=generator)
    out, grads = _run_ops(cell, inputs, lengths, False, ((units, True), (16, False)))
    want_out, want_grads = _run_ops(cell, inputs, lengths, False)
    testing.assert_close_relative(out, want_out, 1e-5, "forward")
    testing.assert_close_relative(grads, want_grads, 1e-5, "backward")
