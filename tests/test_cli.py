"""The ``fusedrnn`` console script: ``info``, and the arguments of ``bench`` and ``profile``
(their runs and reports: test_cli_bench.py; the helpers of ``fusedrnn.bench`` and
``fusedrnn.bench_timing``: test_bench_helpers.py)."""

import os
import re
import subprocess
import sys

import pytest
import torch

import fusedrnn
from fusedrnn import bench, bench_environment, bench_graphs, testing
from fusedrnn.cli import main


# ---------------------------------------------------------------- info


def test_info_lists_versions_devices_backends_and_extensions(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+reference\s+available$", out, re.MULTILINE), out
    assert re.search(rf"^\s+torch\s+{re.escape(torch.__version__)}$", out, re.MULTILINE)
    assert re.search(r"^\s+fusedrnn\s+\d+\.\d+", out, re.MULTILINE)
    assert re.search(r"^\s+Triton\s+\S", out, re.MULTILINE)
    assert re.search(r"^\s+cpu\s+.+torch threads \d+$", out, re.MULTILINE)
    assert "fusedrnn._C" in out and "fusedrnn._cpu" in out


@pytest.mark.requires_cpu_ext
@pytest.mark.parametrize("mode, says", [("mkl", "float32 on MKL"),
                                        ("brgemm", "float32 on oneDNN's brgemm")])
def test_info_says_which_library_runs_the_cpu_products(mode, says):
    """FUSEDRNN_CPU_GEMM is read once per process, so each mode runs in a fresh one."""
    env = dict(os.environ, FUSEDRNN_CPU_GEMM=mode)
    run = subprocess.run([sys.executable, "-m", "fusedrnn.cli", "info"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(rf"^\s+products\s+{says}.*FUSEDRNN_CPU_GEMM={mode}\)$", run.stdout,
                     re.MULTILINE), run.stdout


@pytest.mark.parametrize("threads, says", [(2, "both directions at once"),
                                            (1, "one direction after the other on 1 thread")])
def test_info_says_how_the_cpu_backend_runs_bidirectional_layers(capsys, threads, says):
    with testing.torch_threads(threads):
        assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^\s+bidirectional layers\s+{says}", out, re.MULTILINE), out


@pytest.mark.requires_cpu_ext
def test_info_says_how_the_cpu_backend_computes_the_cells(capsys, monkeypatch):
    monkeypatch.delenv("FUSEDRNN_CPU_MATH", raising=False)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+cell math\s+(the forward rows and the row dots on AVX-512 intrinsics|vectorised "
                     r"portable code \(AVX-512, AVX2 or baseline clones\)) "
                     r"\(FUSEDRNN_CPU_MATH=auto\)$", out, re.MULTILINE), out


@pytest.mark.requires_cpu_ext
def test_info_says_how_the_cpu_backend_runs_16_bit_calls(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+bfloat16, float16\s+the float32 kernels on widened inputs; "
                     r"bfloat16 kernels \(every cell but the projected LSTM\): (from 4,194,304 "
                     r"|not here|from (10,000|131,072) multiply-adds per step at even hidden "
                     r"sizes \(oneDNN's brgemm(, AMX)?\), at odd ones (from 4,194,304|widened))",
                     out,
                     re.MULTILINE), out


def test_cpu_id_names_family_model_and_the_features_that_pick_paths():
    """Two CPU generations a virtual machine names alike ("AMD EPYC") differ in their ids."""
    zen4 = {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "17",
            "flags": "fpu avx2 avx512f avx512dq avx512_bf16 sse"}
    zen5 = dict(zen4, **{"cpu family": "26", "model": "2"})
    assert bench_environment.cpu_id(zen4) == "AuthenticAMD family 25 model 17; avx2 avx512f avx512dq avx512_bf16"
    assert bench_environment.cpu_id(zen4) != bench_environment.cpu_id(zen5)
    bare = {"vendor_id": "GenuineIntel", "cpu family": "6", "model": "143", "flags": "fpu amx_tile"}
    assert bench_environment.cpu_id(bare) == "GenuineIntel family 6 model 143; amx_tile"
    assert bench_environment.cpu_id({"vendor_id": "x", "flags": ""}).endswith("none of " + " ".join(bench_environment.CPU_FEATURES))
    assert bench_environment.cpu_id({}) is None  # no /proc/cpuinfo (another OS)


def test_info_reports_an_unavailable_backend_with_its_reason(capsys, fake_backends):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"test_unavailable\s+unavailable: no such hardware in this test", out)


# ---------------------------------------------------------------- bench options and failures


def test_unknown_backend_exits_nonzero_naming_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--quick", "--backend", "nosuch"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "nosuch" in err and "reference" in err


def test_backend_kernel_choices_are_parsed_and_checked(capsys):
    assert bench.split_backend("cuda:stepwise") == ("cuda", {"FUSEDRNN_CUDA_KERNEL": "stepwise"})
    assert bench.split_backend("reference") == ("reference", {})
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--quick", "--backend", "reference:fast"])
    assert exit_info.value.code != 0
    assert "backend 'reference' has no kernel choice" in capsys.readouterr().err
    [provider] = bench.build_providers(bench.default_grid("cpu", quick=True)[0],
                                       ["cuda:stepwise"], torch_nn=False)
    assert provider.label == "fusedrnn [cuda:stepwise]" and provider.status == "unavailable"


@pytest.mark.parametrize("argv, message", [
    (["bench", "--quick", "--backend", "cuda:fastest"], "unknown cuda kernel 'fastest'"),
    (["bench", "--quick", "--backend", "triton:step,zz"], "unknown triton kernel 'step,zz'"),
    (["bench", "--quick", "--proj-size", "32"], "--proj-size 32 leaves no case"),
    (["bench", "--quick", "--out", "{file}/sub"], "--out {file}/sub:"),
    (["profile", "--out", "{file}/sub"], "--out {file}/sub:"),
    (["forecast", "--out", "{file}/sub"], "--out {file}/sub:"),
    (["seq2seq", "--out", "{file}/sub"], "--out {file}/sub:"),
    (["sentiment", "compare", "--out", "{file}/sub"], "--out {file}/sub:"),
    (["forecast", "--backend", "nosuch"], "argument --backend: invalid choice: 'nosuch'"),
    (["seq2seq", "--backend", "nosuch"], "argument --backend: invalid choice: 'nosuch'"),
    (["sentiment", "train", "--backend", "nosuch"], "argument --backend: invalid choice"),
    (["forecast", "--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    (["forecast", "--hidden-size", "-4"], "argument --hidden-size: must be at least 1"),
    (["seq2seq", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["bench", "--quick", "--out", ""], "--out: an empty path"),
    (["bench", "--quick", "--device", "cpu:1"], "--device cpu:1: there is one cpu device"),
    (["forecast", "--device", "cpu:3"], "--device cpu:3: there is one cpu device"),
    (["bench", "--quick", "--out", "{dir}"], "results.json is a folder"),
    (["bench", "--quick", "--cell", "gru", "--proj-size", "3"],
     "--proj-size 3: only LSTM cases have a projection"),
    (["bench", "--quick", "--backend", "triton:auto,step"], "'auto' stands alone"),
    (["bench", "--quick", "--seed", str(2 ** 64 - 1)], "argument --seed: must be in [-2**63"),
    (["profile", "--seed", str(-2 ** 63 - 1)], "argument --seed: must be in [-2**63, 2**63)"),
    (["forecast", "--test-fraction", "nan"], "argument --test-fraction: must be a finite"),
    (["forecast", "--test-fraction", "1"], "argument --test-fraction: must be in (0, 1)"),
    (["forecast", "--lr", "-1"], "argument --lr: must be above 0"),
    (["forecast", "--backend", "triton", "--epochs", "1", "--out", "{dir}"],
     "--backend triton: backend 'triton' cannot run this call"),
    (["seq2seq", "--lr", "nan"], "argument --lr: must be a finite number"),
    (["seq2seq", "--target", "2"], "argument --target: must be in [0, 1]"),
    (["seq2seq", "--symbols", "2", "--min-len", "3", "--max-len", "3", "--out", "{dir}"],
     "make 8 distinct strings: too few for two held-out sets of --eval-size 1000"),
    (["sentiment", "train", "--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    (["sentiment", "train", "--clip", "-1"], "argument --clip: must be at least 0"),
    (["sentiment", "train", "--lr-decay", "-1"], "argument --lr-decay: must be above 0"),
    (["sentiment", "train", "--limit", "-5"], "argument --limit: must be at least 0"),
    (["sentiment", "train", "--val-fraction", "1.5"], "argument --val-fraction: must be in"),
    (["sentiment", "train", "--dropout", "2"], "argument --dropout: must be in [0, 1)"),
    (["sentiment", "train", "--vocab-size", "0"], "argument --vocab-size: must be at least 3"),
    (["sentiment", "compare", "--batch-size", "0"], "argument --batch-size: must be at least"),
    (["sentiment", "evaluate", "--checkpoint", "{file}"],
     "is corrupt or not a torch checkpoint (EOFError: empty or truncated file)"),
    (["sentiment", "evaluate", "--checkpoint", "{dir}"], "is not a file"),
    (["sentiment", "evaluate", "--checkpoint", "x.pt", "--json", "{file}/m.json"],
     "--json {file}: "),
])
def test_bad_arguments_are_usage_errors_before_any_work(argv, message, tmp_path, capsys,
                                                         monkeypatch):
    """A one-line error naming the argument and exit status 2, not a traceback (an
    unwritable --out was found only after the whole grid had run; a negative --clip trained
    by gradient ascent)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    folder = tmp_path / "out"
    (folder / "results.json").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        main([arg.format(file=blocker, dir=folder) for arg in argv])
    assert exit_info.value.code == 2
    assert message.format(file=blocker, dir=folder) in capsys.readouterr().err


def test_an_unknown_backend_in_the_environment_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FUSEDRNN_BACKEND", "nosuch")
    with pytest.raises(SystemExit) as exit_info:
        main(["seq2seq", "--steps", "1", "--out", tmp_path])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown backend 'nosuch'" in err and "FUSEDRNN_BACKEND" in err
    with pytest.raises(ValueError, match=r"unknown backend 'nosuch'.*\(from FUSEDRNN_BACKEND\)"):
        fusedrnn.LSTM(2, 3)(torch.randn(1, 1, 2))


def test_python_m_fusedrnn_runs_the_console_script():
    result = subprocess.run([sys.executable, "-m", "fusedrnn", "--version"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith(fusedrnn.__version__)


def test_profile_fails_when_the_backend_asked_for_cannot_run(tmp_path, capsys):
    unavailable = next((name for name, status in fusedrnn.available_backends().items()
                        if not status.available), None)
    if unavailable is None:
        pytest.skip("every backend can run here")
    status = main(["profile", "--backend", unavailable, "--batch", "2", "--steps", "3",
                   "--input-size", "4", "--hidden-size", "4", "--out", tmp_path])
    assert status == 1
    assert f"error: fusedrnn [{unavailable}]" in capsys.readouterr().err


def test_cuda_graph_option_needs_cuda_and_whole_call_modes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--quick", "--device", "cpu", "--cuda-graph"])
    assert exit_info.value.code == 2
    assert "--cuda-graph: CUDA graphs need a CUDA device, got cpu" in capsys.readouterr().err
    bench_graphs.check_graphable("cuda", ["inference", "training"])
    with pytest.raises(ValueError, match="not backward, training_forward"):
        bench_graphs.check_graphable("cuda", ["inference", "backward", "training_forward"])


@pytest.mark.parametrize("argv", [["--cell", "lstm,xyz"], ["--mode", "fast"],
                                  ["--repeats", "0"], ["--dtype", "int8"]])
def test_bad_bench_arguments_exit_nonzero(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--quick", *argv])
    assert exit_info.value.code == 2
