"""The Triton kernels as ``torch.library.triton_op``s, which ``torch.compile`` traces into.

``fusedrnn::{cell}_{fwd,bwd}_triton`` have the shared schemas of ``fusedrnn/ops.py`` and
the same autograd formula; their bodies are the launchers of ``lstm.py``, ``gru.py`` and
``rnn.py`` (input projection, ``wrap_triton`` launches, weight-gradient products). Only the
persistent and cooperative plans go through them: their single launch on a GPU traces
well, while the per-step plan's Python time loop would unroll into the graph, so that plan
stays behind the opaque dispatching op.

Dynamo cannot trace the import that defines these ops, so they are defined on the first
eager call (:func:`pair`); under ``torch.compile`` :func:`defined` returns them only if an
eager call already did, and otherwise the dispatching op runs (correct, just opaque).
"""

import torch

from ... import ops, ops_vmap
from .. import common

_PAIRS = {}


def pair(cell):
    """``(forward_op, backward_op)`` of ``cell``, defined on first use (eagerly)."""
    if cell not in _PAIRS:
        from . import launchers

        forward, backward = launchers(cell)

        def launch_forward(*args):  # the last two arguments: save, the backend name
            return common.keep_saved(forward(*args[:-2]), args[-2])

        def launch_backward(*args):
            return backward(*args[:-1])

        _PAIRS[cell] = ops.define_pair(cell, "_triton", launch_forward, launch_backward,
                                       maker=torch.library.triton_op)
        ops_vmap.register_forward(_PAIRS[cell][0])
    return _PAIRS[cell]


def defined(cell):
    """The pair if an eager call has defined it, else None (safe while compiling)."""
    return _PAIRS.get(cell)
