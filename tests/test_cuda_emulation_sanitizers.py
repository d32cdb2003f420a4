"""The persistent CUDA kernels' host emulation under GCC's sanitizers, CPU stand-ins for
compute-sanitizer: ThreadSanitizer for races between their threads (a missing
``__syncthreads`` or barrier: the emulation's barriers are mutexes and condition variables,
which it understands) and AddressSanitizer for reads and writes outside the tensors.

The emulation is compiled again with the sanitizer (``csrc/emulation/cuda_emulation.cpp``,
the extension's own flags and macros) into a copy of the package (``sanitized_builds.py``),
and a child Python, with the sanitizer's runtime preloaded, runs both persistent designs of
the LSTM and GRU forward and backward against the reference backend (two batch tiles, blocks
with fewer units than the others, lengths). Only reports from fusedrnn's own code count:
torch's libraries are not instrumented, and their OpenMP threads look racy to
ThreadSanitizer.
"""

import textwrap

import pytest

import sanitized_builds

pytestmark = [pytest.mark.requires_cuda_emulation, pytest.mark.slow,
              pytest.mark.sanitized_build]

CHILD = textwrap.dedent("""
    import torch
    import fusedrnn
    from fusedrnn import backends, testing
    from fusedrnn.backends.cuda_emulation import CudaEmulationBackend

    torch.set_num_threads(1)  # no OpenMP team: its uninstrumented barriers look racy
    for design in ("grid", "cluster"):
        backends.register(CudaEmulationBackend(design))
        for cell in (fusedrnn.LSTM, fusedrnn.GRU):
            reference = cell(7, 40, backend="reference")
            emulated = cell(7, 40, backend="cuda_emulation")
            emulated.load_state_dict(reference.state_dict())
            x = testing.make_packed(20, 5, 7)
            got, got_grads = testing.outputs_and_grads(emulated, x)
            want, want_grads = testing.outputs_and_grads(reference, x)
            testing.assert_close_relative(got, want, 1e-5, "outputs")
            testing.assert_close_relative(got_grads, want_grads, 1e-5, "gradients")
        backends.unregister("cuda_emulation")
    print("checked")
""")


@pytest.mark.parametrize("sanitizer, marker, options", [
    ("thread", "WARNING: ThreadSanitizer", {"TSAN_OPTIONS": "report_signal_unsafe=0"}),
    ("address", "ERROR: AddressSanitizer", {"ASAN_OPTIONS": "detect_leaks=0"}),
])
def test_persistent_kernels_under_sanitizer(sanitizer, marker, options, tmp_path):
    runtime = sanitized_builds.runtime_or_skip(sanitizer)
    path = sanitized_builds.build(
        sanitizer, tmp_path, "_cuda_emulation",
        [sanitized_builds.CSRC / "emulation" / "cuda_emulation.cpp"],
        ["-fvisibility=hidden", "-DFUSEDRNN_HOST_EMULATION"])
    _, stdout, stderr = sanitized_builds.run_child(runtime, path, ["-c", CHILD], tmp_path,
                                                   **options)
    reports = sanitized_builds.our_reports(stdout + stderr, marker)
    assert not reports, reports[0][:6000]
    assert "checked" in stdout, (stdout + stderr)[-4000:]  # ThreadSanitizer exits 66 for torch's races
