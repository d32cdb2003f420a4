"""Pieces every backend shares: masks, time order, the all-steps products and gradients."""

import contextlib

import torch

# Dynamo before torch 2.11 (2.6 seen; 2.11 not) says a symbolic size's type is int, so
# there every size it traces counts as symbolic.
_DYNAMO_HIDES_SYMBOLIC_SIZES = tuple(map(int, torch.__version__.split(".")[:2])) < (2, 11)


def concrete_size(size):
    """Whether ``size`` is a plain int: not symbolic (torch.compile with dynamic shapes,
    torch.export with a dynamic dimension), so that a choice made on its value puts no guard
    on it."""
    if _DYNAMO_HIDES_SYMBOLIC_SIZES and torch.compiler.is_compiling():
        return False
    return type(size) is int


# Gate blocks per cell, in PyTorch's order: LSTM i, f, g, o; GRU r, z, n.
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}

_NOTHING = contextlib.nullcontext()


def without_autocast(device):
    """Autocast off, where it is on, for an op's body and the recompute of a create_graph
    backward: ``functional`` has chosen the call's dtype already (as torch.nn's under
    autocast), and a backend's own ops must not be lowered again inside. Without autocast
    (the usual case) one C call: this runs for every op call."""
    if (not torch._C._is_any_autocast_enabled()
            or not torch.amp.is_autocast_available(device.type)
            or not torch.is_autocast_enabled(device.type)):
        return _NOTHING
    return torch.autocast(device.type, enabled=False)


def empty(like):
    """The ``(0,)`` placeholder for a result that does not exist (no bias, no projection)."""
    return like.new_empty((0,))


def keep_saved(outputs, save):
    """A forward's ``(y, h_n, c_n, ws_a, ws_b)`` with the workspaces dropped (empty) unless
    ``save``: for backends whose kernels always produce them."""
    if save:
        return outputs
    y, h_n, c_n, _, _ = outputs
    return y, h_n, c_n, empty(y), empty(y)


def active_mask(lengths, steps):
    """``(T, B, 1)`` bool mask of active steps, or None when no lengths are given."""
    if lengths is None:
        return None
    return (torch.arange(steps, device=lengths.device)[:, None] < lengths[None, :]).unsqueeze(-1)


def time_order(steps, reverse):
    """The steps in processing order."""
    return list(range(steps - 1, -1, -1)) if reverse else list(range(steps))


def flat(t):
    """``(T, B, S)`` as ``(T * B, S)`` (explicit sizes: B may be 0)."""
    return t.reshape(t.shape[0] * t.shape[1], t.shape[2])


def input_projection(x, w_ih, bias):
    """``x @ w_ih^T + bias`` for all steps in one product: ``(T, B, G)``, a fresh buffer."""
    steps, batch, _ = x.shape
    if bias is None:
        out = torch.mm(flat(x), w_ih.t())
    else:
        out = torch.addmm(bias, flat(x), w_ih.t())
    return out.view(steps, batch, w_ih.shape[0])


def previous_states(states, initial, mask, reverse):
    """The state each step started from: ``states`` ``(T, B, S)`` shifted by one step in
    processing order, ``initial`` ``(B, S)`` at the first step.

    In the reverse direction a sequence shorter than T starts from ``initial`` at its own
    last step, where ``states[t + 1]`` is padding; ``mask`` fixes that case.
    """
    if reverse:
        shifted = torch.cat([states[1:], initial.unsqueeze(0)], 0)
        if mask is not None:
            starts_later = torch.cat([mask[1:], torch.zeros_like(mask[:1])], 0)
            shifted = torch.where(starts_later, shifted, initial)
        return shifted
    return torch.cat([initial.unsqueeze(0), states[:-1]], 0)


class PreviousStates:
    """:func:`previous_states` of ``states``, for a backward that needs it only in the
    ``W_hh`` gradient: without lengths that sum over steps is two products on slices of
    ``states`` and ``initial``, and the shifted copy is never made."""

    def __init__(self, states, initial, mask, reverse):
        self.states, self.initial, self.mask, self.reverse = states, initial, mask, reverse

    def tensor(self):
        return previous_states(self.states, self.initial, self.mask, self.reverse)

    def weight_grad(self, dgates):
        """``sum_t dgates[t]^T h_prev[t]``: ``(G, P)`` from ``dgates`` ``(T, B, G)``."""
        steps = dgates.shape[0]
        if self.mask is not None or steps < 2:
            return torch.mm(flat(dgates).t(), flat(self.tensor()))
        if self.reverse:  # step t started from t + 1; the last step from the initial state
            inner, outer = slice(0, steps - 1), steps - 1
            earlier = self.states[1:]
        else:
            inner, outer = slice(1, steps), 0
            earlier = self.states[:-1]
        grad = torch.mm(dgates[outer].t(), self.initial)
        return grad.addmm_(flat(dgates[inner]).t(), flat(earlier))


def hold_forward(mask, t, new_state, old_state, y_t):
    """After a forward step: the state to carry (inactive rows keep ``old_state``) and
    ``y_t`` zeroed on inactive rows, in place."""
    if mask is None:
        return new_state
    state = torch.where(mask[t], new_state, old_state)
    y_t.masked_fill_(~mask[t], 0)  # not a product with the mask: NaN * 0 is NaN
    return state


def backward_masks(mask, grad_y):
    """For the backward: ``grad_y`` with padding zeroed and the ``(T, B, 1)`` bool mask of
    inactive steps (None when every step is active), which carry the state gradient through
    unchanged. What a backward multiplies at an inactive step it selects away instead
    (:func:`zero_inactive_`, :func:`active_only`): a carried gradient may be inf, and the
    step's factors NaN (from its padding), and either times 0 is NaN."""
    if mask is None:
        return grad_y, None
    inactive = ~mask
    return grad_y.masked_fill(inactive, 0), inactive


def active_only(grad, inactive, t):
    """``grad`` ``(B, S)`` with the rows inactive at step ``t`` zeroed (a new tensor), or
    itself without lengths."""
    return grad if inactive is None else grad.masked_fill(inactive[t], 0)


def _over(steps_mask, like):
    """A ``(T, B, 1)`` mask viewed to broadcast over ``like`` ``(T, B, ...)``."""
    return steps_mask.view(steps_mask.shape + (1,) * (like.dim() - 3))


def zero_inactive_(factors, inactive):
    """``factors`` ``(T, B, ...)`` zeroed in place at the inactive steps (``inactive``
    ``(T, B, 1)``, from :func:`backward_masks`), whatever they hold there: what a step past a
    sequence's end computed from its padding (NaN or inf) must not reach a gradient, and a
    product with a 0/1 mask would keep NaN * 0 = NaN."""
    return factors.masked_fill_(_over(inactive, factors), 0)


def without_padding(lengths, *tensors):
    """``tensors`` ``(T, B, ...)`` with their inactive steps zeroed (new tensors), or as they
    are without ``lengths``: for a backward, whose products over all steps (``dgates^T x``)
    and whose gradient input ``grad_y`` must not carry what the padding holds (NaN * 0 is
    NaN).

    On the CPU outside a trace the copies are made only where the padding is not all zeros;
    the modules' is, and reading it costs a packed LSTM's training step 0.2-1.5% of its time
    on the 2-core Zen 5 EPYC (49 us of 3.3-5 ms at batch 8, 200 steps, hidden 128; 119 us of
    23 ms at batch 32, 100 steps, hidden 256; 151 us of 90 ms at batch 64, 50 steps, hidden
    512). Elsewhere one ``where``, which needs no row count from the device."""
    if lengths is None:
        return tensors
    steps, batch = tensors[0].shape[:2]
    inactive = ~active_mask(lengths, steps).to(tensors[0].device)
    if tensors[0].device.type != "cpu" or torch.compiler.is_compiling():
        return tuple(torch.where(_over(inactive, t), torch.zeros((), dtype=t.dtype,
                                                                 device=t.device), t)
                     for t in tensors)
    rows = inactive.view(-1).nonzero().view(-1)  # the padded (t, b) rows
    out = []
    for t in tensors:
        flat = t.reshape(steps * batch, *t.shape[2:])
        if bool(flat.index_select(0, rows).abs().sum() != 0):  # NaN, inf too; 3x any()
            flat = flat.clone(memory_format=torch.contiguous_format).index_fill_(0, rows, 0)
            t = flat.view(t.shape)
        out.append(t)
    return tuple(out)


def recurrent_grad(order, k, grad_y, dgates_t, w_hh, dh, inactive, out_steps=None):
    """The gradient of h entering the next processed step: ``grad_y`` there plus the
    recurrent product ``dgates_t @ w_hh``, with inactive rows carrying ``dh`` unchanged
    (``inactive`` from :func:`backward_masks`).

    After the last step it is the gradient of the initial state (no ``grad_y`` added).
    ``out_steps`` (``(T, B, P)``), when given, receives it in place.
    """
    if k + 1 < len(order):
        nxt = order[k + 1]
        out = None if out_steps is None else out_steps[nxt]
        new = torch.addmm(grad_y[nxt], dgates_t, w_hh, out=out)
    else:
        new = torch.mm(dgates_t, w_hh)
    if inactive is not None:
        new.add_(dh.masked_fill(~inactive[order[k]], 0))
    return new


def input_and_weight_grads(x, w_ih, dgates_input, dgates_hidden, h_prev, has_bias):
    """Gradients that are one product over all steps: input, W_ih, W_hh and the biases.

    ``dgates_input``/``dgates_hidden`` ``(T, B, G)`` are the gradients of the input-side and
    hidden-side pre-activations (the same tensor for LSTM and RNN); ``h_prev`` is the state
    each step started from, a tensor or a :class:`PreviousStates`.
    """
    flat_in, flat_hid = flat(dgates_input), flat(dgates_hidden)
    grad_x = torch.mm(flat_in, w_ih).view_as(x)
    grad_w_ih = torch.mm(flat_in.t(), flat(x))
    if isinstance(h_prev, PreviousStates):
        grad_w_hh = h_prev.weight_grad(dgates_hidden)
    else:
        grad_w_hh = torch.mm(flat_hid.t(), flat(h_prev))
    if not has_bias:
        return grad_x, grad_w_ih, grad_w_hh, empty(x), empty(x)
    grad_b_ih = flat_in.sum(0)
    grad_b_hh = grad_b_ih.clone() if dgates_hidden is dgates_input else flat_hid.sum(0)
    return grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


def projection_weight_grad(dh_steps, gates, cells, mask):
    """The gradient of the LSTM's projection ``W_hr`` ``(P, H)``, one product over all steps:
    ``dh_steps^T @ (o * tanh(c))``, ``dh_steps`` ``(T, B, P)`` the gradient of each step's
    projected state (zero past a row's end), ``gates`` and ``cells`` as saved, ``mask`` from
    :func:`active_mask` (the gates of a step past a row's end came from its padding)."""
    o = gates[:, :, 3 * cells.shape[2]:]
    r = o * torch.tanh(cells)
    if mask is not None:
        r.masked_fill_(~mask, 0)
    return torch.mm(flat(dh_steps).t(), flat(r))
