"""Which CUDA kernels run a call of the ``cuda`` backend, and why.

``persistent`` (``csrc/persistent/``): one cooperative launch per layer and direction; the
hidden units are split over the blocks of the grid, each block keeps the slice of ``W_hh``
its units need in shared memory for every step, and the blocks meet at one grid barrier per
step. Chosen when that slice fits the device's shared memory per block and every block of
the grid can be resident at once (a grid barrier over blocks that are not would never
return). Otherwise ``stepwise`` (``csrc/recurrence.cpp``: per step one cuBLAS product and
one fused pointwise kernel), with the reason, logged once per reason.
``FUSEDRNN_CUDA_KERNEL=persistent|stepwise|auto`` forces one; a forced persistent kernel
that cannot run raises.

Forward blocks hold ``units`` units (a multiple of 4, as many blocks as the device has
multiprocessors at most); backward blocks hold 16 (their slice is 16 columns of ``W_hh``).
The shared-memory layout is the extension's (``csrc/persistent/slice_layout.h``), asked
through ``fusedrnn._C.persistent_smem_bytes``.
"""

import functools
import logging
import os
from dataclasses import dataclass

logger = logging.getLogger("fusedrnn")

ENV_VAR = "FUSEDRNN_CUDA_KERNEL"
GATES = {"lstm": 4, "gru": 3}
BACKWARD_UNITS = 16
MIN_CAPABILITY = (8, 0)
_logged = set()


@dataclass(frozen=True)
class Device:
    """What the planner needs to know of a GPU."""

    name: str
    capability: tuple
    multiprocessors: int
    smem_per_block: int  # the most dynamic shared memory one block may opt in to


@dataclass(frozen=True)
class Plan:
    """The kernels (``"persistent"`` or ``"stepwise"``) of one call, why, and the geometry
    of a persistent launch."""

    kernel: str
    reason: str
    units: int = 0
    blocks: int = 0
    smem: int = 0


@functools.lru_cache(maxsize=None)
def device_info(index):
    import torch

    props = torch.cuda.get_device_properties(index)
    optin = getattr(props, "shared_memory_per_block_optin", props.shared_memory_per_block)
    return Device(props.name, (props.major, props.minor), props.multi_processor_count, optin)


def forward_units(hidden, multiprocessors):
    """Units per forward block: a multiple of 4, few enough blocks for one per multiprocessor."""
    per_block = -(-hidden // multiprocessors)
    return max(4, -(-per_block // 4) * 4)


def forced_kernel():
    forced = os.environ.get(ENV_VAR, "").strip() or "auto"
    if forced not in ("auto", "persistent", "stepwise"):
        raise ValueError(f"{ENV_VAR} must be persistent, stepwise or auto, got {forced!r}")
    return forced


def choose(cell, hidden, dtype_name, itemsize, device, backward, smem_bytes, blocks_per_sm):
    """The :class:`Plan` of one call of ``cell`` (``"lstm"``/``"gru"``) with ``hidden`` units
    in ``dtype_name`` (``itemsize`` bytes) on ``device`` (:class:`Device`), forward or
    backward. ``smem_bytes(gates, units, hidden, itemsize, backward)`` and
    ``blocks_per_sm(kernel, dtype_name, smem)`` (-1: no kernel code for this device's
    architecture) answer for the extension and the device."""
    forced = forced_kernel()
    if forced == "stepwise":
        return Plan("stepwise", f"stepwise kernels: {ENV_VAR}=stepwise")
    units = BACKWARD_UNITS if backward else forward_units(hidden, device.multiprocessors)
    blocks = -(-hidden // units)
    smem = smem_bytes(GATES[cell], units, hidden, itemsize, backward)
    stage = "backward" if backward else "forward"
    why_not = None
    if hidden == 0:
        why_not = "no hidden unit to split over blocks"
    elif device.capability < MIN_CAPABILITY:
        why_not = ("the persistent kernels need compute capability %d.%d or newer, %s has %d.%d"
                   % (*MIN_CAPABILITY, device.name, *device.capability))
    elif smem > device.smem_per_block:
        why_not = (f"the {stage} slice of W_hh for {units} of {hidden} units needs "
                   f"{smem / 1024:.0f} KiB of shared memory per block, over the "
                   f"{device.smem_per_block / 1024:.0f} KiB of {device.name}")
    else:
        per_sm = blocks_per_sm(f"{cell}_{'bwd' if backward else 'fwd'}", dtype_name, smem)
        if per_sm < 0:
            why_not = ("the extension holds no persistent kernel code for compute capability "
                       "8.0+ (built with FUSEDRNN_CUDA_ARCHS for older GPUs only)")
        elif per_sm * device.multiprocessors < blocks:
            why_not = (f"the {stage} grid of {blocks} blocks cannot be resident at once "
                       f"({per_sm} per multiprocessor x {device.multiprocessors})")
    if why_not is not None:
        if forced == "persistent":
            raise RuntimeError(f"{ENV_VAR}=persistent cannot run this call: {why_not}")
        return Plan("stepwise", f"stepwise kernels: {why_not}")
    reason = (f"persistent {stage} kernel: W_hh over {blocks} blocks of {units} units, "
              f"{smem / 1024:.0f} KiB of shared memory each, one grid barrier per step")
    return Plan("persistent", reason, units, blocks, smem)


def plan_call(cell, hidden, dtype, device_index, backward):
    """:func:`choose` for a call on CUDA device ``device_index``, asking the extension."""
    from .. import _extension

    ext = _extension.CUDA.load()
    dtype_name = str(dtype).replace("torch.", "")
    itemsize = 2 if dtype_name in ("float16", "bfloat16") else 4

    def blocks_per_sm(kernel, name, smem):
        return _blocks_per_sm(ext, kernel, name, smem, device_index)

    plan = choose(cell, hidden, dtype_name, itemsize, device_info(device_index), backward,
                  ext.persistent_smem_bytes, blocks_per_sm)
    _log_once(cell, plan)
    return plan


@functools.lru_cache(maxsize=None)
def _blocks_per_sm(ext, kernel, dtype_name, smem, device_index):
    return ext.persistent_blocks_per_sm(kernel, dtype_name, smem, device_index)


def _log_once(cell, plan):
    key = (cell, plan.reason)
    if key not in _logged:
        _logged.add(key)
        logger.info("fusedrnn cuda %s: %s", cell, plan.reason)
