"""nanoGPT's CPU recipe on tiny Shakespeare, through livelm's own machinery.

    .venv/bin/python bench/shakespeare_char.py                 # default settings, 2000 iterations each
    .venv/bin/python bench/shakespeare_char.py --quick         # smoke run: 60 iterations, 2 settings
    .venv/bin/python bench/shakespeare_char.py --settings fast --budget 180   # + best val loss in 3 minutes
    .venv/bin/python bench/shakespeare_char.py --settings plain,fast --seeds 1337,1,2,3,4   # seed spread

The recipe (nanoGPT README, "I only have a macbook"): character tokens, GPT-2
blocks (preset gpt2, without biases as in nanoGPT), 4 layers x 4 heads x 128 wide, block 64, batch 12,
lr 1e-3 -> 1e-4 cosine over 2000 iterations, 100 warmup, beta2 0.99,
dropout 0, eval every 250 iterations on 20 batches. nanoGPT reports val loss
1.88 after ~3 minutes on a laptop CPU. The same settings via the CLI:

    livelm prepare ../shared/data/tinyshakespeare/input.txt --out DATA --tokenizer char
    livelm train --data DATA --out RUN --n-layer 4 --n-head 4 --d-model 128 --block-size 64 \
        --batch-size 12 --beta2 0.99 --bias false --dtype bfloat16 --compile --threads 1

The issue quotes ~35 ms/iter for "a plain fp32 eager PyTorch loop of this recipe"; the
`plain-fp32` setting measures that reference here, on the machine at hand: nanoGPT's model
(fused c_attn, PyTorch's scaled_dot_product_attention, exact GELU) in a bare loop with
nanoGPT's random-offset batches, fp32, eager, default threads — no livelm code. Every row's
"× plain" is its tokens/s over that reference's, measured in the same run.

Settings (SETTINGS below) vary only the runtime: dtype (fp32, or bf16 autocast),
torch.compile, and intra-op threads (0 = PyTorch's default of one per core).
On a machine whose cores are shared with other jobs, use --threads 1: OpenMP's
threads wait for each other at every operator, so when a neighbour holds one
of the cores each step stalls (measured 3-10x slower than one thread).

The corpus is prepared once with `livelm.data.prepare.prepare` into a cache
folder outside the repository (~/.cache/livelm/bench, or $LIVELM_BENCH_CACHE).
Every setting trains with `livelm.training.trainer.train` in its own subprocess
(fresh thread pool, fresh torch.compile state), from the same seed.

Timing: the trainer fetches one batch per step, so the time between two
consecutive training-batch requests is one whole step (forward, backward,
clipping, AdamW, logging). ms/iter is the median of those intervals after the
first 10 steps (which include torch.compile) and excluding steps with an
evaluation; tokens/s = 768 / ms/iter. CPU ms/iter is the process's CPU time
per step: with 1 thread it is the step's cost even when a neighbour steals
wall time. "others' CPU" is the CPU (in cores) that *other* processes used
during the run, read from /proc/stat: wall-clock comparisons are only fair
when it is near 0. wall is the whole run: model build, compile, training,
evaluations and checkpoints.

Loss: "final val loss" is the trainer's estimate, the mean over the same 20 random
validation batches for every setting (as nanoGPT estimates it); "full val loss" reads
every validation token once, in consecutive 64-token windows (as `livelm eval` does),
so it has no sampling noise. With --seeds every setting is run once per seed (model
init and batch order; the plain loop's random offsets too) and a spread is printed.

Results are printed as a markdown table on stdout; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"

# nanoGPT's CPU recipe, as TrainConfig fields
# bias=False: nanoGPT's train.py default ("bias = False"), which its CPU command line does not override
RECIPE = dict(preset="gpt2", n_layer=4, n_head=4, d_model=128, block_size=64, batch_size=12, dropout=0.0, bias=False,
              max_iters=2000, lr=1e-3, min_lr=1e-4, warmup_iters=100, beta2=0.99,
              eval_interval=250, eval_iters=20, log_interval=10, seed=1337, device="cpu", progress=False)

# Named runtime settings (TrainConfig fields only). threads 0 = PyTorch's default (one per core).
SETTINGS = {
    "plain-fp32": dict(dtype="float32", compile=False, threads=0),        # the reference: see plain_loop()
    "auto": dict(dtype="auto", compile="auto", threads=0),               # `livelm train` out of the box
    "fp32-eager": dict(dtype="float32", compile=False, threads=0),
    "fp32-eager-1t": dict(dtype="float32", compile=False, threads=1),
    "bf16-eager-1t": dict(dtype="bfloat16", compile=False, threads=1),
    "fp32-compile-1t": dict(dtype="float32", compile=True, threads=1),
    "bf16-compile-1t": dict(dtype="bfloat16", compile=True, threads=1),   # the fastest here ("fast")
    "bf16-compile": dict(dtype="bfloat16", compile=True, threads=0),
}
ALIASES = {"fast": "bf16-compile", "fast-1t": "bf16-compile-1t", "baseline": "fp32-eager", "plain": "plain-fp32"}
DEFAULT_SETTINGS = ["plain-fp32", "auto", "fp32-eager", "fp32-eager-1t", "bf16-compile-1t", "bf16-compile"]
QUICK_SETTINGS = ["auto", "fp32-eager-1t", "bf16-compile-1t"]
WARMUP_STEPS = 10


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cache_dir() -> Path:
    return Path(os.environ.get("LIVELM_BENCH_CACHE", Path.home() / ".cache" / "livelm" / "bench"))


def prepared_data(corpus: Path) -> Path:
    """Tokenize the corpus with a character tokenizer once; reuse it while the corpus is unchanged."""
    from livelm.data.prepare import prepare

    if not corpus.is_file():
        sys.exit(f"corpus not found: {corpus} (expected tiny Shakespeare at repo_root/../shared/data/tinyshakespeare)")
    out = cache_dir() / "tinyshakespeare_char"
    stamp = {"corpus": str(corpus.resolve()), "bytes": corpus.stat().st_size, "mtime": corpus.stat().st_mtime}
    stamp_path = out / "bench_source.json"
    if (out / "meta.json").is_file() and stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        return out
    log(f"preparing {corpus} -> {out} (character tokenizer)")
    prepare([corpus], out, tokenizer_kind="char", val_fraction=0.1, progress=False)
    stamp_path.write_text(json.dumps(stamp))
    return out


def cpu_busy_s() -> float:
    """CPU seconds all processes on the machine have used since boot (0 where /proc/stat is missing)."""
    try:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        return 0.0
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")   # everything but idle and iowait


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def full_val_loss(loss_fn, data, block: int) -> float:
    """Mean loss over every validation token once, in consecutive windows of `block` tokens.
    loss_fn(x, y) -> mean cross-entropy of (1, T) inputs and targets."""
    import torch
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in data.windows("val", block):   # the windows `livelm eval` reads
            total += loss_fn(x, y).item() * y.numel()
            count += y.numel()
    return total / count


# ---- one setting, in this process ---------------------------------------------------
def run_setting(spec: dict) -> dict:
    """Train one setting with livelm's trainer; return timings and losses."""
    import torch
    from livelm.config import resolve_config
    from livelm.data.shards import TokenData
    from livelm.models.gpt import GPT
    from livelm.tokenizer import Tokenizer
    from livelm.training.objectives import lm_loss
    from livelm.training.trainer import train

    t_start = time.perf_counter()
    busy0, own0 = cpu_busy_s(), own_cpu_s()
    data_dir = Path(spec["data"])
    cfg = resolve_config(**spec["config"])
    data = TokenData(data_dir)
    tokenizer = Tokenizer.load(data_dir / "tokenizer.json")
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model_config(data.vocab_size))

    stamps: list[tuple[str, float, float]] = []   # (split, wall time, process CPU time) of every batch request

    def get_batch(split, index):
        stamps.append((split, time.perf_counter(), time.process_time()))
        return data.batch(split, index, cfg.batch_size, cfg.block_size, cfg.seed)

    run_dir = Path(tempfile.mkdtemp(prefix="livelm-bench-"))
    try:
        result = train(cfg, run_dir, model, tokenizer, get_batch=get_batch, objective=lm_loss,
                       run_config={"arch": "gpt", "model": model.cfg.to_dict(), "train": cfg.to_dict()},
                       bytes_per_token=data.bytes_per_token("val"))
        evals = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
        model.eval()
        full_val = full_val_loss(lambda x, y: model(x, y)[1], data, cfg.block_size)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    wall = time.perf_counter() - t_start
    busy = (cpu_busy_s() - busy0 - (own_cpu_s() - own0)) / wall

    # step s runs between the train-batch requests of s and s+1; drop intervals holding an evaluation
    train_t = [t for split, t, _ in stamps if split == "train"]
    steps, cpu, k = [], [], 0
    for (split, t, c), nxt in zip(stamps, stamps[1:]):
        if split != "train":
            continue
        if k >= WARMUP_STEPS and nxt[0] == "train":
            steps.append(nxt[1] - t)
            cpu.append(nxt[2] - c)
        k += 1
    steps.sort()
    cpu.sort()
    median = steps[len(steps) // 2] if steps else float("nan")
    # each evaluation is a run of val-batch requests: its span, scaled up by one batch
    evals_s, run = [], []
    for split, t, _ in stamps + [("train", 0.0, 0.0)]:
        if split == "val":
            run.append(t)
        elif run:
            evals_s.append((run[-1] - run[0]) * len(run) / max(1, len(run) - 1))
            run = []
    vals = [e["val_loss"] for e in evals if "val_loss" in e]
    return {
        "setting": spec["name"], "iters": cfg.max_iters, "threads": torch.get_num_threads(),
        "ms_iter": median * 1e3, "cpu_ms_iter": cpu[len(cpu) // 2] * 1e3 if cpu else float("nan"), "tok_s": cfg.batch_size * cfg.block_size / median if steps else 0.0,
        "first_steps_s": train_t[min(WARMUP_STEPS, len(train_t) - 1)] - train_t[0] if train_t else 0.0,
        "first_eval_s": evals_s[0] if evals_s else 0.0,
        "eval_s": sum(evals_s[1:]) / (len(evals_s) - 1) if len(evals_s) > 1 else float("nan"),
        "val_loss": result.val_loss, "best_val": min(vals) if vals else float("nan"), "full_val": full_val,
        "wall_s": wall, "busy": busy, "seed": cfg.seed,
    }


def plain_loop(spec: dict) -> dict:
    """nanoGPT's model and training loop, written out bare: the issue's "plain fp32 eager loop"."""
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from livelm.data.shards import TokenData

    from livelm.config import resolve_config
    from livelm.training.trainer import lr_at
    cfg = spec["config"]
    tcfg = resolve_config(**cfg)
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    C, H, T, B = cfg["d_model"], cfg["n_head"], cfg["block_size"], cfg["batch_size"]
    data = TokenData(Path(spec["data"]))
    train_ids = np.concatenate([np.asarray(a) for a in data.splits["train"]])
    V = data.vocab_size

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C, bias=False), nn.LayerNorm(C, bias=False)
            self.c_attn, self.c_proj = nn.Linear(C, 3 * C, bias=False), nn.Linear(C, C, bias=False)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C, bias=False), nn.Linear(4 * C, C, bias=False)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = (z.view(b, t, H, C // H).transpose(1, 2) for z in self.c_attn(self.ln_1(x)).split(C, dim=2))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, C)
            x = x + self.c_proj(y)
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))

    class NanoGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
            self.h = nn.ModuleList(Block() for _ in range(cfg["n_layer"]))
            self.ln_f = nn.LayerNorm(C, bias=False)
            self.lm_head = nn.Linear(C, V, bias=False)
            self.wte.weight = self.lm_head.weight
            for name, p_ in self.named_parameters():
                std = 0.02 / (2 * cfg["n_layer"]) ** 0.5 if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
                if p_.dim() == 2:
                    nn.init.normal_(p_, 0.0, std)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
            for block in self.h:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, V), targets.view(-1))

    model = NanoGPT()
    decay = [p_ for p_ in model.parameters() if p_.dim() >= 2]
    other = [p_ for p_ in model.parameters() if p_.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": other, "weight_decay": 0.0}],
                            lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2))
    t_start = time.perf_counter()
    steps = []
    rng = np.random.default_rng(cfg["seed"])   # nanoGPT draws offsets from an unseeded RNG; seeded here to compare seeds
    for it in range(tcfg.max_iters):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(it, tcfg)
        ix = rng.integers(len(train_ids) - T - 1, size=B)
        x = torch.from_numpy(np.stack([train_ids[i:i + T] for i in ix]).astype(np.int64))
        y = torch.from_numpy(np.stack([train_ids[i + 1:i + 1 + T] for i in ix]).astype(np.int64))
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps.append(time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():   # the same 20 validation batches livelm's trainer evaluates on
        batches = [data.batch("val", i, B, T, tcfg.seed) for i in range(tcfg.eval_iters)]
        val = [model(b["idx"], b["targets"]).item() for b in batches]
    full_val = full_val_loss(model, data, T)
    ms = sorted(steps[WARMUP_STEPS:])
    median = ms[len(ms) // 2]
    nan = float("nan")
    return {"setting": spec["name"], "iters": tcfg.max_iters, "threads": torch.get_num_threads(),
            "ms_iter": median * 1e3, "cpu_ms_iter": nan, "tok_s": B * T / median, "first_steps_s": sum(steps[:WARMUP_STEPS]),
            "first_eval_s": nan, "eval_s": nan, "val_loss": sum(val) / len(val), "best_val": sum(val) / len(val),
            "full_val": full_val, "wall_s": time.perf_counter() - t_start, "busy": nan, "seed": cfg["seed"]}


def run_in_subprocess(name: str, config: dict, data: Path) -> dict:
    spec = {"name": name, "config": config, "data": str(data)}
    log(f"--- {name}: " + " ".join(f"{k}={v}" for k, v in config.items() if k not in RECIPE or RECIPE[k] != v))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                          stdout=subprocess.PIPE, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"setting {name} failed (exit {proc.returncode})")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"    {res['ms_iter']:.1f} ms/iter, {res['tok_s']:,.0f} tok/s, val {res['val_loss']:.4f}, "
        f"wall {res['wall_s']:.0f}s, others busy {res['busy']:.2f} cores")
    return res


def markdown(rows: list[dict]) -> str:
    cols = [("setting", "{setting}"), ("seed", "{seed}"), ("iters", "{iters}"), ("threads", "{threads}"), ("ms/iter", "{ms_iter:.1f}"),
            ("tokens/s", "{tok_s:,.0f}"), ("× plain", "{x_plain}"), ("CPU ms/iter", "{cpu_ms_iter:.1f}"), ("first 10 iters (s)", "{first_steps_s:.1f}"),
            ("1st / later eval (s)", "{first_eval_s:.1f} / {eval_s:.1f}"),
            ("final val loss", "{val_loss:.4f}"), ("best val loss", "{best_val:.4f}"),
            ("full val loss", "{full_val:.4f}"), ("wall (s)", "{wall_s:.0f}"),
            ("others' CPU (cores)", "{busy:.2f}")]
    plain = {r["seed"]: r["tok_s"] for r in rows if r["setting"].startswith("plain")}   # the same seed's plain run
    rows = [{**r, "x_plain": f"{r['tok_s'] / plain[r['seed']]:.2f}" if r["seed"] in plain else "–"} for r in rows]
    lines = ["| " + " | ".join(name for name, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt.format(**r) for _, fmt in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default=None,
                   help=f"comma-separated, from {', '.join(SETTINGS)}, or fast / baseline (default {','.join(DEFAULT_SETTINGS)})")
    p.add_argument("--iters", type=int, default=None, help="training iterations (default 2000; --quick 60)")
    p.add_argument("--quick", action="store_true", help="smoke run: 60 iterations, evals every 30 on 4 batches")
    p.add_argument("--budget", type=float, default=0,
                   help="also rerun each setting with as many iterations as fit in this many seconds of wall "
                        "time (schedule stretched to match), e.g. 180")
    p.add_argument("--corpus", type=Path, default=CORPUS, help="tiny Shakespeare input.txt")
    p.add_argument("--seeds", default=None, help="comma-separated seeds; every setting runs once per seed "
                                                  "(default: the recipe's 1337)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.worker:
        spec = json.loads(a.worker)
        print(json.dumps(plain_loop(spec) if spec["name"].startswith("plain") else run_setting(spec)))
        return 0

    names = (a.settings.split(",") if a.settings else QUICK_SETTINGS if a.quick else DEFAULT_SETTINGS)
    names = [ALIASES.get(n, n) for n in names]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        p.error(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    recipe = dict(RECIPE)
    if a.quick:
        recipe.update(max_iters=60, eval_interval=30, eval_iters=4)
    if a.iters:
        recipe["max_iters"] = a.iters
    data = prepared_data(a.corpus)

    try:
        seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else [recipe["seed"]]
    except ValueError:
        p.error(f"--seeds takes comma-separated integers, got {a.seeds!r}")
    rows = []
    for seed in seeds:   # settings interleaved per seed, so the VM's drift hits them alike
        for name in names:
            rows.append(run_in_subprocess(name, {**recipe, **SETTINGS[name], "seed": seed}, data))
    if a.budget:
        for name, first in zip(names, rows[:len(names)]):
            if name.startswith("plain"):
                continue
            # wall = fixed cost (startup, compile, evals, saves) + iters * ms/iter; keep the eval count as in the recipe
            fixed = max(0.0, first["wall_s"] - first["iters"] * first["ms_iter"] / 1e3)
            iters = int((a.budget - fixed) / (first["ms_iter"] / 1e3) * 0.97)   # 3% slack for noise
            if iters <= recipe["warmup_iters"]:
                log(f"{name}: no room for training in {a.budget:.0f}s")
                continue
            iters -= iters % 10
            cfg = {**recipe, **SETTINGS[name], "seed": seeds[0], "max_iters": iters,
                   "eval_interval": max(1, iters * recipe["eval_interval"] // recipe["max_iters"])}
            res = run_in_subprocess(f"{name} @ {a.budget:.0f}s", cfg, data)
            rows.append(res)
    print(f"nanoGPT CPU recipe on tiny Shakespeare (chars), {os.cpu_count()} CPUs, "
          f"torch {__import__('torch').__version__}; batch 12 x block 64 = 768 tokens/iter\n")
    print(markdown(rows))
    if len(seeds) > 1:
        print()
        for name in names:
            mine = [r for r in rows if r["setting"] == name]
            full = [r["full_val"] for r in mine]
            ratio = [r["tok_s"] / p_["tok_s"] for r in mine for p_ in rows
                     if p_["setting"].startswith("plain") and p_["seed"] == r["seed"]]
            print(f"- {name}, {len(mine)} seeds: full val loss mean {sum(full) / len(full):.4f} "
                  f"(min {min(full):.4f}, max {max(full):.4f})"
                  + (f"; × plain {min(ratio):.2f}–{max(ratio):.2f}" if ratio and not name.startswith("plain") else ""))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
