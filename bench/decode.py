"""Single-stream greedy decode speed, with and without the KV cache.

    python bench/decode.py [--layers 6 --width 384 --tokens 256]

The `gpt2` preset at 6 layers x 384 wide with random weights (speed does not
depend on what the weights say). "With cache" is livelm's Engine (prefill +
KV-cached decode); "without cache" re-runs the whole sequence every token,
which is what a naive loop does. --compile adds the cached decode with its
steps compiled (Engine(compile=True); compile time not counted).
"""
from __future__ import annotations

import argparse
import time

import torch

from livelm.infer.engine import Engine
from livelm.runs import cast_for_inference
from livelm.sampling import SamplingParams
from livelm.models.gpt import BatchPlan, GPT, GPTConfig, PRESETS


class _Tok:
    """Just enough tokenizer for the engine: ids only, no text."""
    eos_id, end_id = -1, -2

    def stream_decoder(self):
        class D:
            def push(self, i): return ""
            def flush(self): return ""
        return D()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="weights' dtype (default auto: livelm.machine's batch-1 choice for this CPU)")
    p.add_argument("--compile", action="store_true", help="also time the cached decode with Engine(compile=True)")
    a = p.parse_args()
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=a.vocab, block_size=1024, n_layer=a.layers, n_head=a.heads, d_model=a.width,
                    **PRESETS["gpt2"])
    model = GPT(cfg).eval()
    a.dtype = str(cast_for_inference(model, a.dtype, batch=1)).removeprefix("torch.")
    prompt = torch.randint(0, a.vocab, (a.prompt,)).tolist()
    params = SamplingParams(max_tokens=a.tokens, temperature=0, ignore_eos=True)

    def time_engine(compile: bool) -> tuple[float, list[int]]:
        engine = Engine(model, _Tok(), max_batch=1, compile=compile)
        engine.generate([prompt], params)  # warm-up (compiled: compiles the decode step)
        t = time.perf_counter()
        out = engine.generate([prompt], params)[0]
        return len(out.token_ids) / (time.perf_counter() - t), out.token_ids

    cached, cached_ids = time_engine(compile=False)
    fast, fast_ids = time_engine(compile=True) if a.compile else (0.0, cached_ids)

    with torch.inference_mode():
        ids = torch.tensor([prompt])
        model(ids)  # warm-up
        t = time.perf_counter()
        for _ in range(a.tokens):
            nxt = model(ids, plan=BatchPlan(last_only=True))[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
        uncached = a.tokens / (time.perf_counter() - t)
    assert ids[0, a.prompt:].tolist() == cached_ids, "cached and uncached greedy decoding disagree"
    if a.compile and a.dtype == "float32":   # bf16 rounds differently once fused, so only fp32 must agree
        assert fast_ids == cached_ids, "compiled and eager greedy decoding disagree"

    compiled = f" {fast:.0f} |" if a.compile else ""
    print(f"| model | dtype | new tokens | with KV cache (tok/s) |{' compiled (tok/s) |' if a.compile else ''}"
          f" without (tok/s) | speed-up |")
    print(f"|---|---|---|---|{'---|' if a.compile else ''}---|---|")
    print(f"| gpt2 {a.layers}x{a.width} ({model.num_params() / 1e6:.1f}M) | {a.dtype} | {a.tokens} | "
          f"{cached:.0f} |{compiled} {uncached:.0f} | {cached / uncached:.1f}x |")


if __name__ == "__main__":
    main()
