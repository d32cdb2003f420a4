"""``torch.func.vmap`` rules of the forward ops (one-direction and two-direction).

A vmapped layer whose weights are shared across the vmapped dimension (sequences mapped
over, the weights not) is one call: the vmapped dimension joins the batch of every
per-sequence tensor (``x`` at dim 1, the initial states and the lengths at dim 0), so the
kernels run once at V times the batch, and the results are split back. Where a weight is
vmapped (an ensemble of layers), the rule calls the op once per slice, as functorch's
fallback would, without its warning. The workspaces (``ws_a``, ``ws_b``) stay folded and
unbatched: only the ops' own autograd, below this rule, reads them.

The backward ops have no rule: under a torch.func transform the layer runs from
differentiable ops instead (``functional._differentiating_transform``), so they never meet
functorch's vmap. ``torch.autograd.grad(..., is_grads_batched=True)`` (and
``jacobian(vectorize=True)``) batches the gradients with the legacy vmap, outside any
transform, into the ops' own backward: its formula calls the backward op through the
dispatcher (``ops.dispatcher_passes_on`` refuses legacy batched tensors), whose batching
fallback runs the op once per row.
"""

import torch

from . import ops, ops_bidirectional

# Per-sequence arguments and the dimension of their batch; every other tensor is a weight.
_BATCHED_AT = {"x": 1, "h0": 0, "c0": 0, "lengths": 0, "h0_rev": 0, "c0_rev": 0}
# Per output of one direction: the dimension of the batch (None: not per sequence).
_OUTPUT_BATCH_AT = {"y": 1, "h_n": 0, "c_n": 0, "ws_a": None, "ws_b": None}


def _fold(tensor, dim, batch_at, size):
    """``tensor`` (vmapped at ``dim``, or None: shared) with the vmapped dimension merged into
    its batch dimension ``batch_at``, vmapped index major."""
    if dim is None:
        tensor = tensor.unsqueeze(0).expand(size, *tensor.shape)
    else:
        tensor = tensor.movedim(dim, 0)
    tensor = tensor.movedim(0, batch_at)
    return tensor.reshape(*tensor.shape[:batch_at], -1, *tensor.shape[batch_at + 2:])


def _unfold(tensor, batch_at, size):
    """The inverse of :func:`_fold`: the vmapped dimension split out at ``batch_at``."""
    return tensor.unflatten(batch_at, (size, -1))


def _rule(op, schema, outputs):
    """The vmap rule of ``op``; ``outputs``: the output names, per direction."""
    names = [name for _, name in ops_bidirectional._arguments(schema)]

    def rule(info, in_dims, *args):
        batched = dict(zip(names, in_dims))
        if any(d is not None for n, d in batched.items() if n not in _BATCHED_AT):
            return _per_slice(op, info.batch_size, in_dims, args)
        folded = [arg if name not in _BATCHED_AT or arg is None
                  else _fold(arg, batched[name], _BATCHED_AT[name], info.batch_size)
                  for name, arg in zip(names, args)]
        results = op(*folded)
        split, dims = [], []
        for name, result in zip(outputs, results):
            at = _OUTPUT_BATCH_AT[name]
            if at is None or result.dim() == 1:  # a workspace, or an empty (0,) c_n
                split.append(result)
                dims.append(None)
            else:
                split.append(_unfold(result, at, info.batch_size))
                dims.append(at)
        return tuple(split), tuple(dims)

    return rule


def _per_slice(op, size, in_dims, args):
    """``op`` once per slice of the vmapped dimension, the results stacked at dim 0."""
    slices = []
    for index in range(size):
        own = [arg if dim is None else arg.select(dim, index) for arg, dim in zip(args, in_dims)]
        slices.append(op(*own))
    stacked = tuple(torch.stack(parts) for parts in zip(*slices))
    return stacked, (0,) * len(stacked)


def register_forward(op):
    """Register the rule of a one-direction forward op (``ops.FORWARD_SCHEMA``): the
    dispatching ops here, a backend's own ops (the Triton ``triton_op``s) where it defines
    them."""
    torch.library.register_vmap(op, _rule(op, ops.FORWARD_SCHEMA, list(_OUTPUT_BATCH_AT)))


def register():
    """Register the rules (once, from ``fusedrnn/__init__.py``)."""
    one = list(_OUTPUT_BATCH_AT)
    for cell in ops.GATES:
        register_forward(ops.FORWARD[cell])
        pair = ops_bidirectional.FORWARD[cell]
        torch.library.register_vmap(pair, _rule(pair, ops_bidirectional.FORWARD_SCHEMA,
                                                one + one))
