"""NaN and inf: where torch.nn keeps a value finite, every backend does, position by position;
and what the padding of a call with lengths holds never reaches a result."""

from collections import namedtuple

import pytest
import torch

import fusedrnn
from fusedrnn import backends
from fusedrnn.backends.cuda_emulation import CudaEmulationBackend

EMULATED = CudaEmulationBackend.name
TRITON_KERNELS = ("persistent", "cooperative", "step")


def _backends(*leading, projection=False):
    """The backends as test parameters, after the values ``leading``: the triton backend at
    each of its kernels (only the persistent one runs a projection), the cuda backend's
    kernels through their host emulation."""
    triton_kernels = TRITON_KERNELS[:1] if projection else TRITON_KERNELS
    cases = [("reference", (), "reference"), ("cpu", pytest.mark.requires_cpu_ext, "cpu")]
    cases += [(f"triton:{kernel}", pytest.mark.requires_triton, f"triton-{kernel}")
              for kernel in triton_kernels]
    cases += [(f"{EMULATED}:{design}", pytest.mark.requires_cuda_emulation, f"emulated-{design}")
              for design in ("stepwise", "grid", "cluster")]
    prefix = "-".join(str(value) for value in leading)
    return [pytest.param(*leading, value, marks=marks, id="-".join(filter(None, [prefix, name])))
            for value, marks, name in cases]


BACKENDS = _backends()
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


Backend = namedtuple("Backend", "name device")


@pytest.fixture
def backend(request, monkeypatch):
    """The backend a call asks for, with its kernel forced (or registered), and the device
    of its tensors: the triton backend's on a GPU where there is one (its interpreter runs
    the CPU's only under TRITON_INTERPRET=1), the others' on the CPU."""
    name, _, kernel = request.param.partition(":")
    device = "cuda" if name == "triton" and torch.cuda.is_available() else "cpu"
    if name == "triton":
        from fusedrnn.backends.triton import plan

        if kernel == "cooperative" and plan.cooperative_unsupported():
            pytest.skip(f"cooperative {plan.cooperative_unsupported()}")
        monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", kernel)
    if name == EMULATED:
        backends.register(CudaEmulationBackend(kernel))
        yield Backend(name, device)
        backends.unregister(name)
        return
    yield Backend(name, device)


def _op_call(cell, backend, x, grad_y, lengths, proj=0, create_graph=False, hidden=4):
    """One layer through ``torch.ops.fusedrnn.{cell}_fwd`` on ``backend`` and autograd: its
    outputs and the gradients of every input, for fixed weights, states and output
    gradients (on the CPU)."""
    steps, batch, inputs = x.shape
    state = proj or hidden
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(GATES[cell] * hidden, inputs, generator=g),
               torch.randn(GATES[cell] * hidden, state, generator=g),
               torch.randn(GATES[cell] * hidden, generator=g),
               torch.randn(GATES[cell] * hidden, generator=g),
               torch.randn(proj, hidden, generator=g) if proj else None,
               torch.randn(batch, state, generator=g),
               torch.randn(batch, hidden, generator=g) if cell == "lstm" else None]
    grad_states = [torch.randn(batch, state, generator=g),
                   torch.randn(batch, hidden, generator=g) if cell == "lstm" else None]
    leaves = [None if t is None else t.to(backend.device).requires_grad_()
              for t in [x, *tensors]]
    lengths = None if lengths is None else lengths.to(backend.device)
    y, h_n, c_n, _, _ = getattr(torch.ops.fusedrnn, f"{cell}_fwd")(
        *leaves, lengths, False, True, backend.name)
    outputs = [y, h_n] + ([c_n] if cell == "lstm" else [])
    wanted = [t for t in leaves if t is not None]
    grad_outputs = [t.to(backend.device) for t in [grad_y, *grad_states[:len(outputs) - 1]]]
    grads = torch.autograd.grad(outputs, wanted, grad_outputs, create_graph=create_graph)
    return [t.detach().cpu() for t in outputs + list(grads)]


def _padded(x, valid, fill):
    return torch.where(valid, x, torch.full_like(x, fill))


CELLS = [case for cell in GATES for case in _backends(cell, 0)] + _backends(
    "lstm", 3, projection=True)


@pytest.mark.parametrize("cell,proj,backend", CELLS, indirect=["backend"])
@pytest.mark.parametrize("fill", [float("nan"), float("inf")])
def test_the_padding_of_a_call_with_lengths_reaches_no_result(backend, cell, proj, fill):
    steps, batch = 5, 3
    lengths = torch.tensor([5, 3, 1])
    valid = (torch.arange(steps)[:, None] < lengths[None, :]).unsqueeze(-1)
    x, grad_y = torch.randn(steps, batch, 2), torch.randn(steps, batch, proj or 4)
    clean = _op_call(cell, backend, _padded(x, valid, 0.0), _padded(grad_y, valid, 0.0), lengths,
                     proj)
    dirty = _op_call(cell, backend, _padded(x, valid, fill), _padded(grad_y, valid, fill),
                     lengths, proj)
    assert all(torch.isfinite(t).all() for t in clean)
    for index, (expected, actual) in enumerate(zip(clean, dirty)):
        assert torch.equal(actual, expected), f"result {index}"


def _bidirectional_call(cell, backend, x, grad_y, lengths, create_graph=False):
    """:func:`_op_call` for ``torch.ops.fusedrnn.{cell}_bidir_fwd``: both directions' outputs
    and the gradients of x and each direction's weights and states."""
    steps, batch, inputs = x.shape
    hidden, gates = 4, GATES[cell] * 4
    g = torch.Generator().manual_seed(0)
    directions, grad_outputs = [], []
    for _ in range(2):
        directions.append([torch.randn(gates, inputs, generator=g),
                           torch.randn(gates, hidden, generator=g),
                           torch.randn(gates, generator=g), torch.randn(gates, generator=g),
                           None, torch.randn(batch, hidden, generator=g),
                           torch.randn(batch, hidden, generator=g) if cell == "lstm" else None])
        grad_outputs += [torch.randn(batch, hidden, generator=g) for _ in range(2)]
    leaves = [x] + [t for own in directions for t in own]
    leaves = [None if t is None else t.to(backend.device).requires_grad_() for t in leaves]
    results = getattr(torch.ops.fusedrnn, f"{cell}_bidir_fwd")(
        *leaves, lengths.to(backend.device), True, backend.name)
    outputs, seeds = [], []
    for d in range(2):
        y, h_n, c_n = results[5 * d:5 * d + 3]
        outputs += [y, h_n] + ([c_n] if cell == "lstm" else [])
        seeds += [grad_y[d], grad_outputs[2 * d]] + ([grad_outputs[2 * d + 1]]
                                                     if cell == "lstm" else [])
    wanted = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(outputs, wanted, [t.to(backend.device) for t in seeds],
                                create_graph=create_graph)
    return [t.detach().cpu() for t in outputs + list(grads)]


@pytest.mark.parametrize("cell,proj,backend", [case for case in CELLS if case.values[1] == 0],
                         indirect=["backend"])
def test_the_padding_of_a_bidirectional_call_reaches_no_result(backend, cell, proj):
    steps, batch = 5, 3
    lengths = torch.tensor([5, 3, 1])
    valid = (torch.arange(steps)[:, None] < lengths[None, :]).unsqueeze(-1)
    x, grad_y = torch.randn(steps, batch, 2), torch.randn(2, steps, batch, 4)
    results = [_bidirectional_call(cell, backend, _padded(x, valid, fill),
                                   [_padded(g, valid, fill) for g in grad_y], lengths)
               for fill in (0.0, float("nan"))]
    assert all(torch.isfinite(t).all() for t in results[0])
    for index, (expected, actual) in enumerate(zip(*results)):
        assert torch.equal(actual, expected), f"result {index}"


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_the_padding_reaches_no_gradient_of_a_gradient(cell):
    steps, batch = 4, 2
    lengths = torch.tensor([4, 2])
    valid = (torch.arange(steps)[:, None] < lengths[None, :]).unsqueeze(-1)
    x, grad_y = torch.randn(steps, batch, 2), torch.randn(steps, batch, 4)
    reference = Backend("reference", "cpu")
    clean = _op_call(cell, reference, _padded(x, valid, 0.0), grad_y, lengths,
                     create_graph=True)
    dirty = _op_call(cell, reference, _padded(x, valid, float("nan")), grad_y, lengths,
                     create_graph=True)
    for index, (expected, actual) in enumerate(zip(clean, dirty)):
        assert torch.equal(actual, expected), f"result {index}"
    clean, dirty = (_bidirectional_call(cell, reference, _padded(x, valid, fill),
                                        [grad_y, grad_y], lengths, create_graph=True)
                    for fill in (0.0, float("nan")))
    for index, (expected, actual) in enumerate(zip(clean, dirty)):
        assert torch.equal(actual, expected), f"bidirectional result {index}"


def _assert_same_nonfinite_and_close(actual, expected, what):
    assert torch.equal(torch.isnan(actual), torch.isnan(expected)), f"{what}: NaN positions"
    assert torch.equal(torch.isinf(actual), torch.isinf(expected)), f"{what}: inf positions"
    torch.testing.assert_close(actual, expected, equal_nan=True, rtol=1e-4, atol=1e-5,
                               msg=lambda m: f"{what}: {m}")


def _outputs_and_grads(module, x, hx):
    """``module(x, hx)``'s outputs and the gradients of their sums with respect to ``x``,
    ``hx`` and the parameters, on the CPU; the inputs go to the module's device."""
    device = next(module.parameters()).device
    leaves = [x.to(device).requires_grad_()]
    state = None
    if hx is not None:
        state = tuple(h.to(device).requires_grad_() for h in hx) if isinstance(hx, tuple) \
            else hx.to(device).requires_grad_()
        leaves += list(state) if isinstance(state, tuple) else [state]
    y, h_n = module(leaves[0], state)
    outputs = [y] + (list(h_n) if isinstance(h_n, tuple) else [h_n])
    params = list(module.parameters())
    grads = torch.autograd.grad([o.sum() for o in outputs], leaves + params, allow_unused=True)
    return [t.detach().cpu() for t in outputs + list(grads)]


MODULES = [case for name in ("LSTM", "GRU", "RNN") for case in _backends(name, 0)] + _backends(
    "LSTM", 3, projection=True)


@pytest.mark.parametrize("name,proj,backend", MODULES, indirect=["backend"])
def test_an_infinite_initial_state_stays_where_torch_keeps_it(backend, name, proj):
    """inf in one unit of h0 (its W_hh column positive: the gates saturate); hidden 5 leaves
    the kernels' tiles padding units, whose zero weights times inf would be NaN."""
    kwargs = {"proj_size": proj} if proj else {}
    torch_module = getattr(torch.nn, name)(3, 5, **kwargs)
    with torch.no_grad():
        torch_module.weight_hh_l0[:, 0].abs_()
    module = getattr(fusedrnn, name)(3, 5, backend=backend.name, device=backend.device,
                                     **kwargs)
    module.load_state_dict(torch_module.state_dict())
    h0 = torch.randn(1, 2, proj or 5)
    h0[0, 1, 0] = float("inf")
    hx = (h0, torch.randn(1, 2, 5)) if name == "LSTM" else h0
    x = torch.randn(4, 2, 3)
    expected, actual = _outputs_and_grads(torch_module, x, hx)[0], \
        _outputs_and_grads(module, x, hx)[0]
    assert torch.isfinite(expected[:, 1, 1:]).all()  # the case is what it means to be
    _assert_same_nonfinite_and_close(actual, expected, "output")


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_relu_gradients_select_as_torch_does(backend):
    """A NaN output passes its gradient (torch's threshold_backward); an infinite gradient
    at an output of 0 gives 0, not NaN. (Where a sum overflows both ways, whether it is inf
    or NaN depends on the order of its terms, and torch's own paths differ: there, only where
    torch's result is finite must fusedrnn's be.)"""
    torch_module = torch.nn.RNN(3, 4, nonlinearity="relu")
    module = fusedrnn.RNN(3, 4, nonlinearity="relu", backend=backend.name,
                          device=backend.device)
    module.load_state_dict(torch_module.state_dict())
    x = torch.randn(3, 2, 3)
    x[1, 0, 0] = float("nan")
    for expected, actual, what in zip(_outputs_and_grads(torch_module, x, None),
                                      _outputs_and_grads(module, x, None),
                                      ["y", "h_n", "grad_x", "w_ih", "w_hh", "b_ih", "b_hh"]):
        _assert_same_nonfinite_and_close(actual, expected, "NaN input: " + what)
    assert torch.isfinite(_outputs_and_grads(torch_module, x, None)[2][2, 0]).all()

    with torch.no_grad():
        for m in (torch_module, module):
            m.weight_hh_l0.view(-1)[1], m.weight_hh_l0.view(-1)[3] = 1e30, -1e30
    x, h0 = torch.randn(4, 3, 3), torch.randn(1, 3, 4)
    expected_all = _outputs_and_grads(torch_module, x, h0)
    assert not all(torch.isfinite(t).all() for t in expected_all)  # it overflows
    for expected, actual, what in zip(expected_all, _outputs_and_grads(module, x, h0),
                                      ["y", "h_n", "grad_x", "grad_h0", "w_ih", "w_hh", "b_ih",
                                       "b_hh"]):
        # values of 1e30 cancel: their sums depend on the order of the terms, not compared
        assert torch.isfinite(actual[torch.isfinite(expected)]).all(), f"overflowing: {what}"


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_gru_update_gate_at_one_keeps_an_infinite_state(backend):
    torch_module = torch.nn.GRU(3, 5)
    with torch.no_grad():
        torch_module.weight_hh_l0[:, 0].abs_()
    module = fusedrnn.GRU(3, 5, backend=backend.name, device=backend.device)
    module.load_state_dict(torch_module.state_dict())
    h0 = torch.randn(1, 2, 5)
    h0[0, 1, 0] = float("inf")
    x = torch.randn(3, 2, 3)
    expected, actual = (_outputs_and_grads(m, x, h0)[0] for m in (torch_module, module))
    assert torch.isinf(expected[:, 1, 0]).all()
    _assert_same_nonfinite_and_close(actual, expected, "output")


def test_gru_cell_update_gate_at_one_keeps_an_infinite_state():
    torch_cell = torch.nn.GRUCell(3, 5)
    with torch.no_grad():
        torch_cell.weight_hh[:, 0].abs_()
    cell = fusedrnn.GRUCell(3, 5, backend="reference")
    cell.load_state_dict(torch_cell.state_dict())
    h0 = torch.randn(2, 5)
    h0[1, 0] = float("inf")
    x = torch.randn(2, 3)
    with torch.no_grad():
        _assert_same_nonfinite_and_close(cell(x, h0), torch_cell(x, h0), "h'")


@pytest.mark.parametrize("cell,proj,backend", CELLS, indirect=["backend"])
def test_lengths_that_mask_nothing_change_no_infinite_gradient(backend, cell, proj):
    """An infinite output gradient, with every sequence full: lengths given or not, the same
    results, inf included (a carried gradient times an inactive step's 0 made NaN). Hidden
    1, so that the inf is not lost in an inf - inf of the recurrent product."""
    steps, batch, hidden = 4, 3, 1 + 2 * (proj > 0)
    x, grad_y = torch.randn(steps, batch, 2), torch.randn(steps, batch, proj or hidden)
    full = torch.full((batch,), steps)
    nonfinite = False
    for infinite in (slice(2, 3), slice(2, None)):  # one step, or two (a relu's may be 0)
        grad_y[infinite, :, 0] = float("inf")
        without = _op_call(cell, backend, x, grad_y, None, proj, hidden=hidden)
        with_lengths = _op_call(cell, backend, x, grad_y, full, proj, hidden=hidden)
        nonfinite |= not all(torch.isfinite(t).all() for t in without)
        for index, (expected, actual) in enumerate(zip(without, with_lengths)):
            assert torch.equal(actual.nan_to_num(7.0), expected.nan_to_num(7.0)), index
            assert torch.equal(actual.isnan(), expected.isnan()), index
    assert nonfinite  # the case is what it means to be
