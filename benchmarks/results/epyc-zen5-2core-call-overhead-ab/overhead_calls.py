"""One process of an A/B of calls whose time is mostly fixed cost (the op layer's Python,
the kernels' calls): fusedrnn's cells and small module calls (backend auto: the cpu backend)
against torch.nn's, inference under no_grad and training (forward, backward of a fixed
gradient), timed by ../epyc-zen5-2core-small-weight-grads-ab/small_calls.py's
``measure``; prints one JSON line in the form
../epyc-zen5-2core-brgemm-grads-ab/summarize.py reads. Run it alternately against two builds
(PYTHONPATH pointing at the other checkout, from outside either).

    python overhead_calls.py
"""
import json
import pathlib
import sys

import torch

import fusedrnn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent
                       / "epyc-zen5-2core-small-weight-grads-ab"))
from small_calls import measure  # noqa: E402

CELLS = [(cell, batch, hidden) for cell in ("LSTM", "GRU", "RNN") for batch in (1, 8)
         for hidden in (32, 128)]
# cell, batch, steps, hidden, options
MODULES = [("LSTM", 1, 1, 64, {}), ("GRU", 1, 1, 64, {}), ("RNN", 1, 1, 64, {}),
           ("LSTM", 1, 16, 64, {}), ("GRU", 1, 16, 64, {}), ("RNN", 1, 16, 64, {}),
           ("LSTM", 4, 16, 64, {"num_layers": 2, "bidirectional": True}),
           ("GRU", 8, 8, 128, {"batch_first": True})]


def main():
    torch.manual_seed(0)
    rows = []
    for cell, batch, hidden in CELLS:
        row = {"cell": f"{cell.lower()} cell", "batch": batch, "steps": 1, "hidden": hidden}
        rows.append(measure(row, getattr(fusedrnn, cell + "Cell")(hidden, hidden),
                            getattr(torch.nn, cell + "Cell")(hidden, hidden),
                            torch.randn(batch, hidden, requires_grad=True),
                            torch.randn(batch, hidden)))
    for cell, batch, steps, hidden, options in MODULES:
        name = " ".join([cell.lower()] + [f"{k}={v}" for k, v in options.items()])
        row = {"cell": name, "batch": batch, "steps": steps, "hidden": hidden}
        first = options.get("batch_first", False)
        x = torch.randn(*((batch, steps) if first else (steps, batch)), hidden,
                        requires_grad=True)
        out_features = hidden * (2 if options.get("bidirectional") else 1)
        grad = torch.randn(*x.shape[:2], out_features)
        rows.append(measure(row, getattr(fusedrnn, cell)(hidden, hidden, **options),
                            getattr(torch.nn, cell)(hidden, hidden, **options), x, grad))
    print(json.dumps({"fusedrnn": fusedrnn.__file__, "dtype": "torch.float32", "rows": rows}))


if __name__ == "__main__":
    main()
