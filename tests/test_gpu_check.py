"""benchmarks/gpu_check.sh's own mechanics, rehearsed on the CPU (FUSEDRNN_GPU_CHECK_DRY=1,
the install skipped, a few stages): what comes back from a device machine is at most 8 files
of OUT, so the logs travel as one archive rewritten after each stage and every stage's
verdict is in summary.txt as it ends; the time budget skips what it cannot fit."""

import os
import pathlib
import subprocess
import sys
import tarfile

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _dry_run(out, stages, budget=None):
    env = {**os.environ, "PYTHON": sys.executable, "FUSEDRNN_GPU_CHECK_DRY": "1",
           "FUSEDRNN_GPU_CHECK_INSTALL": "0", "FUSEDRNN_GPU_CHECK_STAGES": stages}
    if budget is not None:
        env["FUSEDRNN_GPU_CHECK_BUDGET"] = str(budget)
    return subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_stages_leave_a_summary_and_one_archive_of_their_logs(tmp_path):
    run = _dry_run(tmp_path / "out", "info,probe_grid")
    assert run.returncode == 0, run.stdout + run.stderr
    files = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert len(files) <= 8 and {path.name for path in files} == {"summary.txt",
                                                                 "logs.tar.gz"}
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "info              ok" in summary
    # no CUDA extension or device here: the probe says so, it does not pass
    assert "probe_grid        FAIL:3" in summary and "backend unavailable" in summary
    assert "UNAVAILABLE" in summary and run.stdout.endswith(summary.split("== gpu_check")[-1])
    with tarfile.open(tmp_path / "out" / "logs.tar.gz") as logs:
        names = {pathlib.PurePath(name).name for name in logs.getnames()}
    assert {"info.log", "probe_grid.log"} <= names


def test_stages_past_the_budget_are_skipped_and_said_so(tmp_path):
    run = _dry_run(tmp_path / "out", "info,probe_grid", budget=1)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "info              skipped: the budget is spent" in summary
    assert "probe_grid        skipped: the budget is spent" in summary
