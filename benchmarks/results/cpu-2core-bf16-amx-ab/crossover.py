"""Where the bfloat16 kernels (their products on brgemm) overtake widening to float32, in one
process: each shape's module run with `CpuBackend._bf16_kernel` patched to say yes
("kernel") and no ("widened"), the two alternated, per variant the minimum over ROUNDS
rounds of a few calls; prints a markdown table and one JSON line per row on stderr.

    python crossover.py [CELLS]   # e.g. lstm,gru,rnn (the default)
"""
import json
import sys
import time

import torch

import fusedrnn
from fusedrnn.backends import common, cpu

# (batch, hidden): multiply-adds per step from 2^12 to 2^21 for the LSTM.
SHAPES = [(1, 64), (4, 64), (16, 64), (1, 128), (2, 128), (4, 128), (8, 128), (1, 256),
          (2, 256), (4, 256), (1, 512), (2, 512)]
ROUNDS = 7


def call_ms(fn, calls):
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main():
    cells = (sys.argv[1] if len(sys.argv) > 1 else "lstm,gru,rnn").split(",")
    torch.manual_seed(0)
    original = cpu.CpuBackend._bf16_kernel
    variants = {"kernel": lambda self, cell, dtype, batch, hidden, state: state == hidden,
                "widened": lambda self, *args, **kwargs: False}
    print("| cell | batch x hidden | multiply-adds per step | mode | kernel ms | widened ms "
          "| kernel / widened |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: |")
    for cell in cells:
        for batch, hidden in SHAPES:
            steps = max(50, min(300, 2**21 // (batch * hidden * hidden // 64)))
            module = getattr(fusedrnn, cell.upper())(hidden // 2, hidden, dtype=torch.bfloat16,
                                                     backend="cpu")
            x = torch.randn(steps, batch, hidden // 2, dtype=torch.bfloat16)
            grad = torch.randn(steps, batch, hidden, dtype=torch.bfloat16)
            modes = {"inference": lambda: module(x), "training": lambda: module(x)[0].backward(grad)}
            for mode, fn in modes.items():
                best = dict.fromkeys(variants, float("inf"))
                for _ in range(ROUNDS):
                    for name, decide in variants.items():
                        cpu.CpuBackend._bf16_kernel = decide
                        with torch.set_grad_enabled(mode == "training"):
                            fn()
                            best[name] = min(best[name], call_ms(fn, 3))
                cpu.CpuBackend._bf16_kernel = original
                macs = batch * common.GATES.get(cell, 1) * hidden * hidden
                ratio = best["kernel"] / best["widened"]
                print(f"| {cell.upper()} | {batch} x {hidden} | {macs:,} | {mode} | "
                      f"{best['kernel']:.3f} | {best['widened']:.3f} | {ratio:.2f} |", flush=True)
                print(json.dumps({"cell": cell, "batch": batch, "hidden": hidden, "steps": steps,
                                  "mode": mode, **best}), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
