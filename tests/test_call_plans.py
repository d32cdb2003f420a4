"""Plain eager calls: the ops' implementation called without the dispatcher, and the plans
``functional`` keeps per call signature (checks passed, sizes, backend, ops)."""

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import fusedrnn
from fusedrnn import backends, functional, ops, ops_bidirectional
from fusedrnn.testing import make_op_arguments, torch_twin


class _OpNames(TorchDispatchMode):
    """Records the name of every op that reaches the dispatch mode."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func._schema.name)
        return func(*args, **(kwargs or {}))


class _Subclass(torch.Tensor):
    pass


class _PassingFunctionMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.fixture
def fresh_plans(monkeypatch):
    """No plan from another test, and none of this test's left behind."""
    plans = {}
    monkeypatch.setattr(functional, "_PLANS", plans)
    return plans


def test_dispatcher_passes_on_only_plain_eager_calls():
    x = torch.randn(2, 3)
    plain = [x, torch.nn.Parameter(torch.randn(3))]
    assert ops.dispatcher_passes_on(plain)
    assert not ops.dispatcher_passes_on([x, torch.empty(3, device="meta")])
    assert not ops.dispatcher_passes_on([x, x.as_subclass(_Subclass)])
    with torch.autocast("cpu"):
        assert not ops.dispatcher_passes_on(plain)
    with torch.profiler.profile():
        assert not ops.dispatcher_passes_on(plain)
    with _OpNames():
        assert not ops.dispatcher_passes_on(plain)
    with _PassingFunctionMode():
        assert not ops.dispatcher_passes_on(plain)
    with torch.device("cpu"):  # a torch-function mode too
        assert not ops.dispatcher_passes_on(plain)
    seen = []
    torch.vmap(lambda row: seen.append(ops.dispatcher_passes_on([row])) or row)(x)
    assert seen == [False]
    torch.jit.trace(lambda t: seen.append(ops.dispatcher_passes_on([t])) or t * 2, (x,),
                    check_trace=False)
    assert seen == [False, False]
    assert ops.dispatcher_passes_on(plain)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_plain_calls_skip_the_dispatcher_and_modes_still_see_the_ops(
        monkeypatch, fresh_plans, bidirectional, training):
    pair = ops_bidirectional if bidirectional else ops
    forward_op, backward_op = pair.FORWARD["lstm"], pair.BACKWARD["lstm"]
    direct_calls = []
    for op in (forward_op, backward_op):
        implementation = ops.direct(op)
        monkeypatch.setitem(ops._IMPLEMENTATION, op, lambda *args, f=implementation, op=op: (
            direct_calls.append(op), f(*args))[1])
    cpu = backends.get("cpu")
    kernel_of = cpu.direct_forward
    monkeypatch.setattr(cpu, "direct_forward", lambda cell, dtype: (
        lambda *args, f=kernel_of(cell, dtype): (direct_calls.append("kernel"), f(*args))[1]))
    module = fusedrnn.LSTM(3, 5, bidirectional=bidirectional)
    x = torch.randn(4, 2, 3)

    def run():
        with torch.set_grad_enabled(training):
            output, (h, c) = module(x)
        if not training:
            return [output, h, c]
        return [output, h, c, *torch.autograd.grad(output.sum() + c.sum(),
                                                   list(module.parameters()))]

    plain = run()
    # Inference of one direction on the cpu backend calls its kernel itself (direct_forward).
    on_cpu = {plan.backend for plan in fresh_plans.values()} == {"cpu"}
    expected_direct = ([forward_op, backward_op] if training
                       else ["kernel"] if on_cpu and not bidirectional else [forward_op])
    assert direct_calls == expected_direct
    mode = _OpNames()
    with mode:
        seen = run()
    assert direct_calls == expected_direct  # the moded calls went through the ops
    assert forward_op._qualname in mode.names
    assert (backward_op._qualname in mode.names) == training
    assert len(plain) == len(seen)
    for a, b in zip(plain, seen):
        assert torch.equal(a, b)
    assert plain[0].requires_grad == seen[0].requires_grad == training


def _outputs_match_torch(module, x, hx=None):
    twin = torch_twin(module)
    ours = module(x, hx)
    theirs = twin(x, hx)
    flat = lambda out: [out[0], *(out[1] if isinstance(out[1], tuple) else [out[1]])]  # noqa: E731
    for a, b in zip(flat(ours), flat(theirs)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cls", [fusedrnn.LSTM, fusedrnn.GRU, fusedrnn.RNN])
def test_a_kept_plan_runs_every_layout_as_torch_does(fresh_plans, cls):
    module = cls(3, 5, num_layers=2)
    for batch_first in (False, True):
        module.batch_first = batch_first
        for x in (torch.randn(4, 2, 3), torch.randn(4, 3)):  # batched, unbatched
            layers = module.num_layers
            shape = (layers, 5) if x.dim() == 2 else (layers, x.shape[0 if batch_first else 1], 5)
            hx = torch.randn(shape)
            hx = (hx, torch.randn(shape)) if cls is fusedrnn.LSTM else hx
            for given in (None, hx):
                kept = len(fresh_plans)
                with torch.no_grad():
                    _outputs_match_torch(module, x, given)  # makes the plan
                    assert len(fresh_plans) == kept + 1
                    _outputs_match_torch(module, x, given)  # runs it
                    assert len(fresh_plans) == kept + 1


def test_a_kept_plan_still_refuses_other_signatures(fresh_plans):
    module = fusedrnn.LSTM(3, 5)
    module(torch.randn(4, 2, 3))
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        module(torch.randn(4, 2, 4))
    with pytest.raises(RuntimeError, match="Expected hx\\[0\\] \\(h_0\\) size \\(1, 2, 5\\)"):
        module(torch.randn(4, 2, 3), (torch.zeros(1, 3, 5), torch.zeros(1, 2, 5)))
    with pytest.raises(ValueError, match="input dtype \\(torch.float64\\)"):
        module(torch.randn(4, 2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="hx must be a tuple"):
        module(torch.randn(4, 2, 3), torch.zeros(1, 2, 5))
    assert len(fresh_plans) == 1


def test_plans_follow_grad_mode_dtype_and_the_backend_asked_for(monkeypatch, fresh_plans):
    module = fusedrnn.GRU(3, 5)
    x = torch.randn(4, 2, 3)
    with torch.no_grad():
        inference, _ = module(x)
    output, _ = module(x)
    assert not inference.requires_grad and output.requires_grad
    output.sum().backward()
    assert all(p.grad is not None for p in module.parameters())
    assert sorted(plan.save for plan in fresh_plans.values()) == [False, True]

    monkeypatch.setenv(backends.ENV_VAR, "reference")
    with torch.no_grad():
        module(x)
        module.double()
        module(x.double())
    assert [plan.backend for plan in fresh_plans.values()][-2:] == ["reference", "reference"]


def test_registering_a_backend_makes_new_plans(fresh_plans):
    module = fusedrnn.RNN(3, 5)
    x = torch.randn(4, 2, 3)
    module(x)
    before = backends.generation()

    class Late(backends.Backend):
        name = "late_test_double"

    backends.register(Late())
    try:
        module(x)
    finally:
        backends.unregister(Late.name)
    module(x)
    assert backends.generation() == before + 2
    assert len(fresh_plans) == 3


@pytest.mark.parametrize("cls", [fusedrnn.LSTMCell, fusedrnn.GRUCell, fusedrnn.RNNCell])
def test_cells_run_their_kept_plans_as_torch_does(fresh_plans, cls):
    cell = cls(3, 5)
    twin = torch_twin(cell)
    for x in (torch.randn(2, 3), torch.randn(3)):  # batched, unbatched
        state = torch.randn(*x.shape[:-1], 5)
        for hx in (None, (state, torch.randn_like(state)) if cls is fusedrnn.LSTMCell else state):
            for _ in range(2):  # makes the plan, then runs it
                ours, theirs = cell(x, hx), twin(x, hx)
                for a, b in zip(*(o if isinstance(o, tuple) else (o,) for o in (ours, theirs))):
                    torch.testing.assert_close(a, b)
                    assert a.requires_grad
    assert len(fresh_plans) == 4


@pytest.mark.requires_cpu_ext
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_the_cpu_backends_own_direct_forward_is_its_op(cell):
    """``ops.direct`` of a call autograd does not record, float32 or float64 on the cpu
    backend: the extension's kernel itself, whose results are the op's, bit for bit."""
    op = ops.FORWARD[cell]
    for dtype in (torch.bfloat16, torch.float16):
        assert ops.direct(op, "cpu", dtype) is ops.direct(op)  # widened or sized: forward()
    assert ops.direct(op, "reference", torch.float32) is ops.direct(op)
    for proj, bias, lengths, reverse, save in [(0, True, None, False, False),
                                              (0, False, [3, 1], True, True),
                                              (2, True, [2, 3], False, True)]:
        if proj and cell != "lstm":
            continue
        for dtype in (torch.float32, torch.float64):
            args = make_op_arguments(
                cell, steps=3, batch=2, input_size=4, hidden=5, proj=proj, bias=bias,
                lengths=lengths, reverse=reverse, save=save, backend="cpu", dtype=dtype,
                generator=torch.Generator().manual_seed(5))
            args[0] = args[0].transpose(0, 1).contiguous().transpose(0, 1)  # strided x
            call = ops.direct(op, "cpu", dtype)
            assert call is not ops.direct(op)
            got, want = call(*args), op(*args)
            assert len(got) == len(want) == 5
            for a, b in zip(got, want):
                assert a.dtype == b.dtype and torch.equal(a, b)
