"""The Triton kernels compiled for the H200 (sm_90) without a GPU: what the interpreter
cannot check (``fusedrnn/backends/triton/compile_check.py``, run in a process of its own
without ``TRITON_INTERPRET``). Each kernel compiles at the largest tiles the plan runs it
with and the plan's warps, without register spills beyond a few scalars (a persistent
kernel whose weights spilled would read them from local memory every step) and within the
H200's shared memory per block."""

import json
import os
import subprocess
import sys

import pytest

from fusedrnn.backends.triton import compile_check

triton = pytest.importorskip("triton")
if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                                   "ptxas")):
    pytest.skip("Triton's wheel has no ptxas here (no NVIDIA backend)", allow_module_level=True)

CASES = compile_check.cases()


def _name(case):
    tiles = "x".join(str(v) for k, v in case["constants"].items() if k.startswith("BLOCK"))
    proj = "-proj" if case["constants"].get("HAS_PROJ") else ""
    aligned = "-aligned" if case.get("aligned") else ""
    return (f"{case['cell']}-{case['stage']}-{case['design']}-{case['dtype']}-{tiles}{proj}"
            f"-w{case['num_warps']}{aligned}")


@pytest.fixture(scope="module")
def compiled():
    """Every case's report, from one run of the check (about 15 s on 2 cores)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET",
                                                           "FUSEDRNN_TRITON_KERNEL")}
    run = subprocess.run([sys.executable, "-m", "fusedrnn.backends.triton.compile_check"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    reports = [json.loads(line) for line in run.stdout.splitlines()]
    return {_name(r): r for r in reports if not r.get("control")}, \
        [r for r in reports if r.get("control")]


@pytest.mark.parametrize("name", [_name(case) for case in CASES])
def test_kernel_compiles_for_sm90_without_spilling_its_weights(compiled, name):
    reports, _ = compiled
    assert compile_check.problems(reports[name]) == [], name


def test_the_check_sees_spills(compiled):
    """The control (float32 GRU 3x64x64 tiles at 4 warps, which spilled 10 KB a thread and
    is why the plan runs them at 8) must show spills, or the check would see none anywhere."""
    _, controls = compiled
    assert len(controls) == 1 and compile_check.problems(controls[0]) == []


def test_the_cases_are_the_plans_largest(monkeypatch):
    """Planned without a forced kernel, the cases cover every kernel in every dtype."""
    monkeypatch.delenv("FUSEDRNN_TRITON_KERNEL", raising=False)
    kinds = {(c["cell"], c["stage"], c["design"], c["dtype"]) for c in compile_check.cases()}
    designs = 2 if compile_check.plan.cooperative_unsupported() else 3  # Triton 3.4 for those
    assert len(kinds) == 3 * 2 * designs * 3  # cells, stages, designs, dtypes
