"""Weight bandwidth of the few-row matmuls of decoding: F.linear vs livelm's row-block bmm.

    .venv/bin/python bench/gemv.py                 # fp32, 2 threads, 1/2/4/8 rows
    .venv/bin/python bench/gemv.py --threads 1 --dtype bfloat16

Decoding multiplies a few rows (one per sequence) by every weight matrix, so a
step's speed is how fast the weights stream from memory. Each shape below is
timed over enough distinct matrices (> 32 MiB of L3) that every call reads its
weights from DRAM, as in a real decode step. Columns are GB/s of weights read:
`F.linear` (PyTorch's own path), `x @ W.T` with W stored transposed (K, N), and
`few_rows_linear` (livelm/models/gpt.py: one bmm over 8 row blocks of the usual
(N, K) layout). For scale, `tensor.sum()` over 256 MB is printed first.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from livelm.models.kernels import few_rows_linear

SHAPES = [(384, 1536), (1536, 384), (384, 50257), (768, 3072), (3072, 768), (768, 50257)]   # (K in, N out)


def gbps(fn, mats: list[tuple[torch.Tensor, torch.Tensor]], nbytes: int) -> float:
    for W, Wt in mats:
        fn(W, Wt)                               # warm-up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for W, Wt in mats:
            fn(W, Wt)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = PyTorch's default)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--rows", default="1,2,4,8")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    big = torch.randn(64_000_000)
    big.sum()
    t0 = time.perf_counter()
    for _ in range(5):
        big.sum()
    print(f"threads {torch.get_num_threads()}, {a.dtype}; tensor.sum() reads "
          f"{5 * big.numel() * 4 / (time.perf_counter() - t0) / 1e9:.1f} GB/s\n")
    del big
    print("| weight (K → N) | rows | F.linear GB/s | x @ W.T (stored K×N) GB/s | few_rows_linear GB/s |")
    print("|---|---|---|---|---|")
    for K, N in SHAPES:
        count = max(2, int(48e6 // (N * K * dtype.itemsize)) + 1)    # > 32 MiB of L3 in total
        mats = [(W, W.t().contiguous()) for W in (torch.randn(N, K).to(dtype) for _ in range(count))]
        nbytes = count * N * K * dtype.itemsize
        for rows in (int(r) for r in a.rows.split(",")):
            x = torch.randn(rows, K).to(dtype)
            ref = F.linear(x, mats[0][0])
            assert torch.allclose(few_rows_linear(x, mats[0][0], None).float(), ref.float(), atol=1e-2, rtol=1e-2)
            row = [gbps(lambda W, Wt: F.linear(x, W), mats, nbytes), gbps(lambda W, Wt: x @ Wt, mats, nbytes),
                   gbps(lambda W, Wt: few_rows_linear(x, W, None), mats, nbytes)]
            print(f"| {K} → {N} | {rows} | " + " | ".join(f"{v:.1f}" for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()
