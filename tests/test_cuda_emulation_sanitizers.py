"""The persistent CUDA kernels' host emulation under GCC's sanitizers, CPU stand-ins for
compute-sanitizer: ThreadSanitizer for races between their threads (a missing
``__syncthreads`` or barrier: the emulation's barriers are mutexes and condition variables,
which it understands) and AddressSanitizer for reads and writes outside the tensors.

The emulation is compiled again with the sanitizer (``csrc/emulation/cuda_emulation.cpp``,
the extension's own flags and macros) into a copy of the package, and a child Python, with
the sanitizer's runtime preloaded, runs both persistent designs of the LSTM and GRU forward
and backward against the reference backend (two batch tiles, blocks with fewer units than
the others, lengths). Triton is hidden from the child: its compiled module cannot load under
AddressSanitizer. Only reports from fusedrnn's own code count: torch's libraries are not
instrumented, and their OpenMP threads look racy to ThreadSanitizer.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest
import torch
import torch.utils.cpp_extension

import fusedrnn

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "emulation" / "cuda_emulation.cpp"
pytestmark = [pytest.mark.requires_cuda_emulation, pytest.mark.slow]

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


def _runtime(sanitizer):
    """The path of GCC's runtime library of ``sanitizer`` (asan, tsan), or None."""
    compiler = shutil.which("g++")
    if compiler is None:
        return None
    found = subprocess.run([compiler, f"-print-file-name=lib{sanitizer}.so"],
                           capture_output=True, text=True).stdout.strip()
    return found if os.path.isabs(found) and os.path.exists(found) else None


def _build(sanitizer, folder):
    """A copy of the installed package whose emulation is built with -fsanitize=…; its
    folder, to put first on the child's path."""
    package = folder / "fusedrnn"
    shutil.copytree(pathlib.Path(fusedrnn.__file__).parent, package,
                    ignore=shutil.ignore_patterns("_cuda_emulation*", "__pycache__"))
    library = package / ("_cuda_emulation" + sysconfig.get_config_var("EXT_SUFFIX"))
    torch_lib = pathlib.Path(torch.__file__).parent / "lib"
    command = ["g++", "-O1", "-g", f"-fsanitize={sanitizer}", "-fno-omit-frame-pointer",
               "-fPIC", "-shared", "-std=c++20", "-fvisibility=hidden",
               "-DFUSEDRNN_HOST_EMULATION", "-DTORCH_API_INCLUDE_EXTENSION_H",
               "-DTORCH_EXTENSION_NAME=_cuda_emulation",
               f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
               f"-I{ROOT / 'csrc'}", f"-I{sysconfig.get_paths()['include']}",
               *(f"-I{path}" for path in torch.utils.cpp_extension.include_paths()),
               str(SOURCE), f"-L{torch_lib}", "-lc10", "-ltorch", "-ltorch_cpu",
               "-ltorch_python", "-o", str(library)]
    built = subprocess.run(command, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    hidden = folder / "hidden" / "triton"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('hidden from the sanitized run')\n")
    return f"{folder}{os.pathsep}{folder / 'hidden'}"


def _our_reports(output, marker):
    """The sanitizer's reports (blocks from `marker` to the next SUMMARY) that name a frame
    of fusedrnn's sources."""
    reports, current = [], None
    for line in output.splitlines():
        if marker in line:
            current = [line]
        elif current is not None:
            current.append(line)
            if line.startswith("SUMMARY:"):
                reports.append("\n".join(current))
                current = None
    return [report for report in reports if str(ROOT / "csrc") in report]


@pytest.mark.parametrize("sanitizer, marker, options", [
    ("thread", "WARNING: ThreadSanitizer", {"TSAN_OPTIONS": "report_signal_unsafe=0"}),
    ("address", "ERROR: AddressSanitizer", {"ASAN_OPTIONS": "detect_leaks=0"}),
])
def test_persistent_kernels_under_sanitizer(sanitizer, marker, options, tmp_path):
    if not SOURCE.exists():
        pytest.skip("the sources are not beside this test (an installed copy)")
    runtime = _runtime({"thread": "tsan", "address": "asan"}[sanitizer])
    if runtime is None:
        pytest.skip(f"GCC's {sanitizer} sanitizer runtime is not installed")
    path = _build(sanitizer, tmp_path)
    env = dict(os.environ, LD_PRELOAD=runtime, PYTHONPATH=path, **options)
    env.pop("TRITON_INTERPRET", None)
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=600)
    output = child.stdout + child.stderr
    reports = _our_reports(output, marker)
    assert not reports, reports[0][:6000]
    assert "checked" in child.stdout, output[-4000:]
