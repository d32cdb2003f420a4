"""Differences between the torch and Triton versions the backend runs with (torch 2.6 and
newer, each with its own Triton), handled in one place."""

from torch.library import wrap_triton as _torch_wrap_triton


def wrap_triton(kernel):
    """``torch.library.wrap_triton(kernel)``, but a kernel of Triton's interpreter
    (``TRITON_INTERPRET=1`` makes ``triton.jit`` return an ``InterpretedFunction``) as it
    is: torch 2.14 returns those unwrapped itself, torch 2.11 raises "wrap_triton only works
    on functions annotated with triton.jit", and no tracer runs interpreted launches.
    Imports Triton (on the first launch, not with the package)."""
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(kernel, InterpretedFunction):
        return kernel
    return _torch_wrap_triton(kernel)
