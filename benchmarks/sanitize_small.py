"""A small forward and backward of every GPU backend (the cuda backend with its persistent
kernels of both designs and its stepwise kernels), for ``compute-sanitizer`` (memcheck, racecheck, synccheck) in the
GPU check: ``compute-sanitizer --tool memcheck python benchmarks/sanitize_small.py``.
``--runs cuda:grid`` runs only those; with ``FUSEDRNN_CUDA_KERNEL=stepwise`` (``grid``) set,
the persistent kernels (the cluster ones) are left out. Exits non-zero if a backend's result differs from the
reference backend's."""

import argparse
import os
import sys

import torch

import fusedrnn
from fusedrnn import testing


RUNS = ("cuda:cluster", "cuda:grid", "cuda:stepwise", "triton:auto")
# What FUSEDRNN_CUDA_KERNEL, when set, leaves out.
LEFT_OUT = {"stepwise": ("cluster", "grid"), "grid": ("cluster",)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=",".join(RUNS),
                        help=f"comma-separated backend:kernel pairs out of {', '.join(RUNS)}")
    runs = [run.split(":") for run in parser.parse_args(argv).runs.split(",")]
    left_out = LEFT_OUT.get(os.environ.get("FUSEDRNN_CUDA_KERNEL", ""), ())
    runs = [run for run in runs if not (run[0] == "cuda" and run[1] in left_out)]
    failures = 0
    for backend, kernel in runs:
        if not fusedrnn.available_backends()[backend].available:
            print(f"{backend}: unavailable, skipped")
            continue
        if kernel == "cluster" and torch.cuda.get_device_capability() < (9, 0):
            print("cuda (cluster): needs compute capability 9.0, skipped")
            continue
        os.environ["FUSEDRNN_CUDA_KERNEL"] = kernel
        for cell in ("LSTM", "GRU"):
            # hidden 144, batch 20: on Hopper two clusters per launch, the backward's of 9
            # blocks (past the portable cluster size of 8)
            reference = getattr(fusedrnn, cell)(8, 144, device="cuda", bidirectional=True)
            module = getattr(fusedrnn, cell)(8, 144, device="cuda", bidirectional=True,
                                             backend=backend)
            module.load_state_dict(reference.state_dict())
            x = testing.make_packed(20, 7, 8, device="cuda")
            expected = testing.outputs_and_grads(reference, x)
            got = testing.outputs_and_grads(module, x)
            torch.cuda.synchronize()
            error = max(testing.relative_error(a, b) for a, b in
                        zip(got[0] + got[1], expected[0] + expected[1]) if a is not None)
            print(f"{backend} ({kernel}) {cell}: max relative error {error:.2e}")
            failures += error > 1e-5
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
