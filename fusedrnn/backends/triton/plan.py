"""Which Triton kernel runs a call, with which tile sizes and how many warps.

``persistent``: one launch for the whole sequence, each program holding all of ``W_hh``
(gates x H x P) and ``W_hr`` (P x H) in registers; chosen while those tiles (H and P
rounded up to powers of two, at least 16) hold at most ``PERSISTENT_LIMIT`` elements, no
tile wider than 64 in float32 or with a projection. ``cooperative``: one launch for the
whole sequence, the hidden units split over programs (``COOPERATIVE_BLOCK_H`` units each, or
more so that there are no more programs than can be resident at once: one per
multiprocessor), each holding its slice of ``W_hh`` (gates x BLOCK_H x P) in registers and
meeting the others at a grid barrier once per step; chosen while a slice holds at most
``COOPERATIVE_LIMIT`` elements (no projection) and its shared memory
(``cooperative_shared_bytes``) fits a block of the GPU. ``step``: one launch per time step
over tiles of the hidden units, for the rest (no projection).
``FUSEDRNN_TRITON_KERNEL=persistent|cooperative|step`` forces one (the tests use it to
cover all three; a forced cooperative kernel ignores the weight limit, never the residency
or the shared memory: well past the limit it spills registers);
several, comma-separated, restrict the choice to them (``persistent,step``: no cooperative
kernel, the GPU check's fallback if its grid barrier fails).

The limits and warp counts are where the kernels compile for sm_90 without register
spills (Triton 3.8 and the ptxas of its wheel; ``compile_check.py`` compiles every kernel
at the largest tiles allowed here and ``tests/test_triton_compile.py`` checks it): at 8
warps, 16384 elements (LSTM 4x64x64, RNN 128x128) spill at most 20 bytes a thread, but the
float32 RNN's 128x128 (IEEE products on the FMA units) spilled 7.5 KB and the projected
bfloat16 LSTM's 4x128x16 + 16x128 16 KB. At 4 warps the float32 GRU's 3x64x64 spilled 10 KB
a thread, the RNN's 64x64 556 bytes and the LSTM's step kernel 48 bytes: 4 warps only up to
2048 elements.
"""

import logging
import os
from dataclasses import dataclass

from .. import common

logger = logging.getLogger("fusedrnn")

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
PERSISTENT_LIMIT = 4 * 64 * 64  # weight elements one persistent program holds
WIDE_TILE_LIMIT = 64  # the widest tile in float32, and the widest hidden tile with W_hr
PERSISTENT_FEW_WARPS_UNTIL = 2048  # elements held: up to here 4 warps, above 8
COOPERATIVE_BLOCK_H = 8  # hidden units a cooperative program owns, at least
COOPERATIVE_MIN_TRITON = (3, 4)  # the oldest Triton that compiles them (cooperative_unsupported)
COOPERATIVE_LIMIT = {"bfloat16": 4 * 8 * 1024, "float16": 4 * 8 * 1024, "float32": 4 * 8 * 256}
# Pipeline stages of the cooperative kernels (Triton's default, 3, keeps a second copy of
# the (BLOCK_B, BLOCK_K) state tile: 64 KB more in float32 at BLOCK_K 1024, which took the
# LSTM forward to 266,240 bytes, past the H200's 232,448).
COOPERATIVE_NUM_STAGES = 2
# Shared memory of a cooperative kernel beyond its weight slice and state tiles (the split
# reduction's; compiled: 2 KB at 4 warps, 4 KB at 8).
COOPERATIVE_SCRATCH = 8192
BLOCK_B = 16
STEP_BLOCK_H = 32
STEP_BLOCK_K = 32
STEP_NUM_WARPS = 8
INDEX_LIMIT = 2**31  # the kernels' offsets are int32: no tensor may have more elements
ENV_VAR = "FUSEDRNN_TRITON_KERNEL"
KERNELS = ("persistent", "cooperative", "step")  # in the order the plan prefers them
_logged = set()
# (cooperative variant, dtype name, the device's shared memory per block): why Triton would
# not launch it (the shared memory stands for the kind of GPU: its limits decide)
_refused = {}


@dataclass(frozen=True)
class Variant:
    """The kernel (``"persistent"``, ``"cooperative"``, ``"step"``, or None when none can
    run), why, its tiles and warps, and the cooperative kernel's number of programs."""

    kernel: str
    reason: str
    block_h: int = 0
    block_p: int = 0
    num_warps: int = 4
    programs: int = 0
    split_k: int = 1
    forced: bool = False


def tile(size):
    """The power-of-two tile covering ``size`` (at least 16, the smallest ``tl.dot``)."""
    return max(16, 1 << max(0, size - 1).bit_length())


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def _is_float32(dtype):
    return _dtype_name(dtype) == "float32"


def held_elements(cell, block_h, block_p, projected):
    """Elements of the weight tiles a persistent program holds: ``W_hh`` and ``W_hr``."""
    return GATES[cell] * block_h * block_p + (block_h * block_p if projected else 0)


def _warps(held):
    return 4 if held <= PERSISTENT_FEW_WARPS_UNTIL else 8


def triton_version():
    """The installed Triton's ``(major, minor)``. Imports Triton."""
    import triton

    return tuple(int(part) for part in triton.__version__.split(".")[:2])


def cooperative_unsupported():
    """Why this Triton cannot build the cooperative kernels, or None. Checked by compiling
    them for sm_90 (``compile_check``): 3.4, 3.5, 3.6 and 3.8 do; 3.3 rejects the GRU
    backward (a function with a return called inside the time loop) and 3.2 crashes on most
    of them. Imports Triton. (Not an lru_cache: torch.compile traces it, and warns about
    those.)"""
    import triton

    if triton_version() < COOPERATIVE_MIN_TRITON:
        return (f"kernels need Triton {'.'.join(map(str, COOPERATIVE_MIN_TRITON))} or newer "
                f"(this is {triton.__version__})")
    return None


def cooperative_shared_bytes(cell, block_h, block_k, dtype):
    """Shared memory a cooperative kernel's block takes at ``COOPERATIVE_NUM_STAGES``: its
    weight slice (gates x BLOCK_H x BLOCK_K, staged there for ``tl.dot``), one state tile
    per pipeline stage past the first (BLOCK_B x BLOCK_K; at least one), in float32 or the
    16-bit dtype, and ``COOPERATIVE_SCRATCH``. An upper bound of what the kernels compile
    to for sm_90 (``compile_check`` checks it)."""
    itemsize = 4 if _is_float32(dtype) else 2
    tiles = max(1, COOPERATIVE_NUM_STAGES - 1)
    return (GATES[cell] * block_h + tiles * BLOCK_B) * block_k * itemsize + COOPERATIVE_SCRATCH


def cooperative_variant(cell, hidden, state, dtype, resident, forced, shared=None):
    """The cooperative variant, or the reason it cannot run: the fewest units a program owns
    (at least ``COOPERATIVE_BLOCK_H``) that keep the programs within ``resident``, refused
    (even ``forced``) where its shared memory is over ``shared`` bytes a block (None: no
    limit, the interpreter)."""
    unsupported = cooperative_unsupported()
    if unsupported:
        return None, unsupported
    block_h, block_k = COOPERATIVE_BLOCK_H, tile(state)
    while resident is not None and -(-hidden // block_h) > resident:
        block_h *= 2
    programs = -(-hidden // block_h)
    held = GATES[cell] * block_h * block_k
    limit = COOPERATIVE_LIMIT[_dtype_name(dtype)]
    if held > limit and not forced:
        return None, f"slices of {GATES[cell]}x{block_h}x{block_k} are over {limit} elements"
    needed = cooperative_shared_bytes(cell, block_h, block_k, dtype)
    if shared is not None and needed > shared:
        return None, (f"slices of {GATES[cell]}x{block_h}x{block_k} need {needed} bytes of "
                      f"shared memory, over the {shared} a block has")
    why = "forced" if forced else f"{programs} programs hold {GATES[cell]}x{block_h}x{block_k}"
    warps = _warps(held)
    variant = Variant("cooperative", f"cooperative kernel: {why}, one grid barrier per step",
                      block_h, block_k, warps, programs, min(warps, block_k // 16), forced)
    refused = _refused.get((variant, _dtype_name(dtype), shared))
    if refused and not forced:
        return None, f"Triton refused its launch ({refused})"
    return variant, None


def refuse(variant, dtype, shared, error):
    """Record that Triton refused to launch cooperative ``variant`` in ``dtype`` for its
    resources (``error``) on a GPU whose blocks have ``shared`` bytes of shared memory,
    unless it was forced: the plan no longer picks it there. Returns whether it was recorded
    (a new plan can run the call)."""
    if variant.forced:
        return False
    _refused[(variant, _dtype_name(dtype), shared)] = str(error)
    logger.warning("fusedrnn triton: %s; planning again without the cooperative kernel", error)
    return True


def _allowed():
    """The kernels ``FUSEDRNN_TRITON_KERNEL`` lets the plan choose among, whether that is
    one forced kernel, and the setting; None for a setting it does not understand."""
    raw = os.environ.get(ENV_VAR, "").strip()
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    if names in ((), ("auto",)):
        return KERNELS, False, raw
    if any(name not in KERNELS for name in names):
        return None
    return names, len(names) == 1, raw


def choose(cell, hidden, state, dtype, resident=None, shared=None):
    """The variant for a call: ``resident`` is how many programs can run at once (the GPU's
    multiprocessors; None: no limit, the interpreter launching the cooperative kernel once
    per step), ``shared`` the shared memory a block can have (bytes; None: no limit)."""
    allowed = _allowed()
    if allowed is None:
        return Variant(None, f"{ENV_VAR} must be auto, or one or more (comma-separated) of "
                             f"{', '.join(KERNELS)}, got {os.environ.get(ENV_VAR)!r}")
    kernels, forced, setting = allowed
    block_h, block_p = tile(hidden), tile(state)
    has_proj = state != hidden
    held = held_elements(cell, block_h, block_p, has_proj)
    shape = f"{GATES[cell]}x{block_h}x{block_p}" + (f" + {block_p}x{block_h}" if has_proj else "")
    wide = max(block_h, block_p) if _is_float32(dtype) else block_h if has_proj else 0
    if held > PERSISTENT_LIMIT:
        over = f"weight tiles {shape} are over {PERSISTENT_LIMIT} elements"
    elif wide > WIDE_TILE_LIMIT:
        over = (f"weight tiles {shape} are wider than {WIDE_TILE_LIMIT} "
                f"{'in float32' if _is_float32(dtype) else 'with a projection'}")
    else:
        over = None
    if "persistent" in kernels and (forced or over is None):
        why = "forced" if forced else f"weight tiles {shape} fit one program"
        return Variant("persistent", f"persistent kernel: {why}", block_h, block_p, _warps(held))
    setting_said = over is None  # the reason so far is the setting itself
    over = over or f"{ENV_VAR} is {setting}"
    if has_proj:
        return Variant(None, f"proj_size needs the persistent kernel, and {over}")
    if "cooperative" in kernels:
        cooperative, not_cooperative = cooperative_variant(cell, hidden, state, dtype, resident,
                                                           forced, shared)
        if cooperative is not None:
            return cooperative
        over = f"{over}, and cooperative {not_cooperative}"
    if "step" not in kernels:
        return Variant(None, over if setting_said else f"{over}, and {ENV_VAR} is {setting}")
    why = "forced" if forced else over
    return Variant("step", f"one launch per step: {why}", block_h, block_p, STEP_NUM_WARPS)


def index_limit_reason(cell, hidden, steps, batch):
    """Why a call of ``steps`` x ``batch`` rows is too large for the kernels' int32 offsets
    (its gates, steps x batch x gates x H, reach 2^31 elements), or None. Sizes that are not
    plain ints (symbolic under torch.compile) are not judged."""
    if not (common.concrete_size(steps) and common.concrete_size(batch)):
        return None
    elements = steps * batch * GATES[cell] * hidden
    if elements < INDEX_LIMIT:
        return None
    return (f"its kernels index in 32 bits, and the gates of {steps} steps x batch {batch} x "
            f"{GATES[cell]}x{hidden} are {elements} elements")


def variant_for(cell, hidden, state, x):
    """The variant a launcher runs for input ``x`` (``(T, B, I)``), logged once; raises
    ``BackendUnavailableError`` with the reason where no kernel can run it (a restricted
    ``FUSEDRNN_TRITON_KERNEL``, or sizes past the int32 offsets, as a call under vmap whose
    mapped dimension joined the batch can reach)."""
    from .. import BackendUnavailableError
    from . import cooperative

    variant = choose(cell, hidden, state, x.dtype, *cooperative.limits(x.device))
    too_large = index_limit_reason(cell, hidden, x.shape[0], x.shape[1])
    if variant.kernel is None or too_large:
        raise BackendUnavailableError(f"the triton backend cannot run this {cell} call: "
                                      f"{too_large or variant.reason}")
    log_once(cell, variant)
    return variant


def log_once(cell, variant):
    key = (cell, variant.reason)
    if key not in _logged:
        _logged.add(key)
        logger.info("fusedrnn triton %s: %s", cell, variant.reason)


def interpreted():
    """Whether Triton runs its kernels in its interpreter: ``TRITON_INTERPRET`` set to what
    Triton reads as true (1, true, on, yes, y; any case; no spaces around)."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes", "y")


def full_precision_dot(dtype):
    """Whether the kernels' ``tl.dot`` runs in float32 (IEEE) rather than on 16-bit operands.

    float32 inputs: always (TF32 would miss the 1e-5 parity bound). bfloat16 under the
    interpreter too: Triton 3.8's interpreter multiplies bfloat16 operands of ``tl.dot`` as
    raw integers, so there the products are taken in float32; on a GPU bfloat16 and float16
    go to the tensor cores with float32 accumulation.
    """
    import torch

    return dtype == torch.float32 or (dtype == torch.bfloat16 and interpreted())


def launch_flags(x, lengths, placeholder, variant):
    """The flags every launch of ``variant``'s kernels takes (``HAS_LENGTHS``, ``IEEE``, and
    ``num_warps``) and the tensor to pass as ``lengths``: the lengths, or ``placeholder``
    (never read) when there are none."""
    flags = dict(HAS_LENGTHS=lengths is not None, IEEE=full_precision_dot(x.dtype),
                 num_warps=variant.num_warps)
    return flags, lengths if lengths is not None else placeholder
