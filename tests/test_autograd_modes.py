"""Differentiation beyond one reverse pass: torch.func's transforms (grad, vjp, jacrev,
jvp, jacfwd, hessian, per-sample gradients), forward-mode AD, gradients of gradients, vmap
and traces."""

import warnings

import pytest
import torch
from torch.autograd import forward_ad

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


TRANSFORM_CASES = [
    ("LSTM", {}), ("LSTM", {"proj_size": 2, "bidirectional": True}),
    ("GRU", {"num_layers": 2}), ("GRU", {"bias": False, "batch_first": True}),
    ("RNN", {"nonlinearity": "tanh", "bidirectional": True}), ("RNN", {"nonlinearity": "relu"}),
]


def _transform_setup(cell, kwargs, seed=5):
    module = getattr(fusedrnn, cell)(3, 4, dtype=torch.float64, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 3, dtype=torch.float64, generator=generator)  # (T or B, B or T, I)
    return module, testing.torch_twin(module), x, torch.randn(x.shape, dtype=torch.float64,
                                                                 generator=generator)


def _output(model, params=None):
    """The function of the input each transform takes: the model's output sequence."""
    if params is None:
        return lambda t: model(t)[0]
    return lambda p, t: torch.func.functional_call(model, p, (t,))[0]


@pytest.mark.parametrize("cell, kwargs", TRANSFORM_CASES)
def test_torch_func_grad_of_the_parameters_matches_torch(cell, kwargs):
    module, twin, x, _ = _transform_setup(cell, kwargs)
    grads = []
    for model in (module, twin):
        params = {k: v.detach() for k, v in model.named_parameters()}
        loss = lambda p, t: _output(model, p)(p, t).pow(2).sum()  # noqa: E731
        grads.append(torch.func.grad(loss)(params, x))
    assert grads[0].keys() == grads[1].keys()
    testing.assert_close_relative(list(grads[0].values()), list(grads[1].values()), 1e-10,
                                  "torch.func.grad")


@pytest.mark.parametrize("cell, kwargs", TRANSFORM_CASES)
def test_reverse_and_forward_jacobians_match_torch(cell, kwargs):
    """jacrev and vjp (reverse mode), jacfwd, jvp and forward_ad's dual tensors (forward
    mode) against the Jacobian torch.func.jacrev takes of torch.nn (whose own forward mode
    fails for the LSTM on the CPU: mkldnn_rnn_layer has none)."""
    module, twin, x, v = _transform_setup(cell, kwargs)
    jacobian = torch.func.jacrev(_output(twin))(x)
    out_shape = jacobian.shape[:jacobian.dim() - x.dim()]
    expected_jvp = (jacobian.reshape(out_shape.numel(), -1) @ v.reshape(-1)).reshape(out_shape)
    run = _output(module)
    _, pullback = torch.func.vjp(run, x)
    cotangent = torch.randn(out_shape, dtype=torch.float64)
    expected_vjp = (cotangent.reshape(1, -1) @ jacobian.reshape(out_shape.numel(), -1))
    with forward_ad.dual_level():
        dual = forward_ad.unpack_dual(run(forward_ad.make_dual(x, v))).tangent
    found = {"jacrev": torch.func.jacrev(run)(x), "jacfwd": torch.func.jacfwd(run)(x),
             "jvp": torch.func.jvp(run, (x,), (v,))[1], "forward_ad": dual,
             "vjp": pullback(cotangent)[0].reshape(1, -1)}
    expected = {"jacrev": jacobian, "jacfwd": jacobian, "jvp": expected_jvp,
                "forward_ad": expected_jvp, "vjp": expected_vjp}
    for name, value in found.items():
        testing.assert_close_relative([value], [expected[name]], 1e-10, name)


@pytest.mark.parametrize("cell", CELLS)
def test_hessian_is_symmetric_and_matches_reverse_over_reverse(cell):
    """torch.func.hessian (forward over reverse) equals jacrev(jacrev) (reverse over
    reverse) of a scalar function of the initial state."""
    module = getattr(fusedrnn, cell)(2, 3, dtype=torch.float64)
    x = torch.randn(4, 1, 2, dtype=torch.float64)
    h0 = torch.randn(1, 1, 3, dtype=torch.float64)

    def energy(h):
        state = (h, torch.zeros_like(h)) if cell == "LSTM" else h
        return module(x, state)[0].pow(3).sum()

    hessian = torch.func.hessian(energy)(h0).reshape(3, 3)
    reverse = torch.func.jacrev(torch.func.jacrev(energy))(h0).reshape(3, 3)
    testing.assert_close_relative([hessian], [reverse], 1e-10, "hessian")
    testing.assert_close_relative([hessian], [hessian.T], 1e-10, "symmetry")


@pytest.mark.parametrize("cell, kwargs", TRANSFORM_CASES[::2])
def test_per_sample_gradients_match_a_loop_over_torch(cell, kwargs):
    """vmap(grad(...)) over the examples of a batch, as differential privacy takes them."""
    module, twin, x, _ = _transform_setup(cell, kwargs)
    batch_dim = 0 if kwargs.get("batch_first") else 1
    params = {k: v.detach() for k, v in module.named_parameters()}

    def loss(p, sample):
        out = torch.func.functional_call(module, p, (sample.unsqueeze(batch_dim),))[0]
        return out.pow(2).sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, batch_dim))(params, x)
    for index in range(x.shape[batch_dim]):
        twin.zero_grad()
        twin(x.select(batch_dim, index).unsqueeze(batch_dim))[0].pow(2).sum().backward()
        testing.assert_close_relative(
            [per_sample[name][index] for name, _ in twin.named_parameters()],
            [p.grad for p in twin.parameters()], 1e-10, f"sample {index}")


def test_grad_of_packed_input_matches_torch():
    """Packed input under torch.func.grad (where torch.nn.LSTM fails: its packed path reads
    the data pointer of the transform's tensor) against torch.nn's plain autograd."""
    module = fusedrnn.LSTM(3, 4, bidirectional=True, dtype=torch.float64)
    twin = testing.torch_twin(module)
    packed = testing.make_packed(4, 5, 3, dtype=torch.float64,
                                 generator=torch.Generator().manual_seed(2))
    ours = torch.func.grad(lambda d: module(packed._replace(data=d))[0].data.pow(2).sum())(
        packed.data)
    data = packed.data.detach().requires_grad_()
    theirs, = torch.autograd.grad(twin(packed._replace(data=data))[0].data.pow(2).sum(), data)
    testing.assert_close_relative([ours], [theirs], 1e-10, "grad of packed data")


@pytest.mark.requires_cpu_ext
def test_an_explicit_fused_backend_under_a_transform_says_why_it_cannot_run():
    module = fusedrnn.GRU(3, 4, backend="cpu")
    x = torch.randn(5, 2, 3)
    with pytest.raises(fusedrnn.BackendUnavailableError, match="torch.func.grad"):
        torch.func.grad(lambda t: module(t)[0].sum())(x)
    with pytest.raises(fusedrnn.BackendUnavailableError, match="torch.func.jvp"):
        torch.func.jvp(lambda t: module(t)[0], (x,), (x,))


@pytest.mark.requires_cpu_ext
def test_auto_under_a_transform_passes_over_the_fused_backends_and_says_why():
    call = fusedrnn.backends.Call("lstm", 4, 4, 2, training=False, transform="torch.func.grad")
    choice = fusedrnn.backends.select("auto", torch.device("cpu"), torch.float32, call)
    assert choice.name == "reference"
    assert "cpu skipped (the call runs under torch.func.grad" in choice.reason
    plain = fusedrnn.backends.select("auto", torch.device("cpu"), torch.float32,
                                     fusedrnn.backends.Call("lstm", 4, 4, 2, training=False))
    assert plain.name == "cpu"


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


@pytest.mark.parametrize("backend", ["reference",
                                     pytest.param("cpu", marks=pytest.mark.requires_cpu_ext)])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_biases_changed_in_place_before_the_backward(cell, bidirectional, backend):
    """An optimizer step on the biases alone between the forward and the backward: the
    gradients are the forward's (torch.nn's composite cells in float64 give the same; no
    backward reads a bias), and a create_graph backward, which recomputes the forward from
    the biases, refuses them as autograd refuses a changed saved tensor."""
    module = getattr(fusedrnn, cell)(3, 5, bidirectional=bidirectional, dtype=torch.float64,
                                     backend=backend)
    twin = testing.torch_twin(module)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    biases = [p for name, p in module.named_parameters() if name.startswith("bias")]
    grads = []
    for model, change in ((module, False), (module, True), (twin, True)):
        out = model(x)[0]
        if change:
            with torch.no_grad():
                for bias in biases:
                    bias.add_(0.25)
        grads.append(torch.autograd.grad(out.pow(2).sum(), [x, *model.parameters()]))
    testing.assert_close_relative(grads[1], grads[0], 0.0, "gradients after the change")
    testing.assert_close_relative(grads[1], grads[2], 1e-10, "against torch.nn")
    out = module(x)[0]
    with torch.no_grad():
        biases[-1].add_(0.25)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)


@pytest.mark.parametrize("backend", ["reference",
                                     pytest.param("cpu", marks=pytest.mark.requires_cpu_ext)])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", ["GRU", "RNN"])
def test_inference_mode_parameters_in_training(cell, bidirectional, backend):
    """Parameters made under torch.inference_mode, then trained: autograd's own refusal to
    save an inference tensor, as torch.nn gives (reading a bias's version raised first, an
    unclear 'do not track version counter'); biases alone made so train as torch.nn's do
    (no backward reads a bias), but for create_graph, which recomputes the forward from them
    (backends/reference/differentiable.py cannot differentiate through an inference
    tensor): a clear refusal naming the bias."""
    make = lambda: getattr(fusedrnn, cell)(  # noqa: E731
        3, 5, bidirectional=bidirectional, dtype=torch.float64, backend=backend)
    with torch.inference_mode():
        module = make()
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
        module(x)[0].sum().backward()
    module = make()
    twin = testing.torch_twin(module)
    for model in (module, twin):
        for name, parameter in list(model.named_parameters()):
            if name.startswith("bias"):
                with torch.inference_mode():
                    setattr(model, name, torch.nn.Parameter(parameter.detach().clone()))
    grads = [torch.autograd.grad(model(x)[0].pow(2).sum(), [x, *model.parameters()])
             for model in (module, twin)]
    testing.assert_close_relative(grads[0], grads[1], 1e-10, "against torch.nn")
    with pytest.raises(RuntimeError, match="b_ih bias of a fusedrnn layer is an inference"):
        torch.autograd.grad(module(x)[0].pow(2).sum(), x, create_graph=True)


@pytest.mark.parametrize("backend", ["reference",
                                     pytest.param("cpu", marks=pytest.mark.requires_cpu_ext)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_frozen_first_layer_reads_inference_features(bidirectional, backend):
    """Features made under torch.inference_mode into a frozen first layer: no input of its
    op needs a gradient, so nothing is saved and nothing is refused; the layer after it
    trains, as torch.nn's does. With the first layer trainable, autograd's refusal."""
    module = fusedrnn.LSTM(3, 5, num_layers=2, bidirectional=bidirectional,
                           dtype=torch.float64, backend=backend)
    twin = testing.torch_twin(module)
    for model in (module, twin):
        for name, parameter in model.named_parameters():
            parameter.requires_grad_("_l0" not in name)
    with torch.inference_mode():
        x = torch.randn(4, 2, 3, dtype=torch.float64)
    trained = [[p for p in model.parameters() if p.requires_grad] for model in (module, twin)]
    grads = [torch.autograd.grad(model(x)[0].pow(2).sum(), params)
             for model, params in zip((module, twin), trained)]
    testing.assert_close_relative(grads[0], grads[1], 1e-10, "against torch.nn")
    module.weight_ih_l0.requires_grad_(True)
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
        module(x)[0].sum().backward()


@pytest.mark.parametrize("backend", ["reference",
                                     pytest.param("cpu", marks=pytest.mark.requires_cpu_ext)])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("made_in_inference, packed", [("x", False), ("x", True), ("h0", False)])
def test_inference_tensors_no_requested_gradient_reads(made_in_inference, packed, cell,
                                                       bidirectional, backend):
    """Features made under torch.inference_mode into a layer whose ``weight_ih`` is frozen (no
    requested gradient reads them), or an initial ``h`` made so into one whose ``weight_hh``
    is: autograd saves a copy, and the rest trains as torch.nn's does (packed too: the lengths
    come from inference mode as well). Before, they were refused."""
    module = getattr(fusedrnn, cell)(3, 5, bidirectional=bidirectional, dtype=torch.float64,
                                     backend=backend)
    twin = testing.torch_twin(module)
    frozen = "weight_ih" if made_in_inference == "x" else "weight_hh"
    for model in (module, twin):
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(not name.startswith(frozen))
    with torch.inference_mode(made_in_inference == "x"):
        x = torch.randn(4, 3, 3, dtype=torch.float64)
        if packed:
            x = torch.nn.utils.rnn.pack_padded_sequence(x, [4, 2, 1])
    with torch.inference_mode(made_in_inference == "h0"):
        h0 = torch.randn(2 if bidirectional else 1, 3, 5, dtype=torch.float64)
    # c0 stays a normal tensor: the forget gate's gradient reads it, in torch.nn's cell too.
    state = (h0, torch.randn_like(h0)) if cell == "LSTM" else h0
    trained = [] if made_in_inference == "h0" else [h0.requires_grad_()]
    grads = []
    for model in (module, twin):
        out = model(x, state)[0]
        out = out.data if packed else out
        weights = [p for p in model.parameters() if p.requires_grad]
        grads.append(torch.autograd.grad(out.pow(2).sum(), [*trained, *weights]))
    testing.assert_close_relative(grads[0], grads[1], 1e-10, "against torch.nn")
    assert all(g.abs().sum() > 0 for g in grads[0])


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


VMAP_CASES = [(cell, kwargs) for cell in CELLS
              for kwargs in ({}, {"num_layers": 2, "bidirectional": True})]


@pytest.mark.parametrize("cell, kwargs", VMAP_CASES)
def test_vmap_over_sequences_is_one_call_and_matches_a_loop(cell, kwargs):
    """The vmapped dimension joins the batch (ops_vmap.py): one op call per layer, no
    functorch fallback (whose warning would fail here), results equal to a loop's, and so
    are the gradients of a loss taken through vmap."""
    module = getattr(fusedrnn, cell)(3, 5, dtype=torch.float64, **kwargs)
    xs = torch.randn(4, 6, 2, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mapped = torch.func.vmap(lambda t: module(t)[0])(xs)
    looped = torch.stack([module(t)[0] for t in xs])
    testing.assert_close_relative([mapped], [looped], 1e-12, "vmap")
    grads = [torch.autograd.grad(out.pow(2).sum(), list(module.parameters()))
             for out in (mapped, looped)]
    testing.assert_close_relative(list(grads[0]), list(grads[1]), 1e-12, "grads through vmap")


@pytest.mark.parametrize("cell", CELLS)
def test_vmap_over_initial_states_with_a_shared_input(cell):
    module = getattr(fusedrnn, cell)(3, 5, dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    states = torch.randn(4, 1, 2, 5, dtype=torch.float64)
    run = (lambda h: module(x, (h, torch.zeros_like(h)))[0]) if cell == "LSTM" else (
        lambda h: module(x, h)[0])
    testing.assert_close_relative([torch.func.vmap(run)(states)],
                                  [torch.stack([run(h) for h in states])], 1e-12, "vmap hx")


def test_vmap_over_an_ensemble_of_weights_matches_each_model():
    models = [fusedrnn.GRU(3, 5, dtype=torch.float64) for _ in range(3)]
    params, buffers = torch.func.stack_module_state(models)
    base = fusedrnn.GRU(3, 5, dtype=torch.float64, device="meta")
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    ensemble = torch.func.vmap(
        lambda p, b: torch.func.functional_call(base, (p, b), (x,))[0])(params, buffers)
    testing.assert_close_relative([ensemble], [torch.stack([m(x)[0] for m in models])], 1e-12,
                                  "ensemble")


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_through_vmap_of_a_frozen_layer_reach_the_input(cell):
    """Under vmap a mapped tensor reports requires_grad False even where it wraps one that
    requires it: the layer must still record autograd (it once ran below it, silently)."""
    module = getattr(fusedrnn, cell)(3, 4, dtype=torch.float64).requires_grad_(False)
    twin = testing.torch_twin(module)
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    ours, = torch.autograd.grad(torch.func.vmap(lambda t: module(t)[0])(x).pow(2).sum(), x)
    theirs, = torch.autograd.grad(sum(twin(t)[0].pow(2).sum() for t in x), x)
    testing.assert_close_relative([ours], [theirs], 1e-12, "grad x through vmap")


def test_training_an_ensemble_through_vmap_matches_each_model():
    models = [fusedrnn.LSTM(3, 4, dtype=torch.float64) for _ in range(2)]
    params, buffers = torch.func.stack_module_state(models)
    base = fusedrnn.LSTM(3, 4, dtype=torch.float64, device="meta")
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out = torch.func.vmap(lambda p, b: torch.func.functional_call(base, (p, b), (x,))[0])(
        params, buffers)
    ours = torch.autograd.grad(out.pow(2).sum(), list(params.values()))
    for index, model in enumerate(models):
        theirs = torch.autograd.grad(model(x)[0].pow(2).sum(), list(model.parameters()))
        testing.assert_close_relative([g[index] for g in ours], list(theirs), 1e-12,
                                      f"ensemble member {index}")


BATCHED_BACKWARD_CASES = [("LSTM", {"proj_size": 2, "num_layers": 2, "bidirectional": True}),
                          ("GRU", {}), ("RNN", {"bias": False}), ("LSTMCell", {}),
                          ("GRUCell", {}), ("RNNCell", {"nonlinearity": "relu"})]


@pytest.mark.parametrize("backend", [
    "reference", "auto", pytest.param("cpu", marks=pytest.mark.requires_cpu_ext),
    pytest.param("triton", marks=pytest.mark.requires_triton)])
@pytest.mark.parametrize("cell, kwargs", BATCHED_BACKWARD_CASES)
def test_is_grads_batched_matches_one_backward_per_row_and_torch(cell, kwargs, backend):
    """torch.autograd.grad(..., is_grads_batched=True), which jacobian(vectorize=True) uses,
    batches the gradients with the legacy vmap, outside any transform: the backward ops must
    meet them through the dispatcher's batching fallback, not run on them directly (which
    failed: tensors without storage). Each row equals a backward of its own, and torch.nn's
    batched gradients."""
    dtype = torch.float32 if backend == "triton" else torch.float64
    module = getattr(fusedrnn, cell)(3, 4, dtype=dtype, backend=backend, **kwargs)
    x = torch.randn(2, 3, dtype=dtype) if cell.endswith("Cell") else torch.randn(
        4, 2, 3, dtype=dtype)
    results = []
    for model in (module, testing.torch_twin(module)):
        leaves = [x.clone().requires_grad_(), *model.parameters()]
        out = model(leaves[0])
        out = out[0] if isinstance(out, tuple) else out
        rows = torch.randn(3, *out.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
        batched = torch.autograd.grad(out, leaves, rows, retain_graph=True,
                                      is_grads_batched=True)
        looped = [torch.autograd.grad(out, leaves, row, retain_graph=True) for row in rows]
        results.append(batched)
        testing.assert_close_relative(
            list(batched), [torch.stack(grads) for grads in zip(*looped)],
            1e-5 if dtype == torch.float32 else 1e-12, f"{type(model).__module__}: rows")
    testing.assert_close_relative(list(results[0]), list(results[1]),
                                  1e-4 if dtype == torch.float32 else 1e-10, "against torch.nn")


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


@pytest.mark.parametrize("backend", ["reference",
                                     pytest.param("cpu", marks=pytest.mark.requires_cpu_ext)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_eager_calls_apply_the_ops_autograd_formula_directly(backend, bidirectional,
                                                              monkeypatch):
    """Recorded eager calls skip torch.library's autograd layer (ops.eager_autograd) for the
    same formula: results, gradients and gradients of gradients equal the layer's bit for
    bit, and the graph holds the direct formula's node."""
    module = fusedrnn.LSTM(5, 8, num_layers=2, bidirectional=bidirectional, backend=backend,
                           dtype=torch.float64)
    packed = testing.make_packed(3, 6, 5, dtype=torch.float64)

    def run():
        out = testing.outputs_and_grads(module, packed)
        module.zero_grad()
        y, _ = module(packed)
        grads = torch.autograd.grad(y.data.square().sum(), list(module.parameters()),
                                    create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        return out, torch.autograd.grad(penalty, module.weight_hh_l0), y.data.grad_fn

    (out, grads), second, node = run()
    monkeypatch.setattr(fusedrnn.ops, "eager_autograd", lambda op, direct=False: op)
    (out_lib, grads_lib), second_lib, node_lib = run()
    for got, expected in zip(out + grads + list(second), out_lib + grads_lib + list(second_lib)):
        assert torch.equal(got, expected)
    names = [type(n).__name__ for n in _graph_nodes(node)]
    library_names = [type(n).__name__ for n in _graph_nodes(node_lib)]
    assert "EagerAutogradBackward" in names and "EagerAutogradBackward" not in library_names


def _graph_nodes(node):
    seen, stack = [], [node]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.append(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return seen
