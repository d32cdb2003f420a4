"""One process of an A/B of calls whose products over all steps have few rows: fusedrnn's
cells and short module calls (backend auto: the cpu backend) against torch.nn's, inference
under no_grad and training (forward, backward of a fixed gradient), each the minimum over
five rounds of the mean time of repeated calls; prints one JSON line in the form
../epyc-zen5-2core-brgemm-grads-ab/summarize.py reads (with the build's name added).
Run it alternately against two builds (PYTHONPATH pointing at the other checkout, from
outside either).

    python small_calls.py
"""
import json
import time

import torch

import fusedrnn

CELLS = [(cell, batch, hidden) for cell in ("LSTM", "GRU", "RNN") for batch in (1, 8, 64)
         for hidden in (128, 256, 512)]
MODULES = [("LSTM", 1, 1, 512), ("LSTM", 64, 1, 512), ("LSTM", 8, 8, 512), ("LSTM", 16, 16, 512),
           ("LSTM", 8, 64, 512), ("GRU", 1, 1, 512), ("GRU", 16, 16, 512)]  # batch, steps, hidden


def per_call_ms(fn, budget_s=0.02):
    fn()
    start = time.perf_counter()
    fn()
    calls = max(1, int(budget_s / max(time.perf_counter() - start, 1e-6)))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e3


def measure(row, fused, twin, x, hx_grad):
    """Time `fused` and its torch.nn `twin` on x; training backpropagates `hx_grad` from the
    first output."""
    twin.load_state_dict(fused.state_dict())
    for name, m in (("fusedrnn", fused), ("torch.nn", twin)):
        with torch.no_grad():
            row[f"{name} inference"] = per_call_ms(lambda: m(x))
        first = lambda out: out[0] if isinstance(out, tuple) else out
        row[f"{name} training"] = per_call_ms(lambda: first(m(x)).backward(hx_grad))
    return row


def main():
    torch.manual_seed(0)
    rows = []
    for cell, batch, hidden in CELLS:
        x = torch.randn(batch, hidden, requires_grad=True)
        row = {"cell": f"{cell.lower()} cell", "batch": batch, "steps": 1, "hidden": hidden}
        rows.append(measure(row, getattr(fusedrnn, cell + "Cell")(hidden, hidden),
                            getattr(torch.nn, cell + "Cell")(hidden, hidden), x,
                            torch.randn(batch, hidden)))
    for cell, batch, steps, hidden in MODULES:
        x = torch.randn(steps, batch, hidden, requires_grad=True)
        row = {"cell": cell.lower(), "batch": batch, "steps": steps, "hidden": hidden}
        rows.append(measure(row, getattr(fusedrnn, cell)(hidden, hidden),
                            getattr(torch.nn, cell)(hidden, hidden), x,
                            torch.randn(steps, batch, hidden)))
    print(json.dumps({"fusedrnn": fusedrnn.__file__, "dtype": "torch.float32", "rows": rows}))


if __name__ == "__main__":
    main()
