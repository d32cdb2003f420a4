"""fusedrnn's C++ sources built again with one of GCC's sanitizers, into a copy of the
installed package, and a child Python that runs them with the sanitizer's runtime preloaded.

For the tests of the CPU kernels (``test_cpu_sanitizers.py``) and of the persistent CUDA
kernels' host emulation (``test_cuda_emulation_sanitizers.py``). Triton is hidden from the
child: its compiled module cannot load under AddressSanitizer. Only reports from fusedrnn's
own sources count: torch's libraries are not instrumented.
"""

import concurrent.futures
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch
import torch.utils.cpp_extension

import fusedrnn

ROOT = pathlib.Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
RUNTIMES = {"address": "asan", "thread": "tsan"}


def runtime_or_skip(sanitizer):
    """The path of GCC's runtime library of ``sanitizer`` (address, thread); skips the test
    where the sources are not beside it or GCC lacks the runtime."""
    if not CSRC.is_dir():
        pytest.skip("the sources are not beside this test (an installed copy)")
    compiler = shutil.which("g++")
    name = RUNTIMES[sanitizer.split(",")[0]]
    found = "" if compiler is None else subprocess.run(
        [compiler, f"-print-file-name=lib{name}.so"], capture_output=True, text=True).stdout.strip()
    if not (os.path.isabs(found) and os.path.exists(found)):
        pytest.skip(f"GCC's {sanitizer} sanitizer runtime is not installed")
    return found


def _libstdcxx():
    """GCC's libstdc++, preloaded after the runtime: AddressSanitizer intercepts
    ``__cxa_throw`` and finds no real one to call in a Python that loads libstdc++ later (the
    first C++ exception, a TORCH_CHECK's, aborts the child)."""
    return subprocess.run(["g++", "-print-file-name=libstdc++.so.6"], capture_output=True,
                          text=True).stdout.strip()


def build(sanitizer, folder, extension, sources, flags=()):
    """A copy of the installed package under ``folder`` whose ``extension`` (``_cpu``,
    ``_cuda_emulation``) is ``sources`` built with ``-fsanitize=sanitizer`` and ``flags``
    (beside torch's extension flags; after ``-O1 -g``, so an ``-O`` among them wins), two
    compilers at a time; the child's PYTHONPATH."""
    package = folder / "fusedrnn"
    shutil.copytree(pathlib.Path(fusedrnn.__file__).parent, package,
                    ignore=shutil.ignore_patterns(extension + "*", "__pycache__"))
    objects = folder / "objects"
    objects.mkdir()
    common = ["g++", "-O1", "-g", f"-fsanitize={sanitizer}", "-fno-omit-frame-pointer", "-fPIC",
              "-std=c++20", *flags, "-DTORCH_API_INCLUDE_EXTENSION_H",
              f"-DTORCH_EXTENSION_NAME={extension}",
              f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
              f"-I{CSRC}", f"-I{sysconfig.get_paths()['include']}",
              *(f"-I{path}" for path in torch.utils.cpp_extension.include_paths())]

    def compile_one(source):
        target = objects / (pathlib.Path(source).stem + ".o")
        done = subprocess.run([*common, "-c", str(source), "-o", str(target)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return str(target)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        built = list(pool.map(compile_one, sources))
    library = package / (extension + sysconfig.get_config_var("EXT_SUFFIX"))
    torch_lib = pathlib.Path(torch.__file__).parent / "lib"
    linked = subprocess.run(["g++", "-shared", f"-fsanitize={sanitizer}", *flags, *built,
                             f"-L{torch_lib}", "-lc10", "-ltorch", "-ltorch_cpu",
                             "-ltorch_python", "-o", str(library)], capture_output=True,
                            text=True)
    assert linked.returncode == 0, linked.stderr[-3000:]
    hidden = folder / "hidden" / "triton"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('hidden from the sanitized run')\n")
    return f"{folder}{os.pathsep}{folder / 'hidden'}"


def run_child(runtime, path, arguments, folder, **environment):
    """``python arguments...`` with ``runtime`` preloaded and ``path`` first on its path; its
    exit status, its stdout and its stderr."""
    env = dict(os.environ, LD_PRELOAD=f"{runtime} {_libstdcxx()}", PYTHONPATH=path,
               **environment)
    env.pop("TRITON_INTERPRET", None)
    child = subprocess.run([sys.executable, *arguments], capture_output=True, text=True,
                           env=env, cwd=folder, timeout=900)
    return child.returncode, child.stdout, child.stderr


def our_reports(output, marker):
    """The sanitizer's reports (blocks from ``marker`` to the next SUMMARY) that name a frame
    of fusedrnn's sources, and UndefinedBehaviorSanitizer's one-line reports in them."""
    reports, current = [], None
    for line in output.splitlines():
        if "runtime error:" in line:
            reports.append(line)
        elif marker in line:
            current = [line]
        elif current is not None:
            current.append(line)
            if line.startswith("SUMMARY:"):
                reports.append("\n".join(current))
                current = None
    return [report for report in reports if str(CSRC) in report]
