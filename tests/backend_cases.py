"""The configurations and checks of the cuda backend's kernels against the reference
backend, shared by the GPU tests (test_cuda_ext.py) and the host emulation's tests on the CPU
(test_cuda_emulation.py): both ask the same of the same kernel source."""

import torch

import fusedrnn
from fusedrnn import testing

# module, options, hidden, steps, batch: odd and non-power-of-two sizes, one step, one row,
# every module option
CASES = [
    ("LSTM", {}, 256, 64, 16),
    ("LSTM", {"num_layers": 2, "bidirectional": True}, 130, 33, 5),
    ("LSTM", {}, 33, 1, 1),
    ("LSTM", {"batch_first": True}, 768, 20, 40),
    ("LSTM", {"proj_size": 24, "num_layers": 2, "bidirectional": True}, 64, 17, 6),
    ("LSTM", {"proj_size": 1}, 33, 5, 3),
    ("GRU", {}, 256, 64, 16),
    ("GRU", {"num_layers": 2, "bidirectional": True, "bias": False}, 130, 33, 5),
    ("GRU", {}, 33, 1, 1),
    ("GRU", {"batch_first": True}, 768, 20, 40),
]
RNN_CASES = [
    ({"nonlinearity": "tanh"}, 256, 64, 16),
    ({"nonlinearity": "relu", "num_layers": 2, "bidirectional": True}, 130, 33, 5),
    ({"nonlinearity": "tanh", "batch_first": True, "bias": False}, 768, 20, 40),
]


def compare_with_reference(module_class, kwargs, hidden, steps, batch, packed, *, backend,
                           device):
    """``backend`` against the reference backend on ``device``, float32: outputs, final
    states and every gradient within 1e-5 relative error, with initial states."""
    reference = module_class(96, hidden, device=device, **kwargs)
    candidate = module_class(96, hidden, device=device, backend=backend, **kwargs)
    candidate.load_state_dict(reference.state_dict())
    x = (testing.make_packed(batch, steps, 96, device=device) if packed
         else testing.make_sequence(batch, steps, 96, device=device,
                                    batch_first=kwargs.get("batch_first", False)))
    hx = testing.make_state(reference, batch)
    out_ref, grads_ref = testing.outputs_and_grads(reference, x, hx)
    out, grads = testing.outputs_and_grads(candidate, x, hx)
    testing.assert_close_relative(out, out_ref, 1e-5, "outputs")
    testing.assert_close_relative(grads, grads_ref, 1e-5, "gradients")


LOW_PRECISION_HIDDEN = 128  # check_low_precision_rule's hidden size


def check_low_precision_rule(cell, dtype, steps, *, backend, device,
                             hidden=LOW_PRECISION_HIDDEN, batch=8):
    """``backend`` in ``dtype`` within the flash-attention rule against the reference backend
    in ``dtype``, both against float64 (testing.assert_low_precision_rule)."""
    make = lambda **more: getattr(fusedrnn, cell)(64, hidden, device=device, **more)  # noqa: E731
    testing.assert_low_precision_rule(
        make(dtype=torch.float64), make(dtype=dtype, backend="reference"),
        make(dtype=dtype, backend=backend),
        testing.make_packed(batch, steps, 64, dtype=torch.float64, device=device))
