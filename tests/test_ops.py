"""The operator layer: opcheck on every op, gradcheck of the hand-written backward."""

import pytest
import torch

import fusedrnn
from fusedrnn import ops, ops_bidirectional, testing

DT = torch.float64
CELLS = list(ops.GATES)


def _op_args(cell, *, steps=4, batch=3, input_size=2, hidden=3, proj=0, bias=True,
             lengths=False, reverse=False, requires_grad=True):
    return testing.make_op_arguments(
        cell, steps=steps, batch=batch, input_size=input_size, hidden=hidden, proj=proj,
        bias=bias, lengths=[steps, 1, steps - 1][:batch] if lengths else None, reverse=reverse,
        dtype=DT, requires_grad=requires_grad)


def _variants():
    for cell in CELLS:
        for lengths in (False, True):
            for reverse in (False, True):
                yield pytest.param(cell, 0, True, lengths, reverse,
                                   id=f"{cell}-len{int(lengths)}-rev{int(reverse)}")
        yield pytest.param(cell, 0, False, True, True, id=f"{cell}-nobias")
    yield pytest.param("lstm", 2, True, True, True, id="lstm-proj")
    yield pytest.param("lstm", 2, False, False, False, id="lstm-proj-nobias")


@pytest.mark.parametrize("cell, proj, bias, lengths, reverse", list(_variants()))
def test_opcheck_forward(cell, proj, bias, lengths, reverse):
    args = _op_args(cell, proj=proj, bias=bias, lengths=lengths, reverse=reverse)
    torch.library.opcheck(ops.FORWARD[cell], args)
    no_grad_args = _op_args(cell, proj=proj, bias=bias, lengths=lengths, reverse=reverse,
                            requires_grad=False)
    torch.library.opcheck(ops.FORWARD[cell], no_grad_args)


@pytest.mark.parametrize("cell, proj, bias, lengths, reverse", list(_variants()))
def test_opcheck_backward(cell, proj, bias, lengths, reverse):
    args = _op_args(cell, proj=proj, bias=bias, lengths=lengths, reverse=reverse,
                    requires_grad=False)
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lens = args[:9]
    y, h_n, c_n, ws_a, ws_b = ops.FORWARD[cell](*args)
    grad_c = torch.randn_like(c_n) if cell == "lstm" else None
    bwd_args = [torch.randn_like(y), torch.randn_like(h_n), grad_c, x, w_ih, w_hh, w_hr, h0,
                c0, lens, y, ws_a, ws_b, reverse, bias, "reference"]
    torch.library.opcheck(ops.BACKWARD[cell], bwd_args)


@pytest.mark.parametrize("cell, proj, bias, lengths, reverse", list(_variants()))
def test_gradcheck_single_layer(cell, proj, bias, lengths, reverse):
    args = _op_args(cell, proj=proj, bias=bias, lengths=lengths, reverse=reverse)
    tensors = [a for a in args[:8] if a is not None]

    def run(*inputs):
        it = iter(inputs)
        full = [next(it) if a is not None else None for a in args[:8]] + args[8:]
        y, h_n, c_n, _, _ = ops.FORWARD[cell](*full)
        return (y, h_n, c_n) if cell == "lstm" else (y, h_n)

    assert torch.autograd.gradcheck(run, tensors)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_gradcheck_functional_stack(cell):
    """Two bidirectional layers, packed variable lengths, initial states: gradcheck."""
    kwargs = {"proj_size": 2} if cell == "lstm" else {}
    module = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU, "rnn": fusedrnn.RNN}[cell](
        3, 4, num_layers=2, bidirectional=True, dtype=DT, **kwargs)
    weights = [w.detach().requires_grad_() for w in module._flat_weights]
    data = torch.randn(3, 5, 3, dtype=DT)
    lengths = torch.tensor([5, 2, 4])
    state = 2 if cell == "lstm" else 4
    h0 = torch.randn(4, 3, state, dtype=DT, requires_grad=True)
    c0 = torch.randn(4, 3, 4, dtype=DT, requires_grad=True)
    fn = getattr(fusedrnn.functional, cell)

    def run(data, h0, c0, *weights):
        packed = torch.nn.utils.rnn.pack_padded_sequence(data, lengths, batch_first=True,
                                                         enforce_sorted=False)
        hx = (h0, c0) if cell == "lstm" else h0
        extra = {"proj_size": 2} if cell == "lstm" else {}
        out, finals = fn(packed, hx, weights, num_layers=2, bidirectional=True, **extra)
        finals = finals if isinstance(finals, tuple) else (finals,)
        return (out.data,) + finals

    data.requires_grad_()
    inputs = (data, h0, c0 if cell == "lstm" else torch.zeros(1, dtype=DT)) + tuple(weights)
    assert torch.autograd.gradcheck(run, inputs)


def test_ops_exist_in_namespace():
    for cell in CELLS:
        assert hasattr(torch.ops.fusedrnn, f"{cell}_fwd")
        assert hasattr(torch.ops.fusedrnn, f"{cell}_bwd")


def test_op_functions_annotations_give_the_schemas(monkeypatch):
    """torch 2.11's ``triton_op`` ignores ``schema`` and infers one from the functions'
    annotations: those must spell the same schemas."""
    made = []

    def maker(name, fn, mutates_args, schema):
        made.append((fn, schema))
        return name

    monkeypatch.setattr(ops, "register_autograd", lambda *args: None)
    ops.define_pair("lstm", "_annotations", None, None, maker=maker)
    assert [schema for _, schema in made] == [ops.FORWARD_SCHEMA, ops.BACKWARD_SCHEMA]
    for fn, schema in made:
        assert torch.library.infer_schema(fn, mutates_args=()) == schema


def test_backward_handles_expanded_output_gradients():
    """Autograd may hand the backward a stride-0 gradient (from ``y.sum()``)."""
    args = _op_args("lstm", lengths=True)
    y, h_n, c_n, _, _ = ops.FORWARD["lstm"](*args)
    (y.sum() + h_n.sum()).backward()
    grads = [a.grad.clone() for a in args[:8] if a is not None]
    for a in args[:8]:
        if a is not None:
            a.grad = None
    y, h_n, c_n, _, _ = ops.FORWARD["lstm"](*args)
    torch.autograd.backward([y, h_n], [torch.ones_like(y).contiguous(), torch.ones_like(h_n)])
    for g, a in zip(grads, [a for a in args[:8] if a is not None]):
        assert torch.allclose(g, a.grad)


@pytest.mark.parametrize("cell, backend", [(cell, "reference") for cell in CELLS] + [
    pytest.param(cell, "cpu", marks=pytest.mark.requires_cpu_ext) for cell in CELLS])
def test_forward_without_save_keeps_no_workspace_and_the_same_outputs(cell, backend):
    args = _op_args(cell, lengths=True, reverse=True, requires_grad=False)
    args[-1] = backend
    full = ops.FORWARD[cell](*args)
    args[-2] = False
    lean = ops.FORWARD[cell](*args)
    assert lean[3].numel() == lean[4].numel() == 0
    for a, b in zip(full[:3], lean[:3]):
        assert torch.equal(a, b)


def _forward_call(cell, bidirectional, save, backend, **kwargs):
    """A forward op and arguments of it that require grad (both directions' own arguments
    alike where ``bidirectional``)."""
    args = _op_args(cell, **kwargs)
    args[-2:] = [save, backend]
    if not bidirectional:
        return ops.FORWARD[cell], args
    own = [a if a is None else a.detach().clone().requires_grad_() for a in args[1:8]]
    return (ops_bidirectional.FORWARD[cell],
            [args[0], *args[1:8], *own, args[8], save, backend])


def _leaf_grads(op, args, create_graph=False):
    """The gradients of every input of ``op(*args)`` that requires grad, from a random
    weighting of ``y`` and ``h_n`` (seeded: the same weighting for the same call)."""
    results = op(*args)
    torch.manual_seed(1)
    loss = sum((r * torch.randn_like(r)).sum() for r in results if r.requires_grad)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    return torch.autograd.grad(loss, leaves, create_graph=create_graph)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one", "bidir"])
@pytest.mark.parametrize("cell, backend", [(cell, "reference") for cell in CELLS] + [
    pytest.param(cell, "cpu", marks=pytest.mark.requires_cpu_ext) for cell in CELLS])
def test_backward_through_a_forward_without_save_recomputes_it(cell, backend, bidirectional):
    """Recorded by autograd without ``save`` (a graph captured under no_grad, run with grad
    enabled), the forward keeps no workspaces; its backward runs it again with ``save`` and
    gives the gradients a saving forward gives, bit for bit."""
    torch.manual_seed(0)
    op, args = _forward_call(cell, bidirectional, False, backend, lengths=True, reverse=True)
    lean = op(*args)
    assert lean[3].numel() == lean[4].numel() == 0 and lean[0].requires_grad
    got = _leaf_grads(op, args)
    expected = _leaf_grads(op, [*args[:-2], True, backend])
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one", "bidir"])
def test_double_backward_through_a_forward_without_save(bidirectional):
    torch.manual_seed(0)
    op, args = _forward_call("gru", bidirectional, False, "reference", lengths=True)
    got = _leaf_grads(op, args, create_graph=True)
    expected = _leaf_grads(op, [*args[:-2], True, "reference"], create_graph=True)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    assert all(g.requires_grad for g in got)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one", "bidir"])
def test_a_recomputing_backward_refuses_biases_changed_in_place(bidirectional):
    op, args = _forward_call("lstm", bidirectional, False, "reference")
    results = op(*args)
    with torch.no_grad():
        args[3].add_(1.0)
    with pytest.raises(RuntimeError, match="b_ih bias of a fusedrnn layer is at version"):
        results[0].sum().backward()


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_modules_under_no_grad_match_recorded_calls(cell):
    module = getattr(fusedrnn, cell)(3, 5, num_layers=2, bidirectional=True)
    x = torch.randn(4, 2, 3)
    recorded, _ = module(x)
    with torch.no_grad():
        plain, _ = module(x)
    assert recorded.requires_grad and not plain.requires_grad
    assert torch.equal(recorded.detach(), plain)
