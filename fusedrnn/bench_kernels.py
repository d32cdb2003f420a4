"""The kernel variants of benchmark providers: ``--backend cuda:stepwise`` forces a backend's
kernel choice around that provider's calls only (through the environment variable the
backend reads per call), and :func:`cuda_kernels` / :func:`triton_kernels` name what the
backends' planners run for a case, for the reports.
"""

import contextlib
import os

import torch

# Backends whose kernel a provider may force, ``--backend cuda:stepwise``: the variable the
# backend reads it from (fusedrnn/backends/cuda_plan.py, triton/plan.py).
KERNEL_ENV = {"cuda": "FUSEDRNN_CUDA_KERNEL", "triton": "FUSEDRNN_TRITON_KERNEL"}


def split_backend(name):
    """``"cuda:stepwise"`` -> ``("cuda", {"FUSEDRNN_CUDA_KERNEL": "stepwise"})``; a plain name
    -> ``(name, {})``. ValueError for a kernel on a backend that has no such choice."""
    backend, _, kernel = name.partition(":")
    if not kernel:
        return backend, {}
    if backend not in KERNEL_ENV:
        raise ValueError(f"backend {backend!r} has no kernel choice (only "
                         f"{', '.join(KERNEL_ENV)}), got {name!r}")
    known = kernel_choices(backend)
    parts = [part.strip() for part in kernel.split(",")] if backend == "triton" else [kernel]
    if any(part not in known for part in parts):
        raise ValueError(f"unknown {backend} kernel {kernel!r} in {name!r}; choose among "
                         f"{', '.join(known)}")
    if len(parts) > 1 and "auto" in parts:  # the plan takes auto alone or a list of kernels
        raise ValueError(f"{name!r}: 'auto' stands alone, not in a list of kernels")
    return backend, {KERNEL_ENV[backend]: kernel}


def kernel_choices(backend):
    """The kernel names ``backend`` accepts in its variable (the triton one takes several,
    comma-separated)."""
    if backend == "cuda":
        from .backends import cuda_plan

        return cuda_plan.CHOICES
    from .backends.triton import plan

    return ("auto",) + plan.KERNELS


@contextlib.contextmanager
def environment(env):
    """``env`` set in ``os.environ`` inside the block, the previous values restored after."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def with_env(call_and_setup, env):
    """``(call, setup)`` that run with ``env`` set in ``os.environ``, restored after each."""
    if not env:
        return call_and_setup

    def wrapped(function):
        def run():
            with environment(env):
                return function()

        return None if function is None else run

    call, setup = call_and_setup
    return wrapped(call), wrapped(setup)


def triton_kernels(cell, case, device, dtype, env):
    """Which kernel the triton backend runs ``case`` (op-level ``cell``) with under ``env``:
    ``persistent``, ``step`` or ``cooperative, N programs``."""
    from .backends.triton import cooperative, plan

    resident, shared = cooperative.limits(torch.device(device))
    with environment(env):
        variant = plan.choose(cell, case.hidden_size, case.proj_size or case.hidden_size, dtype,
                              resident, shared)
    if variant.kernel == "cooperative":
        groups, _ = cooperative.batch_groups(variant, case.batch, resident)
        programs = f"{variant.programs} programs"
        return f"cooperative, {programs}" if groups == 1 else \
            f"cooperative, {groups} batch groups x {programs}"
    return variant.kernel or "none"


def cuda_kernels(case, device, dtype, env):
    """Which kernels the cuda backend runs ``case`` with under ``env`` (its planner's choice):
    ``grid``, ``cluster`` or ``stepwise``, or ``fwd X, bwd Y`` when the two differ."""
    if case.cell not in ("lstm", "gru") or case.proj_size:
        return "stepwise"
    from .backends import cuda_plan

    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    with environment(env):
        plans = [cuda_plan.plan_call(case.cell, case.hidden_size, dtype, index, backward)
                 for backward in (False, True)]
    names = [("cluster" if plan.cluster else "grid") if plan.kernel == "persistent"
             else "stepwise" for plan in plans]
    return names[0] if names[0] == names[1] else f"fwd {names[0]}, bwd {names[1]}"
