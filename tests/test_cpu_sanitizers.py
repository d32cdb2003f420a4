"""The CPU kernels (``fusedrnn._cpu``) under GCC's AddressSanitizer and
UndefinedBehaviorSanitizer: reads and writes outside their tensors and workspaces, use after
free (the prepared-weight cache, the workspace pools), undefined arithmetic.

The extension is built again from ``csrc/cpu/*.cpp`` with both sanitizers and setup.py's
flags, but at -O1 rather than -O3, to keep the build short (four and a half minutes on two
cores), into a copy of the package (``sanitized_builds.py``). A child pytest, with the
runtime preloaded, runs the test files below against it (the cpu backend's kernels on every
cell, dtype, product path and row-math path, bidirectional layers on two threads, and the
bad inputs their checks refuse). AddressSanitizer writes its reports to files, read here
whichever process made them (some of those tests start processes of their own, and keep
their output). UndefinedBehaviorSanitizer writes to stderr only, which pytest's capture,
off here, would lose in a crash; and undefined behaviour aborts, which fails a test even in
a process of its own. Triton is hidden from the child (see sanitized_builds), so the Triton
cases are left out.
"""

import pytest

import sanitized_builds

pytestmark = [pytest.mark.requires_cpu_ext, pytest.mark.slow, pytest.mark.sanitized_build]

TESTS = sanitized_builds.ROOT / "tests"
CHECKED = ["test_cpu_bptt.py", "test_cpu_16_bit.py", "test_cpu_math_paths.py",
           "test_bidirectional.py", "test_bad_input.py"]
FLAGS = ["-fno-trapping-math", "-fno-math-errno", "-fopenmp",  # setup.py's, beside -O3
         "-fno-sanitize-recover=undefined"]


def test_cpu_kernels_under_address_and_undefined_behavior_sanitizers(tmp_path):
    runtime = sanitized_builds.runtime_or_skip("address")
    path = sanitized_builds.build("address,undefined", tmp_path, "_cpu",
                                  sorted((sanitized_builds.CSRC / "cpu").glob("*.cpp")), FLAGS)
    logs = tmp_path / "logs"
    logs.mkdir()
    status, stdout, stderr = sanitized_builds.run_child(
        runtime, path,
        ["-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-k", "not triton",
         *(str(TESTS / name) for name in CHECKED)],
        tmp_path, ASAN_OPTIONS=f"detect_leaks=0:log_path={logs / 'asan'}",
        UBSAN_OPTIONS="print_stacktrace=1")
    output = stdout + stderr
    reported = "\n".join(log.read_text() for log in sorted(logs.iterdir()))
    reports = sanitized_builds.our_reports(output + reported, "ERROR: AddressSanitizer")
    assert not reports, reports[0][:6000]
    assert not reported, reported[:6000]  # any other report: torch's own, or the runtime's
    assert status == 0, output[-6000:]
