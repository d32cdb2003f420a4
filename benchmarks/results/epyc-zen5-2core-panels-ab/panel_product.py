"""One core: a recurrent product's operand W (k, m) as a plain row-major matrix (row stride
m), with its stride padded by 16 columns, and in panels of 64, 128 and 256 columns
(panel_product.cpp, built by torch's cpp_extension). Prints us per product for the plain
layout and each other's time over it.

    python panel_product.py
"""
import os

import torch
from torch.utils.cpp_extension import load

torch.set_num_threads(1)
ext = load("panel_product", [os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                          "panel_product.cpp")], extra_cflags=["-O3"])
print("| B | m | k | W KiB | plain us | panels 64 | panels 128 | panels 256 | stride + 16 |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for batch in (8, 16, 32, 64):
    for m, k in ((1024, 512), (2048, 512), (512, 256), (1536, 768)):
        reps = max(20, int(2e9 / (batch * m * k)))
        plain = ext.run(batch, m, k, 0, reps, 0)
        others = [ext.run(batch, m, k, p, reps, 0) for p in (64, 128, 256)]
        others.append(ext.run(batch, m, k, 0, reps, 16))
        print(f"| {batch} | {m} | {k} | {m * k * 4 >> 10} | {plain:.1f} | "
              + " | ".join(f"{t / plain:.2f}" for t in others) + " |", flush=True)
