"""Greedy decode speed: livelm's Engine vs transformers' `generate`, on the same weights.

    python bench/hf_decode.py                 # gpt2 preset 6x384 and 12x768, batch 1 and 8, 256 new tokens
    python bench/hf_decode.py --quick         # a 2x64 model, 16 tokens: checks the script runs

Each shape is built with random weights (speed does not depend on what the
weights say) and GPT-2's 50257-token vocabulary, saved as a livelm run and
exported with `livelm export` (livelm/interop/hf.py); livelm decodes from the
run, transformers from the exported folder, so both use the very same tensors.
Both decode greedily from a 16-token random prompt, exactly --tokens new tokens
(no early stop), fp32 (or --dtype bfloat16 for both), batch 1 and 8. tok/s counts new tokens of all rows.
--compile adds livelm with its decode steps compiled (Engine(compile=True)); its compile time is not
counted (a warm-up generate compiles first), as a server compiles once at start.
"agree" is how many of the first row's greedy tokens are identical in both.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from livelm.infer.engine import Engine
from livelm.sampling import SamplingParams
from livelm.interop.hf import export_hf
from livelm.models.gpt import GPT, GPTConfig, PRESETS
from livelm.tokenizer import SPECIAL_TOKENS, Tokenizer
from livelm.runs import load_model, save_checkpoint


def char_tokenizer(vocab_size: int) -> Tokenizer:
    """A tokenizer with exactly vocab_size ids (specials + one CJK-and-beyond character each), so any id decodes."""
    n, chars, cp = vocab_size - len(SPECIAL_TOKENS), [], 0x4E00
    while len(chars) < n:
        if not 0xD800 <= cp <= 0xDFFF:          # surrogates are not characters
            chars.append(chr(cp))
        cp += 1
    return Tokenizer.train_char(["".join(chars)])


def make_run(root: Path, layers: int, width: int, heads: int, vocab: int) -> tuple[Path, Path]:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=vocab, block_size=1024, n_layer=layers, n_head=heads, d_model=width, **PRESETS["gpt2"])
    run, hf = root / f"run-{layers}x{width}", root / f"hf-{layers}x{width}"
    save_checkpoint(run, GPT(cfg), char_tokenizer(vocab), {"arch": "gpt", "model": cfg.to_dict()}, step=0)
    export_hf(run, hf)
    return run, hf


def time_livelm(model, tok, prompts: list[list[int]], tokens: int, compile: bool = False) -> tuple[float, list[int]]:
    engine = Engine(model, tok, max_batch=len(prompts), compile=compile)
    # warm-up; compiled, the first decode steps compile (once static, then with the length symbolic)
    engine.generate(prompts, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    t = time.perf_counter()
    outs = engine.generate(prompts, SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True))
    dt = time.perf_counter() - t
    assert all(len(o.token_ids) == tokens for o in outs)
    return len(prompts) * tokens / dt, outs[0].token_ids


@torch.inference_mode()
def time_hf(model, prompts: list[list[int]], tokens: int) -> tuple[float, list[int]]:
    ids = torch.tensor(prompts)                                     # (B, 16): equal lengths, no padding
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)  # warm-up
    t = time.perf_counter()
    out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **kw)
    dt = time.perf_counter() - t
    assert out.shape[1] == ids.shape[1] + tokens
    return len(prompts) * tokens / dt, out[0, ids.shape[1]:].tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = PyTorch's default)")
    p.add_argument("--quick", action="store_true", help="tiny model and 16 tokens: only checks that it runs")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="weights and activations of both sides (default auto: fp32 on CPUs at batch 1)")
    p.add_argument("--compile", action="store_true",
                   help="also time livelm with Engine(compile=True) (decode steps through torch.compile)")
    p.add_argument("--shapes", default="6x384,12x768", help="comma-separated LAYERSxWIDTH (default 6x384,12x768)")
    a = p.parse_args()
    from livelm import machine   # auto: the batch-1 inference choice for this machine (fp32 on CPUs)
    dtype = machine.inference_dtype(a.dtype, torch.device("cpu"), n_bytes=1 << 30, batch=1)
    a.dtype = str(dtype).removeprefix("torch.")
    from transformers import AutoModelForCausalLM
    if a.threads:
        torch.set_num_threads(a.threads)
    shapes = [(int(l), int(w), int(w) // 64) for l, w in (x.split("x") for x in a.shapes.split(","))]
    if a.quick:
        shapes, a.tokens, a.vocab = [(2, 64, 2)], 16, 512
    batches = [int(b) for b in a.batches.split(",")]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layers, width, heads in shapes:
            run, hf_dir = make_run(Path(tmp), layers, width, heads, a.vocab)
            model, tok, _ = load_model(run)
            model = model.to(dtype)
            hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).eval()
            n_params = model.num_params() / 1e6
            for b in batches:
                g = torch.Generator().manual_seed(b)
                prompts = torch.randint(len(SPECIAL_TOKENS), a.vocab, (b, 16), generator=g).tolist()
                ours, ours_ids = time_livelm(model, tok, prompts, a.tokens)
                theirs, their_ids = time_hf(hf, prompts, a.tokens)
                fast, fast_ids = time_livelm(model, tok, prompts, a.tokens, compile=True) if a.compile else (0, [])
                agree = [next((i for i, (x, y) in enumerate(zip(ids, their_ids)) if x != y), len(ids))
                         for ids in (ours_ids, fast_ids)]
                rows.append((f"gpt2 {layers}x{width} ({n_params:.0f}M)", b, ours, fast, theirs, agree))
                print(f"{layers}x{width} batch {b}: livelm {ours:.0f} tok/s"
                      + (f", compiled {fast:.0f} tok/s" if a.compile else "")
                      + f", transformers {theirs:.0f} tok/s", flush=True)

    print(f"\nthreads: {torch.get_num_threads()}, torch {torch.__version__}, {a.dtype}, greedy, "
          f"{a.tokens} new tokens after a 16-token prompt\n")
    if a.compile:
        print("| model | batch | livelm eager / compiled / transformers (tok/s) | eager / tf | compiled / tf "
              "| agree eager, compiled |")
        print("|---|---|---|---|---|---|")
        for name, b, ours, fast, theirs, agree in rows:
            print(f"| {name} | {b} | {ours:.0f} / {fast:.0f} / {theirs:.0f} | {ours / theirs:.2f}x "
                  f"| {fast / theirs:.2f}x | {agree[0]}, {agree[1]} of {a.tokens} |")
        return
    print("| model | batch | livelm (tok/s) | transformers (tok/s) | livelm / transformers | agree |")
    print("|---|---|---|---|---|---|")
    for name, b, ours, _, theirs, agree in rows:
        print(f"| {name} | {b} | {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f}x | {agree[0]}/{a.tokens} |")


if __name__ == "__main__":
    main()
