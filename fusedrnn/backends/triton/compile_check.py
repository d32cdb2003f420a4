"""The Triton kernels compiled for a GPU without one: shared memory, registers and spills.

``python -m fusedrnn.backends.triton.compile_check [--arch 90]`` compiles every kernel at
the tiles and warps the plan (``plan.py``) gives its largest calls, for sm_90 (the H200) by
default, and prints one JSON line per kernel: what the interpreter cannot tell, as ptxas
reports it (the ptxas of Triton's wheel). ``tests/test_triton_compile.py`` runs it and
checks for spills and shared memory; ``--check`` makes it check them itself (exit status 1
on a problem), which CI uses to compile the kernels with the Triton the GPU machine has
(3.6.0; 3.8 here). It needs Triton's real compiler, so it runs with ``TRITON_INTERPRET``
unset (under the interpreter the kernels are not compilable objects).
"""

import argparse
import inspect
import itertools
import json
import os
import re
import subprocess
import sys

import torch

from . import plan

DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
# Arguments by name (the kernels' docstrings): sizes and step indices, int64 lengths, and
# the float32 state buffers of the step kernels; every other pointer has the call's dtype.
INTEGERS = {"steps", "batch", "hidden", "state", "t", "t_prev", "first", "s_begin", "s_end",
            "group_rows"}
FLOAT32_BUFFERS = {"h_cur", "h_next", "c_state", "dh_cur", "dh_next", "dc_state", "dh_pair"}
CELLS = ("lstm", "gru", "rnn_tanh")
H200_MULTIPROCESSORS = 132  # the cooperative kernels' resident programs on the H200
# Sizes a launch specialises as divisible by 16 when they are (hidden 768 or 1024, batch 16).
ALIGNED_SIZES = {"hidden", "batch", "group_rows"}
# A configuration the plan avoids because it spilled (3x64x64 float32 tiles at 4 warps):
# compiled as a control, so that a check that saw no spills anywhere can be trusted.
CONTROL = dict(cell="gru", stage="fwd", design="persistent", dtype="float32",
               constants=dict(BLOCK_H=64), num_warps=4)
SHARED_PER_BLOCK = 227 * 1024  # the H200's (sm_90) opt-in shared memory per block
# The hidden size of the forced cooperative cases: in float32 its 1024-wide state tile took
# the kernels past the H200's shared memory at Triton's default 3 pipeline stages.
FORCED_HIDDEN = 768
# Bytes a thread spills and reloads that are scalars, against kilobytes where the weights
# spill (the control: 12 KB): from Triton 3.8 (at most 56 at these cases: the float32 LSTM
# forward's persistent kernel), and before it (3.6: 168 in the LSTM backward's cooperative
# kernel at sizes not divisible by 16, none where they are; 128 before tanh's polynomial
# near 0, cell_math.tanh, which costs 8 bytes in 3.8's worst case).
SPILL_TOLERANCE = 64
SPILL_TOLERANCE_BEFORE_3_8 = 192


def spill_tolerance():
    """The spill bytes a thread :func:`problems` accepts with the installed Triton."""
    return SPILL_TOLERANCE if plan.triton_version() >= (3, 8) else SPILL_TOLERANCE_BEFORE_3_8


def _largest_persistent(cell, dtype, projected, num_warps=None):
    """Every ``(H, P)`` tile pair of the most weight elements the plan runs persistently (at
    ``num_warps`` warps, when given)."""
    sizes = [16 << i for i in range(6)]
    fits = [(h, p) for h in sizes for p in sizes
            if (p < h if projected else p == h)
            and plan.choose(cell, h, p, dtype).kernel == "persistent"
            and num_warps in (None, plan.choose(cell, h, p, dtype).num_warps)]
    most = max((plan.held_elements(cell, h, p, projected) for h, p in fits), default=None)
    return [(h, p) for h, p in fits if plan.held_elements(cell, h, p, projected) == most]


def _largest_cooperative(cell, dtype):
    """The cooperative variants of the most weight elements a program holds, on the H200."""
    found = {}
    for hidden in [128 << i for i in range(7)] + [768]:
        variant = plan.choose(cell, hidden, hidden, dtype, H200_MULTIPROCESSORS, SHARED_PER_BLOCK)
        if variant.kernel == "cooperative":
            found[plan.GATES[cell] * variant.block_h * variant.block_p] = variant
    return found[max(found)]


def _forced_cooperative(cell, dtype):
    """The cooperative variant ``FUSEDRNN_TRITON_KERNEL=cooperative`` forces at
    ``FORCED_HIDDEN`` on the H200 (past the weight limit in float32), or None."""
    variant, _ = plan.cooperative_variant(cell, FORCED_HIDDEN, FORCED_HIDDEN, dtype,
                                          H200_MULTIPROCESSORS, True, SHARED_PER_BLOCK)
    return variant


def _cooperative_case(cell, stage, name, variant, aligned):
    return dict(cell=cell, stage=stage, design="cooperative", dtype=name,
                num_warps=variant.num_warps, num_stages=plan.COOPERATIVE_NUM_STAGES,
                aligned=aligned, forced=variant.forced,
                constants=dict(BLOCK_H=variant.block_h, BLOCK_K=variant.block_p,
                               SPLIT_K=variant.split_k))


def cases():
    """Every kernel at the plan's largest tiles (for the persistent kernels also the largest
    it runs at 4 warps; for the cooperative ones the largest slices on the H200, and in
    float32 those forced at ``FORCED_HIDDEN`` (``forced``), each also ``aligned``: as a
    launch specialises pointers and sizes divisible by 16), per dtype: dicts of ``cell``,
    ``stage``, ``design``, ``dtype`` (a name), ``constants`` (tiles), ``num_warps`` and
    for the cooperative kernels ``num_stages``."""
    found = []
    for cell in CELLS:
        for stage in ("fwd", "bwd"):
            for dtype, name in ((d, str(d).replace("torch.", "")) for d in DTYPES):
                for projected in ((False, True) if cell == "lstm" else (False,)):
                    tiles = set(_largest_persistent(cell, dtype, projected)
                                + _largest_persistent(cell, dtype, projected, num_warps=4))
                    for hidden, state in sorted(tiles):
                        variant = plan.choose(cell, hidden, state, dtype)
                        found.append(dict(cell=cell, stage=stage, design="persistent",
                                          dtype=name, num_warps=variant.num_warps,
                                          constants=dict(BLOCK_H=variant.block_h,
                                                         BLOCK_P=variant.block_p,
                                                         HAS_PROJ=projected)))
                variants = ([] if plan.cooperative_unsupported()
                            else [_largest_cooperative(cell, dtype)])
                if variants and dtype == torch.float32:
                    forced = _forced_cooperative(cell, dtype)
                    if forced.block_p != variants[0].block_p:  # else the same kernel
                        variants.append(forced)
                for variant, aligned in itertools.product(variants, (False, True)):
                    found.append(_cooperative_case(cell, stage, name, variant, aligned))
                found.append(dict(cell=cell, stage=stage, design="step", dtype=name,
                                  constants=dict(BLOCK_H=plan.STEP_BLOCK_H,
                                                 BLOCK_K=plan.STEP_BLOCK_K),
                                  num_warps=plan.STEP_NUM_WARPS))
    return found


def _kernel(case):
    import importlib

    family = case["cell"].split("_")[0]
    module = importlib.import_module(f"{__package__}.{family}_{case['stage']}")
    return getattr(module, f"{family}_{case['stage']}_{case['design']}_kernel")


def _source(ast_source, kernel, signature, constants, aligned):
    """Triton's ``ASTSource`` of ``kernel`` with the arguments at indices ``aligned``
    divisible by 16: from Triton 3.3 constexprs in the signature and attributes per index;
    in 3.2 a signature without them and an ``AttrsDescriptor``."""
    if "constexprs" in inspect.signature(ast_source).parameters:
        attrs = {(index,): [["tt.divisibility", 16]] for index in aligned}
        return ast_source(fn=kernel, signature=signature, constexprs=constants, attrs=attrs)
    from triton.backends.compiler import AttrsDescriptor

    return ast_source(fn=kernel, signature={k: v for k, v in signature.items() if v != "constexpr"},
                      constants=constants,
                      attrs=AttrsDescriptor.from_hints({index: 16 for index in aligned}))


def compile_case(case, arch):
    """``case`` with ``shared`` (bytes), ``registers`` and ``spilled`` (bytes of spill
    stores and loads a thread) of its kernel compiled for ``sm_{arch}``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = _kernel(case)
    dtype = getattr(torch, case["dtype"])
    values = dict(dict(REVERSE=True, HAS_LENGTHS=True, HAS_BIAS=True, RELU=True,
                       HAS_PROJ=False, IEEE=dtype == torch.float32, BLOCK_B=plan.BLOCK_B,
                       SYNC=True),
                  **case["constants"])
    signature, constants, aligned = {}, {}, []
    for index, name in enumerate(inspect.signature(kernel.fn).parameters):
        if name in values:
            signature[name], constants[name] = "constexpr", values[name]
            continue
        if name in INTEGERS:
            signature[name] = "i32"
        elif name == "lengths":
            signature[name] = "*i64"
        elif name == "counter":
            signature[name] = "*i32"
        else:
            signature[name] = "*fp32" if name in FLOAT32_BUFFERS else "*" + DTYPES[dtype]
        if case.get("aligned") and (signature[name].startswith("*") or name in ALIGNED_SIZES):
            aligned.append(index)
    compiled = triton.compile(_source(ASTSource, kernel, signature, constants, aligned),
                              target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": case["num_warps"],
                                       "num_stages": case.get("num_stages", 3)})
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    report = subprocess.run([ptxas, f"--gpu-name={gpu}", "-v", "-", "-o", os.devnull],
                            input=compiled.asm["ptx"], capture_output=True, text=True)
    if report.returncode != 0:
        raise RuntimeError(f"ptxas failed on {case}: {report.stderr}")
    registers = int(re.search(r"Used (\d+) registers", report.stderr).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report.stderr)
    return dict(case, shared=compiled.metadata.shared, registers=registers,
                spilled=int(spills.group(1)) + int(spills.group(2)))


def problems(report):
    """What is wrong with one ``compile_case`` report: spills beyond :func:`spill_tolerance`
    (not judged for a forced kernel, which the plan documents as spilling past its weight
    limit), shared memory beyond the H200's, and for a cooperative kernel beyond what the
    plan counts for it (``plan.cooperative_shared_bytes``, its fit check); for the control,
    no spill at all (a check that cannot see spills would pass anything)."""
    tolerance = spill_tolerance()
    if report.get("control"):
        return [] if report["spilled"] > tolerance else ["the control did not spill"]
    found = []
    if report["spilled"] > tolerance and not report.get("forced"):
        found.append(f"{report['spilled']} bytes of register spills a thread "
                     f"({report['registers']} registers)")
    if report["shared"] > SHARED_PER_BLOCK:
        found.append(f"{report['shared']} bytes of shared memory")
    if report["design"] == "cooperative":
        tiles = report["constants"]
        counted = plan.cooperative_shared_bytes(report["cell"], tiles["BLOCK_H"],
                                                tiles["BLOCK_K"], report["dtype"])
        if report["shared"] > counted:
            found.append(f"{report['shared']} bytes of shared memory, over the {counted} "
                         f"the plan counts")
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 if a kernel spills or exceeds shared memory")
    args = parser.parse_args(argv)
    if plan.interpreted():
        parser.error("unset TRITON_INTERPRET: the interpreter's kernels do not compile")
    import triton

    failed = 0
    for case in cases() + [dict(CONTROL, control=True)]:
        report = compile_case(case, args.arch)
        print(json.dumps(report), flush=True)
        for problem in problems(report) if args.check else ():
            print(f"compile_check: {report['cell']} {report['stage']} {report['design']} "
                  f"{report['dtype']} {report['constants']}: {problem}", file=sys.stderr)
            failed += 1
    if args.check:
        print(f"compile_check: Triton {triton.__version__}, sm_{args.arch}: "
              f"{failed or 'no'} problems", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
