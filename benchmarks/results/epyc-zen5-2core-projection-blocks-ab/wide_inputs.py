"""One process of the A/B: fusedrnn's LSTM (backend auto: the cpu backend) and torch.nn's on
inputs wider than 512 (the input projection's reduction), float32, inference under no_grad
and training, the minimum over repeated calls; prints one JSON line in the format of
../epyc-zen5-2core-brgemm-grads-ab/summarize.py."""
import json
import time

import torch

import fusedrnn

# batch, steps, input size, hidden size, layers, bidirectional
CASES = [(32, 100, 1024, 256, 1, False), (64, 50, 2048, 512, 1, False),
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


def main():
    torch.manual_seed(0)
    rows = []
    for batch, steps, inputs, hidden, layers, bidirectional in CASES:
        options = dict(num_layers=layers, bidirectional=bidirectional)
        module = fusedrnn.LSTM(inputs, hidden, **options)
        twin = torch.nn.LSTM(inputs, hidden, **options)
        twin.load_state_dict(module.state_dict())
        x = torch.randn(steps, batch, inputs)
        grad = torch.randn(steps, batch, hidden * (2 if bidirectional else 1))
        row = {"cell": "lstm", "batch": batch, "steps": steps,
               "hidden": f"{hidden} (I {inputs}, L{layers}{' bi' if bidirectional else ''})"}
        for name, m in (("fusedrnn", module), ("torch.nn", twin)):
            with torch.no_grad():
                row[f"{name} inference"] = best_ms(lambda: m(x), 10)
            row[f"{name} training"] = best_ms(lambda: m(x)[0].backward(grad), 5)
        rows.append(row)
    print(json.dumps({"fusedrnn": fusedrnn.__file__, "rows": rows}))


if __name__ == "__main__":
    main()
