"""The cases of ../epyc-2core-row-dots-ab/small_calls.py (its functions, run from its file)
and more of the sizes where Python's share of a call is largest: cells and one-step module
calls at hidden 128-256, in inference and in training (one-step calls with a backward,
as a teacher-forced decoder makes them). Same output: one line per case, fusedrnn's and
torch.nn's ms per call, each the minimum over rounds, timed in turn."""

import pathlib
import runpy

HERE = pathlib.Path(__file__).resolve().parent
small_calls = runpy.run_path(str(HERE.parent / "epyc-2core-row-dots-ab" / "small_calls.py"))

MORE = [  # (what, cell, batch, steps, hidden, training)
    ("cell", "LSTM", 1, 1, 256, False), ("cell", "GRU", 1, 1, 256, False),
    ("cell", "RNN", 1, 1, 256, False), ("cell", "LSTM", 8, 1, 256, False),
    ("module", "LSTM", 1, 1, 128, False), ("module", "GRU", 1, 1, 256, False),
    ("cell", "LSTM", 1, 1, 128, True), ("cell", "GRU", 1, 1, 256, True),
    ("module", "LSTM", 1, 1, 128, True), ("module", "LSTM", 8, 1, 256, True),
]

if __name__ == "__main__":
    small_calls["CASES"][:] = small_calls["CASES"] + MORE
    small_calls["main"]()
