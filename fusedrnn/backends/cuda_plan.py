"""Which CUDA kernels run a call of the ``cuda`` backend, and why.

``persistent`` (``csrc/persistent/``): one launch per layer and direction; the hidden units
are split over blocks, each block keeps the slice of ``W_hh`` its units need in shared
memory for every step, and the blocks meet at one barrier per step. Two designs:

- ``cluster`` (Hopper, compute capability 9.0+): one thread-block cluster of at most 16
  blocks per batch tile of 16 rows holds all of ``W_hh``; the new state moves through
  distributed shared memory, the per-step barrier is the cluster's, and the clusters never
  wait for each other. Forward blocks aim at 128 rows of
  ``W_hh`` (one 16-row product tile per warp).
- ``grid`` (compute capability 8.0+): one cooperative grid, at most one block per
  multiprocessor, for every batch row; the per-step barrier is grid-wide, so every block
  must be resident at once (a barrier over blocks that are not would never return).

Backward blocks hold 16 units (16 columns of ``W_hh``). The first design whose slice fits
the device's shared memory per block and whose blocks the device can place wins; otherwise
``stepwise`` (``csrc/recurrence.cpp``: per step one cuBLAS product and one fused pointwise
kernel), with the reason, logged once per reason.
``FUSEDRNN_CUDA_KERNEL=auto|persistent|cluster|grid|stepwise`` forces a choice; a forced
persistent design that cannot run raises. The shared-memory layout is the extension's
(``csrc/persistent/slice_layout.h``), asked through ``fusedrnn._C.persistent_smem_bytes``.
"""

import functools
import logging
import os
from dataclasses import dataclass

logger = logging.getLogger("fusedrnn")

ENV_VAR = "FUSEDRNN_CUDA_KERNEL"
CHOICES = ("auto", "persistent", "cluster", "grid", "stepwise")
GATES = {"lstm": 4, "gru": 3}
BACKWARD_UNITS = 16
MAX_CLUSTER = 16
CLUSTER_ROWS = 128
MIN_CAPABILITY = {"grid": (8, 0), "cluster": (9, 0)}
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
    of a persistent launch: units per block, blocks per group (the cluster or the grid),
    shared memory per block, and whether the groups are clusters."""

    kernel: str
    reason: str
    units: int = 0
    blocks: int = 0
    smem: int = 0
    cluster: bool = False


@dataclass(frozen=True)
class Occupancy:
    """The extension's answers for one device: ``smem_bytes(gates, units, hidden, itemsize,
    backward, cluster)``, ``blocks_per_sm(kernel, dtype_name, smem)`` and ``max_clusters(kernel,
    dtype_name, smem, cluster)`` (-1 from either: no kernel code for the architecture)."""

    smem_bytes: object
    blocks_per_sm: object
    max_clusters: object


@functools.lru_cache(maxsize=None)
def device_info(index):
    import torch

    props = torch.cuda.get_device_properties(index)
    optin = getattr(props, "shared_memory_per_block_optin", props.shared_memory_per_block)
    return Device(props.name, (props.major, props.minor), props.multi_processor_count, optin)


def round4(value):
    return max(4, -(-value // 4) * 4)


def forward_units(hidden, multiprocessors):
    """Units per forward block of a grid: few enough blocks for one per multiprocessor."""
    return round4(-(-hidden // multiprocessors))


def cluster_units(cell, hidden):
    """Units per forward block of a cluster: at most 128 rows of ``W_hh`` per block, unless
    16 blocks need more."""
    return max(CLUSTER_ROWS // GATES[cell] // 4 * 4, round4(-(-hidden // MAX_CLUSTER)))


def design_units(design, cell, hidden, multiprocessors, backward):
    """The hidden units per block of ``design`` (``"cluster"``, ``"grid"``) for a call."""
    if backward:
        return BACKWARD_UNITS
    if design == "cluster":
        return cluster_units(cell, hidden)
    return forward_units(hidden, multiprocessors)


def forced_kernel():
    forced = os.environ.get(ENV_VAR, "").strip() or "auto"
    if forced not in CHOICES:
        raise ValueError(f"{ENV_VAR} must be one of {', '.join(CHOICES)}, got {forced!r}")
    return forced


def choose(cell, hidden, dtype_name, itemsize, device, backward, occupancy):
    """The :class:`Plan` of one call of ``cell`` (``"lstm"``/``"gru"``) with ``hidden`` units
    in ``dtype_name`` (``itemsize`` bytes) on ``device`` (:class:`Device`), forward or
    backward, asking ``occupancy`` (:class:`Occupancy`)."""
    forced = forced_kernel()
    if forced == "stepwise":
        return Plan("stepwise", f"stepwise kernels: {ENV_VAR}=stepwise")
    designs = [d for d in ("cluster", "grid") if forced in ("auto", "persistent", d)]
    why_not = []
    for design in designs:
        plan = _try(design, cell, hidden, dtype_name, itemsize, device, backward, occupancy)
        if plan.kernel == "persistent":
            return plan
        why_not.append(plan.reason)
    if forced != "auto":
        raise RuntimeError(f"{ENV_VAR}={forced} cannot run this call: {'; '.join(why_not)}")
    return Plan("stepwise", "stepwise kernels: " + "; ".join(why_not))


def _try(design, cell, hidden, dtype_name, itemsize, device, backward, occupancy):
    """The persistent plan of ``design``, or a stepwise one whose reason says why not."""
    stage = "backward" if backward else "forward"
    units = design_units(design, cell, hidden, device.multiprocessors, backward)
    blocks = -(-hidden // units)
    smem = occupancy.smem_bytes(GATES[cell], units, hidden, itemsize, backward,
                                design == "cluster")
    kernel = f"{cell}_{'bwd' if backward else 'fwd'}"
    needed = MIN_CAPABILITY[design]

    def no(why):
        return Plan("stepwise", f"{design}: {why}")

    if hidden == 0:
        return no("no hidden unit to split over blocks")
    if device.capability < needed:
        return no("needs compute capability %d.%d or newer, %s has %d.%d"
                  % (*needed, device.name, *device.capability))
    if design == "cluster" and blocks > MAX_CLUSTER:
        return no(f"{blocks} blocks of {units} units, more than a cluster of {MAX_CLUSTER}")
    if smem > device.smem_per_block:
        return no(f"the {stage} slice of W_hh for {units} of {hidden} units needs "
                  f"{smem} bytes of shared memory per block, over the "
                  f"{device.smem_per_block} of {device.name}")
    if design == "cluster":
        placed = occupancy.max_clusters(kernel, dtype_name, smem, blocks)
        if placed < 0:
            return no("the extension holds no sm_90 code (FUSEDRNN_CUDA_ARCHS)")
        if placed == 0:
            return no(f"the GPU cannot place a cluster of {blocks} blocks of "
                      f"{smem / 1024:.0f} KiB")
        barrier = f"a cluster of {blocks} blocks per 16 batch rows"
    else:
        per_sm = occupancy.blocks_per_sm(kernel, dtype_name, smem)
        if per_sm < 0:
            return no("the extension holds no code for compute capability 8.0+ "
                      "(FUSEDRNN_CUDA_ARCHS)")
        if per_sm * device.multiprocessors < blocks:
            return no(f"the {stage} grid of {blocks} blocks cannot be resident at once "
                      f"({per_sm} per multiprocessor x {device.multiprocessors})")
        barrier = f"a grid of {blocks} blocks"
    reason = (f"persistent {stage} kernel ({design}): W_hh over {barrier} of {units} units, "
              f"{smem / 1024:.0f} KiB of shared memory each, one {design} barrier per step")
    return Plan("persistent", reason, units, blocks, smem, design == "cluster")


def plan_call(cell, hidden, dtype, device_index, backward):
    """:func:`choose` for a call on CUDA device ``device_index``, asking the extension."""
    from .. import _extension

    ext = _extension.CUDA.load()
    dtype_name = str(dtype).replace("torch.", "")
    itemsize = 2 if dtype_name in ("float16", "bfloat16") else 4
    occupancy = Occupancy(
        ext.persistent_smem_bytes,
        lambda kernel, name, smem: _ask(ext.persistent_blocks_per_sm, kernel, name, smem,
                                        device_index),
        lambda kernel, name, smem, cluster: _ask(ext.persistent_max_clusters, kernel, name,
                                                 smem, cluster, device_index))
    plan = choose(cell, hidden, dtype_name, itemsize, device_info(device_index), backward,
                  occupancy)
    _log_once(cell, plan)
    return plan


@functools.lru_cache(maxsize=None)
def _ask(query, *args):
    return query(*args)


def _log_once(cell, plan):
    key = (cell, plan.reason)
    if key not in _logged:
        _logged.add(key)
        logger.info("fusedrnn cuda %s: %s", cell, plan.reason)
