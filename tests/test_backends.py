"""Backend registry and per-call selection."""

import logging

import pytest
import torch

import fusedrnn
from fusedrnn import _extension, backends
from fusedrnn.backends import Availability, Backend, BackendUnavailableError, Call


class _Unavailable(Backend):
    name = "unavailable_for_test"
    priority = 100

    def available(self):
        return Availability(False, "it is a test double that never runs")


@pytest.fixture
def unavailable_backend():
    backend = _Unavailable()
    backends.register(backend)
    yield backend
    backends.unregister(backend.name)


def test_reference_is_always_available():
    status = fusedrnn.available_backends()["reference"]
    assert status.available and status.reason == ""


@pytest.mark.requires_cpu_ext
def test_cpu_auto_selects_the_cpu_kernels_where_they_run(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    cpu = torch.device("cpu")
    choice = fusedrnn.select_backend(None, cpu, torch.float32, Call("lstm", 8, 8))
    assert choice.name == "cpu" and choice.reason == "auto: first choice on cpu"
    assert fusedrnn.select_backend(None, cpu, torch.float64, Call("rnn_relu", 8, 8)).name == "cpu"
    assert fusedrnn.select_backend(None, cpu, torch.float32, Call("lstm", 8, 4)).name == "cpu"
    assert fusedrnn.select_backend(None, cpu, torch.bfloat16, Call("gru", 8, 8)).name == "cpu"
    assert fusedrnn.select_backend(None, cpu, torch.float16, Call("lstm", 8, 4)).name == "cpu"


@pytest.mark.requires_cpu_ext
def test_cpu_auto_leaves_large_16_bit_calls_to_the_reference_backend(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    cpu = torch.device("cpu")
    large, small = Call("gru", 512, 512, batch=64), Call("gru", 256, 256, batch=32)
    choice = fusedrnn.select_backend(None, cpu, torch.float16, large)
    assert choice.name == "reference" and "cpu skipped (passed over: float16 at" in choice.reason
    assert fusedrnn.select_backend(None, cpu, torch.float16, small).name == "cpu"
    assert fusedrnn.select_backend(None, cpu, torch.float32, large).name == "cpu"
    assert fusedrnn.select_backend("cpu", cpu, torch.bfloat16, large).name == "cpu"
    # bfloat16 calls stay where the cpu backend's bfloat16 kernels run (the forward's, the
    # backward's products): the LSTM's on either product, the GRU's and RNN's on brgemm's;
    # float16 ones, and bfloat16 ones without those kernels, are widened and go to the
    # reference backend.
    extension = _extension.CPU.load()
    for cell in ("lstm", "gru", "rnn_tanh"):
        kernels = extension.has_bf16_gemm() and (cell == "lstm" or extension.bf16_on_brgemm())
        for training in (False, True):
            call = Call(cell, 512, 512, batch=64, training=training)
            assert (fusedrnn.select_backend(None, cpu, torch.bfloat16, call).name
                    == ("cpu" if kernels else "reference"))
            assert fusedrnn.select_backend(None, cpu, torch.float16, call).name == "reference"
    # On MKL's product (no bfloat16 brgemm) only the LSTM's were measured ahead of it.
    monkeypatch.setattr(extension, "bf16_on_brgemm", lambda: False)
    monkeypatch.setattr(extension, "bf16_on_mkl", lambda: True)
    for cell, expected in (("lstm", "cpu"), ("gru", "reference"), ("rnn_tanh", "reference")):
        call = Call(cell, 512, 512, batch=64)
        assert fusedrnn.select_backend(None, cpu, torch.bfloat16, call).name == expected


def test_cpu_auto_falls_back_to_reference_without_the_extension(monkeypatch):
    from fusedrnn import _extension

    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.setattr(_extension.CPU, "_state", {"module": None, "error": ImportError("gone")})
    choice = fusedrnn.select_backend(None, torch.device("cpu"), torch.float32, Call("lstm", 8, 8))
    assert choice.name == "reference" and "fusedrnn._cpu is not built" in choice.reason


def test_environment_variable_selects(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert fusedrnn.select_backend("auto", torch.device("cpu"), torch.float32).reason == "requested"


def test_unknown_backend_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match=r"unknown backend 'nosuch'.*reference"):
        fusedrnn.LSTM(3, 4, backend="nosuch")(torch.randn(2, 1, 3))


def test_explicit_unavailable_backend_raises_with_reason(unavailable_backend):
    module = fusedrnn.LSTM(3, 4, backend=unavailable_backend.name)
    with pytest.raises(BackendUnavailableError, match="never runs"):
        module(torch.randn(2, 1, 3))


def test_environment_request_that_cannot_run_raises(monkeypatch, unavailable_backend):
    monkeypatch.setenv(backends.ENV_VAR, unavailable_backend.name)
    with pytest.raises(BackendUnavailableError, match="never runs"):
        fusedrnn.GRU(3, 4)(torch.randn(2, 1, 3))


def test_auto_falls_back_and_logs_the_reason_once(monkeypatch, caplog, unavailable_backend):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    device = torch.device("meta")  # not cpu: every registered backend is a candidate
    with caplog.at_level(logging.INFO, logger="fusedrnn"):
        first = backends.select(None, device, torch.float32)
        backends.select(None, device, torch.float32)
    assert first.name == "reference"
    assert "never runs" in first.reason
    assert sum("never runs" in r.getMessage() for r in caplog.records) == 1


def test_fallback_log_memory_is_bounded(monkeypatch, caplog):
    # A skip reason may name the call's sizes (Triton's index limit): a server's varying
    # shapes must not grow the set of logged fallbacks without end.
    monkeypatch.setattr(backends, "_logged_fallbacks", set())
    with caplog.at_level(logging.INFO, logger="fusedrnn"):
        for batch in range(3 * backends._LOGGED_FALLBACKS_KEPT):
            backends._log_fallback_once("reference", (f"triton skipped (batch {batch})",))
        backends._log_fallback_once("reference", (f"triton skipped (batch {batch})",))
    assert len(backends._logged_fallbacks) <= backends._LOGGED_FALLBACKS_KEPT
    assert len(caplog.records) == 3 * backends._LOGGED_FALLBACKS_KEPT  # the last not again


def test_integer_input_cannot_run_on_reference():
    ok, why = backends.get("reference").supports(torch.device("cpu"), torch.int64)
    assert not ok and "floating" in why


def test_import_does_not_load_the_extension_or_triton():
    import subprocess
    import sys

    code = ("import sys, fusedrnn; "
            "print('fusedrnn._C' in sys.modules, 'triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("which", ["CPU", "CUDA"])
def test_missing_extension_fails_lazily_with_the_build_command(monkeypatch, which):
    from fusedrnn import _extension

    extension = getattr(_extension, which)

    def missing():
        raise ImportError(f"No module named {extension.module!r}")

    monkeypatch.setattr(extension, "_state", {})
    monkeypatch.setattr(extension, "_importer", missing)
    ok, why = extension.status()
    assert not ok and extension.build_command in why and extension.module in why
    with pytest.raises(ImportError, match="pip install --no-build-isolation"):
        extension.load()
