"""``fusedrnn bench`` runs and their reports (``fusedrnn.bench_report``): the quick grid's
table, JSON, markdown and plots, kernel names, failing and wrong backends, interrupted and
killed runs."""

import importlib.util
import json
import os
import re
from types import SimpleNamespace

import pytest
import torch

import fusedrnn
from fusedrnn import backends, bench, bench_graphs, bench_report, bench_timing
from fusedrnn.backends import Call
from fusedrnn.cli import main

from cli_helpers import parse_table, registered, run_main

ENVIRONMENT_FIELDS = ("device", "device_name", "cpu_model", "cpu_id", "cpu_count", "torch_threads",
                      "torch", "cuda", "cudnn", "triton", "fusedrnn", "git_commit", "date", "python")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``fusedrnn bench --quick --out DIR`` shared by the tests that read its output."""
    out_dir = tmp_path_factory.mktemp("bench")
    status, stdout, stderr = run_main(["bench", "--quick", "--out", out_dir])
    return status, stdout, stderr, out_dir


# ---------------------------------------------------------------- bench --quick


def test_quick_bench_prints_numeric_rows_for_both_providers(quick_run):
    status, stdout, stderr, _ = quick_run
    assert status == 0
    rows = parse_table(stdout)
    cases = bench.default_grid("cpu", quick=True)
    assert len(rows) == 2 * len(cases) * len(bench.DEFAULT_MODES)
    torch_rows = [r for r in rows if r["provider"] == "torch.nn"]
    fused_rows = [r for r in rows if r["provider"].startswith("fusedrnn")]
    assert len(torch_rows) == len(fused_rows) == len(cases) * len(bench.DEFAULT_MODES)
    for row in torch_rows + fused_rows:
        assert float(row["median ms"]) > 0, row
        assert float(row["IQR ms"].rstrip(" !")) >= 0, row
        assert float(row["us/step"]) > 0, row
        assert float(row["floor us"]) > 0, row
        assert float(row["TFLOP/s"]) > 0, row
    chosen = fusedrnn.select_backend(None, torch.device("cpu"), torch.float32,
                                     Call("lstm", 8, 8)).name  # cpu, or reference without _cpu
    for row in fused_rows:
        assert re.fullmatch(r"\d+\.\d\d", row["ratio"]), row  # 0.00 when torch.nn stalls
        assert f"auto: {chosen}" in row["provider"]
    assert {r["mode"] for r in rows} == set(bench.DEFAULT_MODES)
    for note in ("lower is better", "floor us = ", "TFLOP/s = GEMM FLOPs"):
        assert note in stdout
    assert re.search(r"^\[1/\d+\] lstm B\d+ T\d+", stderr, re.MULTILINE), stderr
    # each case's rows follow its progress line at once: a run cut short keeps them
    progress = stderr[stderr.index("[1/"):stderr.index("[2/")]
    assert re.search(r"^    torch\.nn \| \d+\.\d+ \|", progress, re.MULTILINE), progress
    assert re.search(r"^    fusedrnn \(auto: \w+\) \| \d+\.\d+ \| .* \| \d+\.\d\d \|", progress,
                     re.MULTILINE), progress


def test_quick_bench_writes_json_with_every_measurement(quick_run):
    _, _, _, out_dir = quick_run
    report = json.loads((out_dir / "results.json").read_text())
    env = report["environment"]
    for field in ENVIRONMENT_FIELDS:
        assert field in env, field
    assert env["device"] == "cpu" and env["torch"] == torch.__version__
    assert env["torch_threads"] >= 1 and env["cpu_count"] >= 1
    cases = bench.default_grid("cpu", quick=True)
    keys = [(r["case"], r["mode"]) for r in report["results"]]
    assert sorted(keys) == sorted((c.label, m) for c in cases for m in bench.DEFAULT_MODES)
    repeats = report["settings"]["repeats"]
    for result in report["results"]:
        torch_entry, fused_entry = result["providers"]
        assert torch_entry["provider"] == "torch.nn"
        assert fused_entry["provider"] == "fusedrnn" and fused_entry["backend"] == "auto"
        assert fused_entry["resolved_backend"] == fusedrnn.select_backend(
                None, torch.device("cpu"), torch.float32, Call("lstm", 8, 8)).name
        for entry in (torch_entry, fused_entry):
            assert entry["status"] == "ok"
            assert len(entry["times_s"]) == repeats
            assert all(t > 0 for t in entry["times_s"])
            assert entry["median_s"] == pytest.approx(sorted(entry["times_s"])[repeats // 2])
            assert entry["iqr_s"] >= 0
            assert entry["noisy"] is bench_timing.is_noisy(entry)
            assert entry["tflops"] == pytest.approx(result["flops"] / entry["median_s"] / 1e12)
            assert entry["peak_memory_bytes"] > 0
        case = bench.Case(**{field: result[field] for field in bench.Case.__dataclass_fields__})
        assert result["flops"] == bench.gemm_flops(case, result["mode"]) > 0
        assert result["floor_us_per_step"] > 0
        assert fused_entry["ratio"] == pytest.approx(
            fused_entry["median_s"] / torch_entry["median_s"])
        assert fused_entry["us_per_step"] == pytest.approx(
            fused_entry["median_s"] / result["steps"] * 1e6)


def test_quick_bench_writes_markdown_with_environment_and_table(quick_run):
    _, _, _, out_dir = quick_run
    markdown = (out_dir / "results.md").read_text()
    assert markdown.index("## Environment") < markdown.index("| cell |")
    assert f"- torch: {torch.__version__}" in markdown
    assert markdown.count("| torch.nn |") == len(bench.default_grid("cpu", True)) * 2
    assert "| floor us | TFLOP/s |" in markdown


def test_quick_bench_writes_speedup_plots_or_says_why_not(quick_run):
    _, stdout, _, out_dir = quick_run
    plots = [out_dir / name for name in bench_report.PLOTS.values()]
    if importlib.util.find_spec("matplotlib") is None:
        assert "note: matplotlib is not installed" in stdout
        assert not any(path.exists() for path in plots)
    else:
        for path in plots:
            assert path.read_bytes().startswith(b"\x89PNG"), path
            assert str(path) in stdout
        assert f"]({plots[0].name})" in (out_dir / "results.md").read_text()


def test_a_rerun_into_the_same_folder_leaves_no_stale_plots(tmp_path):
    for name in bench_report.PLOTS.values():
        (tmp_path / name).write_text("an earlier run's plot")
    paths, note = bench_report.write_reports([], {"device": "cpu"}, tmp_path)
    assert note and not any((tmp_path / name).exists() for name in bench_report.PLOTS.values())
    assert "no PNG plots written" in (tmp_path / "results.md").read_text()


@pytest.mark.requires_cpu_ext
def test_bench_names_the_backend_auto_picks_for_the_case_size():
    """16-bit calls of 2^24+ multiply-adds per step go to the reference backend: the table
    must say so, not the backend auto picks for a call of unknown size."""
    from fusedrnn import _extension

    # bfloat16 ones stay where the GRU's and RNN's bfloat16 kernels run on brgemm.
    kernels = "cpu" if _extension.CPU.load().bf16_on_brgemm() else "reference"
    for cell in ("gru", "rnn"):
        large = bench.Case(cell, 64, 2, 8, 1024)
        small = bench.Case(cell, 4, 2, 8, 16)
        for mode in ("inference", "training"):
            for dtype, big_one in ((torch.float16, "reference"), (torch.float32, "cpu"),
                                   (torch.bfloat16, kernels)):
                [big] = bench.build_providers(large, dtype=dtype, torch_nn=False, mode=mode)
                [little] = bench.build_providers(small, dtype=dtype, torch_nn=False, mode=mode)
                assert (big.resolved, little.resolved) == (big_one, "cpu"), (cell, mode, dtype)


def test_cuda_kernels_name_the_planners_choice_under_the_providers_environment(monkeypatch):
    from fusedrnn.backends import cuda_plan

    seen = []

    def plan_call(cell, hidden, dtype, index, backward):
        seen.append(os.environ.get("FUSEDRNN_CUDA_KERNEL"))
        if backward:
            return cuda_plan.Plan("stepwise", "test")
        return cuda_plan.Plan("persistent", "test", units=8, cluster=True)

    monkeypatch.setattr(cuda_plan, "plan_call", plan_call)
    case = bench.Case("lstm", 16, 10, 8, 64)
    env = {"FUSEDRNN_CUDA_KERNEL": "persistent"}
    assert bench.cuda_kernels(case, "cuda:0", torch.bfloat16, env) == "fwd cluster, bwd stepwise"
    assert seen == ["persistent", "persistent"]
    assert bench.cuda_kernels(bench.Case("lstm", 16, 10, 8, 64, proj_size=4), "cuda:0",
                              torch.bfloat16, {}) == "stepwise"
    entry = {"provider": "fusedrnn", "backend": "auto", "resolved_backend": "cuda",
             "kernels": "grid"}
    assert bench_report.provider_title(entry) == "fusedrnn (auto: cuda, grid)"
    assert bench_report.provider_title(entry, kernels=False) == "fusedrnn (auto: cuda)"


def test_forced_kernels_are_set_only_around_the_provider_calls(monkeypatch):
    monkeypatch.delenv("FUSEDRNN_CUDA_KERNEL", raising=False)
    seen = []
    call, setup = bench.with_env((lambda: seen.append(os.environ.get("FUSEDRNN_CUDA_KERNEL")),
                                  None), {"FUSEDRNN_CUDA_KERNEL": "grid"})
    call()
    assert setup is None and seen == ["grid"]
    assert "FUSEDRNN_CUDA_KERNEL" not in os.environ


def test_graphed_timing_replays_each_capture_and_reports_a_failed_one(monkeypatch):
    """The plumbing of ``--cuda-graph`` on the CPU, with the capture faked (a real one needs
    CUDA: tests/test_cuda_graphs.py): the replays are timed, the capture's peak memory is
    reported, a provider whose capture fails is an error row and the others still run."""
    captured, replays = [], []

    def capture(call, setup, device):
        captured.append(call)
        if len(captured) == 2:
            raise RuntimeError("operation not permitted when stream is capturing")
        call()
        return SimpleNamespace(replay=lambda: replays.append(len(captured)),
                               peak_memory_bytes=1234)

    monkeypatch.setattr(bench_graphs, "check_graphable", lambda device, modes: None)
    monkeypatch.setattr(bench_graphs, "capture", capture)
    case = bench.default_grid("cpu", quick=True)[0]
    result = bench.measure_case(case, "inference", ["reference", "auto"], warmup=1, repeats=3,
                                cuda_graph=True)
    nn_entry, failed, graphed = result["providers"]
    assert result["cuda_graph"] and len(captured) == 3
    assert nn_entry["status"] == graphed["status"] == "ok"
    assert nn_entry["peak_memory_bytes"] == graphed["peak_memory_bytes"] == 1234
    assert len(nn_entry["times_s"]) == len(graphed["times_s"]) == 3 and "ratio" in graphed
    assert len(replays) == 2 * (1 + 3)
    assert failed["status"] == "error" and "not permitted when stream is capturing" in failed["message"]


def test_unavailable_and_failing_backends_are_reported_not_dropped(fake_backends):
    # One warm-up call: torch.nn's first call (oneDNN making its primitive) took 195-462 ms
    # where the reference backend's took under 1, which printed a ratio of 0.00.
    status, stdout, _ = run_main(["bench", "--quick", "--mode", "inference", "--warmup", "1",
                                  "--repeats", "1", "--backend", "reference",
                                  "--backend", "test_unavailable", "--backend", "test_broken"])
    assert status == 0
    rows = parse_table(stdout)
    cases = bench.default_grid("cpu", quick=True)
    by_provider = {}
    for row in rows:
        by_provider.setdefault(row["provider"], []).append(row)
    assert set(by_provider) == {"torch.nn", "fusedrnn [reference]", "fusedrnn [test_unavailable]",
                                "fusedrnn [test_broken]"}
    assert all(len(group) == len(cases) for group in by_provider.values())
    for row in by_provider["fusedrnn [test_unavailable]"]:
        assert row["median ms"].startswith("unavailable:")
        assert "no such hardware in this test" in row["median ms"]
    for row in by_provider["fusedrnn [test_broken]"]:
        assert row["median ms"].startswith("error: NotImplementedError")
    for row in by_provider["fusedrnn [reference]"]:
        assert float(row["ratio"]) > 0


def test_other_cells_run(capsys):
    assert main(["bench", "--quick", "--cell", "gru,rnn", "--mode", "training",
                 "--warmup", "0", "--repeats", "1"]) == 0
    rows = parse_table(capsys.readouterr().out)
    assert {r["cell"] for r in rows} == {"gru", "rnn"}
    assert all(float(r["median ms"]) > 0 for r in rows)


def test_proj_size_applies_to_the_lstm_cases_that_allow_it(capsys):
    cases = bench.default_grid("cpu", cells=("lstm", "gru"), proj_size=100)
    assert [(c.cell, c.hidden_size, c.proj_size) for c in cases] == [
        ("lstm", 256, 100), ("lstm", 128, 100), ("lstm", 512, 100), ("lstm", 128, 100),
        ("gru", 256, 0), ("gru", 128, 0), ("gru", 512, 0), ("gru", 128, 0), ("gru", 64, 0)]
    assert main(["bench", "--quick", "--proj-size", "4", "--mode", "inference", "--warmup", "0",
                 "--repeats", "1"]) == 0
    rows = parse_table(capsys.readouterr().out)
    assert rows and all(" P4" in row["shape"] and float(row["median ms"]) > 0 for row in rows)


# ---------------------------------------------------------------- bench_report


def test_format_table_marks_noisy_rows_and_writes_markdown():
    entry = {"backend": "", "resolved_backend": "", "status": "ok", "message": ""}
    result = {"case": "lstm B1 T10 I2 H3", "cell": "lstm", "mode": "inference",
              "floor_us_per_step": 4.25, "providers": [
                  dict(entry, provider="torch.nn", median_s=0.002, iqr_s=0.0001,
                       us_per_step=200.0, tflops=0.0125, noisy=False),
                  dict(entry, provider="fusedrnn", backend="auto", resolved_backend="reference",
                       median_s=0.001, iqr_s=0.0005, us_per_step=100.0, tflops=0.025,
                       noisy=True, ratio=0.5)]}
    text = bench_report.format_table([result])
    rows = parse_table(text)
    assert [r["provider"] for r in rows] == ["torch.nn", "fusedrnn (auto: reference)"]
    assert rows[1]["ratio"] == "0.50" and rows[1]["IQR ms"] == "0.500 !"
    assert rows[0]["ratio"] == "" and rows[0]["median ms"] == "2.000"
    assert [r["floor us"] for r in rows] == ["4.25", "4.25"]
    assert [r["TFLOP/s"] for r in rows] == ["0.0125", "0.025"]
    assert "! = noisy" in text
    markdown = bench_report.format_table([result], markdown=True)
    assert ("| lstm | B1 T10 I2 H3 | inference | fusedrnn (auto: reference) | 1.000 | 0.500 ! "
            "| 0.50 | 100.0 | 4.25 | 0.025 |") in markdown


def test_an_interrupted_bench_keeps_what_it_measured(monkeypatch, tmp_path):
    """Ctrl-C during a grid: the table and the reports of what was measured, the
    interruption recorded in the settings, exit status 130 (it was a traceback and nothing
    written)."""
    measure, calls = bench.measure_case, []

    def measured_once(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(args)
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench, "measure_case", measured_once)
    status, stdout, stderr = run_main(["bench", "--quick", "--out", tmp_path])
    assert status == 130 and "interrupted after 1 of" in stderr
    assert len(parse_table(stdout)) >= 2  # torch.nn's row and fusedrnn's
    payload = json.loads((tmp_path / "results.json").read_text())
    assert len(payload["results"]) == 1
    assert payload["settings"]["interrupted"].startswith("after 1 of")


def test_a_killed_bench_leaves_the_measurements_before_it(monkeypatch, tmp_path):
    """A run killed outright (a time limit's SIGKILL, a GPU that hangs: nothing Python can
    catch) keeps in results.json and results.md every measurement finished before the
    one it died in, marked partial; a finished run's reports are whole."""
    measure, seen = bench.measure_case, []

    def measure_and_look(*args, **kwargs):  # what a kill during this measurement would leave
        path = tmp_path / "results.json"
        seen.append(json.loads(path.read_text()) if path.exists() else None)
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench, "measure_case", measure_and_look)
    status, _, _ = run_main(["bench", "--quick", "--mode", "inference,training",
                             "--out", tmp_path])
    assert status == 0 and len(seen) >= 3
    assert seen[0] is None
    for done, payload in enumerate(seen[1:], start=1):
        assert len(payload["results"]) == done
        assert payload["settings"]["partial"] == f"{done} of {len(seen)} measurements"
    final = json.loads((tmp_path / "results.json").read_text())
    assert len(final["results"]) == len(seen) and "partial" not in final["settings"]
    assert "partial" not in (tmp_path / "results.md").read_text()
    assert not list(tmp_path.glob("*.partial"))


def test_the_anchors_grid_is_the_two_anchor_shapes(capsys):
    cases = bench.default_grid("cpu", cells=("lstm", "gru"), anchors=True)
    assert [(c.cell, c.batch, c.steps, c.hidden_size) for c in cases] == [
        ("lstm", 16, 1024, 768), ("lstm", 64, 100, 512),
        ("gru", 16, 1024, 768), ("gru", 64, 100, 512)]
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--quick", "--anchors"])
    assert exit_info.value.code == 2
    assert "not allowed with argument --quick" in capsys.readouterr().err


class WrongBackend(backends.ReferenceBackend):
    """The reference's kernels with every output doubled: a wrong kernel, which runs."""

    name = "test_wrong"

    def forward(self, cell, *args):
        y, *rest = super().forward(cell, *args)
        return (2 * y + 1, *rest)


class DecliningBackend(backends.ReferenceBackend):
    """Runs on the device and dtype, but refuses every call of hidden size 8 and up."""

    name = "test_declining"

    def supports(self, device, dtype, call=None):
        if call is not None and call.hidden >= 8:
            return False, "hidden sizes of 8 and up are not for this test double"
        return super().supports(device, dtype, call)


@pytest.fixture
def checked_backends():
    yield from registered(WrongBackend(), DecliningBackend())


def test_a_wrong_kernel_is_reported_not_timed(checked_backends):
    """Every provider's outputs are checked against torch.nn's before it is timed; a
    backend that refuses one call is unavailable for it, the others measured (it raised
    through the whole grid)."""
    case = bench.default_grid("cpu", quick=True)[0]
    result = bench.measure_case(case, "inference", ["reference", "test_wrong", "test_declining"],
                                warmup=0, repeats=1)
    entries = {e["provider"]: e for e in result["providers"]}
    wrong = entries[bench.provider_label("test_wrong")]
    assert wrong["status"] == "error" and "wrong result: relative error" in wrong["message"]
    assert "median_s" not in wrong
    declined = entries[bench.provider_label("test_declining")]
    assert declined["status"] == "unavailable" and "not for this test double" in declined["message"]
    assert entries[bench.provider_label("reference")]["status"] == "ok"
    assert "median_s" in entries[bench.provider_label("reference")]
