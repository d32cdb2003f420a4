"""LSTM, GRU and Elman RNN on explicit weight tensors.

Everything above the single-layer, single-direction ops happens here, once, for every
backend: argument checks, unbatched and ``batch_first`` layouts, ``PackedSequence`` to
padded data plus lengths and back, layers, directions, the LSTM projection, dropout
between layers, autocast and the backend choice. What a plain eager call's signature decides
(its checks, sizes, backend and ops) is kept from one call to the next (:func:`_plan_key`).

``weights`` is the flat list ``torch.nn.LSTM._flat_weights`` holds: for each layer, for
each direction, ``w_ih, w_hh`` then ``b_ih, b_hh`` when ``bias`` then ``w_hr`` when
``proj_size > 0``.
"""

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad
from torch.nn.utils.rnn import PackedSequence

from . import backends, functional_autocast, functional_onnx, ops, ops_bidirectional
from . import functional_checks as checks

__all__ = ["lstm", "gru", "rnn"]

_MODE_NAMES = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN", "rnn_relu": "RNN"}


def lstm(input, hx, weights, bias=True, num_layers=1, dropout=0.0, training=False,
         bidirectional=False, batch_first=False, proj_size=0, backend=None):
    """Multi-layer LSTM. Returns ``(output, (h_n, c_n))`` exactly like ``torch.nn.LSTM``.

    ``input``: ``(T, B, I)`` (``(B, T, I)`` if ``batch_first``), ``(T, I)`` unbatched, or a
    ``PackedSequence``. ``hx``: ``None`` or ``(h_0, c_0)`` of shapes ``(L*D, B, P)`` and
    ``(L*D, B, H)`` (no batch dimension for unbatched input), with ``D`` = 2 if
    ``bidirectional`` else 1 and ``P`` = ``proj_size or H``.
    """
    return _run("lstm", input, hx, weights, bias, num_layers, dropout, training, bidirectional,
                batch_first, proj_size, backend)


def gru(input, hx, weights, bias=True, num_layers=1, dropout=0.0, training=False,
        bidirectional=False, batch_first=False, backend=None):
    """Multi-layer GRU. Returns ``(output, h_n)`` exactly like ``torch.nn.GRU``."""
    return _run("gru", input, hx, weights, bias, num_layers, dropout, training, bidirectional,
                batch_first, 0, backend)


def rnn(input, hx, weights, nonlinearity="tanh", bias=True, num_layers=1, dropout=0.0,
        training=False, bidirectional=False, batch_first=False, backend=None):
    """Multi-layer Elman RNN (``tanh`` or ``relu``). Returns ``(output, h_n)`` like ``torch.nn.RNN``."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    return _run(f"rnn_{nonlinearity}", input, hx, weights, bias, num_layers, dropout, training,
                bidirectional, batch_first, 0, backend)


def weights_per_direction(bias, proj_size):
    return 2 + (2 if bias else 0) + (1 if proj_size > 0 else 0)


class _Plan(NamedTuple):
    """What a call's signature alone decides (see :func:`_plan_key`): its options, sizes and
    layout, and the backend and ops it runs on."""

    cell: str
    bias: bool
    num_layers: int
    directions: int
    per_direction: int
    proj_size: int
    batched: bool
    batch_first: bool
    step_cell: bool
    state_shapes: list
    save: bool
    backend: str  # the chosen backend's name
    op: Callable  # a direction's forward op, or how to call it (ops.direct and the like)
    pair_op: Optional[Callable]  # the two-direction op for a bidirectional layer, or None
    output_dtype: Optional[torch.dtype]  # under autocast, the output's dtype


_PLANS = {}  # _plan_key -> _Plan
_PLANS_KEPT = 512


def _plan_key(options, backend, input, hx, weights):
    """The signature a call's :class:`_Plan` is kept under, or None for a call that makes its
    plan each time: packed input, forward-mode AD, or anything in the dispatcher but the ops
    (:func:`ops.dispatcher_passes_on`: torch.compile, a trace, a transform, a mode, the
    profiler, autocast, tensor subclasses). The signature holds what the checks, the sizes
    and the backend choice depend on: the options, the backend asked for (the argument or
    the environment variable), the registry's generation, the numeric options' and ``hx``'s
    types (``hx``'s is NoneType when it is not given), whether autograd records the call,
    and every tensor's shape, dtype and device. A backend's own rules are taken as fixed for
    the process (registering or removing a backend starts a new generation). Checking a
    call and choosing its backend took 25 of the 85 us an LSTM cell's step took at batch 1,
    hidden 128, on the 2-core AMD EPYC."""
    if (torch.compiler.is_compiling() or type(input) is not torch.Tensor
            or forward_ad._current_level >= 0):
        return None
    tensors = [input, *weights] if hx is None else [input, *_as_tuple(hx), *weights]
    if not ops.dispatcher_passes_on(tensors):
        return None
    save = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    # Types too: 3 and 3.0 are one key, and so are a tensor and the tuple holding it, where
    # the checks pass one and refuse the other (num_layers, dropout, proj_size; hx).
    _, _, num_layers, dropout, _, _, _, proj_size, _ = options
    return (options, type(num_layers), type(dropout), type(proj_size), type(hx),
            backends.requested_name(backend), backends.generation(), save,
            *[(t.shape, t.dtype, t.device) for t in tensors])


def _run(cell, input, hx, weights, bias, num_layers, dropout, training, bidirectional,
         batch_first, proj_size, backend, step_cell=False):
    """``step_cell``: one step of a cell (``torch.nn.LSTMCell``'s autocast rule differs from
    ``torch.nn.LSTM``'s): one layer and direction of batched input, its states given as
    ``(B, S)`` tensors (``hx`` as the cell's own), its final states returned as that layer's
    own ``(B, S)`` tensors, not stacked into ``(1, B, S)`` copies."""
    if isinstance(weights, torch.Tensor):
        raise TypeError(f"{_MODE_NAMES[cell]}: weights must be a list of tensors (torch.nn's "
                        "_flat_weights order), got one tensor")
    weights = list(weights)
    options = (cell, bias, num_layers, dropout, training, bidirectional, batch_first, proj_size,
               step_cell)
    key = _plan_key(options, backend, input, hx, weights)
    plan = _PLANS.get(key) if key is not None else None
    if key is None and functional_onnx.exporting():  # checked, then torch's own ATen ops
        requested = backends.requested_name(backend)
        if requested != backends.AUTO:
            backends.get(requested)  # a known name, run or not
        with functional_onnx.untraced():
            plan = _prepare(cell, input, hx, weights, bias, num_layers, dropout, bidirectional,
                            batch_first, proj_size, "reference", step_cell)[0]
        return functional_onnx.run(plan, input, hx, weights, dropout, training)
    if plan is None:
        plan, x, states, weights, lengths, positions = _prepare(
            cell, input, hx, weights, bias, num_layers, dropout, bidirectional, batch_first,
            proj_size, backend, step_cell)
        if key is not None:
            if len(_PLANS) >= _PLANS_KEPT:
                _PLANS.clear()
            _PLANS[key] = plan
    else:  # the checks passed for this signature: only the layout
        x = (input.unsqueeze(1) if not plan.batched
             else input.transpose(0, 1) if batch_first else input)
        if hx is None:
            states = [[x.new_zeros(shape[1:])] if shape[0] == 1 else x.new_zeros(shape).unbind(0)
                      for shape in plan.state_shapes]
        elif step_cell:
            states = [[s] for s in _as_tuple(hx)]
        else:
            count = plan.num_layers * plan.directions
            states = [_per_layer(s if plan.batched else s.unsqueeze(1), count)
                      for s in _as_tuple(hx)]
        lengths = positions = None
    return _layers(plan, x, states, weights, lengths, positions, input, dropout, training)


def _per_layer(state, count):
    """A ``(L*D, B, S)`` state, ``count`` = L*D, as its ``(B, S)`` tensors, one per layer and
    direction (one view for one layer: a view costs most of a microsecond)."""
    return [state[0]] if count == 1 else state.unbind(0)


def _prepare(cell, input, hx, weights, bias, num_layers, dropout, bidirectional, batch_first,
             proj_size, backend, step_cell):
    """Check a call and make its plan: ``(plan, x, states, weights, lengths, positions)``,
    ``x`` time-major and padded, the states per kind (h, and the LSTM's c) a list of ``(B, S)``
    tensors per layer and direction, all in the call's dtype."""
    name = _MODE_NAMES[cell] + ("Cell" if step_cell else "")
    if step_cell and hx is not None:  # checked below as a layer's (1, B, S)
        hx = tuple(s.unsqueeze(0) for s in hx) if cell == "lstm" else hx.unsqueeze(0)
    directions = 2 if bidirectional else 1
    per_direction = weights_per_direction(bias, proj_size)
    checks.check_config(name, weights, num_layers, directions, per_direction, dropout, proj_size)
    gates = ops.GATES[cell]
    checks.check_weight_kinds(name, weights, per_direction, directions, bias, gates)
    hidden = weights[1].shape[0] // gates
    state_size = proj_size if proj_size > 0 else hidden
    input_size = weights[0].shape[1]

    packed = isinstance(input, PackedSequence)
    if packed:
        (x, lengths, positions), batched = _unpack(input), True
    else:
        x, batched = _batched_time_major(name, input, batch_first)
        lengths = positions = None
    autocast_dtype, output_dtype = functional_autocast.dtypes(
        cell, x, hx, packed, packed and lengths is None, proj_size, step_cell)
    checks.check_input(name, x, input_size, weights[0], autocast_dtype)
    batch = x.shape[1]
    if packed:
        checks.check_packed_indices(input, batch)

    state_shapes = [(num_layers * directions, batch, state_size)]
    if cell == "lstm":
        state_shapes.append((num_layers * directions, batch, hidden))
    states = checks.initial_states(name, hx, state_shapes, batched, x, autocast_dtype, step_cell)
    if packed:
        states = [s.index_select(1, input.sorted_indices) if input.sorted_indices is not None
                  else s for s in states]
    checks.check_weights(name, weights, num_layers, directions, per_direction, gates, hidden,
                         state_size, input_size, bias, x)

    given = [input.data if packed else input, *(() if hx is None else _as_tuple(hx))]
    # The caller's own tensors: every tensor made here under a transform is a wrapped one.
    transform = _differentiating_transform(given + weights)
    x, states, weights = functional_autocast.cast(name, x, states, weights, autocast_dtype)
    # Workspaces for the backward only where autograd records the calls; a torch.jit.trace
    # keeps the flag as a constant, so a trace saves them whatever the grad mode it was taken
    # in, if anything requires a gradient (it may later train).
    save = ((torch.is_grad_enabled() or torch.jit.is_tracing())
            and any(map(_requires_grad, [x, *states, *weights])))
    call = backends.Call(cell, hidden, state_size, batch, training=save, transform=transform,
                         steps=x.shape[0])
    choice = backends.select(backend, x.device, x.dtype, call)
    own_op = backends.get(choice.name).forward_op(cell, x.device, x.dtype, call)
    op = own_op or ops.FORWARD[cell]
    # Both directions of a layer in one op (and one autograd node), so that a backend can
    # run them at the same time; a backend's own op runs one direction per call.
    pair_op = ops_bidirectional.FORWARD[cell] if directions == 2 and own_op is None else None
    if transform is None and not torch.compiler.is_compiling():
        direct = ops.dispatcher_passes_on([x, *states, *weights, *(() if lengths is None
                                                                   else (lengths,))])
        if not save:
            op = (direct and ops.direct(op, choice.name, x.dtype)) or ops.below_autograd(op)
            pair_op = pair_op and ((direct and ops.direct(pair_op)) or ops.below_autograd(pair_op))
        elif not torch.jit.is_tracing() and not torch._C._functorch.get_interpreter_stack():
            op = ops.eager_autograd(op, direct)
            pair_op = pair_op and ops.eager_autograd(pair_op, direct)
    plan = _Plan(cell, bias, num_layers, directions, per_direction, proj_size, batched,
                 batch_first, step_cell, state_shapes, save, choice.name, op, pair_op,
                 output_dtype)
    states = [_per_layer(s, num_layers * directions) for s in states]
    return plan, x, states, weights, lengths, positions


def _layers(plan, x, states, weights, lengths, positions, input, dropout, training):
    """Run ``plan``'s layers and directions on ``x`` and ``states`` (see :func:`_prepare`);
    the results in the caller's layout."""
    cell, save, per_direction = plan.cell, plan.save, plan.per_direction
    h_n, c_n = [], []
    layer_input = x
    for layer in range(plan.num_layers):
        own = []  # per direction: w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0
        for direction in range(plan.directions):
            index = layer * plan.directions + direction
            w = weights[index * per_direction:(index + 1) * per_direction]
            b_ih, b_hh = (w[2], w[3]) if plan.bias else (None, None)
            w_hr = w[-1] if plan.proj_size > 0 else None
            c0 = states[1][index] if cell == "lstm" else None
            own.append((w[0], w[1], b_ih, b_hh, w_hr, states[0][index], c0))
        if plan.pair_op is not None:
            results = plan.pair_op(layer_input, *own[0], *own[1], lengths, save, plan.backend)
            results = [results[:5], results[5:]]
        else:
            results = [plan.op(layer_input, *own[d], lengths, d == 1, save, plan.backend)
                       for d in range(plan.directions)]
        outputs = []
        for y, h, c, _, _ in results:
            outputs.append(y)
            h_n.append(h)
            c_n.append(c)
        layer_input = outputs[0] if plan.directions == 1 else torch.cat(outputs, 2)
        if dropout > 0 and training and layer < plan.num_layers - 1:
            layer_input = _dropout(layer_input, dropout, positions)

    if cell != "lstm":
        c_n = []
    finals = h_n + c_n if plan.step_cell else [torch.stack(f, 0) for f in (h_n, c_n) if f]
    output = layer_input
    if (plan.output_dtype is not None and plan.output_dtype != output.dtype
            and output.dtype != torch.float64):
        output, finals[0] = output.to(plan.output_dtype), finals[0].to(plan.output_dtype)
    if isinstance(input, PackedSequence):
        output = _repack(output, positions, input)
        if input.unsorted_indices is not None:
            finals = [f.index_select(1, input.unsorted_indices) for f in finals]
    elif not plan.batched:  # (T, I) in, (T, D*H) out, batch_first or not, as torch.nn
        output = output.squeeze(1)
        finals = [f.squeeze(1) for f in finals]
    elif plan.batch_first:
        output = output.transpose(0, 1)
    return output, (tuple(finals) if cell == "lstm" else finals[0])


# ---------------------------------------------------------------- layouts and packing


def _batched_time_major(name, input, batch_first):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name}: input must be a Tensor or a PackedSequence, "
                        f"got {type(input).__name__}")
    if input.dim() not in (2, 3):
        raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
    if input.dim() == 2:
        return input.unsqueeze(1), False
    return (input.transpose(0, 1) if batch_first else input), True


def _unpack(packed):
    """A ``PackedSequence`` as padded ``(T, B, I)`` data in its sorted order, the lengths
    and the packed rows' positions in the padded ``(T * B)`` rows (see :func:`_repack`).

    Lengths and positions are ``None`` when every sequence is full, so the ops skip
    masking. One ``index_copy`` pads (torch's ``pad_packed_sequence`` copies once per time
    step and does not run under torch.func's transforms).
    """
    batch_sizes = packed.batch_sizes
    if batch_sizes.numel() == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if int(batch_sizes[-1]) <= 0 or bool((batch_sizes[1:] > batch_sizes[:-1]).any()):
        raise ValueError("input: PackedSequence.batch_sizes must be positive and non-increasing "
                         f"(a zero-length sequence cannot be packed), got {batch_sizes.tolist()}")
    data = packed.data
    if not isinstance(data, torch.Tensor) or data.dim() != 2:
        got = f"{data.dim()}" if isinstance(data, torch.Tensor) else type(data).__name__
        raise RuntimeError(f"input: a PackedSequence's data must have 2 dimensions, got {got}")
    steps, batch = batch_sizes.numel(), int(batch_sizes[0])
    if int(batch_sizes[-1]) == batch:
        if data.shape[0] != steps * batch:
            raise ValueError(f"input: a PackedSequence's data has {data.shape[0]} rows but its "
                             f"batch_sizes add up to {steps * batch}")
        return data.reshape(steps, batch, data.shape[1]), None, None
    # Packed rows are time-major: step t holds rows 0..batch_sizes[t]-1 of the sorted batch,
    # so the true entries of this (T, B) mask, in row-major order, are the packed rows.
    present = torch.arange(batch) < batch_sizes.unsqueeze(1)
    positions = present.view(-1).nonzero().view(-1)
    if data.shape[0] != positions.numel():
        raise ValueError(f"input: a PackedSequence's data has {data.shape[0]} rows but its "
                         f"batch_sizes add up to {positions.numel()}")
    positions = positions.to(data.device)
    # Autocast's promoting ops (index_copy among them) refuse a float16 tensor under bfloat16
    # autocast and the reverse; padding changes no value.
    with torch.autocast(data.device.type, enabled=False):
        padded = data.new_zeros(steps * batch, data.shape[1]).index_copy(0, positions, data)
    return (padded.view(steps, batch, data.shape[1]),
            present.sum(0).to(device=data.device), positions)


def _repack(output, positions, like):
    """``output`` ``(T, B, F)`` packed like ``like``: its rows at ``positions`` (all, in
    order, where None)."""
    rows = output.reshape(-1, output.shape[2])
    data = rows if positions is None else rows.index_select(0, positions)
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


def _dropout(x, p, positions):
    """Dropout between layers on ``x`` ``(T, B, F)``, drawing its mask as torch.nn does: over
    the packed rows only where the input was packed (at ``positions``), so one seed gives
    torch's masks."""
    if positions is None:
        return F.dropout(x, p, True)
    rows = x.reshape(-1, x.shape[2])
    dropped = F.dropout(rows.index_select(0, positions), p, True)
    return rows.index_copy(0, positions, dropped).view_as(x)


def _as_tuple(hx):
    return tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)


def _requires_grad(tensor):
    """Whether autograd records ``tensor``'s use: under vmap a mapped tensor says False
    even where the tensor it maps over requires a gradient, so look beneath the wrappers."""
    if tensor.requires_grad:
        return True
    if torch.compiler.is_compiling():
        return False
    functorch = torch._C._functorch
    while functorch.is_batchedtensor(tensor):
        tensor = functorch.get_unwrapped(tensor)
        if tensor.requires_grad:
            return True
    return False


def _differentiating_transform(tensors):
    """The transform that differentiates a call whose caller tensors (input, states,
    weights) are ``tensors``, by name, or None: ``torch.func.grad`` (and ``vjp``, ``jacrev``)
    or ``jvp`` (``jacfwd``, ``hessian``) where one of them is that transform's tensor, or
    ``torch.autograd.forward_ad`` where one is a dual tensor. Custom ops' autograd formulas
    have no rules for these (torch.func raises; forward-mode AD would see zero tangents),
    so such calls run from differentiable torch ops. A layer on constants inside a
    transform is a constant there and runs as usual. Dynamo cannot read the transform stack:
    under torch.compile this is None."""
    if torch.compiler.is_compiling():
        return None
    kinds = {level.key() for level in torch._C._functorch.get_interpreter_stack() or ()}
    transform = torch._C._functorch.TransformType
    name = ("torch.func.jvp" if transform.Jvp in kinds
            else "torch.func.grad" if transform.Grad in kinds else None)
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    if name and any(isinstance(t, torch.Tensor) and wrapped(t) for t in tensors):
        return name
    if forward_ad._current_level >= 0 and any(
            isinstance(t, torch.Tensor) and forward_ad.unpack_dual(t).tangent is not None
            for t in tensors):
        return "torch.autograd.forward_ad"
    return None
