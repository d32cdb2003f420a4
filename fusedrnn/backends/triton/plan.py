"""Which Triton kernel runs a call, and with which tile sizes.

``persistent``: one launch for the whole sequence, each program holding all of ``W_hh``
(gates x H x P) in registers; chosen while that block is at most ``PERSISTENT_LIMIT``
elements (tiles round H and P up to powers of two, at least 16). ``step``: one launch per
time step over tiles of the hidden units, for larger sizes (no projection).
``FUSEDRNN_TRITON_KERNEL=persistent|step`` forces one (the tests use it to cover both).
"""

import logging
import os
from dataclasses import dataclass

logger = logging.getLogger("fusedrnn")

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
PERSISTENT_LIMIT = 4 * 64 * 64
BLOCK_B = 16
STEP_BLOCK_H = 32
STEP_BLOCK_K = 32
ENV_VAR = "FUSEDRNN_TRITON_KERNEL"
_logged = set()


@dataclass(frozen=True)
class Variant:
    """The kernel (``"persistent"``, ``"step"``, or None when none can run) and why."""

    kernel: str
    reason: str
    block_h: int = 0
    block_p: int = 0


def tile(size):
    """The power-of-two tile covering ``size`` (at least 16, the smallest ``tl.dot``)."""
    return max(16, 1 << max(0, size - 1).bit_length())


def choose(cell, hidden, state):
    block_h, block_p = tile(hidden), tile(state)
    weights = GATES[cell] * block_h * block_p
    forced = os.environ.get(ENV_VAR, "").strip()
    if forced not in ("", "auto", "persistent", "step"):
        return Variant(None, f"{ENV_VAR} must be persistent, step or auto, got {forced!r}")
    has_proj = state != hidden
    if forced == "persistent" or (forced != "step" and weights <= PERSISTENT_LIMIT):
        why = "forced" if forced else f"W_hh tile {GATES[cell]}x{block_h}x{block_p} fits one program"
        return Variant("persistent", f"persistent kernel: {why}", block_h, block_p)
    if has_proj:
        return Variant(None, f"proj_size needs the persistent kernel, and W_hh tile "
                             f"{GATES[cell]}x{block_h}x{block_p} exceeds its {PERSISTENT_LIMIT} "
                             "elements")
    why = "forced" if forced else f"W_hh tile {GATES[cell]}x{block_h}x{block_p} is over {PERSISTENT_LIMIT}"
    return Variant("step", f"one launch per step: {why}", block_h, block_p)


def log_once(cell, variant):
    key = (cell, variant.reason)
    if key not in _logged:
        _logged.add(key)
        logger.info("fusedrnn triton %s: %s", cell, variant.reason)


def full_precision_dot(dtype):
    """Whether the kernels' ``tl.dot`` runs in float32 (IEEE) rather than on 16-bit operands.

    float32 inputs: always (TF32 would miss the 1e-5 parity bound). bfloat16 under the
    interpreter too: Triton 3.8's interpreter multiplies bfloat16 operands of ``tl.dot`` as
    raw integers, so there the products are taken in float32; on a GPU bfloat16 and float16
    go to the tensor cores with float32 accumulation.
    """
    import torch

    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    return dtype == torch.float32 or (dtype == torch.bfloat16 and interpreted)


def launch_flags(x, lengths, placeholder):
    """The flags every kernel takes (``HAS_LENGTHS``, ``IEEE``) and the tensor to pass as
    ``lengths``: the lengths, or ``placeholder`` (never read) when there are none."""
    flags = dict(HAS_LENGTHS=lengths is not None, IEEE=full_precision_dot(x.dtype))
    return flags, lengths if lengths is not None else placeholder
