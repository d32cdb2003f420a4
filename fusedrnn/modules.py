"""Drop-in replacements for ``torch.nn.LSTM``, ``GRU`` and ``RNN``.

Same constructor arguments, parameter names, shapes, initialisation (and order of random
draws, so the same seed gives the same weights), attributes and forward contract as
torch's modules, plus one keyword, ``backend``. They are plain ``nn.Module``s, not
subclasses of torch's: ``torch.compile`` refuses to trace any instance of those.
"""

import math
import numbers
import warnings
import weakref

import torch
from torch import nn

from . import functional

__all__ = ["LSTM", "GRU", "RNN"]

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


class RNNBase(nn.Module):
    """Parameters, attributes and checks shared by :class:`LSTM`, :class:`GRU` and :class:`RNN`."""

    # A list assigned to _flat_weights and the weights it was assigned over (see there).
    _flat_weights_held = None

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, proj_size=0,
                 device=None, dtype=None, *, backend="auto"):
        super().__init__()
        _check_arguments(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         proj_size)
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          "non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.backend = backend
        self._flat_weights_names = []
        self._all_weights = []
        factory = {"device": device, "dtype": dtype}
        gate_size = _GATES[mode] * hidden_size
        state_size = proj_size if proj_size > 0 else hidden_size
        directions = 2 if bidirectional else 1
        for layer in range(num_layers):
            for direction in range(directions):
                layer_input = input_size if layer == 0 else state_size * directions
                shapes = [("weight_ih", (gate_size, layer_input)),
                          ("weight_hh", (gate_size, state_size))]
                if bias:
                    shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                if proj_size > 0:
                    shapes.append(("weight_hr", (proj_size, hidden_size)))
                suffix = "_reverse" if direction == 1 else ""
                names = []
                for kind, shape in shapes:
                    name = f"{kind}_l{layer}{suffix}"
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(name)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    def reset_parameters(self):
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def _weight(self, name):
        return module_weight(self, name)

    @property
    def _flat_weights(self):
        """The weights a call runs on, in ``_flat_weights_names`` order: the attributes, or a
        list assigned here, held as torch holds its own (:meth:`_held_flat_weights`)."""
        weights = module_weights(self, self._flat_weights_names)
        # An attribute read, not a look in __dict__: torch.compile guards on its value.
        held = self._flat_weights_held
        return weights if held is None else self._held_flat_weights(held, weights)

    @_flat_weights.setter
    def _flat_weights(self, weights):
        weights = list(weights)
        if len(weights) != len(self._flat_weights_names):
            raise ValueError(f"_flat_weights must hold {len(self._flat_weights_names)} tensors "
                             f"(_flat_weights_names), got {len(weights)}")
        attributes = module_weights(self, self._flat_weights_names)
        refs = [None if w is None else weakref.ref(w) for w in attributes]
        self.__dict__["_flat_weights_held"] = (weights, refs)

    def _held_flat_weights(self, held, attributes):
        """The assigned list ``held`` (with weak references to the weights it was assigned
        over) while every weight attribute is the object it was then (torch rebuilds its list
        when one changes, and when the module is converted: ``_apply``); the attributes once
        one changed."""
        held, refs = held
        if all((ref is None and w is None) or (ref is not None and ref() is w)
               for ref, w in zip(refs, attributes)):
            return list(held)
        self.__dict__.pop("_flat_weights_held")
        return attributes

    def _apply(self, *args, **kwargs):
        self.__dict__.pop("_flat_weights_held", None)
        return super()._apply(*args, **kwargs)

    def __getstate__(self):
        state = super().__getstate__()  # a copy of __dict__, less what must not be copied
        held = state.pop("_flat_weights_held", None)  # weak references do not pickle
        if held is not None:
            state["_flat_weights_held_list"] = held[0]
        return state

    def __setstate__(self, state):
        """Also a torch.nn module's state (a pickle of one loaded as this class, the usual way
        to swap the drop-ins into a saved model): ``backend``, fusedrnn's own, filled in with
        its constructor's default (as torch fills in ``proj_size`` for older pickles), and
        torch's list of the weights, ``_flat_weights``, held as an assigned one
        (:meth:`_held_flat_weights`) where it is not the attributes (torch's pickle keeps an
        assigned list until a weight changes)."""
        held = state.pop("_flat_weights_held_list", None)
        torch_list = state.pop("_flat_weights", None)
        super().__setstate__(state)
        if "backend" not in state:
            self.backend = "auto"
        if held is None and torch_list is not None and (
                len(torch_list) != len(self._flat_weights)
                or any(a is not b for a, b in zip(torch_list, self._flat_weights))):
            held = torch_list
        if held is not None:
            self._flat_weights = held

    @property
    def all_weights(self):
        return [[self._weight(name) for name in names] for names in self._all_weights]

    def to_torch_nn(self):
        """The ``torch.nn`` module (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) of this configuration,
        holding this module's Parameter objects themselves (training either trains both).

        ``torch.jit.script`` scripts that module in this one's place (through
        ``__prepare_scriptable__``): TorchScript cannot compile fusedrnn's Python layers."""
        return torch_nn_twin(self, self._torch_class, self._flat_weights_names,
                             self._flat_weights, **self._torch_kwargs())

    def _torch_kwargs(self):
        """The torch.nn twin's constructor arguments but the sizes."""
        return dict(num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                    dropout=self.dropout, bidirectional=self.bidirectional)

    def __prepare_scriptable__(self):
        return self.to_torch_nn()

    # torch.nn.RNNBase's checks, for subclasses written against torch's modules.

    def check_input(self, input, batch_sizes):
        weight = self._flat_weights[0]
        if input.dtype != weight.dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(f"{type(self).__name__}: input dtype ({input.dtype}) does not match "
                             f"weight dtype ({weight.dtype})")
        expected_dim = 2 if batch_sizes is not None else 3
        if input.dim() != expected_dim:
            raise RuntimeError(f"input must have {expected_dim} dimensions, got {input.dim()}")
        if input.size(-1) != self.input_size:
            raise RuntimeError("input.size(-1) must be equal to input_size. Expected "
                               f"{self.input_size}, got {input.size(-1)}")

    def get_expected_hidden_size(self, input, batch_sizes):
        return self._expected_state_size(input, batch_sizes, self.proj_size or self.hidden_size)

    def _expected_state_size(self, input, batch_sizes, size):
        if batch_sizes is not None:
            batch = int(batch_sizes[0])
        else:
            batch = input.size(0) if self.batch_first else input.size(1)
        return (self.num_layers * (2 if self.bidirectional else 1), batch, size)

    def check_hidden_size(self, hx, expected_hidden_size, msg="Expected hidden size {}, got {}"):
        if hx.size() != expected_hidden_size:
            raise RuntimeError(msg.format(expected_hidden_size, list(hx.size())))

    def check_forward_args(self, input, hidden, batch_sizes):
        self.check_input(input, batch_sizes)
        self.check_hidden_size(hidden, self.get_expected_hidden_size(input, batch_sizes))

    def permute_hidden(self, hx, permutation):
        if permutation is None:
            return hx
        return hx.index_select(1, permutation)

    def flatten_parameters(self):
        """Does nothing: fusedrnn needs no flat weight buffer. Kept so torch code runs unchanged."""

    def extra_repr(self):
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        if self.backend != "auto":
            s += ", backend={backend!r}"
        return s.format(**self.__dict__)

    def _run_kwargs(self):
        return dict(bias=self.bias, num_layers=self.num_layers, dropout=self.dropout,
                    training=self.training, bidirectional=self.bidirectional,
                    batch_first=self.batch_first, backend=self.backend)


def torch_nn_twin(module, cls, names, weights, **kwargs):
    """A ``cls`` (a torch.nn module) built like ``module`` and holding its Parameters
    ``weights`` (None where it has none) under ``names``; the twin's own weights are made on
    the meta device, never filled."""
    for name, weight in zip(names, weights):
        if weight is not None and not isinstance(weight, nn.Parameter):
            raise RuntimeError(f"{type(module).__name__}: {name} is not a Parameter (a "
                               "parametrization, or a tensor set in its place); a torch.nn "
                               "module cannot hold it")
    twin = cls(module.input_size, module.hidden_size, **kwargs, device="meta",
               dtype=weights[0].dtype)
    for name, weight in zip(names, weights):
        setattr(twin, name, weight)
    return twin.train(module.training)


def _check_arguments(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size):
    """torch.nn's checks (torch 2.14's, stricter than older ones on bool and int types; a
    bool is an int there, as in Python)."""
    if (not isinstance(dropout, numbers.Number) or isinstance(dropout, bool)
            or not 0 <= dropout <= 1):
        raise ValueError("dropout should be a number in range [0, 1] representing the "
                         "probability of an element being zeroed")
    for name, value in (("bias", bias), ("batch_first", batch_first)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, int):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    # torch checks neither (a numpy integer works there; a float fails in range())
    for name, value in (("num_layers", num_layers), ("proj_size", proj_size)):
        if not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} should be an integer, got: {type(value).__name__}")
    if input_size <= 0:
        raise ValueError("input_size must be greater than zero")
    if hidden_size <= 0:
        raise ValueError("hidden_size must be greater than zero")
    if num_layers <= 0:
        raise ValueError("num_layers must be greater than zero")
    if proj_size < 0:
        raise ValueError("proj_size should be a positive integer or zero to disable projections")
    if proj_size >= hidden_size:
        raise ValueError("proj_size has to be smaller than hidden_size")


def _refuse_unknown(cls, kwargs):
    """torch's GRU and RNN take ``**kwargs``: ``proj_size`` among them is a ValueError."""
    if "proj_size" in kwargs:
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
    if kwargs:
        raise TypeError(f"{cls}.__init__() got an unexpected keyword argument "
                        f"'{next(iter(kwargs))}'")


_MISSING = object()


def module_weights(module, names, read=None):
    """``[read(module, name) for name in names]`` (``read``: :func:`module_weight` by default)
    for the weights read on every call. Registered parameters are read from
    ``module._parameters`` (where ``torch.func.functional_call`` puts its tensors too):
    nn.Module's ``__getattr__``, Python code, took about 2 us of an LSTM cell's four weights.
    Anything else (a parametrization's property, a plain attribute, a deleted weight) by
    ``read``."""
    if torch.compiler.is_compiling():  # getattr itself, which Dynamo traces and guards
        return [getattr(module, name) for name in names]
    parameters, instance = module._parameters, module.__dict__
    try:
        weights = [parameters[name] for name in names]
        # An instance attribute of the name (set by object.__setattr__, as some
        # weight-dropping wrappers do) hides the parameter from getattr.
        plain = instance.keys().isdisjoint(names)
    except KeyError:
        plain = False
    return weights if plain else [(read or module_weight)(module, name) for name in names]


def module_weight(module, name):
    """``getattr(module, name)``, as :func:`module_weights`."""
    weight = module.__dict__.get(name, _MISSING)
    if weight is _MISSING:
        weight = module._parameters.get(name, _MISSING)
    if weight is not _MISSING:
        return weight
    # An AttributeError raised in a property is lost to nn.Module.__getattr__, which then
    # reports the property itself missing.
    try:
        return getattr(module, name)
    except AttributeError:
        raise RuntimeError(f"{type(module).__name__}: weight {name} was deleted; set it "
                           "again (a Parameter or a tensor) before calling") from None


class LSTM(RNNBase):
    """Drop-in ``torch.nn.LSTM``: ``forward(input, hx=None) -> (output, (h_n, c_n))``."""

    _torch_class = nn.LSTM

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
                 backend="auto"):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, device, dtype, backend=backend)

    def forward(self, input, hx=None):
        return functional.lstm(input, hx, self._flat_weights, proj_size=self.proj_size,
                               **self._run_kwargs())

    def _torch_kwargs(self):
        return dict(super()._torch_kwargs(), proj_size=self.proj_size)

    def get_expected_cell_size(self, input, batch_sizes):
        return self._expected_state_size(input, batch_sizes, self.hidden_size)

    def check_forward_args(self, input, hidden, batch_sizes):
        self.check_input(input, batch_sizes)
        self.check_hidden_size(hidden[0], self.get_expected_hidden_size(input, batch_sizes),
                               "Expected hidden[0] size {}, got {}")
        self.check_hidden_size(hidden[1], self.get_expected_cell_size(input, batch_sizes),
                               "Expected hidden[1] size {}, got {}")

    def permute_hidden(self, hx, permutation):
        if permutation is None:
            return hx
        return hx[0].index_select(1, permutation), hx[1].index_select(1, permutation)


class GRU(RNNBase):
    """Drop-in ``torch.nn.GRU``: ``forward(input, hx=None) -> (output, h_n)``."""

    _torch_class = nn.GRU

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend="auto",
                 **kwargs):
        _refuse_unknown("GRU", kwargs)
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, device, dtype, backend=backend)

    def forward(self, input, hx=None):
        return functional.gru(input, hx, self._flat_weights, **self._run_kwargs())


class RNN(RNNBase):
    """Drop-in ``torch.nn.RNN`` (Elman, ``tanh`` or ``relu``): ``forward(input, hx=None) -> (output, h_n)``.

    The fourth positional argument is ``nonlinearity``, as in torch.
    """

    _torch_class = nn.RNN

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, *,
                 backend="auto", **kwargs):
        _refuse_unknown("RNN", kwargs)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
                             "'relu'.")
        super().__init__(f"RNN_{nonlinearity.upper()}", input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, 0, device, dtype,
                         backend=backend)
        self.nonlinearity = nonlinearity

    @property
    def _cell_nonlinearity(self):
        """The cell's, fixed at construction (self.mode) as torch.nn's, whatever
        self.nonlinearity is set to later."""
        return self.mode.removeprefix("RNN_").lower()

    def forward(self, input, hx=None):
        return functional.rnn(input, hx, self._flat_weights,
                              nonlinearity=self._cell_nonlinearity, **self._run_kwargs())

    def _torch_kwargs(self):
        return dict(super()._torch_kwargs(), nonlinearity=self._cell_nonlinearity)
