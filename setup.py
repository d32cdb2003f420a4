"""Build fusedrnn: the Python package, the CPU extension ``fusedrnn._cpu`` (with the host
emulation of the CUDA step kernels, ``fusedrnn._cuda_emulation``) and, optionally, the CUDA
extension ``fusedrnn._C``.

Environment switches:

  FUSEDRNN_BUILD_CPU   1 (default): build the CPU extension, and the host emulation of the
                       CUDA step kernels that the tests run without a GPU
                       (``fusedrnn._cuda_emulation``, csrc/emulation/; needs a C++ compiler);
                       0: never (the cpu backend then reports itself unavailable).
  FUSEDRNN_BUILD_CUDA  auto (default): build the extension when ``nvcc`` is found and the
                       installed torch is a CUDA build (a GPU is not needed to build);
                       1: build it or fail loudly; 0: never build it.
  FUSEDRNN_CUDA_ARCHS  TORCH_CUDA_ARCH_LIST-style list, default "8.0;9.0+PTX".
  MAX_JOBS             parallel compile jobs (ninja).
  DEBUG                1: compile with -O0 -g.

Install from a checkout with ``pip install --no-build-isolation -e .`` so that pip builds
against the torch already installed instead of downloading another one.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0+PTX"


def _mode():
    mode = os.environ.get("FUSEDRNN_BUILD_CUDA", "auto").strip().lower()
    if mode not in ("auto", "1", "0"):
        sys.exit(f"FUSEDRNN_BUILD_CUDA must be auto, 1 or 0, got {mode!r}")
    return mode


def _sources(*patterns):
    return sorted(os.path.relpath(p, ROOT) for pat in patterns for p in glob.glob(os.path.join(ROOT, pat)))


def _cuda_home():
    """The toolkit the ``nvcc`` on PATH runs from: nvcc may be a wrapper script, so ask nvcc
    itself (its dry run prints ``TOP=<toolkit>/bin/..``); torch's own guess would take the
    wrapper's folder and the link would miss libcudart."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.cu")
        with open(probe, "w") as f:
            f.write("__global__ void probe() {}\n")
        dry = subprocess.run([nvcc, "-dryrun", "-c", probe, "-o", probe + ".o"],
                             capture_output=True, text=True)
    for line in (dry.stdout + dry.stderr).splitlines():
        if line.startswith("#$ TOP="):
            return os.path.normpath(line.split("=", 1)[1].strip())
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _wheel_cuda_includes():
    """Headers of the NVIDIA wheels (cuBLAS, cuSPARSE, ...) that torch's CUDA headers include."""
    dirs = []
    for entry in sys.path:
        dirs.extend(sorted(glob.glob(os.path.join(entry, "nvidia", "*", "include"))))
        dirs.extend(sorted(glob.glob(os.path.join(entry, "nvidia", "cu*", "include"))))
    return list(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


def _why_not_cuda(sources):
    if not sources:
        return "csrc/ holds no C++/CUDA sources"
    try:
        import torch
    except ImportError:
        return "torch is not installed (install it first, then use --no-build-isolation)"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build"
    home = _cuda_home()
    if home is None or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return "nvcc was not found on PATH and CUDA_HOME is not set"
    nvcc = _nvcc_release(os.path.join(home, "bin", "nvcc"))
    if nvcc and nvcc.split(".")[0] != torch.version.cuda.split(".")[0]:
        return (f"nvcc in {home} is CUDA {nvcc}, torch {torch.__version__} was built with CUDA "
                f"{torch.version.cuda}, and torch builds extensions only with the same major "
                "version (set CUDA_HOME to such a toolkit)")
    return None


def _nvcc_release(nvcc):
    """``"13.0"`` from ``nvcc --version``, or None if it does not say."""
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def _optimisation():
    return ["-O0", "-g"] if os.environ.get("DEBUG", "0") == "1" else ["-O3"]


def cpu_extensions():
    """The CPU extension ``fusedrnn._cpu`` and the emulation of the CUDA step kernels
    ``fusedrnn._cuda_emulation``; none when FUSEDRNN_BUILD_CPU=0."""
    mode = os.environ.get("FUSEDRNN_BUILD_CPU", "1").strip()
    if mode not in ("1", "0"):
        sys.exit(f"FUSEDRNN_BUILD_CPU must be 1 or 0, got {mode!r}")
    if mode == "0":
        return []
    try:
        from torch.utils.cpp_extension import CppExtension
    except ImportError:
        sys.exit("fusedrnn: torch must be installed before fusedrnn (pip install torch), and "
                 "fusedrnn installed with --no-build-isolation so that it builds against it")

    cpu = CppExtension(name="fusedrnn._cpu", sources=_sources("csrc/cpu/*.cpp"),
                       include_dirs=[os.path.join(ROOT, "csrc")],
                       # torch's own flags; without the first two GCC keeps the selects of
                       # the vectorisable math in csrc/cpu/cpu_math.h as branches, and
                       # OpenMP runs at::parallel_for on torch's threads (torch's libgomp)
                       extra_compile_args={"cxx": _optimisation() + [
                           "-fno-trapping-math", "-fno-math-errno", "-fopenmp"]},
                       extra_link_args=["-fopenmp"])
    # The CUDA build's sources for the host compiler (csrc/elementwise_launch.cuh), its
    # symbols hidden: their names are fusedrnn._C's.
    emulation = CppExtension(name="fusedrnn._cuda_emulation",
                             sources=_sources("csrc/emulation/*.cpp"),
                             include_dirs=[os.path.join(ROOT, "csrc")],
                             define_macros=[("FUSEDRNN_HOST_EMULATION", None)],
                             extra_compile_args={"cxx": _optimisation() + [
                                 "-fvisibility=hidden", "-fvisibility-inlines-hidden"]})
    return [cpu, emulation]


def cuda_extension():
    """The CUDA extension ``fusedrnn._C``, or None when it is not built."""
    mode = _mode()
    if mode == "0":
        return None
    sources = _sources("csrc/*.cpp", "csrc/*.cu", "csrc/persistent/*.cpp",
                       "csrc/persistent/*.cu")
    why_not = _why_not_cuda(sources)
    if why_not:
        if mode == "1":
            sys.exit(f"FUSEDRNN_BUILD_CUDA=1 but the CUDA extension cannot be built: {why_not}")
        print(f"fusedrnn: not building the CUDA extension ({why_not})", file=sys.stderr)
        return None
    os.environ["CUDA_HOME"] = _cuda_home()
    if os.environ.get("FUSEDRNN_CUDA_ARCHS"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ["FUSEDRNN_CUDA_ARCHS"]
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    from torch.utils.cpp_extension import CUDAExtension

    opt = _optimisation()
    return CUDAExtension(
        name="fusedrnn._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")] + _wheel_cuda_includes(),
        extra_compile_args={
            "cxx": opt,
            "nvcc": opt + ["-lineinfo", "--expt-relaxed-constexpr",
                           "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"],
        },
    )


def extension_build():
    """``(ext_modules, cmdclass)`` for setup(); empty when no extension is built."""
    # CUDA first: it sets CUDA_HOME, which torch.utils.cpp_extension reads when imported
    cuda = cuda_extension()
    modules = cpu_extensions() + ([] if cuda is None else [cuda])
    if not modules:
        return [], {}
    from torch.utils.cpp_extension import BuildExtension

    return modules, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_build()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
