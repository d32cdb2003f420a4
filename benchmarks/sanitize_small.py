"""A small forward and backward of every GPU backend (the cuda backend with its persistent
kernels of both designs and its stepwise kernels; the triton backend's cooperative kernels,
18 programs at hidden 144, and its step kernels), for ``compute-sanitizer`` (memcheck,
racecheck, synccheck) in the GPU check: ``compute-sanitizer --tool memcheck python
benchmarks/sanitize_small.py``. ``--runs cuda:grid`` runs only those; with
``FUSEDRNN_CUDA_KERNEL=stepwise`` (``grid``) set, the persistent kernels (the cluster ones)
are left out, and a ``FUSEDRNN_TRITON_KERNEL`` set without ``cooperative`` leaves those out
(``triton:auto`` then chooses among what it allows). Exit status: 1 if a backend's outputs
or gradients differ from the reference backend's beyond the tests' float32 bound or a run
raised (the other runs go on), 4 if a run left the CUDA context broken (an illegal memory
access: nothing after it in the process can pass, so it stops there), else 3 if a backend
asked for is unavailable (an extension not built is no pass), else 0."""

import argparse
import os
import sys
import traceback

import torch

import fusedrnn
from fusedrnn import backends, testing
from fusedrnn.bench_kernels import KERNEL_ENV


# At hidden 144 in float32 the triton backend's own choice is its cooperative kernel; both
# of its multi-program kernels run here (``triton:auto`` runs whichever it picks).
RUNS = ("cuda:cluster", "cuda:grid", "cuda:stepwise", "triton:cooperative", "triton:step")
# What FUSEDRNN_CUDA_KERNEL, when set, leaves out.
LEFT_OUT = {"stepwise": ("cluster", "grid"), "grid": ("cluster",)}
BOUND = 1e-5  # the tests' float32 bound against the reference backend (README)


def left_out(backend, kernel, settings):
    """Whether the kernel-forcing variables as the caller set them (``settings``, by name)
    leave ``backend``'s ``kernel`` out."""
    setting = settings.get(KERNEL_ENV[backend], "")
    if backend == "cuda":
        return kernel in LEFT_OUT.get(setting, ())
    return kernel != "auto" and setting not in ("", "auto") and kernel not in setting.split(",")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=",".join(RUNS),
                        help=f"comma-separated backend:kernel pairs out of {', '.join(RUNS)}")
    parser.add_argument("--device", default="cuda",
                        help="cuda, or cpu to rehearse (the triton backend in its interpreter)")
    args = parser.parse_args(argv)
    runs = [run.split(":") for run in args.runs.split(",")]
    settings = {name: os.environ.get(name, "") for name in KERNEL_ENV.values()}
    runs = [run for run in runs if not left_out(*run, settings)]
    failures = unavailable = 0
    for backend, kernel in runs:
        availability = fusedrnn.available_backends()[backend]
        runs_here, why = backends.get(backend).supports(torch.device(args.device),
                                                        torch.float32)
        if not availability.available or not runs_here:
            print(f"{backend}: UNAVAILABLE ({availability.reason or why})")
            unavailable += 1
            continue
        if kernel == "cluster" and args.device == "cuda" and \
                torch.cuda.get_device_capability() < (9, 0):
            print("cuda (cluster): needs compute capability 9.0, skipped")
            continue
        env = KERNEL_ENV[backend]
        os.environ[env] = settings[env] if kernel == "auto" else kernel
        for cell in ("LSTM", "GRU"):
            print(f"{backend} ({kernel}) {cell}: running", flush=True)  # a hang shows where
            try:
                error = max_error(cell, backend, args.device)
            except Exception:  # noqa: BLE001 - reported; the other runs still go
                traceback.print_exc()
                if context_broken(args.device):
                    print(f"{backend} ({kernel}) {cell}: CUDA ERROR: the process's CUDA "
                          "context is broken, no later run can pass")
                    return 4
                print(f"{backend} ({kernel}) {cell}: RAISED")
                failures += 1
                continue
            print(f"{backend} ({kernel}) {cell}: max relative error {error:.2e}")
            failures += not error <= BOUND
    return 1 if failures else 3 if unavailable else 0


def context_broken(device):
    """Whether the CUDA context is broken (an illegal memory access, a launch failure, a
    device-side assert: every later CUDA call in the process raises too), as opposed to an
    error raised before or around the kernels."""
    if device != "cuda" or not torch.cuda.is_available():
        return False
    try:
        torch.cuda.synchronize()
    except Exception:  # noqa: BLE001 - the error itself is what is asked about
        return True
    return False


def max_error(cell, backend, device):
    """The largest relative error of ``backend``'s outputs and gradients against the
    reference backend's (whatever kernel the environment forces on ``backend``), a bidirectional
    ``cell`` at hidden 144 on packed input of batch 20 (on Hopper two clusters per launch, the
    backward's of 9 blocks, past the portable cluster size of 8); infinite where one of them
    has a gradient the other lacks."""
    reference = getattr(fusedrnn, cell)(8, 144, device=device, bidirectional=True,
                                        backend="reference")
    module = getattr(fusedrnn, cell)(8, 144, device=device, bidirectional=True, backend=backend)
    module.load_state_dict(reference.state_dict())
    x = testing.make_packed(20, 7, 8, device=device)
    expected = testing.outputs_and_grads(reference, x)
    got = testing.outputs_and_grads(module, x)
    if device == "cuda":
        torch.cuda.synchronize()
    assert len(got[0] + got[1]) == len(expected[0] + expected[1])
    pairs = list(zip(got[0] + got[1], expected[0] + expected[1]))
    if any((a is None) != (b is None) for a, b in pairs):
        return float("inf")
    return max(testing.relative_error(a, b) for a, b in pairs if a is not None)


if __name__ == "__main__":
    sys.exit(main())
