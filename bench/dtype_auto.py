"""`--dtype auto` against forced float32 and bfloat16: decode and 16-client serving throughput.

    python bench/dtype_auto.py                  # this CPU as it is
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/dtype_auto.py
                                                # the same CPU limited to AVX2 (as Zen 2/3 and most laptops)

Two Llama-style runs with random weights (speed does not depend on what the weights
say), written once under runs/bench-dtype/: 4x128 (the default assistant's shape,
1.3M parameters, fits the caches) and 6x384 (12M parameters, 48 MB in fp32, past
them). For each run and each `--dtype`:

- decode: batch-1 greedy tokens/s through the Engine (`livelm generate`'s path), 256 tokens, best of 3;
- serve: `livelm serve --dtype X --max-batch 16` under 16 concurrent streaming clients
  (bench/serve_load.py's client: 100-token prompts, 64 output tokens each), aggregate
  output tokens/s.

The first lines say which CPU, ATen level and bf16 verdict livelm.machine found, so each
table carries the machine it came from.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from serve_load import run_level, start_server, summarize  # noqa: E402

from livelm import machine  # noqa: E402
from livelm.infer.engine import Engine  # noqa: E402
from livelm.runs import load  # noqa: E402
from livelm.sampling import SamplingParams  # noqa: E402

SHAPES = {"4x128": dict(n_layer=4, n_head=4, n_kv_head=2, d_model=128),
          "6x384": dict(n_layer=6, n_head=6, n_kv_head=2, d_model=384)}


def make_run(out: Path, shape: str) -> Path:
    """A random-weight run with a byte-level BPE tokenizer trained on a little bilingual text."""
    from livelm.models.gpt import GPT, GPTConfig, PRESETS
    from livelm.tokenizer import Tokenizer
    from livelm.runs import save_checkpoint
    run = out / shape
    if (run / "model.safetensors").is_file():
        return run
    # varied bilingual text, so the BPE vocabulary reaches the default assistant's 2048 tokens (the
    # lm_head's size is part of the speed); the model's vocabulary is the tokenizer's
    rng = random.Random(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "shop", "tea", "open", "🙂"]
    text = ["".join(chr(0x4E00 + rng.randrange(3000)) for _ in range(40)) + " " + " ".join(rng.choices(words, k=12))
            for _ in range(2000)]
    tok = Tokenizer.train_bpe(text, vocab_size=2048)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=512, **{**PRESETS["llama"], **SHAPES[shape]})
    model = GPT(cfg)
    save_checkpoint(run, model, tok, {"arch": "gpt", "model": cfg.to_dict()}, step=0)
    return run


def decode_tok_s(run: Path, dtype: str, tokens: int) -> tuple[float, str]:
    model, tok, _, _ = load(run, dtype=dtype, batch=1)
    engine = Engine(model, tok, max_batch=1)
    prompt = random.Random(0).choices(range(16, tok.vocab_size), k=16)
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    engine.generate([prompt], params)   # warm-up
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        out = engine.generate([prompt], params)[0]
        best = max(best, len(out.token_ids) / (time.perf_counter() - t))
    return best, str(next(model.parameters()).dtype).removeprefix("torch.")


def serve_tok_s(run: Path, dtype: str, clients: int, requests: int, tokens: int) -> float:
    proc, url = start_server(run, ["--max-batch", str(clients), "--dtype", dtype, "--learn", "off"])
    try:
        rng = random.Random(0)
        vocab = json.loads((run / "config.json").read_text())["model"]["vocab_size"]
        prompts = [[rng.randrange(16, vocab) for _ in range(100)] for _ in range(requests)]
        model = run.resolve().name
        asyncio.run(run_level(url, model, prompts[:1], 1, tokens, 60))   # warm-up
        results, duration, skipped = asyncio.run(run_level(url, model, prompts, clients, tokens, 300))
        row = summarize(clients, results, duration, skipped)
        if row["failed"]:
            raise SystemExit(f"{row['failed']} requests failed: {row['errors']}")
        return row["out_tok_per_s"]
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-dtype")
    p.add_argument("--shapes", default="4x128,6x384", help=f"comma-separated, of {', '.join(SHAPES)}")
    p.add_argument("--dtypes", default="auto,float32,bfloat16")
    p.add_argument("--tokens", type=int, default=64, help="output tokens per serving request")
    p.add_argument("--decode-tokens", type=int, default=256, help="tokens per timed decode run")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=32, help="serving requests per setting")
    a = p.parse_args()
    m = machine.detect(torch.device("cpu"))
    print(f"# {m.cpu_model}; ATen {m.cpu_capability}; {m.bf16_reason}; {torch.get_num_threads()} threads", flush=True)
    print("| model | --dtype | weights (batch 1) | decode tok/s | weights (batch 16) | 16-client serve out tok/s |")
    print("|---|---|---|---|---|---|")
    for shape in a.shapes.split(","):
        run = make_run(a.out, shape)
        for dtype in a.dtypes.split(","):
            dec, w1 = decode_tok_s(run, dtype, a.decode_tokens)
            n_bytes = 4 * sum(t.numel() for t in load(run, dtype="float32")[0].parameters())
            w16 = str(machine.inference_dtype(dtype, torch.device("cpu"), n_bytes, a.clients, warn=False)
                      ).removeprefix("torch.")
            srv = serve_tok_s(run, dtype, a.clients, a.requests, a.tokens)
            print(f"| {shape} | {dtype} | {w1} | {dec:.0f} | {w16} | {srv:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
