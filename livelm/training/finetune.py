"""Supervised chat fine-tuning on top of a pretrained run, full or LoRA.

Same trainer loop and objective as pretraining (next-token loss); only the
batches differ: conversations rendered by the chat template, loss on assistant
tokens only, several conversations packed per row without attending across.
"""
from __future__ import annotations

import math
import os
from pathlib import Path


from livelm.chat.data import PackedChats, common_system_prompts, encode_examples, read_conversations
from livelm.data.split import heldout_split
from livelm.infer.evaluate import answer_accuracy, heldout_answers
from livelm.config import resolve_config
from livelm.models import lora
from livelm import runs
from livelm.training.objectives import lm_loss
from livelm.training.recipes.config import ArchConfig
from livelm.training.trainer import log, train

# Fine-tuning starts from the pretraining config; these are the defaults that differ.
FINETUNE_DEFAULTS = dict(max_iters=300, lr=5e-4, min_lr=5e-5, warmup_iters=20, eval_interval=100,
                         eval_iters=0, batch_size=8, grad_accum=1, dropout=0.0)
LORA_LR = 2e-3
# Models from this size up (a real imported model) recompute each block in backward: SmolLM2-135M's LoRA
# step at block 512 then fits in well under 2 GB (bench/real_model.py) instead of many GB
CHECKPOINT_PARAMS = 50_000_000
MIN_ROW = 512   # packed rows hold several short chats: no shorter than this


def data_block_size(convs: list[list[dict]], tokenizer, window: int) -> int:
    """The packing row length: the longest rendered conversation rounded up to 64 (at least MIN_ROW),
    within the model's window. Real models say 8,192+ positions; a row that long costs memory for nothing."""
    from livelm.chat.template import render
    longest = max((len(render(c, tokenizer, with_mask=False)[0]) for c in convs), default=1)
    return min(window, max(MIN_ROW, -(-longest // 64) * 64))


def finetune(base_run: str | Path, data: str | Path, out: str | Path, config_file: str | Path | None = None,
             val_data: str | Path | None = None, val_fraction: float = 0.05, use_lora: bool = False,
             lora_cfg: lora.LoRAConfig | None = None, skip_bad: bool = False, accuracy_limit: int = 64, **overrides):
    base_run, out = Path(base_run), Path(out)
    model, tokenizer, saved = runs.load_model(base_run)
    base_train = {**saved.get("train", {}), **FINETUNE_DEFAULTS}
    if use_lora:
        base_train["lr"], base_train["min_lr"] = LORA_LR, LORA_LR / 10
    # the config file may hold the other architectures' fields too, as `livelm train`'s does (unused here)
    cfg = resolve_config(config_file, base=base_train, also=(ArchConfig,), **overrides)
    if cfg.block_size > model.cfg.block_size:
        raise ValueError(f"--block-size {cfg.block_size} exceeds the base model's context window {model.cfg.block_size}")
    model.set_dropout(cfg.dropout)
    n_total = sum(p.numel() for p in model.parameters())
    if "activation_checkpointing" not in overrides and n_total >= CHECKPOINT_PARAMS:
        cfg.activation_checkpointing = True

    convs, bad = read_conversations(data, skip_bad=skip_bad)
    if "block_size" not in overrides:   # rows as long as the data needs, not the model's whole window
        cfg.block_size = data_block_size(convs, tokenizer, model.cfg.block_size)
    if bad:
        log(f"skipped {bad} bad line(s) in {data}")
    system_prompts = common_system_prompts(convs)
    if val_data:
        val_convs, vbad = read_conversations(val_data, skip_bad=skip_bad)
    else:  # hold out a fixed slice, chosen by seed
        rest, val_convs = heldout_split(convs, max(1, int(len(convs) * val_fraction)) if len(convs) > 1 else 0,
                                        cfg.seed)
        val_convs, convs = val_convs or convs[:1], rest or convs
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

    save_fn, trainable = None, None
    if use_lora:
        lcfg = lora_cfg or lora.LoRAConfig()
        trainable, save_fn = lora.attach_for_training(model, "default", lcfg, str(base_run.resolve()))
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
    # greedy answers to the held-out chats' final questions vs their reference answers (normalized exact match)
    extra_eval = (lambda m: {"answer_accuracy": answer_accuracy(heldout_answers(m, tokenizer, val_convs,
                                                                                limit=accuracy_limit))}) \
        if accuracy_limit else None
    result = train(cfg, out, model, tokenizer, get_batch, lm_loss, run_config, resume=False,
                   extra_eval=extra_eval, trainable=trainable, save_fn=save_fn)
    if not use_lora:
        tokenizer.save(out / "tokenizer.json")
    return result, model, n_train
