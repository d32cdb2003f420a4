"""Lazy access to the optional compiled extensions.

``fusedrnn._cpu`` (``csrc/cpu/``, built by every ``pip install`` from a checkout) holds the
CPU kernels of the ``cpu`` backend; ``fusedrnn._C`` (``csrc/*.cu``, built when nvcc is found
or ``FUSEDRNN_BUILD_CUDA=1``) the CUDA kernels of the ``cuda`` backend;
``fusedrnn._cuda_emulation`` (``csrc/emulation/``, built with ``_cpu``) the cuda backend's
kernels compiled for the CPU, for tests (``backends/cuda_emulation.py``). Nothing here runs at
import time: :meth:`Extension.load` imports a module on first use and, when it is missing,
raises an ImportError that says how to build it.
"""

from ._compile import constant_result

BUILD_COMMAND = "pip install --no-build-isolation -e ."
CUDA_BUILD_COMMAND = "FUSEDRNN_BUILD_CUDA=1 " + BUILD_COMMAND


class Extension:
    """One optional compiled module, imported on first use."""

    def __init__(self, module, what, build_command, importer):
        self.module = module
        self.what = what
        self.build_command = build_command
        self._importer = importer
        self._state = {}

    def load(self):
        """The module, or ImportError with the command that builds it."""
        if "module" not in self._state:
            try:
                self._state["module"] = self._importer()
            except ImportError as error:
                self._state["error"] = error
                self._state["module"] = None
        if self._state["module"] is None:
            raise ImportError(f"{self.what} {self.module} is not built ({self._state['error']}); "
                              f"build it from the source checkout with: {self.build_command}")
        return self._state["module"]

    def loaded(self):
        """The module if an earlier :meth:`load` imported it, else None (imports nothing)."""
        return self._state.get("module")

    # Run, not traced, by torch.compile: a trace of the first load would guard on the state
    # before the load, which the load changes, and the next call would compile again.
    @constant_result
    def status(self):
        """``(available, reason)`` for ``fusedrnn info`` and the backend registry."""
        try:
            self.load()
        except ImportError as error:
            return False, str(error)
        return True, ""


# Import statements, not importlib: torch.compile traces an import statement (it imports
# then and there) but refuses importlib's functions, and the first call of a compiled
# fusedrnn module may be the one that loads an extension.
def _import_cpu():
    from . import _cpu
    return _cpu


def _import_cuda():
    from . import _C
    return _C


def _import_cuda_emulation():
    from . import _cuda_emulation
    return _cuda_emulation


CPU = Extension("fusedrnn._cpu", "the CPU extension", BUILD_COMMAND, _import_cpu)
CUDA = Extension("fusedrnn._C", "the CUDA extension", CUDA_BUILD_COMMAND, _import_cuda)
CUDA_EMULATION = Extension("fusedrnn._cuda_emulation", "the CPU emulation of the CUDA kernels",
                           BUILD_COMMAND, _import_cuda_emulation)
EXTENSIONS = (CPU, CUDA, CUDA_EMULATION)
