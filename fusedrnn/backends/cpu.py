"""The ``cpu`` backend: the CPU kernels of the recurrence ops, from the compiled extension
``fusedrnn._cpu`` (``csrc/cpu/``), for every cell: per step one BLAS product and one
vectorised pass over the rows, the time loop in C++, where the reference backend pays
Python's dispatch for every operation of every step."""

import torch

from .. import _extension
from .recurrence import RecurrenceBackend


class CpuBackend(RecurrenceBackend):
    name = "cpu"
    priority = 5
    extension = _extension.CPU
    device_type = "cpu"
    auto_devices = ("cpu",)
    dtypes = (torch.float32, torch.float64)
    cells = ("lstm", "gru", "rnn_tanh", "rnn_relu")
