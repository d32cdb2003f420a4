"""Helpers shared by the tests and the benchmarks: input factories, the torch.nn twin of a
fusedrnn module, outputs-and-gradients runs, and the error rules.

Error rules:

* float64 (and float32 between backends): :func:`relative_error` below a fixed bound.
* low precision (bfloat16, float16), after flash-attention's tests: a candidate's error
  against a float64 oracle may be at most ``factor`` times the error the reference backend
  makes in the same low precision (2 for outputs, 3 for gradients), see
  :func:`assert_within_low_precision_rule`.
"""

import contextlib
import copy

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from . import cells as _cells
from .backends.common import GATES as _GATES
from . import modules as _modules

OUTPUT_FACTOR = 2.0
GRADIENT_FACTOR = 3.0


def torch_twin(module, dtype=None, device=None):
    """A ``torch.nn`` module with the same configuration and a copy of ``module``'s weights."""
    weight = next(module.parameters())
    twin = copy.deepcopy(module).to_torch_nn()
    twin.zero_grad(set_to_none=True)  # the copy's, not gradients of its own
    return twin.to(device=device or weight.device, dtype=dtype or weight.dtype)


@contextlib.contextmanager
def torch_threads(count):
    """Run the block with ``torch.set_num_threads(count)``, the previous count restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_sequence(batch, steps, input_size, *, batch_first=False, dtype=torch.float32,
                  device="cpu", generator=None):
    """A random batched input, ``(T, B, I)`` or ``(B, T, I)``."""
    shape = (batch, steps, input_size) if batch_first else (steps, batch, input_size)
    return _randn(shape, dtype, device, generator)


def _randn(shape, dtype, device, generator):
    """Normal samples drawn on the CPU (where ``generator`` lives), then moved to ``device``."""
    return torch.randn(shape, dtype=torch.float64, generator=generator).to(device, dtype)


def make_lengths(batch, steps, *, generator=None, full_first=True):
    """Per-sequence lengths in ``[1, steps]``, int64 on the CPU; one full-length sequence when
    ``full_first`` (so padded outputs keep ``steps`` rows)."""
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    if full_first and batch:
        lengths[0] = steps
    return lengths


def make_packed(batch, steps, input_size, *, dtype=torch.float32, device="cpu", generator=None,
                enforce_sorted=False):
    """A random ``PackedSequence`` with random lengths (unsorted unless ``enforce_sorted``)."""
    lengths = make_lengths(batch, steps, generator=generator)
    if enforce_sorted:
        lengths = lengths.sort(descending=True).values
    data = make_sequence(batch, steps, input_size, batch_first=True, dtype=dtype,
                         device=device, generator=generator)
    return pack_padded_sequence(data, lengths, batch_first=True, enforce_sorted=enforce_sorted)


def make_state(module, batch, *, dtype=None, device=None, generator=None, batched=True):
    """A random ``hx`` for ``module``: a tensor, or ``(h_0, c_0)`` for LSTM modules and cells."""
    weight = next(module.parameters())
    dtype, device = dtype or weight.dtype, device or weight.device
    lstm = isinstance(module, (_modules.LSTM, _cells.LSTMCell))
    if isinstance(module, _cells.RNNCellBase):
        lead = ()
        sizes = [module.hidden_size] * (2 if lstm else 1)
    else:
        lead = (module.num_layers * (2 if module.bidirectional else 1),)
        state = module.proj_size if lstm and module.proj_size else module.hidden_size
        sizes = [state, module.hidden_size] if lstm else [state]
    shapes = [lead + ((batch,) if batched else ()) + (size,) for size in sizes]
    states = [_randn(s, dtype, device, generator) for s in shapes]
    return tuple(states) if lstm else states[0]


def make_op_arguments(cell, *, steps=4, batch=3, input_size=2, hidden=3, proj=0, bias=True,
                      lengths=None, reverse=False, save=True, backend="reference",
                      dtype=torch.float64, requires_grad=False, generator=None):
    """The arguments of one direction's ``fusedrnn::{cell}_fwd`` (``ops.FORWARD[cell]``):
    random tensors (leaves that require a gradient where ``requires_grad``), ``lengths`` a
    list or None, then the flags and the backend's name."""
    gates = _GATES[cell] * hidden
    state = proj or hidden

    def make(*shape):
        return _randn(shape, dtype, "cpu", generator).requires_grad_(requires_grad)

    x = make(steps, batch, input_size)
    w_ih, w_hh = make(gates, input_size), make(gates, state)
    b_ih, b_hh = (make(gates), make(gates)) if bias else (None, None)
    w_hr = make(proj, hidden) if proj else None
    h0 = make(batch, state)
    c0 = make(batch, hidden) if cell == "lstm" else None
    lengths = None if lengths is None else torch.tensor(lengths)
    return [x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse, save, backend]


def flatten_outputs(output):
    """The tensors of a module's output, in order: padded/packed output then states."""
    if isinstance(output, PackedSequence):
        return [output.data]
    if isinstance(output, torch.Tensor):
        return [output]
    flat = []
    for item in output:
        flat.extend(flatten_outputs(item))
    return flat


def _detach_like(value, requires_grad):
    if isinstance(value, PackedSequence):
        return value._replace(data=value.data.detach().requires_grad_(requires_grad))
    if isinstance(value, torch.Tensor):
        return value.detach().requires_grad_(requires_grad)
    if isinstance(value, (tuple, list)):
        return type(value)(_detach_like(v, requires_grad) for v in value)
    return value


def _leaves(value):
    if isinstance(value, PackedSequence):
        return [value.data]
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [leaf for v in value for leaf in _leaves(v)]
    return []


def outputs_and_grads(module, input, hx=None, *, seed=0):
    """Run ``module(input, hx)`` and backpropagate fixed random output gradients.

    Returns ``(outputs, grads)``: the output tensors (see :func:`flatten_outputs`), and the
    gradients of input, ``hx`` and every parameter (``None`` where one did not arrive).
    """
    input = _detach_like(input, input_requires_grad(input))
    hx = _detach_like(hx, True)
    module.zero_grad(set_to_none=True)
    args = (input,) if hx is None else (input, hx)
    outputs = flatten_outputs(module(*args))
    generator = torch.Generator().manual_seed(seed)
    seeds = [torch.randn(o.shape, generator=generator, dtype=torch.float64).to(o) for o in outputs]
    torch.autograd.backward(outputs, seeds)
    leaves = _leaves(input) + _leaves(hx) + list(module.parameters())
    grads = [None if leaf.grad is None else leaf.grad.detach().clone() for leaf in leaves]
    return [o.detach() for o in outputs], grads


def input_requires_grad(input):
    data = input.data if isinstance(input, PackedSequence) else input
    return data.dtype.is_floating_point


def relative_error(actual, expected):
    """``max|actual - expected| / max|expected|`` (absolute when ``expected`` is all zero)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if expected.numel() == 0:
        return 0.0
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    if diff != diff:  # NaN
        return float("inf")
    return diff / scale if scale > 0 else diff


def assert_close_relative(actual, expected, bound, what=""):
    """Every pair of tensors agrees within ``bound`` relative error; ``None`` must match ``None``."""
    assert len(actual) == len(expected), f"{what}: {len(actual)} tensors, expected {len(expected)}"
    for index, (a, e) in enumerate(zip(actual, expected)):
        if a is None or e is None:
            assert a is None and e is None, f"{what}[{index}]: one side has no gradient"
            continue
        error = relative_error(a, e)
        assert error <= bound, f"{what}[{index}]: relative error {error:.3g} > {bound:.3g}"


def assert_within_low_precision_rule(candidate, low_reference, oracle, factor, what="",
                                     floor=1e-6):
    """``err(candidate, oracle) <= factor * err(low_reference, oracle)`` tensor by tensor.

    ``oracle`` is the float64 result, ``low_reference`` the reference backend run in the
    candidate's dtype; ``floor`` guards the case where the reference is exact.
    """
    for index, (c, r, o) in enumerate(zip(candidate, low_reference, oracle)):
        if c is None or o is None:
            assert c is None and o is None and r is None, f"{what}[{index}]: missing gradient"
            continue
        allowed = factor * max(relative_error(r, o), floor)
        error = relative_error(c, o)
        assert error <= allowed, (f"{what}[{index}]: error {error:.3g} against float64 exceeds "
                                  f"{factor} x the reference backend's {allowed / factor:.3g}")


def assert_low_precision_rule(oracle, reference, candidate, input64, hx64=None):
    """The low-precision rule end to end: ``reference`` and ``candidate`` (modules in one
    16-bit dtype) get ``oracle``'s weights (a float64 module), all three run ``input64``
    (a float64 tensor or PackedSequence, cast to that dtype for the two) from the initial
    state ``hx64`` (float64, or None), and :func:`assert_within_low_precision_rule` holds
    for the outputs (``OUTPUT_FACTOR``) and the gradients (``GRADIENT_FACTOR``, the initial
    state's among them). Returns the candidate's outputs and gradients."""
    dtype = next(candidate.parameters()).dtype
    oracle_out, oracle_grads = outputs_and_grads(oracle, input64, hx64)
    if isinstance(input64, PackedSequence):
        low = input64._replace(data=input64.data.to(dtype))
    else:
        low = input64.to(dtype)
    low_hx = (None if hx64 is None else hx64.to(dtype) if torch.is_tensor(hx64)
              else tuple(h.to(dtype) for h in hx64))
    results = []
    for module in (reference, candidate):
        module.load_state_dict(oracle.state_dict())
        results.append(outputs_and_grads(module, low, low_hx))
    (ref_out, ref_grads), (out, grads) = results
    assert_within_low_precision_rule(out, ref_out, oracle_out, OUTPUT_FACTOR, "outputs")
    assert_within_low_precision_rule(grads, ref_grads, oracle_grads, GRADIENT_FACTOR,
                                     "gradients")
    return out, grads


def weight_outlives_module(make_module, input, calls=3):
    """Whether ``W_hh`` (``weight_hh_l0``) of the module ``make_module()`` is still alive
    once the module is gone, after ``calls`` training calls (forward and backward) and as
    many inference calls on ``input``: whether something, a cache say, kept it."""
    import gc
    import weakref

    module = make_module()
    for _ in range(calls):
        module(input)[0].float().sum().backward()
    with torch.no_grad():
        for _ in range(calls):
            module(input)
    weight = weakref.ref(module.weight_hh_l0)
    del module
    gc.collect()
    return weight() is not None
