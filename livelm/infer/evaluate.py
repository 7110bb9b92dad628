"""Metrics in one place: a language model's loss, perplexity and bits per byte on held-out tokens;
a chat model's accuracy on held-out answers; accuracy/F1 of labels; BLEU/chrF of translations.

One function for `livelm eval`, the quantize/prune reports and the benchmarks, so they all read
the same windows: every validation token once, in consecutive windows of the model's context
(no sampling noise), up to `max_tokens`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from livelm import extras
from livelm.text import mostly_chinese


@torch.inference_mode()
def perplexity(model: torch.nn.Module, data_dir: str | Path, max_tokens: int = 1_000_000, run=None) -> dict:
    """{"val_loss", "perplexity", "bits_per_byte", "tokens"} of `model` on the val split of a prepared
    data directory. `run` only names the model in the error about a mismatched vocabulary."""
    from livelm.data.shards import TokenData
    data = TokenData(data_dir)
    if data.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"{data_dir} was prepared with a {data.vocab_size}-token vocabulary but "
                         f"{run or 'the model'} uses {model.cfg.vocab_size}; prepare it with "
                         f"--reuse-tokenizer {run or 'RUN'}")
    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    for x, y in data.windows("val", model.cfg.block_size):
        if total_tokens >= max_tokens:
            break
        _, loss = model(x.to(device), y.to(device))
        total_loss += loss.item() * y.numel()
        total_tokens += y.numel()
    if not total_tokens:
        raise ValueError(f"{data_dir} has no validation tokens")
    val_loss = total_loss / total_tokens
    return {"val_loss": val_loss, "perplexity": math.exp(min(val_loss, 50)),
            "bits_per_byte": val_loss / math.log(2) / data.bytes_per_token("val"), "tokens": total_tokens}


def same_text(answer: str, reference: str) -> bool:
    """Exact match up to case and runs of whitespace."""
    return " ".join(answer.split()).lower() == " ".join(reference.split()).lower()


@dataclass
class Answer:
    index: int       # the conversation's position in the list given to heldout_answers
    text: str        # the model's greedy answer to its final user turn
    correct: bool


def heldout_answers(model, tokenizer, convs: list[list[dict]], correct: Callable[[int, str], bool] | None = None,
                    limit: int | None = None, max_tokens: int = 96, max_batch: int = 16) -> list[Answer]:
    """Greedy answers to each conversation's final user turn, checked against it by correct(index, answer)
    (default: the same text as its final assistant turn, `same_text`). Used by fine-tuning's
    `answer_accuracy` and the default assistant's per-language held-out accuracy (livelm/demo.py).

    Conversations that do not end with an assistant turn, or whose prompt does not fit the context
    window (as in training), are skipped; of the rest the first `limit` are answered (None = all).
    The model is left in train or eval mode as it was (the Engine puts it in eval mode)."""
    from livelm.chat.template import prompt_ids
    from livelm.infer.engine import Engine
    from livelm.sampling import SamplingParams
    was_training = model.training      # read before the Engine, which puts the model in eval mode
    window = model.cfg.block_size
    pairs = ((i, prompt_ids(c[:-1], tokenizer)) for i, c in enumerate(convs) if c and c[-1]["role"] == "assistant")
    pairs = [(i, p) for i, p in pairs if len(p) < window][:limit]
    if not pairs:
        return []
    # a KV cache as long as these prompts and answers need, not the model's whole window (a real model's
    # 8,192 positions x max_batch rows would be gigabytes)
    engine = Engine(model, tokenizer, max_batch=min(max_batch, len(pairs)),
                    max_len=min(window, max(len(p) for _, p in pairs) + max_tokens))
    try:
        outs = engine.generate([p for _, p in pairs], SamplingParams.greedy(max_tokens))
    finally:
        model.train(was_training)
    correct = correct or (lambda i, text: same_text(text, convs[i][-1]["content"]))
    return [Answer(i, o.text, bool(correct(i, o.text))) for (i, _), o in zip(pairs, outs)]


def answer_accuracy(answers: list[Answer]) -> float:
    """The fraction of `answers` that are correct (nan for none)."""
    return sum(a.correct for a in answers) / len(answers) if answers else float("nan")


def accuracy_f1(gold: list[int], pred: list[int], n_labels: int) -> dict:
    """Accuracy, macro-F1, and (for two labels) the F1 of the second label (the "positive" one: "1" after "0")."""
    g, p = np.asarray(gold), np.asarray(pred)
    f1s = []
    for c in range(n_labels):
        tp, fp, fn = int(((p == c) & (g == c)).sum()), int(((p == c) & (g != c)).sum()), int(((p != c) & (g == c)).sum())
        f1s.append(2 * tp / max(1, 2 * tp + fp + fn))
    out = {"accuracy": float((g == p).mean()) if len(g) else float("nan"), "macro_f1": float(np.mean(f1s))}
    out["f1"] = f1s[1] if n_labels == 2 else out["macro_f1"]
    return out


BLEU_FEATURE = "scoring translations with BLEU and chrF"


def bleu_chrf(hyps: list[str], refs: list[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu, the bleu extra); Chinese targets use sacrebleu's Chinese tokenizer."""
    sacrebleu = extras.need("sacrebleu", "bleu", BLEU_FEATURE)
    zh = mostly_chinese(refs)
    bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh" if zh else "13a")
    chrf = sacrebleu.corpus_chrf(hyps, [refs])
    return {"bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2), "bleu_tokenize": "zh" if zh else "13a"}
