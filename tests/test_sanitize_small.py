"""benchmarks/sanitize_small.py, which the GPU check runs (alone per design first, then under
compute-sanitizer): the kernel-forcing variables the check sets after a design failed leave
that design out of every later run."""

import importlib.util
import pathlib

import pytest

import fusedrnn
from fusedrnn import backends

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "sanitize_small.py"
_spec = importlib.util.spec_from_file_location("sanitize_small", SCRIPT)
sanitize_small = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sanitize_small)


def _kept(**settings):
    return [run for run in sanitize_small.RUNS
            if not sanitize_small.left_out(*run.split(":"), settings)]


def test_nothing_is_left_out_by_default():
    assert _kept() == list(sanitize_small.RUNS)
    assert _kept(FUSEDRNN_TRITON_KERNEL="auto") == list(sanitize_small.RUNS)


def test_a_failed_design_stays_out():
    assert _kept(FUSEDRNN_CUDA_KERNEL="stepwise") == ["cuda:stepwise", "triton:cooperative",
                                                      "triton:step"]
    assert "cuda:cluster" not in _kept(FUSEDRNN_CUDA_KERNEL="grid")
    without = _kept(FUSEDRNN_TRITON_KERNEL="persistent,step")
    assert "triton:cooperative" not in without and "triton:step" in without
    assert "triton:cooperative" in _kept(FUSEDRNN_TRITON_KERNEL="cooperative")
    settings = {"FUSEDRNN_TRITON_KERNEL": "persistent,step"}
    assert not sanitize_small.left_out("triton", "auto", settings)  # auto: within the setting


@pytest.mark.requires_cpu_ext
def test_the_comparison_is_against_the_reference_backend(monkeypatch):
    """It compared a backend with ``auto`` (on a GPU: the same backend, even the same forced
    kernel); the reference is the reference backend's, whatever a variable forces."""
    assert sanitize_small.max_error("GRU", "cpu", "cpu") <= sanitize_small.BOUND

    class Doubled(backends.ReferenceBackend):
        name = "test_doubled"

        def forward(self, cell, *args):
            y, *rest = super().forward(cell, *args)
            return (2 * y, *rest)

    backends.register(Doubled())
    monkeypatch.setenv("FUSEDRNN_BACKEND", "test_doubled")  # what auto would take
    try:
        assert sanitize_small.max_error("LSTM", "test_doubled", "cpu") > 0.5
    finally:
        backends.unregister("test_doubled")


@pytest.mark.parametrize("extension_built", [False, True])
def test_an_unavailable_backend_is_no_pass(capsys, monkeypatch, extension_built):
    """A backend that cannot run on the device asked for exits 3, naming why, where it
    printed "skipped" and passed (a GPU check whose build failed read as green): without
    the CUDA extension, and with it built but no CUDA tensors to run on (CI's first stage;
    it counted as a run that raised)."""
    if extension_built:
        available = dict(fusedrnn.available_backends(),
                         cuda=backends.Availability(True, ""))
        monkeypatch.setattr(fusedrnn, "available_backends", lambda: available)
    assert sanitize_small.main(["--device", "cpu", "--runs", "cuda:grid"]) == 3
    assert "cuda: UNAVAILABLE (" in capsys.readouterr().out


def test_a_run_that_raises_fails_and_the_others_still_run(monkeypatch, capsys):
    def max_error(cell, backend, device):
        if cell == "LSTM":
            raise RuntimeError("an illegal memory access")
        return 0.0

    monkeypatch.setattr(sanitize_small, "max_error", max_error)
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", "auto")  # main sets it: restored after
    if not fusedrnn.available_backends()["triton"].available:
        pytest.skip("the triton backend is unavailable here")
    assert sanitize_small.main(["--runs", "triton:step"]) == 1
    out = capsys.readouterr().out
    assert "triton (step) LSTM: RAISED" in out
    assert "triton (step) GRU: max relative error 0.00e+00" in out


def test_a_broken_cuda_context_stops_the_runs_with_its_own_status(monkeypatch, capsys):
    """An illegal memory access breaks the process's CUDA context: the GPU check takes the
    design out of every later stage (its tests would fail one after another in the same
    process), so it is told apart from wrong numbers (1) by status 4, and nothing runs
    after it."""
    def max_error(cell, backend, device):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(sanitize_small, "max_error", max_error)
    monkeypatch.setattr(sanitize_small, "context_broken", lambda device: True)
    monkeypatch.setenv("FUSEDRNN_TRITON_KERNEL", "auto")
    if not fusedrnn.available_backends()["triton"].available:
        pytest.skip("the triton backend is unavailable here")
    assert sanitize_small.main(["--runs", "triton:step"]) == 4
    out = capsys.readouterr().out
    assert "triton (step) LSTM: CUDA ERROR" in out and "GRU" not in out
