"""benchmarks/sanitize_small.py, which the GPU check runs (alone per design first, then under
compute-sanitizer): the kernel-forcing variables the check sets after a design failed leave
that design out of every later run."""

import importlib.util
import pathlib

import pytest

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
