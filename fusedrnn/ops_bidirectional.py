"""The two-direction ops: both directions of one bidirectional layer in one call.

``fusedrnn::{cell}_bidir_fwd`` and ``fusedrnn::{cell}_bidir_bwd`` take what the one-direction
ops of ``ops.py`` take, once for each direction (the reverse direction's arguments suffixed
``_rev``), with ``x`` and ``lengths`` shared and no ``reverse`` flag::

    {cell}_bidir_fwd(x, w_ih, w_hh, b_ih?, b_hh?, w_hr?, h0, c0?,
                     w_ih_rev, w_hh_rev, ..., c0_rev?, lengths?, save, backend)
        -> y, h_n, c_n, ws_a, ws_b, y_rev, h_n_rev, c_n_rev, ws_a_rev, ws_b_rev
    {cell}_bidir_bwd(grad_y, grad_h_n, grad_c_n?, w_ih, w_hh, w_hr?, h0, c0?, y, ws_a, ws_b,
                     grad_y_rev, ..., ws_b_rev, x, lengths?, has_bias, backend)
        -> grad_x, then grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_hr, grad_h0,
           grad_c0 of each direction

Each direction's results are exactly the one-direction op's. One op, and one autograd node,
per layer lets a backend run the two directions at the same time in the backward too (the
autograd engine runs the nodes of a CPU graph one after another): the backend's
``forward_directions`` and ``backward_directions`` do the work, by default one direction
after the other.
"""

import torch

from . import backends, ops
from .backends import common
from .backends.reference import differentiable

_FORWARD_LEADING, _FORWARD_TRAILING = ("x",), ("lengths", "save", "backend")
_BACKWARD_LEADING, _BACKWARD_TRAILING = (), ("x", "lengths", "has_bias", "backend")


def _arguments(schema):
    """``[(type, name), ...]`` of a schema's arguments."""
    return [tuple(a.rsplit(" ", 1)) for a in schema[1:schema.index(") -> (")].split(", ")]


def _per_direction(schema, shared):
    return [(kind, name) for kind, name in _arguments(schema)
            if name not in shared and name != "reverse"]


def _two_direction_schema(schema, leading, trailing, outputs):
    kinds = {name: kind for kind, name in _arguments(schema)}
    own = _per_direction(schema, leading + trailing)
    arguments = ([f"{kinds[n]} {n}" for n in leading] + [f"{k} {n}" for k, n in own]
                 + [f"{k} {n}_rev" for k, n in own] + [f"{kinds[n]} {n}" for n in trailing])
    return f"({', '.join(arguments)}) -> ({', '.join(['Tensor'] * outputs)})"


FORWARD_SCHEMA = _two_direction_schema(ops.FORWARD_SCHEMA, _FORWARD_LEADING, _FORWARD_TRAILING,
                                       10)
BACKWARD_SCHEMA = _two_direction_schema(ops.BACKWARD_SCHEMA, _BACKWARD_LEADING,
                                        _BACKWARD_TRAILING, 15)
_FORWARD_OWN = len(_per_direction(ops.FORWARD_SCHEMA, _FORWARD_LEADING + _FORWARD_TRAILING))
_BACKWARD_OWN = len(_per_direction(ops.BACKWARD_SCHEMA, _BACKWARD_LEADING + _BACKWARD_TRAILING))


def _split_forward(args):
    """``x, forward direction's arguments, reverse direction's, lengths, save, backend``."""
    x, rest = args[0], args[1:]
    return (x, rest[:_FORWARD_OWN], rest[_FORWARD_OWN:2 * _FORWARD_OWN],
            *rest[2 * _FORWARD_OWN:])


def _split_backward(args):
    """``forward direction's arguments, reverse direction's, x, lengths, has_bias, backend``."""
    return (args[:_BACKWARD_OWN], args[_BACKWARD_OWN:2 * _BACKWARD_OWN],
            *args[2 * _BACKWARD_OWN:])


def _contiguous(args):
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def _one_direction_forward(x, own, lengths, reverse, save):
    """The one-direction forward op's arguments (without ``backend``)."""
    return (x, *own, lengths, reverse, save)


def _one_direction_backward(own, x, lengths, reverse, has_bias):
    grad_y, grad_h_n, grad_c_n, w_ih, w_hh, w_hr, h0, c0, y, ws_a, ws_b = own
    return (grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, h0, c0, lengths, y, ws_a, ws_b,
            reverse, has_bias)


def _define(cell):
    def forward(*args):
        x, first, second, lengths, save, backend = _split_forward(_contiguous(args))
        with common.without_autocast(x.device):
            results = backends.get(backend).forward_directions(
                cell, _one_direction_forward(x, first, lengths, False, save),
                _one_direction_forward(x, second, lengths, True, save))
        return (*results[0], *results[1])

    def backward(*args):
        first, second, x, lengths, has_bias, backend = _split_backward(_contiguous(args))
        # as the one-direction backward op: the padding reaches no gradient
        x, first_grad_y, second_grad_y = common.without_padding(lengths, x, first[0], second[0])
        first, second = (first_grad_y, *first[1:]), (second_grad_y, *second[1:])
        with common.without_autocast(x.device):
            results = backends.get(backend).backward_directions(
                cell, _one_direction_backward(first, x, lengths, False, has_bias),
                _one_direction_backward(second, x, lengths, True, has_bias))
        grad_x = results[0][0].add_(results[1][0])
        return (grad_x, *results[0][1:], *results[1][1:])

    forward_op = torch.library.custom_op(f"fusedrnn::{cell}_bidir_fwd", forward, mutates_args=(),
                                         schema=FORWARD_SCHEMA)
    backward_op = torch.library.custom_op(f"fusedrnn::{cell}_bidir_bwd", backward,
                                          mutates_args=(), schema=BACKWARD_SCHEMA)
    ops.register_implementation(forward_op, forward)
    ops.register_implementation(backward_op, backward)
    forward_op.register_fake(_fake_forward(cell))
    backward_op.register_fake(_fake_backward)
    ops.register_autograd_formula(forward_op, _autograd_backward(cell, forward_op, backward_op),
                                  _setup_context)
    return forward_op, backward_op


def _fake_forward(cell):
    one = ops.fake_forward(cell)

    def fake(*args):
        x, first, second, lengths, save, backend = _split_forward(args)
        return (*one(*_one_direction_forward(x, first, lengths, False, save), backend),
                *one(*_one_direction_forward(x, second, lengths, True, save), backend))

    return fake


def _fake_backward(*args):
    first, second, x, lengths, has_bias, backend = _split_backward(args)
    grad_x, *first_grads = ops.fake_backward(
        *_one_direction_backward(first, x, lengths, False, has_bias), backend)
    _, *second_grads = ops.fake_backward(
        *_one_direction_backward(second, x, lengths, True, has_bias), backend)
    return (grad_x, *first_grads, *second_grads)


# What the backward keeps of each direction, in this order (the biases aside: ops.keep_biases).
_SAVED = 8


def _setup_context(ctx, inputs, output):
    x, first, second, lengths, save, backend = _split_forward(inputs)
    recompute = ops.recomputes(ctx, save)
    saved, read = [x, lengths], [ops.reads(ctx, (1, 1 + _FORWARD_OWN)), False]
    for start, own, results in ((1, first, output[:5]), (1 + _FORWARD_OWN, second, output[5:])):
        w_ih, w_hh, _, _, w_hr, h0, c0 = own
        y, _, _, ws_a, ws_b = (None,) * 5 if recompute else results
        saved += [w_ih, w_hh, w_hr, h0, c0, y, ws_a, ws_b]
        read += [ops.reads(ctx, (0,)), True, True, ops.reads(ctx, (start + 1,)), True, True,
                 True, True]
    # a recomputing backward reads every input again (see ops.recomputes)
    ops.save_for_backward(ctx, saved, [False] * len(saved) if recompute else read)
    ctx.biases = ops.keep_biases(*first[2:4], *second[2:4])
    ctx.backend, ctx.has_bias = backend, first[2] is not None
    ctx.mark_non_differentiable(*output[3:5], *output[8:10])
    ctx.set_materialize_grads(False)


def _autograd_backward(cell, forward_op, backward_op):
    def autograd_backward(ctx, *grads):
        x, lengths, *saved = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: see ops.register_autograd
            return _differentiable_gradients(cell, x, lengths, saved,
                                             ops.kept_biases(ctx.biases), grads)
        if ctx.recompute:
            saved = _recomputed(forward_op, x, lengths, saved, ctx)
        args, own = [], []
        for direction in range(2):
            w_ih, w_hh, w_hr, h0, c0, y, ws_a, ws_b = saved[_SAVED * direction:][:_SAVED]
            outputs = ops.output_grads(*grads[5 * direction:][:3], y, h0, c0)
            args += [*outputs, w_ih, w_hh, w_hr, h0, c0, y, ws_a, ws_b]
            own.append((w_hr, c0))
        g_x, *rest = ops.call(backward_op, *args, x, lengths, ctx.has_bias, ctx.backend)
        return (g_x, *ops.parameter_grads(rest[:7], ctx.has_bias, *own[0]),
                *ops.parameter_grads(rest[7:], ctx.has_bias, *own[1]), None, None, None)

    return autograd_backward


def _recomputed(forward_op, x, lengths, saved, ctx):
    """``saved`` with each direction's ``y, ws_a, ws_b`` from the forward run again with
    ``save`` (:func:`ops.recomputes`)."""
    biases = ops.kept_biases(ctx.biases, differentiated=False)
    own = []
    for direction in range(2):
        w_ih, w_hh, w_hr, h0, c0 = saved[_SAVED * direction:][:5]
        own.append((w_ih, w_hh, *biases[2 * direction:][:2], w_hr, h0, c0))
    results = ops.call(forward_op, x, *own[0], *own[1], lengths, True, ctx.backend)
    return [*saved[:5], results[0], *results[3:5], *saved[_SAVED:][:5], results[5], *results[8:10]]


def _differentiable_gradients(cell, x, lengths, saved, biases, grads):
    """Both directions' gradients from ``differentiable.gradients``, ``grad_x`` summed."""
    x, = common.without_padding(lengths, x)  # as the backward op does
    results = []
    for direction in range(2):
        w_ih, w_hh, w_hr, h0, c0 = saved[_SAVED * direction:][:5]
        b_ih, b_hh = biases[2 * direction:][:2]
        results.append(differentiable.gradients(
            cell, (x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0), lengths, direction == 1,
            grads[5 * direction:][:3]))
    grad_xs = [r[0] for r in results if r[0] is not None]
    grad_x = sum(grad_xs) if grad_xs else None
    return (grad_x, *results[0][1:], *results[1][1:], None, None, None)


FORWARD = {}
BACKWARD = {}
for _cell in ops.GATES:
    FORWARD[_cell], BACKWARD[_cell] = _define(_cell)
