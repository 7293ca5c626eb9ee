#!/usr/bin/env python3
"""PyTorch reference for bench/gemm_vs_torch.ts: times torch.matmul for the shapes given as JSON on stdin
and prints GFLOP/s as JSON, with what torch runs on (torch_info.py: BLAS, oneDNN, threads). Used only for
comparison in benchmarks; the library never depends on it."""
import json
import sys
import time

import torch
from torch_info import torch_info


def gflops(m, n, k, dtype, threads, repeats):
    torch.set_num_threads(threads)
    dt = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a = torch.randn(m, k, dtype=dt)
    b = torch.randn(n, k, dtype=dt)  # y = a @ b.T, the layout of a linear layer
    out = torch.empty(m, n, dtype=dt)
    for _ in range(2):
        torch.matmul(a, b.t(), out=out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b.t(), out=out)
        times.append(time.perf_counter() - t0)
    times.sort()
    return 2.0 * m * n * k / times[len(times) // 2] / 1e9


def main():
    req = json.load(sys.stdin)
    torch.set_num_threads(req["threads"])
    results = [
        {"m": s["m"], "n": s["n"], "k": s["k"], "dtype": s["dtype"],
         "gflops": gflops(s["m"], s["n"], s["k"], s["dtype"], req["threads"], req["repeats"])}
        for s in req["shapes"]
    ]
    json.dump({"torch": torch.__version__, "info": torch_info(), "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
