"""The Triton backend against the reference backend, on the GPU when there is one, else on
the CPU in Triton's interpreter (small shapes).

float32: outputs, final states and every gradient within 1e-5 relative error. bfloat16 and
float16: the error against a float64 oracle at most 2x (outputs) / 3x (gradients) that of
the reference backend run in the same dtype. Every kernel (persistent, cooperative, one
launch per step) is covered by forcing it with ``FUSEDRNN_TRITON_KERNEL``; the cooperative
kernels' hidden units are split over programs (8 units each) at every size here but 8.
"""

import pytest
import torch

import fusedrnn
from fusedrnn import ops, testing
from fusedrnn.backends import BackendUnavailableError

pytestmark = pytest.mark.requires_triton

BOUND = 1e-5
KERNELS = ["persistent", "cooperative", "step"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def skip_unless_built(kernel_name):
    """Skip a test that runs ``kernel_name`` where the installed Triton cannot build it (the
    cooperative kernels need Triton 3.4: ``plan.cooperative_unsupported``)."""
    from fusedrnn.backends.triton import plan

    if kernel_name == "cooperative" and plan.cooperative_unsupported():
        pytest.skip(f"cooperative {plan.cooperative_unsupported()}")


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    skip_unless_built(request.param)
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", request.param)
    return request.param


# Module classes as test ids: "RNN-relu" is fusedrnn.RNN(..., nonlinearity="relu").
MODULES = ["LSTM", "GRU", "RNN-tanh", "RNN-relu"]
# The op-level cell names.
CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def _module(cell, *args, **kwargs):
    name, _, nonlinearity = cell.partition("-")
    if nonlinearity:
        kwargs["nonlinearity"] = nonlinearity
    return getattr(fusedrnn, name)(*args, device=DEVICE, **kwargs)


def _pair(cell, input_size, hidden, dtype=torch.float32, **kwargs):
    reference = _module(cell, input_size, hidden, dtype=dtype, backend="reference", **kwargs)
    triton_module = _module(cell, input_size, hidden, dtype=dtype, backend="triton", **kwargs)
    triton_module.load_state_dict(reference.state_dict())
    return reference, triton_module


def _compare(reference, candidate, x, hx=None):
    out_ref, grads_ref = testing.outputs_and_grads(reference, x, hx)
    out, grads = testing.outputs_and_grads(candidate, x, hx)
    testing.assert_close_relative(out, out_ref, BOUND, "outputs")
    testing.assert_close_relative(grads, grads_ref, BOUND, "gradients")


CASES = [
    ("plain", {}, 33, 7, 5),
    ("odd sizes, batch 1", {}, 17, 5, 1),
    ("one step", {}, 24, 1, 3),
    ("two layers, bidirectional", {"num_layers": 2, "bidirectional": True}, 20, 6, 4),
    ("no bias, batch_first", {"bias": False, "batch_first": True}, 16, 6, 3),
    ("more rows than one tile", {}, 16, 4, 19),
    ("one program owns every unit, two batch groups", {}, 8, 4, 19),
]


@pytest.mark.parametrize("cell", MODULES)
@pytest.mark.parametrize("name, kwargs, hidden, steps, batch", CASES, ids=[c[0] for c in CASES])
def test_padded_input_matches_reference(kernel, cell, name, kwargs, hidden, steps, batch):
    reference, candidate = _pair(cell, 6, hidden, **kwargs)
    x = testing.make_sequence(batch, steps, 6, batch_first=kwargs.get("batch_first", False),
                              device=DEVICE)
    _compare(reference, candidate, x)


@pytest.mark.parametrize("cell", MODULES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_lengths_and_initial_states_match_reference(kernel, cell, bidirectional):
    reference, candidate = _pair(cell, 5, 21, num_layers=2, bidirectional=bidirectional)
    packed = testing.make_packed(6, 9, 5, device=DEVICE)
    hx = testing.make_state(reference, 6)
    _compare(reference, candidate, packed, hx)


@pytest.mark.parametrize("cell", MODULES)
def test_unbatched_input_matches_reference(kernel, cell):
    reference, candidate = _pair(cell, 4, 12)
    _compare(reference, candidate, torch.randn(5, 4, device=DEVICE))


def test_projection_matches_reference(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", "persistent")
    reference, candidate = _pair("LSTM", 6, 30, proj_size=11, num_layers=2, bidirectional=True)
    _compare(reference, candidate, testing.make_packed(5, 7, 6, device=DEVICE),
             testing.make_state(reference, 5))


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell-tanh", "RNNCell-relu"])
def test_cells_run_on_triton(cell):
    reference, candidate = _pair(cell, 5, 19)
    _compare(reference, candidate, torch.randn(3, 5, device=DEVICE),
             testing.make_state(reference, 3))


def _check_low_precision(cell, dtype, oracle, x64):
    """The rule of the module docstring for ``cell`` in ``dtype``, against ``oracle`` (a
    float64 module) run on the packed ``x64``."""
    testing.assert_low_precision_rule(
        oracle, *_pair(cell, x64.data.shape[-1], oracle.hidden_size, dtype=dtype), x64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN-tanh"])
def test_low_precision_within_twice_the_references_error(kernel, cell, dtype):
    oracle = _module(cell, 8, 24, dtype=torch.float64)
    _check_low_precision(cell, dtype, oracle,
                         testing.make_packed(6, 8, 8, dtype=torch.float64, device=DEVICE))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_bfloat16_rule_holds_whatever_the_seed(monkeypatch, cell, seed):
    """Over seeds, not one: the interpreter's float32 -> bfloat16 cast truncates, and
    with it the rule failed on about half of them (cell_math.store_tile rounds now)."""
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", "persistent")
    torch.manual_seed(seed)
    oracle = _module(cell, 3, 17, dtype=torch.float64)
    _check_low_precision(cell, torch.bfloat16, oracle,
                         testing.make_packed(3, 5, 3, dtype=torch.float64, device=DEVICE))


def test_bfloat16_stores_round_to_nearest_even():
    """store_tile's bfloat16 values are torch's (round to nearest, ties to even, NaN and
    infinities kept), on a GPU and in the interpreter alike."""
    ties = torch.tensor([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8)], dtype=torch.float32)
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 3.3895e38, 0.0, -0.0])
    values = torch.cat([ties, special, torch.randn(55)]).to(DEVICE)
    out = torch.empty(64, dtype=torch.bfloat16, device=DEVICE)
    from triton_kernels import store_column

    store_column[(1,)](values, out, N=64)
    expected = values.to(torch.bfloat16)
    assert torch.equal(out.isnan(), expected.isnan())
    kept = ~expected.isnan()
    assert torch.equal(out[kept].view(torch.int16), expected[kept].view(torch.int16))


@pytest.mark.parametrize("value", ["1", "true", "ON", "yes", "y", "0", "false", "", " 1",
                                   "2"])
def test_the_interpreter_setting_is_read_as_triton_reads_it(monkeypatch, value):
    knobs = pytest.importorskip("triton.knobs")  # Triton 3.3 and newer

    from fusedrnn.backends import triton as triton_backend
    from fusedrnn.backends.triton import plan

    monkeypatch.setenv("TRITON_INTERPRET", value)
    on = knobs.runtime.interpret
    assert plan.interpreted() is on and triton_backend.interpreter_enabled() is on
    assert plan.full_precision_dot(torch.bfloat16) is on


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_relu_away_from_its_kink(kernel, dtype):
    """ReLU's derivative jumps at 0: a pre-activation within rounding of 0 takes either
    side in a low precision, in any backend, and moves the gradients by O(1). The rule holds
    where no pre-activation comes near 0: biases of +-2 and small weights keep every one at
    least 1 away (checked from the weights' norms), with dead and live units both present."""
    oracle = _module("RNN-relu", 8, 24, dtype=torch.float64)
    x64 = testing.make_packed(6, 8, 8, dtype=torch.float64, device=DEVICE)
    x64 = x64._replace(data=x64.data.clamp(-1, 1))
    with torch.no_grad():
        oracle.weight_ih_l0.uniform_(-0.05, 0.05)
        oracle.weight_hh_l0.uniform_(-0.008, 0.008)
        oracle.bias_ih_l0.copy_(2 * torch.randint(0, 2, (24,), device=DEVICE) - 1).mul_(2)
        oracle.bias_hh_l0.zero_()
        largest_h = 3.0  # relu(pre) with |pre - bias| <= 1
        reach = (oracle.weight_ih_l0.abs().sum(1) * x64.data.abs().max()
                 + oracle.weight_hh_l0.abs().sum(1) * largest_h)
    assert reach.max() <= 1.0
    assert (oracle.bias_ih_l0 > 0).any() and (oracle.bias_ih_l0 < 0).any()
    _check_low_precision("RNN-relu", dtype, oracle, x64)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN-tanh"])
def test_small_inputs_keep_their_relative_accuracy(kernel, cell):
    """Pre-activations near 0, where tanh as 2 sigmoid(2x) - 1 cancels (its 6e-8 absolute
    error was a 1e-3 relative error at inputs of 1e-4), against the reference's torch.tanh."""
    reference, candidate = _pair(cell, 4, 16, bias=False)
    _compare(reference, candidate, 1e-4 * testing.make_sequence(3, 5, 4, device=DEVICE))


@pytest.mark.parametrize("cell", MODULES)
def test_nan_input_gives_nan_where_the_reference_does(kernel, cell):
    reference, candidate = _pair(cell, 3, 8)
    x = torch.randn(4, 2, 3, device=DEVICE)
    x[1, 0, 0] = float("nan")
    out, expected = candidate(x)[0], reference(x)[0]
    assert torch.equal(out.isnan(), expected.isnan()) and out.isnan().any()


def test_relu_state_overflowing_to_inf_stays_inf_without_nan(kernel):
    """An unbounded ReLU state: padding units of a kernel's tiles must not turn inf * 0
    into a NaN that the next step's product spreads to every unit."""
    reference, candidate = _pair("RNN-relu", 3, 5)
    with torch.no_grad():
        for module in (reference, candidate):
            for weight in module.parameters():
                weight.abs_()
    x = torch.rand(4, 2, 3, device=DEVICE)
    x[0, 0, 0] = float("inf")
    out, expected = candidate(x)[0], reference(x)[0]
    assert expected[:, 0].isinf().all() and not expected.isnan().any()
    assert torch.equal(out.isinf(), expected.isinf()) and not out.isnan().any()


@pytest.mark.parametrize("cell", CELLS)
def test_opcheck_with_the_triton_backend(cell):
    steps, batch, hidden = 3, 2, 16
    gates = ops.GATES[cell] * hidden
    make = lambda *shape: torch.randn(*shape, device=DEVICE, requires_grad=True)  # noqa: E731
    args = [make(steps, batch, 4), make(gates, 4), make(gates, hidden), make(gates), make(gates),
            None, make(batch, hidden), make(batch, hidden) if cell == "lstm" else None,
            torch.tensor([3, 2], device=DEVICE), True, True, "triton"]
    torch.library.opcheck(ops.FORWARD[cell], args)


def test_an_explicit_request_the_kernels_cannot_run_raises_with_the_reason():
    module = fusedrnn.LSTM(4, 300, proj_size=8, backend="triton", device=DEVICE)
    with pytest.raises(BackendUnavailableError, match="proj_size needs the persistent kernel"):
        module(torch.randn(2, 1, 4, device=DEVICE))


@pytest.mark.parametrize("save", [True, False], ids=["save", "recompute"])
@pytest.mark.parametrize("kernel_name", ["persistent", "cooperative"])
@pytest.mark.parametrize("cell", CELLS)
def test_triton_ops_for_compile_match_the_dispatching_op(monkeypatch, cell, kernel_name, save):
    """The ``triton_op`` versions (what torch.compile traces on a GPU, for the kernels that
    run a sequence in one launch there) run eagerly here; run without ``save``, their
    backward recomputes the forward (ops.recomputes)."""
    from fusedrnn.backends.triton import traceable

    skip_unless_built(kernel_name)
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", kernel_name)
    forward_op, _ = traceable.pair(cell)
    hidden, gates = 12, ops.GATES[cell] * 12
    make = lambda *shape: torch.randn(*shape, device=DEVICE, requires_grad=True)  # noqa: E731
    tensors = [make(4, 3, 5), make(gates, 5), make(gates, hidden), make(gates), make(gates), None,
               make(3, hidden), make(3, hidden) if cell == "lstm" else None]
    lengths = torch.tensor([4, 2, 3], device=DEVICE)
    results = []
    for op, saving in ((forward_op, save), (ops.FORWARD[cell], True)):
        y, h_n, c_n, _, _ = op(*tensors, lengths, False, saving, "triton")
        loss = y.sum() + h_n.sum() + (c_n.sum() if cell == "lstm" else 0)
        grads = torch.autograd.grad(loss, [t for t in tensors if t is not None])
        results.append([y, h_n] + list(grads))
    testing.assert_close_relative(results[0], results[1], 1e-6, "triton_op vs dispatching op")


# On a GPU, at sizes where the plan splits the hidden units over many programs (768: 96
# cooperative programs of 8 units in 16-bit types; the step kernel in float32 unless forced;
# 256 at batch 64: 4 batch groups of 32 programs on an H200).
GPU_CASES = [
    ("LSTM", {}, 256, 32, 64),
    ("LSTM", {"batch_first": True}, 768, 20, 40),
    ("GRU", {"num_layers": 2, "bidirectional": True}, 130, 33, 5),
    ("GRU", {}, 768, 24, 16),
    ("RNN-tanh", {}, 1024, 24, 8),
]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("forced", ["planned", "cooperative", "step"])
@pytest.mark.parametrize("cell, kwargs, hidden, steps, batch", GPU_CASES)
@pytest.mark.parametrize("packed", [False, True])
def test_real_sizes_match_reference_on_gpu(monkeypatch, forced, cell, kwargs, hidden, steps,
                                           batch, packed):
    """``planned``: the plan's choice under the environment as it is (the GPU check takes
    the cooperative kernels out with FUSEDRNN_TRITON_KERNEL=persistent,step if they fail)."""
    if forced != "planned":
        monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", forced)
    reference, candidate = _pair(cell, 96, hidden, **kwargs)
    x = (testing.make_packed(batch, steps, 96, device=DEVICE) if packed else
         testing.make_sequence(batch, steps, 96, batch_first=kwargs.get("batch_first", False),
                               device=DEVICE))
    _compare(reference, candidate, x, testing.make_state(reference, batch))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_cooperative_low_precision_rule_at_hidden_768_on_gpu(monkeypatch, cell, dtype):
    monkeypatch.delenv("FUSEDRNN_TRITON_KERNEL", raising=False)
    from fusedrnn.backends.triton import cooperative, plan

    resident = cooperative.resident_programs(torch.device(DEVICE))
    assert plan.choose(cell.lower(), 768, 768, dtype, resident).kernel == "cooperative"
    oracle = _module(cell, 64, 768, dtype=torch.float64)
    _check_low_precision(cell, dtype, oracle,
                         testing.make_packed(16, 40, 64, dtype=torch.float64, device=DEVICE))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_vmap_over_the_triton_ops_is_one_call_and_matches_a_loop(monkeypatch, cell):
    """The ``triton_op``s (what runs on a GPU for the persistent and cooperative plans) have
    the dispatching ops' vmap rule: the mapped dimension joins the batch (no functorch
    fallback, whose warning would fail here)."""
    import warnings

    from fusedrnn.backends.triton import traceable

    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", "persistent")
    forward_op, _ = traceable.pair(cell)
    hidden, gates = 12, ops.GATES[cell] * 12
    make = lambda *shape: torch.randn(*shape, device=DEVICE)  # noqa: E731
    weights = [make(gates, 5), make(gates, hidden), make(gates), make(gates)]
    xs = make(3, 4, 2, 5)

    def run(x):
        h0 = torch.zeros(2, hidden, device=DEVICE)
        c0 = torch.zeros_like(h0) if cell == "lstm" else None
        return forward_op(x, *weights, None, h0, c0, None, False, False, "triton")[0]

    with warnings.catch_warnings():  # only the fallback's warning: Triton 3.6's interpreter
        warnings.filterwarnings("error", message=".*batching rule")  # warns for NumPy 2.3
        mapped = torch.func.vmap(run)(xs)
    testing.assert_close_relative([mapped], [torch.stack([run(x) for x in xs])], 1e-6, "vmap")


@pytest.mark.requires_cuda
def test_compile_fullgraph_with_triton_on_gpu():
    torch._dynamo.reset()
    module = fusedrnn.LSTM(16, 32, backend="triton", device="cuda")
    x = torch.randn(10, 4, 16, device="cuda")
    eager = module(x)[0]
    compiled = torch.compile(module, fullgraph=True)(x)[0]
    assert torch.allclose(eager, compiled, atol=1e-5)


@pytest.mark.parametrize("cell", ["GRU", "RNN-relu"])
def test_compile_fullgraph_with_triton_backend_matches_eager(cell):
    torch._dynamo.reset()
    module = _module(cell, 6, 16, num_layers=2, backend="triton")
    x = torch.randn(5, 3, 6, device=DEVICE)
    eager_out, eager_h = module(x)
    out, h = torch.compile(module, fullgraph=True, backend="aot_eager")(x)
    assert torch.allclose(out, eager_out, atol=1e-6) and torch.allclose(h, eager_h, atol=1e-6)


def test_compile_warns_about_nothing_in_the_triton_plan(monkeypatch):
    """Dynamo warns about an lru_cache-wrapped function it traces (the plan's check of the
    cooperative kernels once)."""
    import warnings

    from fusedrnn.backends.triton import plan

    assert not hasattr(plan.cooperative_unsupported, "cache_info")  # Dynamo warns only once
    skip_unless_built("cooperative")
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", "cooperative")
    torch._dynamo.reset()
    module = _module("GRU", 4, 9, backend="triton")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.compile(module, fullgraph=True, backend="aot_eager")(
            torch.randn(5, 3, 4, device=DEVICE))
    ours = [str(w.message) for w in caught if "fusedrnn" in str(w.message)
            or "fusedrnn" in str(w.filename)]
    assert not ours, ours
