"""One process of the A/B: fusedrnn's modules (backend auto: the cpu backend) and torch.nn's,
float32 (or the dtype named by the second argument), inference under no_grad and training (forward, backward of a fixed gradient), each
the minimum over repeated calls; prints one JSON line. Run it alternately against two builds
(PYTHONPATH pointing at the other checkout, from outside either)."""
import json
import sys
import time

import torch

import fusedrnn

SHAPES = [(1, 300, 32, 64), (8, 200, 64, 128), (16, 100, 128, 256), (32, 100, 128, 256),
          (64, 50, 256, 512)]  # batch, steps, input size, hidden size


def best_ms(fn, calls):
    fn()
    fn()
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main():
    torch.manual_seed(0)
    dtype = getattr(torch, sys.argv[2]) if len(sys.argv) > 2 else torch.float32
    rows = []
    for cell in sys.argv[1].split(","):
        ours, theirs = getattr(fusedrnn, cell.upper()), getattr(torch.nn, cell.upper())
        for batch, steps, inputs, hidden in SHAPES:
            module, twin = ours(inputs, hidden, dtype=dtype), theirs(inputs, hidden, dtype=dtype)
            twin.load_state_dict(module.state_dict())
            x = torch.randn(steps, batch, inputs, dtype=dtype)
            grad = torch.randn(steps, batch, hidden, dtype=dtype)
            row = {"cell": cell, "batch": batch, "steps": steps, "hidden": hidden}
            for name, m in (("fusedrnn", module), ("torch.nn", twin)):
                with torch.no_grad():
                    row[f"{name} inference"] = best_ms(lambda: m(x), 10)
                row[f"{name} training"] = best_ms(lambda: m(x)[0].backward(grad), 5)
            rows.append(row)
    print(json.dumps({"fusedrnn": fusedrnn.__file__, "dtype": str(dtype), "rows": rows}))


if __name__ == "__main__":
    main()
