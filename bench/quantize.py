"""Quantization and pruning on Tiny Shakespeare: file size, memory, decode speed, perplexity.

    python bench/quantize.py              # train a 4 x 256 llama-preset char model, then measure every variant
    python bench/quantize.py --run RUN    # measure an existing run (its tokenizer must fit --data)
    python bench/quantize.py --quick      # a 2 x 64 model and short runs: checks the script, not the figures

Variants: fp32 (the run), bf16 (weights cast at load), int8 (weight-only), int8-dynamic,
int4 (group 64), and 50% pruning — magnitude (sparse file), heads, MLP channels — each
without and with a short recovery fine-tune on the training split.

Each variant is measured in a fresh process, so resident memory is its own:
    file MiB     model.safetensors on disk
    weights MiB  bytes of the model's parameters and buffers once loaded
    RSS MiB      growth of the process's resident memory from before loading to after
    tok/s        greedy decode through livelm's Engine (what generate/chat/serve use), batch 1
    ppl          perplexity on the validation split (consecutive windows, as `livelm eval`)
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(run: Path, variant: str, data: Path, eval_tokens: int, new_tokens: int) -> dict:
    """Load one variant and measure it (runs in its own process)."""
    from livelm.compress import file_mb
    from livelm.infer.evaluate import perplexity
    from livelm.infer.engine import Engine
    from livelm.sampling import SamplingParams
    from livelm.runs import load_model
    gc.collect()
    before = rss_mib()
    model, tok, _ = load_model(run)
    if variant == "bf16":
        model = model.to(torch.bfloat16)
    gc.collect()
    rss = rss_mib() - before
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
    ppl = perplexity(model, data, eval_tokens)["perplexity"]
    engine = Engine(model, tok, max_batch=1)
    prompt = tok.encode("ROMEO:\n")
    greedy = SamplingParams(max_tokens=new_tokens, temperature=0)
    engine.generate([prompt], SamplingParams(max_tokens=8, temperature=0))        # warm-up
    t0 = time.perf_counter()
    out = engine.generate([prompt], greedy)[0]
    tok_s = len(out.token_ids) / (time.perf_counter() - t0)
    return {"variant": variant, "file_mib": file_mb(run), "weights_mib": weights, "rss_mib": rss,
            "tok_s": tok_s, "ppl": ppl}


def build_variants(run: Path, data: Path, work: Path, ft_iters: int, eval_tokens: int) -> list[tuple[str, Path]]:
    from livelm.runs import save_tensors as save_run
    from livelm.compress.prune import prune_run
    from livelm.compress.quantize import quantize_run
    from livelm.runs import load_weights, read_config
    variants = [("fp32", run)]
    # bf16 on disk: the same tensors cast; load_model reads them back into the fp32 model, `measure` casts it
    tensors, _ = load_weights(run / "model.safetensors")
    save_run(work / "bf16", run, {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()},
             read_config(run))
    variants.append(("bf16", work / "bf16"))
    for method in ("int8", "int8-dynamic", "int4"):
        quantize_run(run, work / method, method)
        variants.append((method, work / method))
    for method in ("magnitude", "heads", "mlp"):
        prune_run(run, work / f"prune-{method}", method, 0.5)
        variants.append((f"{method} 50%", work / f"prune-{method}"))
        prune_run(run, work / f"prune-{method}-ft", method, 0.5, finetune_data=data, finetune_iters=ft_iters,
                  eval_tokens=eval_tokens)
        variants.append((f"{method} 50% + {ft_iters}-step fine-tune", work / f"prune-{method}-ft"))
    return variants


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="run to measure (default: train one on Tiny Shakespeare)")
    ap.add_argument("--data", type=Path, help="prepared data directory (default: Tiny Shakespeare, char level)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-quantize", help="where variants are written")
    ap.add_argument("--quick", action="store_true", help="tiny model, short everything: checks that the script runs")
    ap.add_argument("--iters", type=int, default=1500, help="training steps of the model (default 1500)")
    ap.add_argument("--finetune-iters", type=int, default=200, help="recovery fine-tune steps after pruning")
    ap.add_argument("--eval-tokens", type=int, default=100_000, help="validation tokens for perplexity")
    ap.add_argument("--new-tokens", type=int, default=200, help="greedy tokens decoded for tok/s")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = PyTorch's default)")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)   # internal: measure one variant, print JSON
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.iters, a.finetune_iters, a.eval_tokens, a.new_tokens = 60, 10, 5_000, 32
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.measure:
        print(json.dumps(measure(a.measure, a.variant, a.data, a.eval_tokens, a.new_tokens)))
        return 0

    cli = [sys.executable, "-m", "livelm.cli"]
    work = a.work / ("quick" if a.quick else "full")
    data = a.data or work / "data"
    if not a.data and not (data / "meta.json").exists():
        subprocess.run([*cli, "prepare", str(SHAKESPEARE), "--out", str(data), "--tokenizer", "char", "--quiet"],
                       check=True, cwd=ROOT)
    run = a.run
    if run is None:
        run = work / "run"
        size = (["--n-layer", "2", "--n-head", "4", "--n-kv-head", "2", "--d-model", "64", "--block-size", "64"]
                if a.quick else
                ["--n-layer", "4", "--n-head", "8", "--n-kv-head", "4", "--d-model", "256", "--block-size", "128"])
        subprocess.run([*cli, "train", "--data", str(data), "--out", str(run), "--preset", "llama", *size,
                        "--batch-size", "16", "--max-iters", str(a.iters), "--eval-interval", str(a.iters),
                        "--eval-iters", "10", "--lr", "2e-3", "--warmup-iters", str(min(100, a.iters // 10)),
                        "--progress", "false"], check=True, cwd=ROOT)
    variants = build_variants(run, data, work, a.finetune_iters, a.eval_tokens)

    rows = []
    for name, path in variants:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", str(path), "--variant", name,
               "--data", str(data), "--eval-tokens", str(a.eval_tokens), "--new-tokens", str(a.new_tokens),
               "--threads", str(a.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"measured {name}", file=sys.stderr)

    base = rows[0]
    print(f"\nTiny Shakespeare, {run}; {torch.get_num_threads()} thread(s); perplexity on "
          f"{a.eval_tokens:,} validation tokens; tok/s = greedy decode of {a.new_tokens} tokens, batch 1\n")
    print("| variant | file MiB | weights MiB | RSS MiB | tok/s | perplexity | Δ ppl |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['file_mib']:.2f} | {r['weights_mib']:.2f} | {r['rss_mib']:.1f} | "
              f"{r['tok_s']:.0f} | {r['ppl']:.3f} | {r['ppl'] / base['ppl'] - 1:+.1%} |")
    (work / "results.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
