"""Latency of the barriers a persistent RNN kernel meets once per step, on the local GPU:
the grid-wide barrier of a cooperative launch (what the cuda backend's persistent kernels
use) at several grid sizes, on Hopper the thread-block-cluster barrier at each cluster
size, and the Triton backend's grid barrier (atomics; its cooperative kernels) where Triton
is installed. These are the synchronisation term of the per-step floor.

    python benchmarks/barrier_latency.py [--out FILE.json]

Needs a CUDA device and fusedrnn._C; prints a table and writes JSON with the device.
The Triton rows are ``triton`` with the number of programs.
"""

import argparse
import importlib.util
import json
import os
import sys

import torch

from fusedrnn import _extension


def _triton_barrier_allowed():
    """Not where FUSEDRNN_TRITON_KERNEL leaves the cooperative kernels out (the GPU check
    does, once they failed)."""
    setting = os.environ.get("FUSEDRNN_TRITON_KERNEL", "").strip()
    return setting in ("", "auto") or "cooperative" in setting.split(",")


def measure(ext, iterations=2000, repeats=5):
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    sms = props.multi_processor_count
    rows = []
    for blocks in sorted({8, 32, 64, sms // 2, sms}):
        rows.append(("grid", blocks, 1, ext.barrier_latency_us("grid", blocks, 1, iterations,
                                                               repeats)))
    if props.major >= 9:
        for cluster in (2, 4, 8, 16):
            blocks = sms // cluster * cluster
            try:
                us = ext.barrier_latency_us("cluster", blocks, cluster, iterations, repeats)
            except RuntimeError as error:  # e.g. a cluster of 16 the device cannot place
                print(f"cluster {cluster}: {error}", file=sys.stderr)
                us = None
            rows.append(("cluster", blocks, cluster, us))
    if importlib.util.find_spec("triton") is not None and _triton_barrier_allowed():
        from fusedrnn.backends.triton import barrier_bench

        for programs in sorted({8, 32, 96, sms}):
            rows.append(("triton", programs, 1, barrier_bench.latency_us(programs, iterations,
                                                                         repeats)))
    return props, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("barrier_latency: no CUDA device", file=sys.stderr)
        return 1
    props, rows = measure(_extension.CUDA.load())
    print(f"{props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}")
    print("| barrier | blocks | cluster | us per barrier |")
    print("|---|---:|---:|---:|")
    for kind, blocks, cluster, us in rows:
        print(f"| {kind} | {blocks} | {cluster} | {'failed' if us is None else f'{us:.3f}'} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": props.name, "torch": torch.__version__,
                       "cuda": torch.version.cuda,
                       "rows": [dict(zip(("barrier", "blocks", "cluster", "us"), row))
                                for row in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
