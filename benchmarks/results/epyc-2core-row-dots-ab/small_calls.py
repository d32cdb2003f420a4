"""Small calls against torch.nn in one process: cells, one-step module calls, and long
sequences at batch 1 (the A/B of README.md), in float32 or the dtype named on the command
line. Prints one line per case: fusedrnn's and torch.nn's ms per call, each the minimum over
rounds, timed in turn."""

import sys
import time

import torch

import fusedrnn

CASES = [  # (what, cell, batch, steps, hidden, training)
    ("cell", "LSTM", 1, 1, 128, False), ("cell", "GRU", 1, 1, 128, False),
    ("cell", "RNN", 1, 1, 128, False), ("cell", "LSTM", 1, 1, 512, False),
    ("cell", "GRU", 1, 1, 512, False), ("cell", "LSTM", 1, 1, 1024, False),
    ("cell", "GRU", 1, 1, 1024, False), ("cell", "RNN", 1, 1, 1024, False),
    ("cell", "LSTM", 4, 1, 512, False), ("cell", "LSTM", 1, 1, 200, False),
    ("module", "LSTM", 1, 1, 1024, False), ("module", "GRU", 4, 1, 512, False),
    ("module", "LSTM", 2, 8, 256, False),
    ("module", "LSTM", 1, 100, 64, False), ("module", "LSTM", 1, 100, 128, False),
    ("module", "LSTM", 1, 100, 512, False), ("module", "GRU", 1, 100, 256, False),
    ("module", "LSTM", 1, 100, 200, False),
    ("module", "LSTM", 4, 100, 256, False),
    ("module", "LSTM", 1, 1, 512, True), ("module", "LSTM", 1, 100, 256, True),
]


def make(what, cell, hidden, dtype):
    name = cell + ("Cell" if what == "cell" else "")
    ours = getattr(fusedrnn, name)(hidden, hidden, dtype=dtype)
    theirs = getattr(torch.nn, name)(hidden, hidden, dtype=dtype)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def call_of(module, what, cell, batch, steps, hidden, training, dtype):
    lead = () if what == "cell" else (1,)
    x = torch.randn((batch, hidden) if what == "cell" else (steps, batch, hidden), dtype=dtype)
    state = [torch.zeros(lead + (batch, hidden), dtype=dtype)
             for _ in range(2 if cell == "LSTM" else 1)]
    hx = tuple(state) if cell == "LSTM" else state[0]
    if not training:
        return lambda: module(x, hx)
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad()
        out = module(x, hx)
        (out[0] if isinstance(out, tuple) else out).sum().backward()
        optimizer.step()
    return step


def main():
    """``python small_calls.py [dtype]``: float32 unless a dtype is named (bfloat16)."""
    dtype = getattr(torch, sys.argv[1]) if len(sys.argv) > 1 else torch.float32
    torch.manual_seed(0)
    for what, cell, batch, steps, hidden, training in CASES:
        ours, theirs = make(what, cell, hidden, dtype)
        calls = [call_of(m, what, cell, batch, steps, hidden, training, dtype)
                 for m in (ours, theirs)]
        work = batch * steps * hidden * hidden
        count = max(3, min(300, int(3e7 / work)))
        best = [float("inf")] * 2
        with torch.set_grad_enabled(training):
            for f in calls:
                for _ in range(count):
                    f()
            for _ in range(7):
                for index, f in enumerate(calls):
                    start = time.perf_counter()
                    for _ in range(count):
                        f()
                    best[index] = min(best[index], (time.perf_counter() - start) / count * 1e3)
        kind = "training" if training else "inference"
        label = "" if dtype == torch.float32 else f" {str(dtype).replace('torch.', '')}"
        print(f"{what} {cell} B{batch} T{steps} H{hidden} {kind}{label}: {best[0]:.4f} "
              f"{best[1]:.4f}", flush=True)


if __name__ == "__main__":
    main()
