"""Backend registry and per-call selection.

A backend implements the per-layer, per-direction forward and backward of each cell
(see ``reference.py`` for the exact contract). The choice is made per call, in this order:
the ``backend=`` argument, else the environment variable ``FUSEDRNN_BACKEND``, else
``"auto"``. An explicitly requested backend that cannot run a call raises
:class:`BackendUnavailableError` with the reason; ``auto`` takes the first backend, by
priority, that can run the call and logs once why the ones before it could not.
"""

import logging
import os
from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import common, reference
from .reference import differentiable

logger = logging.getLogger("fusedrnn")

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
ENV_VAR = "FUSEDRNN_BACKEND"
AUTO = "auto"


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run the call; the message says why."""


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str

    def __bool__(self):
        return self.available


class Call(NamedTuple):
    """What a backend may need to know about one layer-direction call beyond device and
    dtype: the cell, the hidden size H, the state size P (``proj_size`` or H) and, when
    known, the batch size, whether a backward will follow (``training``), the
    differentiating transform the call runs under (``transform``: ``torch.func.grad`` and
    the like, or forward-mode AD; None for plain autograd) and the number of steps. A named
    tuple: every call makes one, in a third of a frozen dataclass's time."""

    cell: str
    hidden: int
    state: int
    batch: int = None
    training: bool = None
    transform: str = None
    steps: int = None


class Choice(NamedTuple):
    """The backend one call runs on, and why that one."""

    name: str
    reason: str


class Backend:
    """Base class: a name, a priority for ``auto`` (higher first) and the cell kernels."""

    name = ""
    priority = 0
    auto_devices = None  # the device types auto considers this backend for; None: all
    # Whether calls under torch.func's differentiating transforms (Call.transform) run here:
    # they need a layer built from differentiable torch ops (forward_op's business).
    runs_under_transforms = False

    def available(self):
        """Whether this backend can run at all here: :class:`Availability`."""
        return Availability(True, "")

    def supports(self, device, dtype, call=None):
        """Whether this backend can run a call on ``device`` in ``dtype`` (and, when given,
        of the :class:`Call` ``call``): ``(ok, reason)``."""
        return True, ""

    def auto_declines(self, device, dtype, call=None):
        """Whether ``auto`` should pass over this backend for a call it can run, because a
        later one is measured faster there: ``(declines, reason)``."""
        return False, ""

    def forward(self, cell, *args):
        raise NotImplementedError

    def backward(self, cell, *args):
        raise NotImplementedError

    def forward_directions(self, cell, first, second):
        """Both directions of a bidirectional layer: ``forward(cell, *first)`` (the forward
        direction's arguments) and ``forward(cell, *second)`` (the reverse direction's).
        One after the other here; a backend may run them at the same time."""
        return self.forward(cell, *first), self.forward(cell, *second)

    def backward_directions(self, cell, first, second):
        """The backward of both directions of a layer, as :meth:`forward_directions`."""
        return self.backward(cell, *first), self.backward(cell, *second)

    def forward_op(self, cell, device, dtype, call):
        """An op of this backend's own to call instead of the dispatching ``fusedrnn::{cell}_fwd``
        (same schema and autograd), or None."""
        return None

    def direct_forward(self, cell, dtype):
        """For :func:`fusedrnn.ops.direct`: a function of the forward op's arguments but
        ``backend``, run on contiguous tensors of ``dtype`` above autograd, that returns what
        :meth:`forward` returns, where the dispatcher would only pass the call on and autograd
        records nothing (no autocast, no mode, no profiler); None: :meth:`forward` itself,
        below autograd, through the op's implementation."""
        return None


class ReferenceBackend(Backend):
    name = "reference"
    priority = 0
    runs_under_transforms = True

    def supports(self, device, dtype, call=None):
        if not dtype.is_floating_point:
            return False, f"dtype {dtype} is not a floating-point type"
        return True, ""

    def forward(self, cell, *args):
        *args, save = args
        return common.keep_saved(reference.FORWARD[cell](*args), save)

    def backward(self, cell, *args):
        return reference.BACKWARD[cell](*args)

    def forward_op(self, cell, device, dtype, call):
        if call is not None and call.transform is not None:
            return differentiable.layer_op(cell)
        return None


_REGISTRY = {}
_BY_PRIORITY = []  # the registry's names, highest priority first
_GENERATION = [0]  # counts the registry's changes
_logged_fallbacks = set()  # (chosen, reasons) logged; a reason may name a call's sizes
_LOGGED_FALLBACKS_KEPT = 256  # then forgotten, at the cost of logging some again


def register(backend):
    """Add a backend to the registry."""
    _REGISTRY[backend.name] = backend
    _BY_PRIORITY[:] = sorted(_REGISTRY, key=lambda n: -_REGISTRY[n].priority)
    _GENERATION[0] += 1


def unregister(name):
    """Remove a backend from the registry (a test's double, say)."""
    del _REGISTRY[name]
    _BY_PRIORITY.remove(name)
    _GENERATION[0] += 1


def generation():
    """A number that changes whenever a backend is registered or removed: choices made for
    an earlier one may no longer hold (``functional`` keeps them per call signature)."""
    return _GENERATION[0]


def get(name):
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown backend {name!r}; known backends: {known} or 'auto'") from None


def names():
    return list(_BY_PRIORITY)


def available_backends():
    """``{name: Availability(available, reason)}`` for every registered backend."""
    return {name: _REGISTRY[name].available() for name in names()}


def requested_name(backend=None):
    """The backend a call asks for: the argument unless it is ``None``/``"auto"``, else the
    environment variable, else ``"auto"``."""
    if backend is not None and backend != AUTO:
        return backend
    return os.environ.get(ENV_VAR, "").strip() or AUTO


def _can_run(backend, device, dtype, call):
    status = backend.available()
    if not status.available:
        return False, status.reason
    if call is not None and call.transform is not None and not backend.runs_under_transforms:
        return False, (f"the call runs under {call.transform}, which cannot differentiate its "
                       "fused ops (custom ops' backward formulas have no torch.func rules); "
                       "the reference backend runs such calls from differentiable torch ops")
    return backend.supports(device, dtype, call)


def select(backend, device, dtype, call=None):
    """Choose the backend for one call on tensors of ``device`` and ``dtype`` (``call``: the
    :class:`Call`, when known): a :class:`Choice`."""
    name = requested_name(backend)
    if name != AUTO:
        source = "" if backend not in (None, AUTO) else f" (from {ENV_VAR})"
        try:
            chosen = get(name)
        except ValueError as error:
            raise ValueError(f"{error}{source}") from None
        ok, why = _can_run(chosen, device, dtype, call)
        if not ok:
            raise BackendUnavailableError(f"backend {name!r}{source} cannot run this call: {why}")
        return Choice(name, "requested")
    skipped = []
    for candidate in _BY_PRIORITY:
        devices = _REGISTRY[candidate].auto_devices
        if devices is not None and device.type not in devices:
            continue
        ok, why = _can_run(_REGISTRY[candidate], device, dtype, call)
        if ok:
            ok, why = _REGISTRY[candidate].auto_declines(device, dtype, call)
            ok, why = not ok, f"passed over: {why}" if ok else why
        if ok:
            reason = "auto: " + ("; ".join(skipped) if skipped else f"first choice on {device.type}")
            _log_fallback_once(candidate, skipped)
            return Choice(candidate, reason)
        skipped.append(f"{candidate} skipped ({why})")
    raise BackendUnavailableError(f"no backend can run this call: {'; '.join(skipped)}")


def _log_fallback_once(chosen, skipped):
    if not skipped or torch.compiler.is_compiling():
        return
    key = (chosen, tuple(skipped))
    if key not in _logged_fallbacks:
        if len(_logged_fallbacks) >= _LOGGED_FALLBACKS_KEPT:
            _logged_fallbacks.clear()
        _logged_fallbacks.add(key)
        logger.info("fusedrnn: using backend %r: %s", chosen, "; ".join(skipped))


register(ReferenceBackend())


def _register_optional():
    from .cpu import CpuBackend
    from .cuda import CudaBackend
    from .triton import TritonBackend

    register(TritonBackend())
    register(CudaBackend())
    register(CpuBackend())


_register_optional()
