"""The training loop. One loop for every objective.

An objective is a plain function `objective(model, batch) -> loss` (see
livelm/training/objectives.py); data is a function `get_batch(split, index) ->
dict of tensors` that is deterministic in `index`. Everything else — AdamW
with decay on matrices only, warmup + cosine schedule, gradient accumulation
and clipping, mixed precision, torch.compile, DDP or FSDP under torchrun,
periodic evaluation, sampling, metrics, the loss-curve PNG, atomic checkpoints
and exact resume — lives here once.

Step bookkeeping: a checkpoint saved "at step s" holds the model after s
updates; resuming runs updates s, s+1, ... Micro-batch g of the whole job is
`step * grad_accum + rank * accum_per_rank + micro`, so 1 process with
grad_accum=2 sees exactly the batches that 2 processes with grad_accum=2 see.

DDP keeps a full copy of the model and optimizer on every process and averages
gradients; FSDP (--fsdp) keeps 1/N of each on each of N processes and gathers
a block's weights only while that block runs (livelm/runtime.py:shard_model).
Under FSDP every forward pass is a collective, so whatever runs a forward —
evaluation, samples, extra_eval, the checkpoint gather — runs on every rank
alike; only rank 0 writes. Its checkpoints are sharded (checkpoint.save_sharded)
and resume on any process count.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from livelm import footprint, io, machine
from livelm.config import TrainConfig
from livelm.runtime import autocast, init_distributed, shard_model
from livelm import runs
from livelm.training import checkpoint
from livelm.extras import MissingExtra
from livelm.training.plot import plot_metrics


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay from lr to min_lr."""
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / (cfg.warmup_iters + 1)
    if step >= decay_iters:
        return cfg.min_lr
    ratio = (step - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    # weight decay on matrices (linear weights, embeddings) only; never on norms and biases
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel per step over all tensors instead of a Python loop over them; on CPU that is
    # ~5% of a small model's step (bench/shakespeare_char.py). FSDP's sharded (DTensor) parameters take
    # the plain loop.
    fused = device.type in ("cuda", "cpu") and not cfg.fsdp
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


@dataclass
class TrainResult:
    step: int
    val_loss: float
    metrics_path: Path
    is_main: bool = True     # False on the other ranks of a torchrun job: only rank 0 prints the result

    def last_eval(self) -> dict:
        """The last evaluation record of metrics.jsonl (step, val_loss and any extra metrics), or {}."""
        last = {}
        for line in self.metrics_path.read_text().splitlines():
            rec = json.loads(line)
            if "val_loss" in rec:
                last = rec
        return last


def check_memory(model: torch.nn.Module, cfg: TrainConfig, device, dtype) -> None:
    """Refuse a step that will not fit, before the optimizer and the first batch allocate anything
    (livelm/footprint.py); only for the decoder (GPTConfig), whose shapes the estimate knows."""
    from livelm.models.gpt import GPTConfig
    if not isinstance(getattr(model, "cfg", None), GPTConfig):
        return
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    est = footprint.training_step(model.cfg, n_params, n_trainable, cfg.batch_size, cfg.block_size,
                                  weight_bytes=next(model.parameters()).element_size(),
                                  act_bytes=2 if dtype in (torch.bfloat16, torch.float16) else 4,
                                  checkpointing=cfg.activation_checkpointing, lora=n_trainable < n_params)
    footprint.check(est, device, held=footprint.in_use(device))


def train(cfg: TrainConfig, run_dir: str | Path, model: torch.nn.Module, tokenizer,
          get_batch: Callable[[str, int], dict], objective: Callable, run_config: dict,
          bytes_per_token: float | None = None, resume: bool = False,
          extra_eval: Callable[[torch.nn.Module], dict] | None = None,
          trainable: Callable[[torch.nn.Module], None] | None = None,
          save_fn: Callable | None = None) -> TrainResult:
    """Train `model` in place and checkpoint it to `run_dir`.

    run_config: what config.json records besides the step ({"arch", "model", ...}).
    extra_eval(model) -> dict of extra metrics logged at each evaluation.
    save_fn(run_dir, model, step, train_state): replaces the default checkpoint
        writer (LoRA fine-tuning saves only the adapter).
    """
    run_dir = Path(run_dir)
    ddp, device = init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # warn_only: an op without a deterministic kernel (some CUDA ones) warns instead of failing the run
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    dtype = machine.resolve_dtype(cfg.dtype, device)
    if ddp.world > 1 and cfg.grad_accum % ddp.world:
        raise ValueError(f"--grad-accum {cfg.grad_accum} must be a multiple of the {ddp.world} processes")
    accum_per_rank = max(1, cfg.grad_accum // ddp.world)
    if cfg.fsdp and (save_fn is not None or trainable is not None):
        raise ValueError("--fsdp shards whole models; LoRA and custom checkpoints (finetune --lora, --arch lstm) "
                         "train with DDP — drop --fsdp")
    if cfg.fsdp and dtype == torch.float16:
        raise ValueError("--fsdp trains in bfloat16 or float32 (float16 would need a sharded gradient scaler); "
                         "pass --dtype bfloat16 or --dtype float32")
    # One process has nothing to shard: it trains plainly, but keeps the sharded
    # checkpoint format, so an FSDP run moves between 1 and N processes freely.
    sharded = cfg.fsdp and ddp.world > 1

    torch.manual_seed(cfg.seed + ddp.rank)  # dropout masks; restored exactly on --resume
    if sharded:
        model = shard_model(model, device, dtype, ddp.world)  # moves each block to the device as it shards it
    else:
        model.to(device)
    if trainable is not None:
        trainable(model)
    if cfg.memory_check and not sharded and ddp.is_main:
        check_memory(model, cfg, device, dtype)
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16))
    start_step, best_val = 0, float("inf")
    metrics_path = run_dir / "metrics.jsonl"
    plot = True   # loss.png beside the metrics; off (said once) where matplotlib, the plot extra, is missing

    if resume:
        # the run's last checkpoint, sharded or not, into this model, FSDP or not, on any process count
        state = checkpoint.load_resume_state(run_dir, model, optimizer)
        start_step, best_val = int(state["step"]), float(state.get("best_val", best_val))
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"])
        if ddp.is_main:
            _truncate_metrics(metrics_path, start_step)
        log(f"resuming {run_dir} from step {start_step}")
    elif ddp.is_main and metrics_path.exists():
        metrics_path.unlink()  # a fresh run starts a fresh log

    machine.tame_malloc()   # also when called from Python, or in a learner's own process
    if hasattr(model, "activation_checkpointing"):
        model.activation_checkpointing = cfg.activation_checkpointing
    step_model = model
    if ddp.world > 1 and not sharded:
        from torch.nn.parallel import DistributedDataParallel as DDP
        step_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    compiled = machine.resolve_compile(cfg.compile, device, steps=cfg.max_iters - start_step)
    if compiled:
        step_model = torch.compile(step_model)
    if ddp.is_main and cfg.progress:
        log(f"training in {str(dtype).removeprefix('torch.')} (--dtype {cfg.dtype}), "
            f"{'compiled' if compiled else 'eager'} (--compile {cfg.compile}), {torch.get_num_threads()} threads")

    def to_device(x):
        if torch.is_tensor(x):
            return x.to(device, non_blocking=True)
        return {k: to_device(v) for k, v in x.items()} if isinstance(x, dict) else x

    def batch_on_device(split, index):
        return to_device(get_batch(split, index))

    @torch.no_grad()
    def evaluate() -> dict:
        out = {}
        model.eval()
        if cfg.eval_iters > 0:  # objectives without a held-out loss (RL) set eval_iters=0
            total = torch.zeros(2, device=device)  # (sum of losses, count)
            # FSDP: every rank must run the same number of forwards (each is a collective), so a rank
            # left without a batch of its own runs an uncounted one
            stop = math.ceil(cfg.eval_iters / ddp.world) * ddp.world if sharded else cfg.eval_iters
            for i in range(ddp.rank, stop, ddp.world):
                with autocast(device, dtype):
                    loss = objective(step_model, batch_on_device("val", i % cfg.eval_iters))
                if i < cfg.eval_iters:
                    total += torch.stack([loss.float().detach(), torch.ones((), device=device)])
            if ddp.world > 1:
                dist.all_reduce(total)
            val_loss = (total[0] / total[1]).item()
            out = {"val_loss": val_loss, "perplexity": math.exp(min(val_loss, 50))}
            if bytes_per_token:
                out["bits_per_byte"] = val_loss / math.log(2) / bytes_per_token
        if extra_eval is not None and (ddp.is_main or sharded):
            extra = extra_eval(model)
            if ddp.is_main:
                out.update(extra)
        model.train()
        return out

    def save(step):
        state = {"optimizer": optimizer.state_dict(), "best_val": best_val, "rng_cpu": torch.get_rng_state()}
        if device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state()
        if save_fn is not None:
            save_fn(run_dir, model, step, state)
        elif cfg.fsdp:
            checkpoint.save_sharded(run_dir, model, optimizer, tokenizer, run_config, step, state)
        else:
            runs.save_checkpoint(run_dir, model, tokenizer, run_config, step, state)

    tokens_per_step = None
    model.train()
    pbar = tqdm(total=cfg.max_iters, initial=start_step, desc="train", unit="it", dynamic_ncols=True,
                disable=not (cfg.progress and ddp.is_main), file=sys.stderr)
    last = {"val_loss": float("nan")}
    t0 = time.perf_counter()
    step = start_step
    save_every = cfg.save_interval or cfg.eval_interval
    for step in range(start_step, cfg.max_iters + 1):
        # evaluate and save before the update, so "checkpoint at step s" = model after s updates
        is_last = step == cfg.max_iters
        if (step % cfg.eval_interval == 0 and step > start_step) or is_last:
            last = evaluate()
            best_val = min(best_val, last.get("val_loss", best_val))
            if ddp.is_main:
                _append_metrics(metrics_path, {"step": step, **last})
                pbar.write(f"step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in last.items()
                                                       if isinstance(v, float)), file=sys.stderr)
            if (ddp.is_main or sharded) and cfg.sample_interval and tokenizer is not None \
                    and step % cfg.sample_interval == 0:
                _print_sample(model, tokenizer, cfg, pbar, show=ddp.is_main)
        if (step % save_every == 0 and step > start_step) or is_last:
            if ddp.is_main or sharded:  # gathering the sharded weights takes every rank
                save(step)
            if ddp.is_main and plot:
                try:
                    plot_metrics(metrics_path, run_dir / "loss.png")
                except MissingExtra as e:   # the picture is a by-product: the run goes on without it
                    pbar.write(f"no loss.png: {e}", file=sys.stderr)
                    plot = False
        if is_last:
            break

        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        ntok = 0
        for micro in range(accum_per_rank):
            batch = batch_on_device("train", step * cfg.grad_accum + ddp.rank * accum_per_rank + micro)
            ntok += batch["idx"].numel() if "idx" in batch else 0
            if ddp.world > 1 and not sharded:
                step_model.require_backward_grad_sync = micro == accum_per_rank - 1
            # (FSDP reduce-scatters after every micro-batch: skipping it, as DDP does, would keep
            # full-size gradients on each rank until the last one, which is what FSDP is there to avoid)
            with autocast(device, dtype):
                loss = objective(step_model, batch)
            scaler.scale(loss / accum_per_rank).backward()
            loss_sum += loss.detach().float()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

        train_loss = loss_sum / accum_per_rank
        if ddp.world > 1:
            dist.all_reduce(train_loss, op=dist.ReduceOp.AVG)
        tokens_per_step = ntok * ddp.world
        if ddp.is_main and (step % cfg.log_interval == 0 or step == cfg.max_iters - 1):
            elapsed = time.perf_counter() - t0
            tok_s = tokens_per_step * (step + 1 - start_step) / max(elapsed, 1e-9)
            _append_metrics(metrics_path, {"step": step, "loss": round(train_loss.item(), 6), "lr": lr,
                                           "tokens_per_s": round(tok_s, 1), "elapsed_s": round(elapsed, 2)})
            pbar.set_postfix(loss=f"{train_loss.item():.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
        pbar.update(1)
    pbar.close()
    if ddp.world > 1:
        dist.barrier()
    return TrainResult(step=step, val_loss=last.get("val_loss", float("nan")), metrics_path=metrics_path,
                       is_main=ddp.is_main)


def _append_metrics(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records a killed run logged after its last checkpoint, so the resumed log is one clean curve."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by the kill
        if rec.get("step", 0) < step or ("val_loss" in rec and rec["step"] == step):
            keep.append(line)
    io.write_text(path, "".join(l + "\n" for l in keep))


def _print_sample(model, tokenizer, cfg: TrainConfig, pbar, show: bool = True) -> None:
    from livelm.infer.engine import Engine, SamplingParams
    engine = Engine(model, tokenizer, max_batch=1)
    prompt = tokenizer.prompt(cfg.sample_prompt)
    out = engine.generate([prompt], SamplingParams(max_tokens=64, temperature=0.8, top_k=50, seed=cfg.seed))[0]
    if show:
        pbar.write(f"sample: {cfg.sample_prompt + out.text!r}", file=sys.stderr)
    model.train()


def run_record(arch: str, model, cfg: TrainConfig, arch_cfg, data, **extra) -> dict:
    """What config.json records about a run of the other architectures (livelm/training/recipes/): its
    "train" holds the TrainConfig and the ArchConfig fields (where a resumed run and `eval` read them)."""
    return {"arch": arch, "model": model.cfg.to_dict(), "train": {**cfg.to_dict(), **arch_cfg.to_dict()},
            "data": str(Path(data).resolve()), "n_params": model.num_params(), **extra}
