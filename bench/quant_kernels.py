"""Quantized models against fp32 on this CPU: which kernel each regime runs, decode and prefill speed.

    python bench/quant_kernels.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/quant_kernels.py

A Llama-style model with random weights (8 x 512, 23M parameters, past the caches: decode
streams its weights from memory), quantized in process as `livelm quantize` does. For each
method: the kernels livelm/models/quantized.py picked here for few rows (decode) and many
(prefill), greedy decode tok/s at batch 1 through the Engine (best of 3 runs of --tokens),
and prefill tok/s of one --prompt-token forward pass (best of 3). The aim: no quantized model
slower than fp32 on the machine it runs on.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from decode import _Tok  # bench/decode.py: the engine's ids-only tokenizer

from livelm import machine
from livelm.compress.quantize import quantize_model
from livelm.models.quantized import select_kernels
from livelm.infer.engine import Engine
from livelm.sampling import SamplingParams
from livelm.models.gpt import BatchPlan, GPT, PRESETS, GPTConfig


def best_of(n: int, fn) -> float:
    fn()
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--methods", default="int8,int8-dynamic,int4")
    a = p.parse_args()
    m = machine.detect(torch.device("cpu"))
    print(f"# {m.cpu_model}; ATen {m.cpu_capability}; {m.bf16_reason}; {torch.get_num_threads()} threads", flush=True)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=4096, block_size=1024, n_layer=a.layers, n_head=8, d_model=a.width,
                    **{**PRESETS["llama"], "n_kv_head": 4})
    base = GPT(cfg).eval()
    prompt = torch.randint(16, 4096, (a.prompt_tokens,)).tolist()
    params = SamplingParams(max_tokens=a.tokens, temperature=0, ignore_eos=True)
    print("| model | kernel, decode | kernel, prefill | decode tok/s | × fp32 | prefill tok/s | × fp32 |")
    print("|---|---|---|---:|---:|---:|---:|")
    ref = None
    for method in ["fp32", *a.methods.split(",")]:
        model = copy.deepcopy(base)
        kernels = {"decode": "F.linear", "prefill": "F.linear"}
        if method != "fp32":
            quantize_model(model, method)
            kernels = select_kernels(model, method)
        engine = Engine(model, _Tok(), max_batch=1)
        dec = a.tokens / best_of(3, lambda: engine.generate([prompt[:16]], params))
        x = torch.tensor([prompt])
        with torch.inference_mode():
            pre = a.prompt_tokens / best_of(3, lambda: model(x, plan=BatchPlan(last_only=True)))
        ref = ref or (dec, pre)
        print(f"| {method} | {kernels['decode']} | {kernels['prefill']} | {dec:.0f} | {dec / ref[0]:.2f} | "
              f"{pre:.0f} | {pre / ref[1]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
