"""Shared fixtures: fixed seeds, skips for hardware that is missing, and NaN-poisoned
uninitialised memory so an output a kernel forgets to write shows up as NaN."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

# Without a GPU, the Triton backend's tests run its kernels in Triton's interpreter. Set
# before any kernel module is imported: triton.jit reads it when it wraps a function.
if not torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _has_cuda():
    return torch.cuda.is_available()


def _has_triton():
    if importlib.util.find_spec("triton") is None:
        return False
    return _has_cuda() or os.environ.get("TRITON_INTERPRET") == "1"


def _has_extension():
    from fusedrnn import _extension

    return _extension.CUDA.status()[0]


def _has_cpu_extension():
    from fusedrnn import _extension

    return _extension.CPU.status()[0]


def _has_cuda_emulation():
    from fusedrnn import _extension

    return _extension.CUDA_EMULATION.status()[0]


_REQUIREMENTS = {
    "requires_cuda": (_has_cuda, "needs a CUDA device"),
    "requires_triton": (_has_triton, "needs Triton with a GPU or TRITON_INTERPRET=1"),
    "requires_ext": (_has_extension, "needs the compiled extension fusedrnn._C"),
    "requires_cpu_ext": (_has_cpu_extension, "needs the compiled extension fusedrnn._cpu"),
    "requires_cuda_emulation": (_has_cuda_emulation,
                                "needs the compiled extension fusedrnn._cuda_emulation"),
}


def pytest_collection_modifyitems(config, items):
    checked = {}
    for item in items:
        for marker, (check, why) in _REQUIREMENTS.items():
            if marker in item.keywords:
                if marker not in checked:
                    checked[marker] = check()
                if not checked[marker]:
                    item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _poisoned(factory):
    def make(*args, **kwargs):
        out = factory(*args, **kwargs)
        if out.dtype.is_floating_point or out.dtype.is_complex:
            with torch.no_grad():  # a leaf made with requires_grad=True (inductor makes some)
                out.fill_(float("nan"))
        return out

    return make


@pytest.fixture(autouse=True)
def nan_poisoned_empty(monkeypatch):
    """Fill every tensor made by ``torch.empty``/``empty_like``/``new_empty`` with NaN."""
    monkeypatch.setattr(torch, "empty", _poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", _poisoned(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", _poisoned(torch.Tensor.new_empty))
    yield


@pytest.fixture
def capable_triton(monkeypatch):
    """The Triton plan as with a Triton that builds every kernel, whichever is installed:
    for tests of the plan's logic, which launch nothing."""
    from fusedrnn.backends.triton import plan

    monkeypatch.setattr(plan, "cooperative_unsupported", lambda: None)


@pytest.fixture
def fake_backends():
    """Two backend doubles registered for a test: one unavailable, one whose kernels raise
    (tests/cli_helpers.py)."""
    from cli_helpers import BrokenBackend, UnavailableBackend, registered

    yield from registered(UnavailableBackend(), BrokenBackend())


@pytest.fixture
def two_threads():
    """torch's thread count at 2 (restored after): the cpu backend's split loops
    (csrc/cpu/unit_split.h) give each thread a chunk of the hidden units, and tests of them
    must not pass unsplit on a one-thread runner."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rerun_on_portable_rows():
    """``rerun(path, expression)``: the tests of ``path`` that ``-k expression`` selects,
    again in a pytest process of their own under FUSEDRNN_CPU_MATH=portable (the extension
    reads it once per process), asserting that they pass. Skips where the CPU has no AVX-512F:
    the suite runs the portable rows there already."""
    from fusedrnn import _extension

    if not _extension.CPU.load().avx512_rows():
        pytest.skip("the suite runs the portable rows here already")

    def rerun(path, expression):
        env = dict(os.environ, FUSEDRNN_CPU_MATH="portable")
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              path, "-k", expression], env=env, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0 and " passed" in run.stdout, run.stdout[-3000:]

    return rerun
