"""Tatoeba Chinese-English with the encoder-decoder: BLEU and chrF both directions, greedy vs beam.

    .venv/bin/python bench/translate.py              # en->zh and zh->en
    .venv/bin/python bench/translate.py --quick

Through the `livelm` CLI, as a user would:

    livelm train --arch seq2seq --data cmn.txt --out en-zh --holdout 1000 ...            # English -> Chinese
    livelm train --arch seq2seq --data cmn.txt --out zh-en --holdout 1000 --reverse ...  # Chinese -> English
    livelm eval en-zh --data cmn.txt --json     # the 1,000 held-out pairs: greedy and beam 4

The held-out 1,000 pairs are fixed by the seed and the same in both directions
(they are never seen in training, nor by the BPE tokenizer). BLEU is sacrebleu's
corpus BLEU, with its Chinese tokenizer (tokenize="zh") for Chinese targets and
13a for English; chrF is sacrebleu's default chrF2. One shared BPE vocabulary
of 8,000 tokens (Chinese characters stay single tokens). Beam search: 4 beams,
length penalty 1.0 (score = log-prob / length).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sst2 import cache_dir, livelm, log  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cmn-eng" / "cmn.txt"
MODEL = ["--n-layer", "3", "--n-enc-layer", "3", "--n-head", "4", "--d-model", "128", "--block-size", "64",
         "--dropout", "0.1", "--label-smoothing", "0.1", "--bpe-vocab", "8000", "--holdout", "1000",
         "--batch-size", "64", "--lr", "2e-3", "--min-lr", "1e-4", "--warmup-iters", "100", "--eval-iters", "16",
         "--threads", "1", "--device", "cpu", "--progress", "false"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--directions", default="en-zh,zh-en")
    a = ap.parse_args()
    if a.quick:
        a.iters = 20
    work = cache_dir("translate")
    rows, samples = [], []
    for direction in a.directions.split(","):
        run = work / direction
        log(f"[translate] {direction}: {a.iters} steps")
        _, wall, cpu = livelm("train", "--arch", "seq2seq", "--data", DATA, "--out", run, *MODEL,
                              "--max-iters", a.iters, "--eval-interval", max(1, a.iters // 3),
                              *(["--reverse"] if direction == "zh-en" else []))
        res = json.loads(livelm("eval", run, "--data", DATA, "--json", "--device", "cpu")[0])
        config = json.loads((run / "config.json").read_text())
        rows.append({"direction": direction, "steps": a.iters, "params": config["n_params"], "wall": wall, "cpu": cpu,
                     **res})
        log(f"[translate] {direction}: {res}")
        held = (run / "heldout.tsv").read_text(encoding="utf-8").splitlines()[:4]
        srcs = [h.split("\t")[0] for h in held]
        args = [x for s in srcs for x in ("--text", s)]
        greedy = livelm("translate", run, *args, "--device", "cpu")[0].splitlines()
        beam = livelm("translate", run, *args, "--beam", "4", "--device", "cpu")[0].splitlines()
        samples += [(direction, h.split("\t")[0], h.split("\t")[1], g, b) for h, g, b in zip(held, greedy, beam)]

    print(f"Tatoeba cmn-eng, 1,000 held-out pairs; encoder-decoder {' '.join(MODEL[:8])}, shared BPE 8000\n")
    print("| direction | steps | params | train wall (min) | train CPU (min) | greedy BLEU | greedy chrF "
          "| beam-4 BLEU | beam-4 chrF | decode 1,000: greedy / beam (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['direction']} | {r['steps']} | {r['params'] / 1e6:.2f}M | {r['wall'] / 60:.1f} | {r['cpu'] / 60:.1f} "
              f"| {r['greedy_bleu']:.1f} | {r['greedy_chrf']:.1f} | {r['beam4_bleu']:.1f} | {r['beam4_chrf']:.1f} "
              f"| {r['greedy_s']:.0f} / {r['beam4_s']:.0f} |")
    print("\n| direction | source | reference | greedy | beam 4 |\n|---|---|---|---|---|")
    for d, s, ref, g, b in samples:
        print(f"| {d} | {s} | {ref} | {g} | {b} |")


if __name__ == "__main__":
    main()
