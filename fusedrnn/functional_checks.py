"""The checks of a ``functional`` call (:func:`fusedrnn.functional._prepare` runs them once
per call signature): the options, the weight list, the input and the initial states, each
error naming the argument at fault as torch.nn names it, or more precisely."""

import functools
import numbers

import torch


def check_config(name, weights, num_layers, directions, per_direction, dropout, proj_size):
    if not isinstance(num_layers, numbers.Integral) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
    if (not isinstance(dropout, numbers.Real) or isinstance(dropout, bool)
            or not 0 <= dropout <= 1):
        raise ValueError(f"dropout should be a number in range [0, 1], got {dropout!r}")
    if not isinstance(proj_size, numbers.Integral) or proj_size < 0:
        raise ValueError(f"proj_size should be a non-negative integer, got {proj_size!r}")
    expected = num_layers * directions * per_direction
    if len(weights) != expected:
        raise ValueError(f"{name}: weights must hold {expected} tensors for num_layers="
                         f"{num_layers}, {directions} direction(s), {per_direction} per "
                         f"direction; got {len(weights)}")


def weight_label(index, per_direction, directions, bias):
    """``weights[index]`` named by its place: ``weights[5] (w_hh of layer 0, reverse)``."""
    kinds = ["w_ih", "w_hh", *(["b_ih", "b_hh"] if bias else []), "w_hr"]
    unit, slot = divmod(index, per_direction)
    layer, direction = divmod(unit, directions)
    return f"weights[{index}] ({kinds[slot]} of layer {layer}{', reverse' if direction else ''})"


def check_weight_kinds(name, weights, per_direction, directions, bias, gates):
    """Every weight a tensor of its rank (matrices but the biases), ``w_hh``'s rows a multiple
    of the gates: what the sizes are read from, before the shapes are checked."""
    for index, weight in enumerate(weights):
        slot = index % per_direction
        rank = 1 if bias and slot in (2, 3) else 2
        if not isinstance(weight, torch.Tensor) or weight.dim() != rank:
            got = (f"a {weight.dim()}-D tensor" if isinstance(weight, torch.Tensor)
                   else type(weight).__name__)
            label = weight_label(index, per_direction, directions, bias)
            raise TypeError(f"{name}: {label} must be a {rank}-D tensor, got {got}")
    if weights[1].shape[0] % gates:
        raise ValueError(f"{name}: {weight_label(1, per_direction, directions, bias)} has "
                         f"{weights[1].shape[0]} rows, not a multiple of the {gates} gates")


def check_input(name, x, input_size, weight, autocast_dtype):
    if x.shape[-1] != input_size:
        raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {input_size}, "
                           f"got {x.shape[-1]} (input_size: the columns of weights[0], w_ih)")
    if x.shape[0] == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name}: input must be a floating-point tensor, got {x.dtype}")
    if x.device != weight.device:
        raise RuntimeError(f"{name}: input is on {x.device} but the weights are on "
                           f"{weight.device}; move one of them")
    if x.dtype != weight.dtype and autocast_dtype is None:
        raise ValueError(f"{name}: input dtype ({x.dtype}) does not match weight dtype "
                         f"({weight.dtype}). Convert input: input.to({weight.dtype}), or convert "
                         f"model: model.to({x.dtype})")


_INDEX_DTYPES = (torch.int64, torch.int32)  # index_select's


def check_packed_indices(packed, batch):
    """A ``PackedSequence``'s ``sorted_indices`` and ``unsorted_indices`` (None, or 1-D
    integer tensors of the batch's size ``batch``, ``batch_sizes[0]``): the states are
    permuted by them. Their values are not checked (a permutation: a pass over them)."""
    for label in ("sorted_indices", "unsorted_indices"):
        indices = getattr(packed, label)
        if indices is None:
            continue
        if (not isinstance(indices, torch.Tensor) or indices.dtype not in _INDEX_DTYPES
                or indices.shape != (batch,)):
            got = (f"shape {list(indices.shape)}, {indices.dtype}"
                   if isinstance(indices, torch.Tensor) else type(indices).__name__)
            raise ValueError(f"input: PackedSequence.{label} must be a 1-D int64 (or int32) "
                             f"tensor of the batch's size {batch} (batch_sizes[0]), got {got}")


def initial_states(name, hx, shapes, batched, x, autocast_dtype, step_cell=False):
    """``hx`` (or zeros) as a list of batched ``(L*D, B, S)`` tensors, checked against
    ``shapes``; named as a cell's (``hx[0]``, ``hx[1]``) for ``step_cell``."""
    if hx is None:
        return [x.new_zeros(shape) for shape in shapes]
    given = list(hx) if len(shapes) == 2 else [hx]
    if len(shapes) == 2 and (isinstance(hx, torch.Tensor) or len(given) != 2):
        raise TypeError(f"{name}: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
    labels = ((["hx[0]", "hx[1]"] if step_cell else ["hx[0] (h_0)", "hx[1] (c_0)"])
              if len(shapes) == 2 else ["hx"])
    states = []
    for label, state, shape in zip(labels, given, shapes):
        if not isinstance(state, torch.Tensor):
            raise TypeError(f"{name}: {label} must be a Tensor, got {type(state).__name__}")
        expected_dim = 3 if batched else 2
        if state.dim() != expected_dim:
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise RuntimeError(f"{name}: for {kind} input, {label} should also be "
                               f"{expected_dim}-D, got a {state.dim()}-D tensor")
        if not batched:
            state = state.unsqueeze(1)
        if tuple(state.shape) != shape:
            shown = shape if batched else (shape[0], shape[2])
            got = list(state.shape) if batched else [state.shape[0], state.shape[2]]
            raise RuntimeError(f"Expected {label} size {shown}, got {got}")
        if state.device != x.device:
            raise RuntimeError(f"{name}: {label} is on {state.device} but input is on {x.device}")
        if not state.dtype.is_floating_point:  # under autocast too, which would cast it
            raise RuntimeError(f"{name}: {label} must be a floating-point tensor, got "
                               f"{state.dtype}")
        if state.dtype != x.dtype and autocast_dtype is None:
            raise RuntimeError(f"{name}: {label} dtype ({state.dtype}) does not match input dtype "
                             f"({x.dtype})")
        states.append(state)
    return states


def check_weights(name, weights, num_layers, directions, per_direction, gates, hidden,
                   state_size, input_size, bias, x):
    config = (num_layers, directions, per_direction, gates, hidden, state_size, input_size, bias)
    # Dynamo warns about lru_cache (and guards the shapes itself).
    shapes = weight_shapes.__wrapped__ if torch.compiler.is_compiling() else weight_shapes
    try:
        expected = shapes(*config)
    except TypeError:  # a symbolic size (torch.export of dynamic weights) has no hash
        expected = weight_shapes.__wrapped__(*config)
    dtype, device = weights[0].dtype, x.device
    if all(w.shape == shape and w.dtype == dtype and w.device == device
           for w, shape in zip(weights, expected)):
        return
    for index, (weight, shape) in enumerate(zip(weights, expected)):
        label = weight_label(index, per_direction, directions, bias)
        if weight.shape != shape:
            raise ValueError(f"{name}: {label} should have shape {shape}, "
                             f"got {tuple(weight.shape)}")
        if weight.device != device or weight.dtype != dtype:
            raise ValueError(f"{name}: {label} is {weight.dtype} on {weight.device}; "
                             f"every weight must be {dtype} on {device}")


@functools.lru_cache(maxsize=256)
def weight_shapes(num_layers, directions, per_direction, gates, hidden, state_size, input_size,
                   bias):
    """The shape of every weight, in torch's ``_flat_weights`` order."""
    shapes = []
    for index in range(num_layers * directions * per_direction):
        slot = index % per_direction
        layer = index // (per_direction * directions)
        if slot == 0:
            shapes.append((gates * hidden, input_size if layer == 0 else state_size * directions))
        elif slot == 1:
            shapes.append((gates * hidden, state_size))
        elif bias and slot in (2, 3):
            shapes.append((gates * hidden,))
        else:
            shapes.append((state_size, hidden))
    return tuple(shapes)
