"""benchmarks/pytest_shards.py, which the GPU check's test stage runs: every selected test
runs in exactly one shard, and a failure anywhere fails the whole."""

import pathlib
import re
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "pytest_shards.py"


def _run(tmp_path, shards, *selection):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('i', range(5))\n"
        "def test_passes(i):\n    assert i < 5\n"
        "def test_fails():\n    assert False, 'on purpose'\n"
        "def test_other():\n    pass\n")
    return subprocess.run([sys.executable, str(SCRIPT), str(shards), str(tmp_path / "out"),
                           "-p", "no:cacheprovider", "--", str(tmp_path), *selection],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)


def test_every_selected_test_runs_once_and_a_failure_fails_the_stage(tmp_path):
    run = _run(tmp_path, 3)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "7 tests in 3 shards" in run.stdout
    assert run.stdout.count("shard ") == 3
    assert "FAILED" in run.stdout and "test_fails" in run.stdout
    passed = sum(int(n) for n in re.findall(r"(\d+) passed", "\n".join(
        line for line in run.stdout.splitlines() if line.startswith("shard "))))
    failed = sum(int(n) for n in re.findall(r"(\d+) failed", run.stdout))
    assert (passed, failed) == (6, 1)


def test_a_selection_without_failures_passes(tmp_path):
    run = _run(tmp_path, 2, "-k", "not fails")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "6 tests in 2 shards" in run.stdout
