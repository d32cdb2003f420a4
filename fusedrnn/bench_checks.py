"""The check every fusedrnn provider of a benchmark passes before it is timed: its outputs
(output and final states, one inference call) against torch.nn's on the same weights and
input, so that a wrong kernel is reported, not timed and shown as a speedup.

The bounds catch a wrong result, not rounding: ``fusedrnn.testing.relative_error`` (the
largest difference over the largest value) up to 1e-2 in float32 (cuDNN may run its
products in TF32) and 0.25 in bfloat16 and float16 (long sequences in either provider's
16-bit rounding); a kernel that computes something else differs by about 1. Correctness
to the last bits is what the tests check (README: Support matrix).
"""

import torch

from . import testing
from .bench_kernels import environment

BOUNDS = {torch.float32: 1e-2, torch.bfloat16: 0.25, torch.float16: 0.25}


def check_against_torch(providers, dtype):
    """Mark each ``ok`` provider after the first (torch.nn's) whose outputs differ from
    torch.nn's beyond :data:`BOUNDS` as an ``error`` provider, saying by how much; one whose
    check call raises, with the error. Nothing is checked without torch.nn's provider."""
    reference = providers[0] if providers else None
    if reference is None or reference.backend != "" or reference.status != "ok":
        return
    expected = _outputs(reference)
    bound = BOUNDS.get(dtype, 1e-2)
    for provider in providers[1:]:
        if provider.status != "ok":
            continue
        try:
            got = _outputs(provider)
        except Exception as error:  # noqa: BLE001 - the provider's error, in the table
            text = (str(error).strip().splitlines() or [""])[0]
            provider.status, provider.message = "error", f"{type(error).__name__}: {text}"
            continue
        error = max(testing.relative_error(a, e) for a, e in zip(got, expected))
        if error > bound:
            provider.status = "error"
            provider.message = (f"wrong result: relative error {error:.2g} against torch.nn's "
                                f"outputs (bound {bound:g}); not timed")


def _outputs(provider):
    """The output and final states of one inference call of ``provider`` (its forced
    kernel's environment set around it), in float32."""
    module, x = provider.module, provider.input
    training = module.training
    module.eval()
    try:
        with environment(provider.env or {}), torch.no_grad():
            return [t.float() for t in testing.flatten_outputs(module(x))]
    finally:
        module.train(training)
