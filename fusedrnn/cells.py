"""Drop-in replacements for ``torch.nn.LSTMCell``, ``GRUCell`` and ``RNNCell``.

A cell is one time step of the sequence ops (``T = 1``), so it runs on the same backends
and autograd formulas as the sequence modules.
"""

import math

import torch
from torch import nn

from . import functional, modules

__all__ = ["LSTMCell", "GRUCell", "RNNCell"]

_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class RNNCellBase(nn.Module):
    """Parameters ``weight_ih (G, I)``, ``weight_hh (G, H)``, ``bias_ih``, ``bias_hh (G,)``."""

    def __init__(self, input_size, hidden_size, bias, gates, device=None, dtype=None, *,
                 backend="auto"):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.backend = backend
        self.weight_ih = nn.Parameter(torch.empty(gates * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(gates * hidden_size, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gates * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(gates * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self):
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def __setstate__(self, state):
        """Also a torch.nn cell's state (see ``modules.RNNBase.__setstate__``): ``backend``
        filled in with the constructor's default."""
        super().__setstate__(state)
        if "backend" not in state:
            self.backend = "auto"

    def extra_repr(self):
        s = "{input_size}, {hidden_size}"
        if self.bias is not True:
            s += ", bias={bias}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += ", nonlinearity={nonlinearity}"
        return s.format(**self.__dict__)

    def _attributes(self):
        """``weight_ih, weight_hh, bias_ih, bias_hh`` as getattr gives them (torch's error for
        a deleted one): as torch's cells, the bias attributes whatever ``bias`` the cell was
        built with (a cell built without biases may be given them; one set to None adds
        nothing)."""
        return modules.module_weights(self, _WEIGHTS, getattr)

    def _step_weights(self):
        """The weights a step runs on (:meth:`_attributes`) and whether they have biases."""
        w_ih, w_hh, b_ih, b_hh = self._attributes()
        if b_ih is None and b_hh is None:
            return [w_ih, w_hh], False
        if b_ih is None or b_hh is None:  # the ops take both or neither
            given = b_hh if b_ih is None else b_ih
            zeros = torch.zeros_like(given, memory_format=torch.contiguous_format)
            b_ih, b_hh = (zeros, b_hh) if b_ih is None else (b_ih, zeros)
        return [w_ih, w_hh, b_ih, b_hh], True

    def to_torch_nn(self):
        """The ``torch.nn`` cell of this configuration, holding this cell's Parameter objects
        themselves; ``torch.jit.script`` scripts it in this one's place."""
        extra = {"nonlinearity": self.nonlinearity} if isinstance(self, RNNCell) else {}
        return modules.torch_nn_twin(self, self._torch_class, _WEIGHTS, self._attributes(),
                                     bias=self.bias, **extra)

    def __prepare_scriptable__(self):
        return self.to_torch_nn()

    def _step(self, input, states, names):
        """Check one step's ``input`` ``(B, I)`` or ``(I,)`` and ``states`` ``(B, H)``/``(H,)``
        (or None); ``(sequence, states, weights, bias, batched)`` for :func:`_final_states`:
        the input as a ``(1, B, I)`` sequence, the states as ``(B, H)``."""
        if not isinstance(input, torch.Tensor) or input.dim() not in (1, 2):
            got = f"{input.dim()}D" if isinstance(input, torch.Tensor) else type(input).__name__
            raise ValueError(f"{type(self).__name__}: Expected input to be 1D or 2D, got {got} "
                             "instead")
        dim = input.dim()
        batched = dim == 2
        weights, bias = self._step_weights()
        if (input.dtype != weights[0].dtype and not torch.compiler.is_compiling()
                and not torch._C._is_any_autocast_enabled()):
            raise RuntimeError(f"{type(self).__name__}: input dtype ({input.dtype}) does not "
                               f"match weight dtype ({weights[0].dtype})")
        if states is not None:
            for name, state in zip(names, states):
                if (not isinstance(state, torch.Tensor) or state.dim() != dim
                        or state.shape[-1] != self.hidden_size
                        or (batched and state.shape[0] != input.shape[0])):
                    self._refuse_state(name, state, input)
            states = [s if batched else s.view(1, -1) for s in states]
        sequence = input.unsqueeze(0) if batched else input.view(1, 1, -1)
        return sequence, states, weights, bias, batched

    def _refuse_state(self, name, state, input):
        """Raise torch's error for a state ``state`` that does not fit ``input``."""
        kind = type(self).__name__
        if not isinstance(state, torch.Tensor):
            raise TypeError(f"{kind}: {name} must be a Tensor, got {type(state).__name__}")
        if state.dim() not in (1, 2):
            raise ValueError(f"{kind}: Expected {name} to be 1D or 2D, got {state.dim()}D "
                             "instead")
        if state.dim() != input.dim():
            raise RuntimeError(f"{kind}: {name} must be {input.dim()}-D like input")
        if input.dim() == 2 and state.shape[0] != input.shape[0]:
            raise RuntimeError(f"Input batch size {input.shape[0]} doesn't match {name} batch "
                               f"size {state.shape[0]}")
        raise RuntimeError(f"{kind}: {name} has {state.shape[-1]} features, expected "
                           f"hidden_size={self.hidden_size}")


def _final_states(cell, module, sequence, states, weights, bias):
    """``functional._run`` of one step of ``module`` (``cell``: the op's name) on its
    ``weights`` (with biases: ``bias``) from ``states``, ``(B, H)`` tensors or None: the final
    states, each the op's own ``(B, H)`` tensor (``step_cell``)."""
    _, finals = functional._run(cell, sequence, states, weights, bias, 1, 0.0, False,
                                False, False, 0, module.backend, True)  # step_cell
    return finals


def _unstack(state, batched):
    """A step's ``(B, H)`` final state as the cell returns it: a tensor of its own where
    batched, as torch's cells return (a view would refuse ``detach_()``), a ``(H,)`` view
    unbatched, as torch's is."""
    return state if batched else state.view(-1)


class LSTMCell(RNNCellBase):
    """Drop-in ``torch.nn.LSTMCell``: ``forward(input, hx=None) -> (h_1, c_1)``."""

    _torch_class = nn.LSTMCell

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 backend="auto"):
        super().__init__(input_size, hidden_size, bias, 4, device, dtype, backend=backend)

    def forward(self, input, hx=None):
        if hx is not None and (isinstance(hx, torch.Tensor) or len(hx) != 2):
            raise TypeError("LSTMCell: hx must be a tuple (h_0, c_0)")
        sequence, states, weights, bias, batched = self._step(input, hx, ("hx[0]", "hx[1]"))
        h, c = _final_states("lstm", self, sequence, None if states is None else tuple(states),
                             weights, bias)
        return _unstack(h, batched), _unstack(c, batched)


class GRUCell(RNNCellBase):
    """Drop-in ``torch.nn.GRUCell``: ``forward(input, hx=None) -> h_1``."""

    _torch_class = nn.GRUCell

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 backend="auto"):
        super().__init__(input_size, hidden_size, bias, 3, device, dtype, backend=backend)

    def forward(self, input, hx=None):
        sequence, states, weights, bias, batched = self._step(
            input, None if hx is None else (hx,), ("hx",))
        h = _final_states("gru", self, sequence, None if states is None else states[0], weights,
                          bias)
        return _unstack(h, batched)


class RNNCell(RNNCellBase):
    """Drop-in ``torch.nn.RNNCell``: ``forward(input, hx=None) -> h_1``."""

    _torch_class = nn.RNNCell

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None,
                 dtype=None, *, backend="auto"):
        super().__init__(input_size, hidden_size, bias, 1, device, dtype, backend=backend)
        self.nonlinearity = nonlinearity  # checked by each call, as torch's cell does

    def forward(self, input, hx=None):
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")

        sequence, states, weights, bias, batched = self._step(
            input, None if hx is None else (hx,), ("hx",))
        h = _final_states(f"rnn_{self.nonlinearity}", self, sequence,
                          None if states is None else states[0], weights, bias)
        return _unstack(h, batched)
