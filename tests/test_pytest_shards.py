"""benchmarks/pytest_shards.py, which the GPU check's test stage runs: every selected test
runs in exactly one shard, and a failure anywhere fails the whole."""

import pathlib
import re
import subprocess
import sys
import time

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


def test_each_shard_is_reported_as_it_ends_and_a_stopped_or_crashed_one_names_its_test(
        tmp_path):
    """A crashed shard is reported while another still runs (they were waited for in
    order: a hung shard 0 hid shard 1's crash), each crash or stop names the test it was
    running (-v), and SIGTERM (the stage's time limit) reports the shards it stops."""
    import signal

    (tmp_path / "test_sample.py").write_text(
        "import os, signal, time\n"
        "def test_hangs():\n    time.sleep(120)\n"
        "def test_crashes():\n    os.kill(os.getpid(), signal.SIGSEGV)\n")
    process = subprocess.Popen([sys.executable, str(SCRIPT), "2", str(tmp_path / "out"), "-v",
                                "-p", "no:cacheprovider", "--", str(tmp_path)],
                               stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("shard 1:"):
                break
        # Shard 0 may still be starting pytest on a loaded machine: stop it once it runs
        # the test it is to name (-v writes the test's name as the test starts).
        log, deadline = tmp_path / "out-0.log", time.monotonic() + 60
        while "test_hangs" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        lines += process.stdout.readlines()
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        process.kill()
    out = "".join(lines)
    assert "shard 1: exit -11: no summary, running test_sample.py::test_crashes" in out, out
    assert "shard 0: stopped by signal 15: no summary, running test_sample.py::test_hangs" in out
