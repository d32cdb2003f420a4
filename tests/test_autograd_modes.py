"""Differentiation beyond one reverse pass: gradients of gradients, vmap, traces, and
forward-mode AD refused by name rather than answered wrongly (it would see zero tangents)."""

import pytest
import torch

import fusedrnn
from fusedrnn import testing

CELLS = ["LSTM", "GRU", "RNN"]


def test_a_call_on_constants_inside_jvp_runs():
    """Under torch.func.jvp, a layer whose input and weights do not depend on the primals is
    a constant: it runs, and the tangent is the rest of the function's."""
    module = fusedrnn.GRU(3, 5, dtype=torch.float64)
    constant = torch.randn(4, 2, 3, dtype=torch.float64)
    expected = module(constant)[0].sum()
    t = torch.randn(3, dtype=torch.float64)
    value, tangent = torch.func.jvp(lambda p: 2 * p + module(constant)[0].sum(), (t,),
                                    (torch.ones_like(t),))
    assert torch.allclose(value, 2 * t + expected) and torch.equal(tangent, 2 * torch.ones_like(t))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("transform", ["jvp", "jacfwd"])
def test_forward_mode_ad_is_refused_by_name(cell, transform):
    module = getattr(fusedrnn, cell)(3, 5, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    run = lambda t: module(t)[0]  # noqa: E731
    with pytest.raises(NotImplementedError, match=f"{cell}: forward-mode AD"):
        if transform == "jvp":
            torch.func.jvp(run, (x,), (torch.randn_like(x),))
        else:
            torch.func.jacfwd(run)(x)


DOUBLE_BACKWARD_CASES = [
    ("LSTM", {}), ("LSTM", {"proj_size": 3, "bidirectional": True}), ("GRU", {"bias": False}),
    ("GRU", {"num_layers": 2, "bidirectional": True}), ("RNN", {"nonlinearity": "tanh"}),
    ("RNN", {"nonlinearity": "relu", "bidirectional": True}),
]


@pytest.mark.parametrize("cell, kwargs", DOUBLE_BACKWARD_CASES)
@pytest.mark.parametrize("packed", [False, True])
def test_gradient_penalty_matches_torch(cell, kwargs, packed):
    """A gradient of the gradients (create_graph=True, then backward through them), as a
    gradient penalty takes it: the parameters' and the input's gradients equal torch's."""
    module = getattr(fusedrnn, cell)(3, 5, dtype=torch.float64, **kwargs)
    twin = testing.torch_twin(module)
    generator = torch.Generator().manual_seed(3)
    if packed:
        x = testing.make_packed(4, 6, 3, dtype=torch.float64, generator=generator)
        leaf = x.data.detach().requires_grad_()
        x = x._replace(data=leaf)
    else:
        leaf = x = torch.randn(6, 4, 3, dtype=torch.float64, generator=generator,
                               requires_grad=True)
    results = []
    for model in (module, twin):
        out = model(x)[0]
        out = out.data if packed else out
        grad_x, = torch.autograd.grad(out.pow(2).sum(), leaf, create_graph=True)
        penalty = grad_x.pow(2).sum() + out.sum()
        results.append(torch.autograd.grad(penalty, [leaf, *model.parameters()]))
    testing.assert_close_relative(results[0], results[1], 1e-10, "second-order gradients")


def test_create_graph_gradient_of_a_tensor_given_twice_counts_each_slot_once():
    """``b_ih is b_hh``: each slot's gradient once, with and without create_graph."""
    module = fusedrnn.GRU(3, 4, dtype=torch.float64)
    bias = torch.randn(12, dtype=torch.float64, requires_grad=True)
    weights = [module.weight_ih_l0, module.weight_hh_l0, bias, bias]
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    grads = []
    for create_graph in (False, True):
        out, _ = fusedrnn.functional.gru(x, None, weights)
        grads.append(torch.autograd.grad(out.pow(2).sum(), bias, create_graph=create_graph)[0])
    testing.assert_close_relative([grads[1]], [grads[0]], 1e-10, "tied bias gradient")


@pytest.mark.parametrize("backend", ["reference",
                                     pytest.param("cpu", marks=pytest.mark.requires_cpu_ext)])
def test_create_graph_under_autocast_matches_the_plain_backward(backend):
    """Under CPU autocast the GRU keeps its dtype (as nn.GRU): neither its op nor the
    recomputed graph of a create_graph backward may be lowered inside."""
    module = fusedrnn.GRU(3, 8, backend=backend)
    x = torch.randn(5, 2, 3, requires_grad=True)
    grads = []
    for create_graph in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = module(x)
            assert out.dtype == torch.float32
            grads.append(torch.autograd.grad(out.pow(2).sum(), x, create_graph=create_graph)[0])
    testing.assert_close_relative([grads[1]], [grads[0]], 1e-5, "grad x")


def test_gradgradcheck():
    module = fusedrnn.GRU(2, 3, bidirectional=True, dtype=torch.float64)
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: module(a, b)[0], (x, h0))


@pytest.mark.parametrize("cell", CELLS)
def test_first_order_gradients_with_create_graph_match_torch(cell):
    module = getattr(fusedrnn, cell)(3, 5, num_layers=2, bidirectional=True, dtype=torch.float64)
    twin = testing.torch_twin(module)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    ours, = torch.autograd.grad(module(x)[0].pow(2).sum(), x, create_graph=True)
    theirs, = torch.autograd.grad(twin(x)[0].pow(2).sum(), x)
    testing.assert_close_relative([ours], [theirs], 1e-10, "grad x")


@pytest.mark.parametrize("cell", CELLS)
def test_vmap_over_a_batch_of_sequences_matches_a_loop(cell):
    module = getattr(fusedrnn, cell)(3, 5, dtype=torch.float64)
    xs = torch.randn(4, 6, 2, 3, dtype=torch.float64)
    mapped = torch.func.vmap(lambda t: module(t)[0])(xs)
    looped = torch.stack([module(t)[0] for t in xs])
    testing.assert_close_relative([mapped], [looped], 1e-12, "vmap")


def test_a_trace_taken_under_no_grad_still_trains():
    """torch.jit.trace keeps the op's save flag as a constant: a trace always saves."""
    module = fusedrnn.GRU(3, 8)
    x = torch.randn(5, 4, 3)
    with torch.no_grad():
        traced = torch.jit.trace(module, (x,))
    traced(x)[0].sum().backward()
    traced_grad = module.weight_hh_l0.grad.clone()
    module.zero_grad()
    module(x)[0].sum().backward()
    testing.assert_close_relative([traced_grad], [module.weight_hh_l0.grad], 1e-6, "grad W_hh")
