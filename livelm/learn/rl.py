"""Reward-driven reinforcement learning (GRPO-style) on a LoRA adapter.

Each step: take a few prompts, sample a group of G answers for each from the
current policy (the shared Engine), score every answer with the user's reward
function, and set each answer's advantage to its reward minus its group's
mean — no value network, the group is the baseline. Then one policy-gradient
step on the adapter (objective `grpo_loss`), optionally with a KL penalty to
the starting model (the same weights with the adapter switched off).

The reward is any Python function `reward(messages, answer, **columns) -> float`,
named as `module:function` (e.g. `livelm.learn.rewards:same_language`); `columns`
are the prompt record's other JSONL fields, such as a reference answer
(`livelm.learn.rewards:states_reference`). Worked example: bench/rl_facts.py.

`livelm rl` prints what run_rl returns, as JSON: the mean reward of the sampled answers at every step, and the
reward on the held-out prompts (20% of the file, chosen by --seed, never trained on)
before and after, greedy and sampled (--heldout-samples answers per prompt).

The gradient is taken on exactly the tokens that were sampled (not on a
re-tokenization of the answer text), with dropout off as it was when sampling:
the update is on-policy.

--lora-targets picks the layers the adapter wraps (PEFT's target_modules).
The default, the attention and MLP projections, suits a trained model. Add
lm_head when the reward is about *which tokens* appear (a language, a format)
or when the model is small or barely trained: there the blocks add little to
the residual stream, so low-rank changes to them hardly move the output
distribution, while an adapter on the output layer moves it directly.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from livelm.chat.template import prompt_ids, validate
from livelm.config import resolve_config
from livelm.data.split import heldout_split
from livelm.infer.engine import Engine
from livelm.sampling import SamplingParams
from livelm.learn.objectives import grpo_loss, token_logprobs
from livelm.models import lora
from livelm.training.recipes.config import ArchConfig
from livelm.training.trainer import log, train


def load_reward(spec: str):
    module, sep, name = spec.partition(":")
    if not sep:
        raise ValueError(f"--reward must be module:function, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())   # like `python -m`: a reward module next to the user's data imports
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load reward {spec!r}: {e}") from None
    if not callable(fn):
        raise ValueError(f"reward {spec!r} is not callable")
    # hand over only the columns the function names (all of them if it takes **kwargs), so a reward
    # written as f(messages, answer) still works on a prompts file that carries extra fields
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return fn
    names = {p.name for p in params}
    return lambda messages, answer, **cols: fn(messages, answer, **{k: v for k, v in cols.items() if k in names})


def read_prompts(path: str | Path) -> list[tuple[list[dict], dict]]:
    """JSONL of {"messages": [...]} (without the answer) or {"prompt": "..."}; or plain text, one prompt a line.

    Returns (messages, columns): any other fields of a JSONL record (e.g. "reference") are handed to the
    reward function as keyword arguments, as TRL's GRPOTrainer does with dataset columns."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompts file not found: {path}")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: malformed JSON ({e.msg})") from None
            msgs = rec.get("messages") if isinstance(rec, dict) else None
            if msgs is None and isinstance(rec, dict) and "prompt" in rec:
                msgs = [{"role": "user", "content": str(rec["prompt"])}]
            try:
                msgs = validate(msgs)
            except ValueError as e:
                raise ValueError(f"{path}:{n}: {e}") from None
            columns = {k: v for k, v in rec.items() if k not in ("messages", "prompt")}
            out.append(([m for m in msgs if m["role"] != "assistant" or m is not msgs[-1]], columns))
        else:
            out.append(([{"role": "user", "content": line}], {}))
    if not out:
        raise ValueError(f"{path} holds no prompts")
    return out


def sampled_batch(prompts: list[list[int]], outs, tokenizer) -> dict:
    """Prompt + answer rows scored on the answer tokens exactly as the Engine drew them.

    Decoding an answer and encoding it again need not give back the same tokens (BPE splits
    text its own way; a partial UTF-8 character decodes to U+FFFD), and an answer cut off by
    --max-tokens never chose to end: the policy gradient must see the sampled ids, and an end
    token only where one was sampled. (The Engine stops on <|end|> or <|eos|> and keeps neither
    in token_ids; a chat model ends its turns with <|end|>, so that is what we score.)"""
    rows = [(p, list(o.token_ids) + ([tokenizer.end_id] if o.finish_reason == "stop" else []))
            for p, o in zip(prompts, outs)]
    S = max(len(p) + len(a) for p, a in rows) - 1     # the Engine keeps prompt + answer within the context
    idx = torch.full((len(rows), S), tokenizer.pad_id, dtype=torch.long)
    targets = torch.full((len(rows), S), -1, dtype=torch.long)
    for r, (p, a) in enumerate(rows):
        ids = torch.tensor(p + a)
        idx[r, :len(ids) - 1] = ids[:-1]
        targets[r, len(p) - 1:len(ids) - 1] = ids[len(p):]
    return {"idx": idx, "targets": targets}


class GroupSampler:
    """Builds GRPO batches on the fly from the current policy."""

    def __init__(self, model, tokenizer, prompts, reward_fn, group: int, per_step: int, max_tokens: int,
                 temperature: float, seed: int):
        self.model, self.tok, self.prompts, self.reward_fn = model, tokenizer, prompts, reward_fn
        self.group, self.per_step, self.max_tokens, self.temperature = group, per_step, max_tokens, temperature
        self.seed = seed
        self.rewards: list[float] = []      # mean reward of each training step, for the curve

    def batch(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        chosen = [self.prompts[i] for i in rng.choice(len(self.prompts), self.per_step, replace=False)] \
            if self.per_step <= len(self.prompts) else [self.prompts[i] for i in rng.integers(0, len(self.prompts), self.per_step)]
        was_training = self.model.training
        engine = Engine(self.model, self.tok, max_batch=self.group * len(chosen))
        prompts, params, convs, columns = [], [], [], []
        for msgs, cols in chosen:
            for g in range(self.group):
                prompts.append(prompt_ids(msgs, self.tok))
                params.append(SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature,
                                             seed=int(rng.integers(2**31))))
                convs.append(msgs)
                columns.append(cols)
        outs = engine.generate(prompts, params)
        rewards = torch.tensor([float(self.reward_fn(c, o.text, **cols)) for c, o, cols in zip(convs, outs, columns)])
        grouped = rewards.view(len(chosen), self.group)
        adv = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
        self.rewards.append(rewards.mean().item())
        b = sampled_batch(prompts, outs, self.tok)
        b["adv"] = adv
        with torch.no_grad():  # the reference policy: the same weights with the adapter off
            lora.set_active(self.model, None)
            b["ref_tok"] = token_logprobs(self.model, b)
            lora.set_active(self.model, "rl")
        self.model.train(was_training)
        return b

    def mean_reward(self, prompts, samples: int = 0) -> float:
        """Mean reward of the greedy answers (samples=0), or of `samples` answers per prompt at the
        training temperature — what the policy actually does, and what RL raises; a greedy answer can
        be right while a third of the samples are wrong. Fixed seeds: before and after draw the same
        random numbers, so their difference is not sampling noise."""
        rows = [p for p in prompts for _ in range(max(1, samples))]
        params = [SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature if samples else 0, seed=i)
                  for i in range(len(rows))]
        outs = Engine(self.model, self.tok, max_batch=64).generate([prompt_ids(m, self.tok) for m, _ in rows], params)
        return float(np.mean([self.reward_fn(m, o.text, **cols) for (m, cols), o in zip(rows, outs)]))


def check_targets(model, targets: list[str]) -> None:
    """Name a mistyped --lora-targets entry (lora.add_adapter only fails when *none* matches)."""
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise ValueError(f"--lora-targets: this model has no layer named {', '.join(unknown)}; "
                         f"its linear layers are {', '.join(sorted(names))}")


def check_lengths(prompts, tokenizer, block_size: int, path) -> None:
    """A prompt that fills the context window leaves no room for an answer: say so before training."""
    for n, (msgs, _) in enumerate(prompts, 1):
        length = len(prompt_ids(msgs, tokenizer))
        if length >= block_size:
            raise ValueError(f"{path}: prompt {n} is {length} tokens, the model's "
                             f"context window is {block_size}; shorten it or drop it")


def run_rl(run: str | Path, prompts_file, reward: str, out: str | Path, config_file=None, group: int = 8, per_step: int = 4,
           max_tokens: int = 48, temperature: float = 1.0, kl: float = 0.02, rank: int = 8, val_fraction: float = 0.2,
           targets: list[str] | None = None, heldout_samples: int = 4, **overrides) -> dict:
    from livelm.runs import load
    reward_fn = load_reward(reward)
    prompts = read_prompts(prompts_file)
    model, tok, saved, _ = load(run)
    check_lengths(prompts, tok, model.cfg.block_size, prompts_file)
    base_train = {**saved.get("train", {}), "max_iters": 30, "lr": 3e-3, "min_lr": 3e-4, "warmup_iters": 0,
                  "eval_interval": 10, "eval_iters": 0, "grad_clip": 1.0, "dropout": 0.0}
    # the config file may hold the other architectures' fields too, as `livelm train`'s does (unused here)
    cfg = resolve_config(config_file, base=base_train, also=(ArchConfig,), **overrides)
    rest, val = heldout_split(prompts, max(1, int(len(prompts) * val_fraction)) if len(prompts) > 4 else 0, cfg.seed)
    val, train_prompts = val or prompts, rest or prompts
    # the answers are sampled with dropout off (the Engine runs the model in eval mode) and the trainer
    # switches to train mode, so dropout left at the pretraining value (0.1 in the default assistant)
    # would take the gradient through a different, noisy policy and bias the KL term: turn it off
    model.set_dropout(cfg.dropout)
    targets = list(targets or lora.DEFAULT_TARGETS)
    check_targets(model, targets)
    lcfg = lora.LoRAConfig(r=rank, lora_alpha=2 * rank, target_modules=targets)
    trainable, save_fn = lora.attach_for_training(model, "rl", lcfg, str(Path(run).resolve()), {"reward": reward})
    sampler = GroupSampler(model, tok, train_prompts, reward_fn, group, per_step, max_tokens, temperature, cfg.seed)
    start = sampler.mean_reward(val)
    start_sampled = sampler.mean_reward(val, heldout_samples) if heldout_samples else None
    log(f"RL on {len(train_prompts)} prompts ({len(val)} held out), group {group}; held-out reward before: "
        f"greedy {start:.3f}" + (f", sampled {start_sampled:.3f}" if heldout_samples else ""))

    def extra_eval(m):
        recent = sampler.rewards[-cfg.eval_interval:]
        return {"reward_train": float(np.mean(recent)) if recent else float("nan"), "reward_heldout": sampler.mean_reward(val)}

    train(cfg, out, model, tok, lambda split, i: sampler.batch(i), lambda m, b: grpo_loss(m, b, kl),
          {"arch": "gpt"}, extra_eval=extra_eval, trainable=trainable, save_fn=save_fn)
    result = {"out": str(out), "reward_heldout_before": start, "reward_heldout_after": sampler.mean_reward(val)}
    if heldout_samples:
        result.update(reward_heldout_sampled_before=start_sampled,
                      reward_heldout_sampled_after=sampler.mean_reward(val, heldout_samples))
    return {**result, "reward_train_per_step": [round(r, 3) for r in sampler.rewards]}
