"""`livelm train`, `livelm finetune`, `livelm rl`: the commands that train (livelm/training/, livelm/learn/rl.py)."""
from __future__ import annotations

import argparse
from pathlib import Path

from livelm.cli import CLIError, emit
from livelm.cli.flags import add_train_flags, dataclass_values, train_values

PARSER_KW = {
    "train": {"description": "Pretrain a GPT (or --arch bert|seq2seq|lstm) on a prepared data directory. Every "
                             "config field can be set by --config FILE.yaml or by its own flag."},
    "finetune": {"description": "Supervised fine-tuning on OpenAI-style {\"messages\":[...]} or Alpaca-style "
                                "{\"instruction\",\"input\",\"output\"} JSON/JSONL. Loss on assistant tokens only. "
                                "--task classify: a classifier head on a GPT run (full or --lora) or a BERT run; "
                                "--task tag: BERT runs."},
}


def emit_result(result, summary: dict) -> None:
    if result.is_main:   # torchrun: one result line, not one per rank
        emit(summary)


# ---- train ------------------------------------------------------------------------------------------
def config_flags(p) -> None:
    """--config and one flag per TrainConfig field, then per ArchConfig field (the other architectures':
    --mlm-prob, --holdout, ...). Every training command takes them all, as when they were one dataclass."""
    from livelm.training.recipes.config import ArchConfig
    add_train_flags(p, also=(ArchConfig,))


def arch_values(a) -> dict:
    """The ArchConfig fields the user set by flag."""
    from livelm.training.recipes.config import ArchConfig
    return dataclass_values(a, ArchConfig)


def train_flags(p) -> None:
    p.add_argument("--data", help="prepared data directory (from `livelm prepare`; seq2seq: a source<TAB>target file)")
    p.add_argument("--out", required=True, type=Path, help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    config_flags(p)


def run_train(a) -> int:
    from livelm.config import resolve_config
    from livelm import runs
    base, data = None, a.data
    if a.resume:
        saved = runs.read_config(a.out)
        base = saved.get("train")
        data = data or saved.get("data")
    if not data:
        raise CLIError("--data DIR is required (a folder written by `livelm prepare`)")
    from livelm.training.recipes.config import ArchConfig
    cfg = resolve_config(a.config, base=base, also=(ArchConfig,), **train_values(a))
    if cfg.arch == "gpt":
        from livelm.api import pretrain_gpt
        result = pretrain_gpt(cfg, data, a.out, a.resume)
    else:   # the other architectures share this loop and run layout
        from livelm.training.recipes import resolve_arch_config, train_arch
        result = train_arch(cfg, resolve_arch_config(a.config, base=base, **arch_values(a)), data, a.out, a.resume)
    emit_result(result, {"run": str(a.out), "step": result.step, "val_loss": result.val_loss})
    return 0


# ---- finetune ----------------------------------------------------------------------------------------
def finetune_flags(p) -> None:
    from livelm.models.lora import DEFAULT_TARGETS
    p.add_argument("run", help="pretrained run directory")
    p.add_argument("--task", choices=["chat", "classify", "tag"], default="chat",
                   help="chat SFT (GPT runs); classify: labelled texts, on a GPT run (a head on the last "
                        "token, full or --lora: livelm/training/recipes/classify.py) or a BERT run; tag: "
                        "token classification (BERT runs)")
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
    g.add_argument("--lora-targets", default=",".join(DEFAULT_TARGETS), help="comma-separated module names")
    config_flags(p)


def run_finetune(a) -> int:
    from livelm.models import lora
    lcfg = lora.LoRAConfig(r=a.lora_rank, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                           target_modules=a.lora_targets.split(",")) if a.lora else None
    if a.task != "chat":
        from livelm import runs
        arch = "gpt" if runs.is_adapter(a.run) else runs.read_config(a.run).get("arch", "gpt")
        if arch == "gpt" and a.task == "classify":   # a decoder: a head on the last token (full or LoRA)
            from livelm.training.recipes.classify import finetune_classify
            result, summary = finetune_classify(a.run, a.data, a.out, a.val_data, a.val_fraction, a.skip_bad,
                                                a.config, use_lora=a.lora, lora_cfg=lcfg, **train_values(a),
                                                **arch_values(a))
            emit_result(result, summary)
            return 0
        if arch != "bert":
            raise CLIError(f"--task {a.task} fine-tunes a BERT run{' or a GPT run' if a.task == 'classify' else ''}; "
                           f"{a.run} is a {arch!r} run")
        if a.lora:
            raise CLIError(f"--lora trains adapters on a decoder (GPT-family) run; {a.run} is a BERT run, whose "
                           f"--task {a.task} fine-tunes all its weights (drop --lora)")
        from livelm.training.recipes.bert import finetune_task
        result, summary = finetune_task(a.run, a.task, a.data, a.out, a.val_data, a.val_fraction, a.skip_bad,
                                        a.config, **train_values(a), **arch_values(a))
        emit_result(result, summary)
        return 0
    from livelm.training.finetune import finetune
    result, _, n_train = finetune(a.run, a.data, a.out, a.config, val_data=a.val_data, val_fraction=a.val_fraction,
                                  use_lora=a.lora, lora_cfg=lcfg, skip_bad=a.skip_bad, accuracy_limit=a.accuracy_limit,
                                  **train_values(a))
    emit_result(result, {"out": str(a.out), "lora": a.lora, "trainable_params": n_train, **result.last_eval()})
    return 0


# ---- rl ---------------------------------------------------------------------------------------------
PARSER_KW["rl"] = {"formatter_class": argparse.RawDescriptionHelpFormatter}


def rl_flags(p) -> None:
    from livelm.learn import rl
    from livelm.models.lora import DEFAULT_TARGETS
    p.description = rl.__doc__
    p.add_argument("run", help="chat run to improve")
    p.add_argument("--prompts", required=True, help="prompts: JSONL ({messages} or {prompt}) or text lines")
    p.add_argument("--reward", required=True, help="module:function, called as f(messages, answer, **other JSONL fields) -> float")
    p.add_argument("--out", required=True, type=Path, help="adapter directory to write")
    p.add_argument("--group", type=int, default=8, help="answers sampled per prompt (default 8)")
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=48, help="answer length limit while sampling")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--kl", type=float, default=0.02, help="KL penalty to the starting model (0 = off)")
    p.add_argument("--heldout-samples", type=int, default=4,
                   help="answers per held-out prompt for the sampled reward before/after (0 = greedy only)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-targets", default=",".join(DEFAULT_TARGETS), metavar="NAMES",
                   help="comma-separated layers the adapter wraps (PEFT's target_modules); add lm_head for "
                        "small or barely trained models and token-level rewards (default: %(default)s)")
    config_flags(p)


def run_rl(a) -> int:
    from livelm.learn.rl import run_rl as rl
    emit(rl(a.run, a.prompts, a.reward, a.out, a.config, group=a.group, per_step=a.prompts_per_step,
            max_tokens=a.max_tokens, temperature=a.temperature, kl=a.kl, rank=a.lora_rank,
            targets=[t.strip() for t in a.lora_targets.split(",") if t.strip()], heldout_samples=a.heldout_samples,
            **train_values(a)))
    return 0
