"""One process of an A/B: fusedrnn's modules (backend auto: the cpu backend) and torch.nn's,
inference under no_grad and training (forward, backward of a fixed gradient), each the
minimum over repeated calls; prints one JSON line. Run it alternately against two builds
(PYTHONPATH pointing at the other checkout, from outside either).

    python modules.py CELLS [DTYPE]   # e.g. lstm,gru,rnn bfloat16: the five SHAPES, float32
                                      # unless DTYPE
    python modules.py wide            # the LSTM on the WIDE cases, float32
"""
import json
import sys
import time

import torch

import fusedrnn

SHAPES = [(1, 300, 32, 64), (8, 200, 64, 128), (16, 100, 128, 256), (32, 100, 128, 256),
          (64, 50, 256, 512)]  # batch, steps, input size, hidden size
# Inputs wider than 512 (the bidirectional case's second layer: 1024): batch, steps, input
# size, hidden size, layers, bidirectional.
WIDE = [(32, 100, 1024, 256, 1, False), (64, 50, 2048, 512, 1, False),
        (16, 64, 256, 512, 2, True)]


def best_ms(fn, calls):
    fn()
    fn()
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def measure(cell, row, dtype, inputs, hidden, steps, batch, **options):
    """Time fusedrnn's `cell` and torch.nn's on one input: `row` with four times added."""
    module = getattr(fusedrnn, cell.upper())(inputs, hidden, dtype=dtype, **options)
    twin = getattr(torch.nn, cell.upper())(inputs, hidden, dtype=dtype, **options)
    twin.load_state_dict(module.state_dict())
    x = torch.randn(steps, batch, inputs, dtype=dtype)
    directions = 2 if options.get("bidirectional") else 1
    grad = torch.randn(steps, batch, hidden * directions, dtype=dtype)
    for name, m in (("fusedrnn", module), ("torch.nn", twin)):
        with torch.no_grad():
            row[f"{name} inference"] = best_ms(lambda: m(x), 10)
        row[f"{name} training"] = best_ms(lambda: m(x)[0].backward(grad), 5)
    return row


def main():
    torch.manual_seed(0)
    rows = []
    if sys.argv[1] == "wide":
        dtype = torch.float32
        for batch, steps, inputs, hidden, layers, bidirectional in WIDE:
            shape = f"{hidden} (I {inputs}, L{layers}{' bi' if bidirectional else ''})"
            row = {"cell": "lstm", "batch": batch, "steps": steps, "hidden": shape}
            rows.append(measure("lstm", row, dtype, inputs, hidden, steps, batch,
                                num_layers=layers, bidirectional=bidirectional))
    else:
        dtype = getattr(torch, sys.argv[2]) if len(sys.argv) > 2 else torch.float32
        for cell in sys.argv[1].split(","):
            for batch, steps, inputs, hidden in SHAPES:
                row = {"cell": cell, "batch": batch, "steps": steps, "hidden": hidden}
                rows.append(measure(cell, row, dtype, inputs, hidden, steps, batch))
    print(json.dumps({"fusedrnn": fusedrnn.__file__, "dtype": str(dtype), "rows": rows}))


if __name__ == "__main__":
    main()
