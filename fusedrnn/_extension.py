"""Lazy access to the optional compiled extension ``fusedrnn._C``.

Nothing here runs at import time; :func:`load` imports the extension on first use and, when
it is missing, raises an ImportError that says how to build it.
"""

import importlib

BUILD_COMMAND = "FUSEDRNN_BUILD_CUDA=1 pip install --no-build-isolation -e ."
_state = {}


def load():
    """The ``fusedrnn._C`` module, or ImportError with the command that builds it."""
    if "module" not in _state:
        try:
            _state["module"] = importlib.import_module("fusedrnn._C")
        except ImportError as error:
            _state["error"] = error
            _state["module"] = None
    if _state["module"] is None:
        raise ImportError(f"the CUDA extension fusedrnn._C is not built ({_state['error']}); "
                          f"build it from the source checkout with: {BUILD_COMMAND}")
    return _state["module"]


def status():
    """``(available, reason)`` for ``fusedrnn info`` and the backend registry."""
    try:
        load()
    except ImportError as error:
        return False, str(error)
    return True, ""
