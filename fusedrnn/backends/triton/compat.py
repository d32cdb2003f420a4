"""Differences between the torch and Triton versions the backend runs with (torch 2.6 and
newer, each with its own Triton), handled in one place."""

import torch
from torch.library import wrap_triton as _torch_wrap_triton


def tracing():
    """Whether a tracer may be running the launch: torch.compile (Dynamo, and AOTAutograd
    while it compiles), a ``__torch_dispatch__`` mode (make_fx's proxy mode, FakeTensorMode,
    the FunctionalTensorMode a ``triton_op`` decomposes under, or any other), or a
    ``torch.func`` transform (functionalize, vmap, grad: the launches they run kept on
    torch's wrapper, as before it was bypassed). Where none is, a launch sees real tensors
    only."""
    return (torch.compiler.is_compiling()
            or torch._C._len_torch_dispatch_stack() > 0
            or torch._C._functorch.peek_interpreter_stack() is not None)


def wrap_triton(kernel):
    """``torch.library.wrap_triton(kernel)`` while a tracer may be running the launch (it
    needs the wrapper to record the kernel), else ``kernel`` itself. Outside a
    ``triton_op``'s own eager body torch's wrapper stays on and sends every launch through
    its higher-order op: about 200 us a launch instead of 1, and two entries added to
    torch's global kernel side table that are never removed.

    A kernel of Triton's interpreter (``TRITON_INTERPRET=1`` makes ``triton.jit`` return an
    ``InterpretedFunction``) is returned as it is: torch 2.14 returns those unwrapped
    itself, torch 2.11 raises "wrap_triton only works on functions annotated with
    triton.jit", and no tracer runs interpreted launches. Imports Triton (on the first
    launch, not with the package)."""
    if not tracing():
        return kernel
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(kernel, InterpretedFunction):
        return kernel
    return _torch_wrap_triton(kernel)
