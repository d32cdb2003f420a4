"""fusedrnn: fused LSTM, GRU and Elman RNN for PyTorch, drop-in for ``torch.nn``.

Importing fusedrnn registers the ``fusedrnn::*`` operators and the pure-PyTorch backend;
it never builds, imports or queries a GPU, Triton or the compiled extension.
"""

from . import functional, ops, ops_vmap
from .backends import BackendUnavailableError, available_backends, select as select_backend
from .cells import GRUCell, LSTMCell, RNNCell
from .memory import empty_cache
from .modules import GRU, LSTM, RNN
from .onnx_translation import translation_table as onnx_translation_table

__version__ = "0.1.0"

ops_vmap.register()

__all__ = [
    "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "functional", "ops",
    "available_backends", "select_backend", "BackendUnavailableError", "empty_cache",
    "onnx_translation_table", "__version__",
]
