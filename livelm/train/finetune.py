"""`livelm finetune`: supervised chat fine-tuning on top of a pretrained run, full or LoRA.

Same trainer loop and objective as pretraining (next-token loss); only the
batches differ: conversations rendered by the chat template, loss on assistant
tokens only, several conversations packed per row without attending across.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np

from livelm.chat.data import PackedChats, common_system_prompts, encode_examples, read_conversations
from livelm.chat.template import prompt_ids
from livelm.config import add_config_flags, resolve_config
from livelm.models import lora
from livelm.train import checkpoint
from livelm.train.objectives import lm_loss
from livelm.train.trainer import log, train

# Fine-tuning starts from the pretraining config; these are the defaults that differ.
FINETUNE_DEFAULTS = dict(max_iters=300, lr=5e-4, min_lr=5e-5, warmup_iters=20, eval_interval=100,
                         eval_iters=0, batch_size=8, grad_accum=1, dropout=0.0)
LORA_LR = 2e-3


def normalize(text: str) -> str:
    return " ".join(text.split()).lower()


def answer_accuracy(model, tokenizer, convs: list[list[dict]], limit: int = 64, max_tokens: int = 96) -> float:
    """Greedy answers to the final user turn vs the reference final assistant turn (normalized exact match)."""
    from livelm.infer.engine import Engine
    from livelm.infer.sampling import SamplingParams
    was_training = model.training      # read before the Engine, which puts the model in eval mode
    engine = Engine(model, tokenizer, max_batch=16)
    # conversations whose prompt does not fit the context window are skipped, as in training
    pairs = ((c, prompt_ids(c[:-1], tokenizer)) for c in convs if c[-1]["role"] == "assistant")
    pairs = [(c, p) for c, p in pairs if len(p) < engine.max_len][:limit]
    if not pairs:
        model.train(was_training)
        return float("nan")
    items, prompts = [c for c, _ in pairs], [p for _, p in pairs]
    outs = engine.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0))
    model.train(was_training)
    hits = sum(normalize(o.text) == normalize(c[-1]["content"]) for o, c in zip(outs, items))
    return hits / len(items)


def finetune(base_run: str | Path, data: str | Path, out: str | Path, args: argparse.Namespace | None = None,
             val_data: str | Path | None = None, val_fraction: float = 0.05, use_lora: bool = False,
             lora_cfg: lora.LoRAConfig | None = None, skip_bad: bool = False, accuracy_limit: int = 64, **overrides):
    base_run, out = Path(base_run), Path(out)
    model, tokenizer, saved = checkpoint.load_model(base_run)
    base_train = {**saved.get("train", {}), **FINETUNE_DEFAULTS}
    if use_lora:
        base_train["lr"], base_train["min_lr"] = LORA_LR, LORA_LR / 10
    cfg = resolve_config(args, base=base_train, **overrides)
    if cfg.block_size > model.cfg.block_size:
        raise ValueError(f"--block-size {cfg.block_size} exceeds the base model's context window {model.cfg.block_size}")
    model.set_dropout(cfg.dropout)

    convs, bad = read_conversations(data, skip_bad=skip_bad)
    if bad:
        log(f"skipped {bad} bad line(s) in {data}")
    system_prompts = common_system_prompts(convs)
    if val_data:
        val_convs, vbad = read_conversations(val_data, skip_bad=skip_bad)
    else:  # hold out a fixed slice, chosen by seed
        order = np.random.default_rng(cfg.seed).permutation(len(convs))
        n_val = max(1, int(len(convs) * val_fraction)) if len(convs) > 1 else 0
        val_convs = [convs[i] for i in order[:n_val]] or convs[:1]
        convs = [convs[i] for i in order[n_val:]] or convs
    train_ex, long1 = encode_examples(convs, tokenizer, cfg.block_size)
    val_ex, long2 = encode_examples(val_convs, tokenizer, cfg.block_size)
    if long1 + long2:
        log(f"dropped {long1 + long2} conversation(s) longer than the {cfg.block_size}-token window")
    packed_train = PackedChats(train_ex, cfg.block_size, tokenizer.pad_id, cfg.seed)
    packed_val = PackedChats(val_ex, cfg.block_size, tokenizer.pad_id, cfg.seed)
    n_val_batches = math.ceil(len(packed_val) / cfg.batch_size)
    if cfg.eval_iters <= 0:
        cfg.eval_iters = n_val_batches
    val_batches = list(packed_val.eval_batches(cfg.batch_size))

    def get_batch(split, i):
        return packed_train.batch(i, cfg.batch_size) if split == "train" else val_batches[i % len(val_batches)]

    n_total = sum(p.numel() for p in model.parameters())
    save_fn, trainable = None, None
    if use_lora:
        lcfg = lora_cfg or lora.LoRAConfig()
        lora.add_adapter(model, "default", lcfg)
        lora.set_active(model, "default")
        trainable = lambda m: lora.only_adapter_trainable(m, "default")  # noqa: E731

        def save_fn(run_dir, m, step, state):
            lora.save_adapter(run_dir, m, "default", lcfg, str(base_run.resolve()), extra={"livelm_step": step})
    n_train = sum(p.numel() for n, p in model.named_parameters() if not use_lora or ".lora_" in n)
    log(f"fine-tuning {base_run} on {len(train_ex)} conversations ({len(packed_train)} packed rows), "
        f"{len(val_ex)} held out; {'LoRA r=%d, ' % lcfg.r if use_lora else ''}"
        f"{n_train:,} of {n_total:,} parameters trainable")

    run_config = {"arch": "gpt", "model": model.cfg.to_dict(), "train": cfg.to_dict(), "chat": True,
                  "base_run": str(base_run.resolve()), "data": str(Path(data).resolve()),
                  # also relative to the run, so live learning still finds its replay data after the
                  # run and its data are moved or copied together (another machine, a container)
                  "data_relative": os.path.relpath(Path(data).resolve(), Path(out).resolve()),
                  # the system prompt it was trained with, per language: live learning puts its notes under
                  # it when a conversation has none (livelm/learn/memory.py)
                  "system_prompts": system_prompts}
    extra_eval = (lambda m: {"answer_accuracy": answer_accuracy(m, tokenizer, val_convs, accuracy_limit)}) \
        if accuracy_limit else None
    result = train(cfg, out, model, tokenizer, get_batch, lm_loss, run_config, resume=False,
                   extra_eval=extra_eval, trainable=trainable, save_fn=save_fn)
    if not use_lora:
        tokenizer.save(out / "tokenizer.json")
    return result, model, n_train


def cmd_finetune(a) -> int:
    if a.task != "chat":
        from livelm.train.archs import finetune_task
        return finetune_task(a)
    lcfg = lora.LoRAConfig(r=a.lora_rank, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                           target_modules=a.lora_targets.split(",")) if a.lora else None
    result, _, n_train = finetune(a.run, a.data, a.out, args=a, val_data=a.val_data, val_fraction=a.val_fraction,
                                  use_lora=a.lora, lora_cfg=lcfg, skip_bad=a.skip_bad, accuracy_limit=a.accuracy_limit)
    last = {}
    for line in result.metrics_path.read_text().splitlines():
        rec = json.loads(line)
        if "val_loss" in rec:
            last = rec
    if result.is_main:   # torchrun: one result line, not one per rank
        print(json.dumps({"out": str(a.out), "lora": a.lora, "trainable_params": n_train, **last}))
    return 0


def register(sub) -> None:
    p = sub.add_parser("finetune", help="chat fine-tuning (full or LoRA) on top of a run",
                       description="Supervised fine-tuning on OpenAI-style {\"messages\":[...]} or Alpaca-style "
                                   "{\"instruction\",\"input\",\"output\"} JSON/JSONL. Loss on assistant tokens only.")
    p.add_argument("run", help="pretrained run directory")
    p.add_argument("--task", choices=["chat", "classify", "tag"], default="chat",
                   help="chat SFT (GPT runs), or sequence/token classification (BERT runs)")
    p.add_argument("--data", required=True, help="training data: conversations (.jsonl/.json) for chat; "
                                                  "label<TAB>text, CSV or JSONL for classify")
    p.add_argument("--out", required=True, type=Path, help="output: a run directory, or an adapter directory with --lora")
    p.add_argument("--val-data", help="held-out conversations (default: a fixed slice of --data)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="held-out slice when no --val-data (default 0.05)")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed lines (and report how many) instead of failing")
    p.add_argument("--accuracy-limit", type=int, default=64, help="held-out answers generated per eval for accuracy (0 = off)")
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora", action="store_true", help="train a LoRA adapter only (saved in PEFT layout)")
    g.add_argument("--lora-rank", type=int, default=8)
    g.add_argument("--lora-alpha", type=float, default=16.0)
    g.add_argument("--lora-dropout", type=float, default=0.0)
    g.add_argument("--lora-targets", default=",".join(lora.DEFAULT_TARGETS), help="comma-separated module names")
    add_config_flags(p)
    p.set_defaults(func=cmd_finetune)
