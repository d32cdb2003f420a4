"""The ``triton`` backend: fused LSTM, GRU and Elman RNN kernels written in Triton.

Runs on CUDA tensors, and on CPU tensors under the Triton interpreter
(``TRITON_INTERPRET=1``, slow: for tests). Importing this package does not import Triton;
the kernels load on the first call. Which kernel runs (persistent or one launch per step)
is decided per call by :func:`plan.choose`, and the choice with its reason is logged once.
"""

import importlib.util
import logging

import torch

from .. import Availability, Backend, common
from . import cooperative, plan, traceable

logger = logging.getLogger("fusedrnn")

# Whether Triton is installed, found once at import without importing it (Dynamo in torch
# 2.11 cannot trace importlib's find_spec, and a compiled call may be the first to ask).
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
DTYPES = ("float32", "float16", "bfloat16")


def interpreter_enabled():
    return plan.interpreted()


def launchers(cell):
    """``(forward, backward)`` of ``cell``: the launchers of its kernels, with the reference
    backend's contract. The first call imports Triton."""
    from . import gru, lstm, rnn

    if cell in rnn.LAUNCHERS:
        return rnn.LAUNCHERS[cell]
    module = {"lstm": lstm, "gru": gru}[cell]
    return module.forward, module.backward


class TritonBackend(Backend):
    name = "triton"
    priority = 10
    auto_devices = ("cuda",)  # on the CPU it runs only through the interpreter, for tests

    def available(self):
        if not TRITON_INSTALLED:
            return Availability(False, "Triton is not installed (pip install triton)")
        return Availability(True, "")

    def supports(self, device, dtype, call=None):
        if device.type == "cpu" and not interpreter_enabled():
            return False, "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1)"
        if device.type not in ("cpu", "cuda"):
            return False, f"Triton kernels do not run on {device.type} tensors"
        if str(dtype).replace("torch.", "") not in DTYPES:
            return False, f"dtype {dtype} is not one of {', '.join(DTYPES)}"
        if call is not None:
            if call.cell not in CELLS:
                return False, f"no Triton kernel for the {call.cell} cell (only {', '.join(CELLS)})"
            variant = plan.choose(call.cell, call.hidden, call.state, dtype,
                                  *cooperative.limits(device))
            too_large = plan.index_limit_reason(call.cell, call.hidden, call.steps, call.batch)
            if variant.kernel is None or too_large:
                return False, too_large or variant.reason
        return True, ""

    def forward(self, cell, *args):
        *args, save = args
        return common.keep_saved(launchers(cell)[0](*args), save)

    def backward(self, cell, *args):
        return launchers(cell)[1](*args)

    def forward_op(self, cell, device, dtype, call):
        """The ``triton_op`` of ``cell`` for CUDA tensors where one launch runs the sequence
        (the persistent and cooperative plans; see ``traceable.py``), else None: the
        dispatching op runs the launchers directly."""
        if device.type != "cuda" or cell not in CELLS:
            return None
        if plan.choose(cell, call.hidden, call.state, dtype, *cooperative.limits(device)).kernel \
                not in ("persistent", "cooperative"):
            return None
        pair = traceable.defined(cell) if torch.compiler.is_compiling() else traceable.pair(cell)
        return None if pair is None else pair[0]
