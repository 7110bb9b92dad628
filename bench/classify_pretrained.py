"""SST-2 and ChnSentiCorp with a pretrained decoder: `livelm finetune REAL_MODEL --task classify`.

    .venv/bin/python bench/classify_pretrained.py                       # both, the recipe below
    .venv/bin/python bench/classify_pretrained.py --tasks sst2 --mode full --max-iters 200
    .venv/bin/python bench/classify_pretrained.py --tasks chnsenticorp --chn-models gemma3-270m,smollm2
    .venv/bin/python bench/classify_pretrained.py --quick               # smoke run: a few steps each

The counterpart of bench/sst2.py and bench/chnsenticorp.py (encoders trained from scratch on the same
data, bench/RESULTS.md): here the starting point is a real pretrained model from `livelm pull`
(SmolLM2-135M-Instruct, Gemma 3 270M), given a classifier head on the last token
(livelm/training/recipes/classify.py) and fine-tuned — with LoRA adapters or fully — then scored once,
at the last step, on SST-2's dev set (872 sentences) or ChnSentiCorp's fixed 10% test split (776 reviews,
the split of bench/chnsenticorp.py). Everything goes through the `livelm` CLI in subprocesses, as a user
would run it:

    livelm pull smollm2 --out CACHE/smollm2 --no-install
    livelm finetune CACHE/smollm2 --task classify --lora --data train.tsv --val-data dev.tsv --out CACHE/ft ...

Times: wall clock, and CPU seconds of each child process (user + system, its rusage from os.wait4), the fair
figure on a shared machine; peak RSS is the fine-tuning process's (os.wait4). One thread per process: on a busy 2-core
machine two threads spin against each other (a SmolLM2 step measured ~10x slower with two). Budget:
30 CPU minutes per task, fine-tune and scoring included. Progress goes to stderr, a markdown table to stdout.

Recipe choices, measured (figures in the commit that added this script):
  - LoRA (r=8 on every attention and MLP projection, lr 1e-3) over full fine-tuning (lr 3e-5): after 150
    SST-2 steps 85.6% against 83.7% dev accuracy for less CPU (2.6 against 2.9 min), and full fine-tuning
    holds AdamW state for all 135M weights (3.9 GB resident against 2.0 GB at the time);
  - Gemma 3 270M over SmolLM2 for ChnSentiCorp: after 100 LoRA steps 88.5% against 82.7%, and cheaper
    (6.2 against 8.9 CPU min: SmolLM2's English tokenizer spends ~1.5x the tokens on Chinese);
  - SST-2 1500 steps of 16 phrases, ChnSentiCorp 400 steps of 16 reviews cut at 128 tokens: what fits
    the 30 CPU minutes with the scoring, with a margin for a busy machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chnsenticorp import split as chn_split  # noqa: E402
from sst2 import DATA as SST2, cache_dir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
COMMON = ["--threads", "1", "--device", "cpu", "--progress", "false", "--log-interval", "20"]
# (--block-size caps a row; a batch is as long as its longest row, and rows of like length are batched together)
RECIPES = {
    "sst2": dict(lora=["--batch-size", "16", "--lr", "1e-3", "--min-lr", "1e-4", "--warmup-iters", "30",
                       "--block-size", "64"],
                 full=["--batch-size", "16", "--lr", "3e-5", "--min-lr", "3e-6", "--warmup-iters", "30",
                       "--block-size", "64"]),
    "chnsenticorp": dict(lora=["--batch-size", "16", "--lr", "1e-3", "--min-lr", "1e-4", "--warmup-iters", "30",
                               "--block-size", "128"],
                         full=["--batch-size", "16", "--lr", "3e-5", "--min-lr", "3e-6", "--warmup-iters", "30",
                               "--block-size", "128"]),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def livelm(*args) -> tuple[str, float, float, float]:
    """Run `livelm ARGS` (stderr passed through); return (stdout, wall s, CPU s, peak RSS MB) of that process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([PY, "-m", "livelm.cli", *map(str, args)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)   # this child's own rusage (RUSAGE_CHILDREN would pool them all)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"livelm {' '.join(map(str, args))} failed ({proc.returncode})")
    return stdout, time.perf_counter() - t0, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def pulled(name: str) -> Path:
    run = cache_dir("pretrained") / name
    if not (run / "config.json").is_file():
        log(f"livelm pull {name}")
        livelm("pull", name, "--out", run, "--no-install")
    return run


def task_files(task: str) -> tuple[Path, Path]:
    if task == "sst2":
        return SST2 / "train.tsv", SST2 / "dev.tsv"
    _, train, test = chn_split(cache_dir("chnsenticorp"))
    return train, test


def run_one(task: str, model: str, mode: str, iters: int, extra: list[str], check_eval: bool) -> dict:
    base = pulled(model)
    train, heldout = task_files(task)
    out = cache_dir("classify_pretrained") / f"{task}-{model}-{mode}"
    flags = [*COMMON, *RECIPES[task][mode], "--max-iters", iters, "--eval-interval", iters, *extra]
    log(f"[{task}] {model} {mode}: {' '.join(map(str, flags))}")
    stdout, wall, cpu, rss = livelm("finetune", base, "--task", "classify", "--data", train, "--val-data", heldout,
                               "--out", out, *(["--lora"] if mode == "lora" else []), *flags)
    res = json.loads(stdout.strip().splitlines()[-1])
    row = {"task": task, "model": model, "mode": mode, "steps": iters, "accuracy": res["accuracy"], "f1": res["f1"],
           "trainable": res["trainable_params"], "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss,
           "flags": " ".join(map(str, flags))}
    if check_eval:   # the saved run, loaded again by `livelm eval`, scores the same held-out set
        ev, _, ecpu, erss = livelm("eval", out, "--data", heldout, "--json", "--device", "cpu")
        row.update(eval_accuracy=json.loads(ev)["accuracy"], eval_cpu_s=ecpu, eval_rss_mb=erss)
    log(f"[{task}] {model} {mode}: accuracy {res['accuracy']:.4f} in {cpu / 60:.1f} CPU min ({wall / 60:.1f} wall)")
    return row


def table(rows: list[dict]) -> str:
    head = ("| task | model | mode | steps | trainable params | accuracy | F1 | CPU (min) | wall (min) | peak RSS (MB) |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['task']} | {r['model']} | {r['mode']} | {r['steps']} | {r['trainable']:,} | **{r['accuracy'] * 100:.1f}%** "
        f"| {r['f1']:.3f} | {r['cpu_s'] / 60:.1f} | {r['wall_s'] / 60:.1f} | {r['peak_rss_mb']:.0f} |\n" for r in rows)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="sst2,chnsenticorp")
    ap.add_argument("--sst2-model", default="smollm2")
    ap.add_argument("--chn-models", default="gemma3-270m", help="comma-separated: gemma3-270m, smollm2")
    ap.add_argument("--mode", default="lora", choices=["lora", "full"])
    ap.add_argument("--sst2-iters", type=int, default=1500)
    ap.add_argument("--chn-iters", type=int, default=400)
    ap.add_argument("--extra", default="", help="more finetune flags for every run, e.g. '--lora-rank 16'")
    ap.add_argument("--check-eval", action="store_true", help="also score the saved run with `livelm eval`")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 steps each")
    a = ap.parse_args()
    if a.quick:
        a.sst2_iters = a.chn_iters = 4
    extra = a.extra.split()
    rows = []
    for task in a.tasks.split(","):
        models = [a.sst2_model] if task == "sst2" else a.chn_models.split(",")
        iters = a.sst2_iters if task == "sst2" else a.chn_iters
        for model in models:
            rows.append(run_one(task, model, a.mode, iters, extra, a.check_eval))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"Pretrained decoders fine-tuned to classify; CPU: {cpu_name()}, torch {torch.__version__}, "
          f"{torch.backends.cpu.get_cpu_capability()}, one thread per process\n")
    print(table(rows))
    for r in rows:
        print(f"- {r['task']} {r['model']} {r['mode']}: {r['flags']}"
              + (f"; `livelm eval` of the saved run: {r['eval_accuracy'] * 100:.1f}% ({r['eval_cpu_s'] / 60:.1f} CPU min, "
                   f"peak RSS {r['eval_rss_mb']:.0f} MB)"
                 if "eval_accuracy" in r else ""))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
