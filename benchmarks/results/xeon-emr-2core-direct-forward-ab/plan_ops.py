"""In one process, interleaved: each call below with its kept plan's op as the cpu backend's
kernel called directly (``ops.direct(op, backend, dtype)``, this commit) and as the op's
implementation (``ops.direct(op)``, before it), inference under no_grad; the minimum over
rounds of the mean of a block of calls, us. Isolates the op-level change from the machine's
drift between processes.

    python plan_ops.py
"""
import json
import time

import torch

import fusedrnn
from fusedrnn import functional, ops, testing

CASES = [(kind, batch, hidden) for kind in ("LSTMCell", "GRUCell", "RNNCell", "LSTM", "GRU", "RNN")
         for batch in (1, 8) for hidden in (32, 128)]


def best(call, calls=300, rounds=40):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return min(times)


def main():
    torch.manual_seed(0)
    rows = []
    for kind, batch, hidden in CASES:
        module = getattr(fusedrnn, kind)(hidden, hidden)
        x = torch.randn(batch, hidden) if kind.endswith("Cell") else torch.randn(1, batch, hidden)
        with torch.no_grad():
            functional._PLANS.clear()
            module(x)
            (key, plan), = functional._PLANS.items()
            op = ops.FORWARD[plan.cell]
            variants = {"kernel": plan._replace(op=ops.direct(op, plan.backend, x.dtype)),
                        "implementation": plan._replace(op=ops.direct(op))}
            assert variants["kernel"].op is not variants["implementation"].op

            def timed(name):
                functional._PLANS[key] = variants[name]
                return lambda: module(x)

            results = [testing.flatten_outputs(timed(name)()) for name in variants]
            assert all(map(torch.equal, *results))  # the same results either way
            times = {name: [] for name in variants}
            for _ in range(3):  # alternated blocks
                for name in variants:
                    times[name].append(best(timed(name)))
        rows.append({"module": kind, "batch": batch, "hidden": hidden,
                     **{name: min(v) for name, v in times.items()}})
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
