"""Launching the cooperative kernels (``*_cooperative_kernel``: the hidden units split over
programs that meet at a grid barrier once per step; see ``plan.py``).

On a GPU the whole sequence is one launch of ``variant.programs`` programs per batch group,
at most one program per multiprocessor so that all are resident together and the barrier
cannot wait on a program that has not started; where the multiprocessors allow, the batch
tiles split into groups, each run by its own programs meeting at a barrier of their own.
Where Triton can ask for it (``launch_cooperative_grid``: 3.6 and 3.8 can), the launch is a
cooperative one: should the programs not all fit at once (other work holding
multiprocessors), the driver refuses it instead of letting the barrier wait forever, and
the sequence then runs one launch per step.

Triton's interpreter runs a launch's programs one after another, so there the barrier
could never be passed by more than one program: it launches once per step (the launch
boundary is the barrier), except when one program owns every unit, which runs the single
synchronised launch as a GPU does.
"""

import dataclasses
import functools
import logging

import torch

from . import plan
from .compat import wrap_triton

logger = logging.getLogger("fusedrnn")


@functools.lru_cache(maxsize=None)
def _device_limits(index):
    """The multiprocessors of GPU ``index`` and its shared memory a block can opt in to
    (None from a torch without the property)."""
    properties = torch.cuda.get_device_properties(index)
    return (properties.multi_processor_count,
            getattr(properties, "shared_memory_per_block_optin", None))


def _index(device):
    return device.index if device.index is not None else torch.cuda.current_device()


def resident_programs(device):
    """How many cooperative programs can be resident at once on ``device``: one per
    multiprocessor on a GPU; None (no limit) for the interpreter's CPU tensors."""
    return limits(device)[0]


def limits(device):
    """``(resident, shared)``: :func:`resident_programs` and the shared memory a block can
    have on ``device`` (bytes, opting in; None: no limit, for the interpreter's CPU tensors
    and a torch without the property)."""
    if device.type != "cuda":
        return None, None
    return _device_limits(_index(device))


def synchronised(device, variant):
    """Whether the kernel runs all its steps in one launch, synchronising at its barrier."""
    return device.type == "cuda" or variant.programs == 1


def tiles(variant):
    """The tile constants of ``variant``'s cooperative kernels."""
    return dict(BLOCK_B=plan.BLOCK_B, BLOCK_H=variant.block_h, BLOCK_K=variant.block_p,
                SPLIT_K=variant.split_k)


def state_pair(h0, flags):
    """``(2, B, H)``: the state every program reads whole each step, ``[0]`` holding ``h0``;
    in the dtype ``matmul`` multiplies in (x's, float32 where ``IEEE``) so that a program
    reads half the bytes in 16-bit (the cells keep their own float32 copies where they use
    the state beyond the product)."""
    pair = h0.new_empty((2,) + h0.shape, dtype=torch.float32 if flags["IEEE"] else h0.dtype)
    pair[0].copy_(h0)
    return pair


@functools.lru_cache(maxsize=None)
def _triton_launches_cooperatively():
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_cooperative_grid" in {field.name for field in dataclasses.fields(CUDAOptions)}


def launch_options(device):
    """The launch options of a synchronised launch on ``device``: a cooperative launch on a
    GPU where this Triton has it (not while torch.compile traces: its launcher is its own)."""
    if device.type != "cuda" or torch.compiler.is_compiling():
        return {}
    return {"launch_cooperative_grid": True} if _triton_launches_cooperatively() else {}


def batch_groups(variant, batch, resident):
    """How many groups the batch rows split into, each run by ``variant.programs`` programs
    meeting at a barrier of their own, and the rows of a group (a multiple of
    ``plan.BLOCK_B``): as many groups as batch tiles while every program stays resident
    (all of them under the interpreter, where ``resident`` is None)."""
    tiles = -(-batch // plan.BLOCK_B)
    groups = tiles if resident is None else max(1, min(tiles, resident // variant.programs))
    return groups, -(-tiles // groups) * plan.BLOCK_B


def gradient_pair(h0):
    """``(2, B, H)`` float32: the backward's ping-pong of each program's own gradient of h
    (written before it is read)."""
    return h0.new_empty((2,) + h0.shape, dtype=torch.float32)


class Replan(Exception):
    """Triton refused a cooperative launch for its resources; the plan, told so, picks
    another kernel for the call (:func:`replanned`)."""


def replanned(launcher):
    """``launcher``, run once more where its cooperative launch raised :class:`Replan`."""
    @functools.wraps(launcher)
    def run(*args, **kwargs):
        try:
            return launcher(*args, **kwargs)
        except Replan:
            return launcher(*args, **kwargs)
    return run


def launch(kernel, variant, iterations, tensors, sizes, **constants):
    """Run ``kernel`` over processing steps ``[0, iterations)``: its arguments are
    ``tensors``, then the barriers' counters, ``s_begin``, ``s_end``, then ``sizes``
    (steps, batch, hidden) and the rows of a batch group; at
    ``plan.COOPERATIVE_NUM_STAGES`` (the stages ``plan.cooperative_shared_bytes`` counts).
    Where Triton refuses the kernel for its resources (``OutOfResources``: shared memory
    past the GPU's), raises :class:`Replan` unless the variant was forced."""
    from triton.runtime.errors import OutOfResources

    try:
        _launch(kernel, variant, iterations, tensors, sizes,
                num_stages=plan.COOPERATIVE_NUM_STAGES, **constants)
    except OutOfResources as error:
        if not plan.refuse(variant, tensors[0].dtype, limits(tensors[0].device)[1], error):
            raise
        raise Replan(str(error)) from error


def _launch(kernel, variant, iterations, tensors, sizes, **constants):
    device = tensors[0].device
    groups, group_rows = batch_groups(variant, sizes[1], resident_programs(device))
    sizes = (*sizes, group_rows)
    counter = torch.zeros(groups, dtype=torch.int32, device=device)
    run = wrap_triton(kernel)[(variant.programs, groups)]
    if synchronised(device, variant):
        options = launch_options(device)
        try:
            run(*tensors, counter, 0, iterations, *sizes, SYNC=True, **options, **constants)
            return
        except RuntimeError as error:  # the driver refused the cooperative launch
            if not options or "cooperative" not in str(error).lower():
                raise
            logger.warning("fusedrnn triton: %d programs could not all be resident (%s); "
                           "one launch per step instead", variant.programs, error)
    for s in range(iterations):
        run(*tensors, counter, s, s + 1, *sizes, SYNC=False, **constants)
