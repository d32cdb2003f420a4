"""The pytest-benchmark suites in ``benchmarks/`` (quick mode, in a subprocess),
``fusedrnn profile``, the GEMM FLOP count and the per-step floor. No timing is asserted
beyond being positive."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusedrnn
from fusedrnn import bench, bench_floors, bench_report, bench_timing, profile
from fusedrnn.backends import Call
from fusedrnn.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENT_FIELDS = ("device", "device_name", "torch", "cuda", "cudnn", "fusedrnn", "git_commit",
                      "torch_threads", "date")
NEVER_AVAILABLE_PLUGIN = '''
"""A pytest plugin for the suite's subprocess: registers a backend that can never run."""
from fusedrnn import backends


class NeverAvailable(backends.Backend):
    name = "test_never"

    def available(self):
        return backends.Availability(False, "no such hardware in this test")


backends.register(NeverAvailable())
'''


def _device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory):
    """``pytest benchmarks/ --benchmark-only --quick`` with a never-available backend
    registered: ``(stdout, benchmark JSON)``."""
    folder = tmp_path_factory.mktemp("suite")
    (folder / "never_available_plugin.py").write_text(NEVER_AVAILABLE_PLUGIN)
    json_path = folder / "benchmarks.json"
    path = [str(folder)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    # tests/conftest.py turns Triton's interpreter on for CPU-only machines; timing kernels
    # interpreted in NumPy takes minutes and measures nothing, so the suite runs without it.
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-only", "--quick", "-q",
         "-p", "no:cacheprovider", "-p", "never_available_plugin",
         f"--benchmark-json={json_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout, json.loads(json_path.read_text())


def test_quick_suite_times_torch_nn_and_fusedrnn_in_every_case_and_mode(quick_suite):
    _, report = quick_suite
    expected_groups = {f"{case.label} {mode} float32" for cell in ("lstm", "gru")
                       for case in bench.grid(_device(), "quick", (cell,), packed=True)
                       for mode in bench.MODES}
    assert any(" packed " in group for group in expected_groups)
    providers = {}
    for entry in report["benchmarks"]:
        info, stats = entry["extra_info"], entry["stats"]
        providers.setdefault(entry["group"], set()).add(info["provider"])
        assert stats["median"] > 0 and stats["min"] > 0 and stats["rounds"] == 3, entry["name"]
        assert info["flops"] > 0 and info["floor_us_per_step"] > 0
        assert info["tflops"] == pytest.approx(info["flops"] / stats["median"] / 1e12)
        assert info["us_per_step"] == pytest.approx(stats["median"] / info["steps"] * 1e6)
        assert info["peak_memory_bytes"] > 0
        assert entry["params"]["case"]["cell"] == info["cell"]
    assert set(providers) == expected_groups
    for group, names in providers.items():
        assert {"torch.nn", "fusedrnn [reference]"} <= names, group


def test_quick_suite_json_carries_the_environment(quick_suite):
    _, report = quick_suite
    env = report["environment"]
    for field in ENVIRONMENT_FIELDS:
        assert field in env, field
    assert env["torch"] == torch.__version__ and env["device"] == str(_device())
    assert report["suite"]["grid"] == "quick" and report["suite"]["rounds"] == 3


def test_quick_suite_skips_an_unavailable_backend_with_its_reason(quick_suite):
    stdout, report = quick_suite
    assert "fusedrnn [test_never] unavailable: no such hardware in this test" in stdout
    assert "SKIPPED" in stdout
    assert all(e["extra_info"]["provider"] != "fusedrnn [test_never]"
               for e in report["benchmarks"])


def test_plain_pytest_does_not_collect_the_suites():
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                             "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert "tests/test_bench_suites.py::" in result.stdout, result.stdout[-2000:]
    assert "benchmarks/" not in result.stdout


# ---------------------------------------------------------------- fusedrnn profile


@pytest.mark.parametrize("mode", ["inference", "training"])
def test_profile_writes_summary_traces_and_launches_per_step(tmp_path, mode, capsys):
    assert main(["profile", "--cell", "lstm", "--batch", "2", "--steps", "4", "--input-size",
                 "3", "--hidden-size", "5", "--device", "cpu", "--mode", mode,
                 "--out", tmp_path]) == 0
    report = json.loads((tmp_path / "profile.json").read_text())
    markdown = (tmp_path / "profile.md").read_text()
    assert report["mode"] == mode and report["steps"] == 4
    assert [e["provider"] for e in report["providers"]] == ["torch.nn", "fusedrnn"]
    for entry in report["providers"]:
        assert entry["status"] == "ok", entry
        assert entry["launches_per_step"] == entry["ops"] / 4 > 0  # CPU: operators
        assert entry["peak_memory_bytes"] > 0 and entry["median_ms"] > 0
        assert entry["top_ops"] and all(op["calls"] > 0 for op in entry["top_ops"])
        trace = json.loads((tmp_path / entry["trace"]).read_text())
        assert any(e.get("name", "").startswith("aten::") for e in trace["traceEvents"])
        assert f"[{entry['trace']}]" in markdown and f"## {entry['provider']}" in markdown
    fused = report["providers"][1]
    assert fused["resolved_backend"] == fusedrnn.select_backend(
        None, torch.device("cpu"), torch.float32, Call("lstm", 5, 5)).name
    assert any(op["op"].startswith("fusedrnn::lstm_") for op in fused["top_ops"])
    assert "launches/step" in capsys.readouterr().out


def test_profile_counts_a_fused_operator_once_and_not_what_it_runs():
    from types import SimpleNamespace

    def event(name, parent=None):
        return SimpleNamespace(name=name, cpu_parent=parent)
    fused, python = event("fusedrnn::lstm_fwd"), event("<built-in method addmm>")
    inner = event("aten::empty", fused)
    events = [event("aten::zeros"), fused, inner, event("aten::mm", fused),
              event("aten::fill_", inner), python, event("aten::add", python)]
    assert profile.top_level_ops(events) == 3  # zeros, lstm_fwd, add


def _memory_record(ts, size, total):
    return {"name": "[memory]", "ts": ts,
            "args": {"Device Type": 0, "Bytes": size, "Total Allocated": total}}


def test_peak_allocated_sums_the_records_of_every_allocator():
    # torch's allocator at 1000 bytes before the call, a second allocator (a workspace pool)
    # counting its own total from 0: the call's peak is 300 + 500 + 200, what was live at
    # once, not the largest of either total above the first record's level
    events = [_memory_record(1, 300, 1300), _memory_record(2, 500, 500),
              _memory_record(3, 200, 1500), _memory_record(4, -500, 0),
              _memory_record(5, 100, 1600), {"name": "aten::mm", "ts": 3}]
    assert bench_timing.peak_allocated(events, "cpu") == 1000
    assert bench_timing.peak_allocated(events[5:], "cpu") is None


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=pytest.mark.requires_cpu_ext)])
def test_training_forward_peak_holds_what_the_backward_keeps(backend):
    """At least the gates, cell states and outputs the backward reads are live after the
    forward (float32 LSTM: 6 x T x B x H values)."""
    case = bench.Case("lstm", 8, 50, 16, 64)
    provider = bench.build_providers(case, [backend], "cpu", torch.float32,
                                     mode="training_forward")[1]
    call, setup = bench.make_call(provider, "training_forward")
    saved = 6 * case.steps * case.batch * case.hidden_size * 4
    assert bench_timing.peak_memory_bytes(call, setup, "cpu") >= saved


def test_profile_rejects_an_unknown_backend(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "--backend", "nosuch", "--out", tmp_path])
    assert exit_info.value.code == 2 and "nosuch" in capsys.readouterr().err


@pytest.mark.requires_cuda
def test_profile_counts_cuda_kernels(tmp_path):
    assert main(["profile", "--batch", "2", "--steps", "4", "--input-size", "3",
                 "--hidden-size", "5", "--device", "cuda", "--out", tmp_path]) == 0
    report = json.loads((tmp_path / "profile.json").read_text())
    for entry in report["providers"]:
        assert entry["device_launches"] > 0 and entry["call_peak_bytes"] > 0


# ---------------------------------------------------------------- FLOPs and floors


def test_gemm_flops_match_a_hand_count():
    # LSTM, B=2, T=3, I=4, H=5: G = 4*5 = 20 gate rows; per step and sequence the input
    # product is 20*4 multiply-adds and the recurrent one 20*5: 2 * 6 tokens * 20 * 9 = 2160.
    lstm = bench.Case("lstm", 2, 3, 4, 5)
    assert bench.gemm_flops(lstm) == bench.gemm_flops(lstm, "training_forward") == 2160
    assert bench.gemm_flops(lstm, "backward") == 4320
    assert bench.gemm_flops(lstm, "training") == 6480
    assert bench.gemm_flops(lstm, tokens=4) == 2 * 4 * 20 * 9  # packed: real tokens only
    # GRU, 2 layers, bidirectional: G = 15; layer 0 reads I=4, layer 1 reads 2*5 = 10.
    gru = bench.Case("gru", 2, 3, 4, 5, num_layers=2, bidirectional=True)
    assert bench.gemm_flops(gru) == 2 * (2 * 6 * 15 * (4 + 5)) + 2 * (2 * 6 * 15 * (10 + 5))
    assert bench.gemm_flops(gru) == 8640
    # LSTM with projection P=3: recurrent product 20x3, plus the projection 5 -> 3.
    assert bench.gemm_flops(bench.Case("lstm", 2, 3, 4, 5, proj_size=3)) == 1680 + 180
    assert bench.gemm_flops(bench.Case("rnn", 1, 1, 1, 1)) == 2 * 1 * 1 * (1 + 1)


def test_persistent_floor_terms_from_the_ceilings():
    # LSTM B16 H768 bf16: the step's product is 2 * 16 * 3072 * 768 = 75.5 MFLOP; W_hh
    # 3072 x 768 x 2 bytes = 4.7 MB
    case = bench.Case("lstm", 16, 1024, 768, 768)
    ceilings = {"flop_per_s": 1e15, "bytes_per_s": 4e12, "barrier_s": 1e-6}
    terms = bench_floors.floor_terms(case, "inference", 2, ceilings)
    assert terms["flops"] == pytest.approx(2 * 16 * 3072 * 768 / 1e15 * 1e6)
    assert terms["weights"] == pytest.approx(3072 * 768 * 2 / 4e12 * 1e6)
    assert terms["barrier"] == pytest.approx(1.0) and terms["floor"] == pytest.approx(1.0)
    four = bench.Case("lstm", 16, 1024, 768, 768, num_layers=2, bidirectional=True)
    training = bench_floors.floor_terms(four, "training", 2, ceilings)
    assert training["flops"] == pytest.approx(4 * 3 * terms["flops"])
    assert training["barrier"] == pytest.approx(8.0)  # 4 layer-directions, 2 loops each
    backward = bench_floors.floor_terms(four, "backward", 2, ceilings)
    assert backward["barrier"] == pytest.approx(4.0)
    assert backward["flops"] == pytest.approx(4 * 2 * terms["flops"])
    no_barrier = bench_floors.floor_terms(case, "inference", 2, {**ceilings, "barrier_s": None})
    assert "barrier" not in no_barrier and "floor" not in no_barrier
    assert bench_floors.persistent_floor_terms(case, "inference", "cpu", torch.float32) is None


def test_persistent_floor_section_only_for_cuda_results():
    result = {"cell": "lstm", "case": "B16 T1024 I768 H768", "mode": "training",
              "persistent_floor_us": {"flops": 0.23, "barrier": 1.5, "floor": 1.5,
                                      "weights": 1.18}}
    lines = bench_report.persistent_floor_lines([result, {**result, "persistent_floor_us": None}])
    assert lines[0] == "## Per-step floor of a persistent kernel"
    assert lines[-2] == "| lstm | B16 T1024 I768 H768 | training | 0.23 | 1.50 | 1.50 | 1.18 |"
    assert bench_report.persistent_floor_lines([{**result, "persistent_floor_us": None}]) == []


def test_step_floor_is_the_step_work_at_the_matrix_rate(monkeypatch):
    rates = {torch.float32: 1e11, torch.bfloat16: 2e11, torch.float16: 1e9}
    monkeypatch.setattr(bench_floors, "matrix_rate", lambda device, dtype: rates[dtype])
    monkeypatch.setattr(bench_floors, "_indexed", lambda device: device)
    monkeypatch.setattr(bench_floors, "launch_latency_seconds", lambda device: 1e-3)
    case = bench.Case("lstm", 4, 10, 8, 16, num_layers=2, bidirectional=True)
    flops = bench.gemm_flops(case, "training")
    assert bench.step_floor_seconds(case, "training", flops) == flops / 10 / 1e11
    assert bench.step_floor_seconds(case, "training", flops, "cpu",
                                    torch.bfloat16) == flops / 10 / 2e11
    # a CPU kernel may compute a 16-bit type in float32: the faster rate bounds it (float16:
    # float32's; torch's CPU float16 product is not measured, it is too slow to time)
    rates[torch.bfloat16] = 1e10
    assert bench.step_floor_seconds(case, "training", flops, "cpu",
                                    torch.bfloat16) == flops / 10 / 1e11
    rates[torch.float16] = 1e12
    assert bench.step_floor_seconds(case, "training", flops, "cpu",
                                    torch.float16) == flops / 10 / 1e11
    # CUDA, step by step: a launch per layer, direction and time loop at least
    assert bench.step_floor_seconds(case, "training", flops, "cuda") == 2 * 2 * 2 * 1e-3
    assert bench.step_floor_seconds(case, "inference", flops / 3, "cuda") == 2 * 2 * 1e-3
    assert bench.step_floor_seconds(case, "training", 1e12, "cuda") == 1e12 / 10 / 1e11


def test_matrix_rate_is_measured_once_per_device_and_dtype():
    bench_floors.matrix_rate.cache_clear()
    rate = bench_floors.matrix_rate(torch.device("cpu"), torch.float32)
    assert rate > 1e8 and bench_floors.matrix_rate(torch.device("cpu"), torch.float32) == rate
    assert bench_floors.matrix_rate.cache_info().misses == 1


def test_reports_name_the_triton_kernel_a_case_runs(monkeypatch, capable_triton):
    """The triton provider's kernels in the reports: its plan's choice for the case, under
    the provider's forced kernel when it has one (``triton:step``)."""
    from fusedrnn.bench_kernels import triton_kernels

    monkeypatch.delenv("FUSEDRNN_TRITON_KERNEL", raising=False)
    case = bench.Case("lstm", 16, 8, 8, 768)
    assert triton_kernels("lstm", case, "cpu", torch.bfloat16, {}) == "cooperative, 96 programs"
    assert triton_kernels("lstm", case, "cpu", torch.bfloat16,
                          {"FUSEDRNN_TRITON_KERNEL": "step"}) == "step"
    assert triton_kernels("gru", bench.Case("gru", 4, 8, 8, 32), "cpu", torch.float32,
                          {}) == "persistent"
    assert triton_kernels("lstm", bench.Case("lstm", 64, 8, 8, 256), "cpu", torch.bfloat16,
                          {}) == "cooperative, 4 batch groups x 32 programs"
    # a GPU whose blocks cannot hold the cooperative slices: the plan's choice, not the label's
    from fusedrnn.backends.triton import cooperative

    monkeypatch.setattr(cooperative, "limits", lambda device: (132, 64 * 1024))
    assert triton_kernels("lstm", case, "cpu", torch.bfloat16, {}) == "step"
    entry = {"provider": "fusedrnn [triton]", "backend": "triton", "resolved_backend": "triton",
             "kernels": "cooperative, 96 programs"}
    assert bench_report.provider_title(entry) == "fusedrnn [triton] (cooperative, 96 programs)"
