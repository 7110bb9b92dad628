"""The LSTM language model vs the GPT, at equal parameter count and equal wall time.

    .venv/bin/python bench/lstm_vs_gpt.py                  # Tiny Shakespeare and Tang poems, 180 s each
    .venv/bin/python bench/lstm_vs_gpt.py --budget 60 --corpora tinyshakespeare

Both corpora are prepared once with the character tokenizer (`livelm prepare
--tokenizer char`, last 10% = validation) and both models train on exactly
the same prepared data with the same trainer through `livelm train`:

    GPT   --preset gpt2, 4 layers x 4 heads x 128 wide, context 128
    LSTM  --arch lstm, 2 layers, embedding 128 tied to the output, hidden width chosen
          so the total parameter count matches the GPT's; BPTT 128, state carried over 8 chunks

Equal wall time: each model first trains 20 steps to measure its seconds per
step, then trains for as many steps as fit in --budget seconds (from scratch,
same seed). Validation loss is `livelm eval` on the whole validation split
(the GPT in consecutive 128-token windows, the LSTM reading it as 16 parallel
streams carrying its state), in nats per character. Samples: 200 characters
at temperature 0.8, seed 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sst2 import REPO, cache_dir, livelm, log  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
CORPORA = {"tinyshakespeare": (SHARED / "tinyshakespeare" / "input.txt", "ROMEO:"),
           "tang-poems": (SHARED / "tang-poems" / "poems.txt", "春风")}
COMMON = ["--block-size", "128", "--batch-size", "16", "--dropout", "0.0", "--warmup-iters", "50",
          "--eval-iters", "10", "--log-interval", "1", "--threads", "1", "--device", "cpu", "--progress", "false"]
GPT = ["--preset", "gpt2", "--n-layer", "4", "--n-head", "4", "--d-model", "128", "--lr", "1e-3", "--min-lr", "1e-4"]
LSTM = ["--arch", "lstm", "--n-layer", "2", "--d-model", "128", "--tie-embeddings", "true", "--carry-chunks", "8",
        "--lr", "3e-3", "--min-lr", "3e-4"]


def param_counts(vocab: int) -> tuple[int, int]:
    """(GPT parameters, LSTM hidden width giving the closest total)."""
    from livelm.models.gpt import GPT as GPTModel, GPTConfig
    from livelm.models.lstm import LSTMConfig, LSTMLM
    n_gpt = sum(p.numel() for p in GPTModel(GPTConfig(vocab_size=vocab, block_size=128, n_layer=4, n_head=4,
                                                      d_model=128)).parameters())
    best = min(range(128, 512, 2), key=lambda h: abs(LSTMLM(LSTMConfig(vocab_size=vocab, n_layer=2, d_model=128,
                                                                       hidden=h)).num_params() - n_gpt))
    return n_gpt, best


def seconds_per_step(run: Path) -> float:
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    t = {r["step"]: r["elapsed_s"] for r in recs if "elapsed_s" in r}
    return (t[19] - t[4]) / 15


def sample(run: Path, prompt: str, arch: str) -> str:
    out = livelm("generate", run, "--prompt", prompt, "--max-tokens", "200", "--temperature", "0.8", "--seed", "1",
                 "--device", "cpu")[0]
    return prompt + out.rstrip("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=180, help="training seconds per model")
    ap.add_argument("--corpora", default="tinyshakespeare,tang-poems")
    a = ap.parse_args()
    rows, samples = [], []
    for name in a.corpora.split(","):
        corpus, prompt = CORPORA[name]
        prep = cache_dir("lstm_vs_gpt") / name
        meta = json.loads(livelm("prepare", corpus, "--out", prep, "--tokenizer", "char", "--quiet")[0])
        n_gpt, hidden = param_counts(meta["vocab_size"])
        for arch, flags in (("gpt", GPT), ("lstm", [*LSTM, "--lstm-hidden", str(hidden)])):
            probe = cache_dir("lstm_vs_gpt") / f"{name}-{arch}-probe"
            livelm("train", "--data", prep, "--out", probe, *COMMON, *flags, "--max-iters", "20", "--eval-interval", "20")
            steps = max(20, int(a.budget / seconds_per_step(probe)))
            run = cache_dir("lstm_vs_gpt") / f"{name}-{arch}"
            log(f"[lstm_vs_gpt] {name} {arch}: {steps} steps")
            _, wall, cpu = livelm("train", "--data", prep, "--out", run, *COMMON, *flags, "--max-iters", steps,
                                  "--eval-interval", steps)
            config = json.loads((run / "config.json").read_text())
            recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
            train_s = max(r.get("elapsed_s", 0) for r in recs)
            ev = json.loads(livelm("eval", run, "--data", prep, "--json", "--device", "cpu")[0])
            rows.append({"corpus": name, "arch": arch, "params": n_gpt if arch == "gpt" else config["n_params"],
                         "steps": steps,
                         "train_s": train_s, "tokens": steps * 16 * 128, **ev,
                         "shape": "4 x 128, ctx 128" if arch == "gpt" else f"2 x {config['model']['hidden']}, emb 128"})
            samples.append((name, arch, sample(run, prompt, arch)))
            log(f"[lstm_vs_gpt] {name} {arch}: val {ev['val_loss']:.4f} in {train_s:.0f} s")

    print(f"Equal parameters, equal training time ({a.budget:.0f} s per model, 1 thread, batch 16 x 128 characters)\n")
    print("| corpus | model | shape | params | steps | train time (s) | val loss (nats/char) | bits/byte |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['corpus']} | {r['arch']} | {r['shape']} | {r['params'] / 1e6:.2f}M | {r['steps']} "
              f"| {r['train_s']:.0f} | **{r['val_loss']:.3f}** | {r['bits_per_byte']:.3f} |")
    print()
    for name, arch, text in samples:
        print(f"**{name}, {arch}**\n\n```\n{text}\n```\n")


if __name__ == "__main__":
    main()
