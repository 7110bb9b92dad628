"""Chat fine-tuning data: reading conversations and packing them into training rows.

Accepted input, one example per line (JSONL) or a JSON list:
  * OpenAI style   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
  * Alpaca style   {"instruction": "...", "input": "...", "output": "..."}
Malformed lines are reported as FILE:LINE; with skip_bad they are counted and skipped.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from livelm import io
from livelm.chat.template import ChatFormatError, render, validate
from livelm.text import language


class ChatDataError(ValueError):
    pass


def to_messages(record) -> list[dict]:
    if not isinstance(record, dict):
        raise ChatFormatError("expected a JSON object")
    if "messages" in record:
        msgs = validate(record["messages"])
    elif "instruction" in record and "output" in record:
        prompt = str(record["instruction"])
        if record.get("input"):
            prompt += "\n\n" + str(record["input"])
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(record["output"])}]
    else:
        raise ChatFormatError('expected "messages" (OpenAI style) or "instruction"/"output" (Alpaca style)')
    if not any(m["role"] == "assistant" for m in msgs):
        raise ChatFormatError("conversation has no assistant turn to learn from")
    return msgs


def read_conversations(path: str | Path, skip_bad: bool = False) -> tuple[list[list[dict]], int]:
    """Return (conversations, number of skipped bad lines)."""
    path = Path(path)
    if not path.is_file():
        raise ChatDataError(f"data file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ChatDataError(f"{path}: not valid UTF-8 at byte {e.start}") from None
    records: list[tuple[int, object]] = []
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" and stripped.startswith("["):
        try:
            records = list(enumerate(io.parse_json(text), 1))
        except json.JSONDecodeError as e:
            raise ChatDataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        where = "item"
    else:
        where = "line"
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((lineno, io.parse_json(line)))
            except json.JSONDecodeError as e:
                if not skip_bad:
                    raise ChatDataError(f"{path}:{lineno}: malformed JSON ({e.msg}); fix the line or pass --skip-bad") from None
                records.append((lineno, None))
    convs, bad = [], 0
    for n, rec in records:
        try:
            if rec is None:
                raise ChatFormatError("malformed JSON")
            convs.append(to_messages(rec))
        except ChatFormatError as e:
            if not skip_bad:
                sep = ":" if where == "line" else f" {where} "
                raise ChatDataError(f"{path}{sep}{n}: {e}; fix it or pass --skip-bad") from None
            bad += 1
    if not convs:
        raise ChatDataError(f"{path}: no usable conversations")
    return convs, bad


def common_system_prompts(convs: list[list[dict]]) -> dict[str, str]:
    """The most common system prompt of the conversations in each language (that of their first user turn).

    Fine-tuning records it in the run (config.json "system_prompts"): where the learning code must add a
    system prompt (memory's notes, livelm/learn/memory.py), the model answers best under the one it was
    trained with. A language whose conversations mostly have no system prompt gets none. Ties go to the
    prompt seen first, so the record is the same for the same data."""
    counts: dict[str, Counter] = {}
    for conv in convs:
        question = next((m["content"] for m in conv if m["role"] == "user"), None)
        if question is None:
            continue
        system = conv[0]["content"] if conv[0]["role"] == "system" else None
        counts.setdefault(language(question), Counter())[system] += 1
    return {lang: top for lang, c in sorted(counts.items()) if (top := c.most_common(1)[0][0])}


@dataclass
class Example:
    x: np.ndarray        # input ids
    y: np.ndarray        # next-token targets, -1 where no loss (non-assistant tokens)


def encode_examples(convs: list[list[dict]], tokenizer, block_size: int) -> tuple[list[Example], int]:
    """Render each conversation; returns (examples, number dropped for being longer than block_size)."""
    out, too_long = [], 0
    for msgs in convs:
        ids, mask = render(msgs, tokenizer)
        if len(ids) - 1 > block_size:
            too_long += 1
            continue
        ids_a, mask_a = np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool)
        y = np.where(mask_a[1:], ids_a[1:], -1)
        out.append(Example(ids_a[:-1], y))
    return out, too_long


class PackedChats:
    """Conversations packed into rows of block_size tokens; batch i is a deterministic function of (seed, i).

    Several conversations share a row, each with its own doc id, so attention
    and positions restart at every conversation (see models/gpt.py:doc_attention_mask).
    """

    def __init__(self, examples: list[Example], block_size: int, pad_id: int, seed: int):
        if not examples:
            raise ChatDataError("no conversations fit the context window")
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(examples))
        rows_x, rows_y, rows_d = [], [], []
        cur_x, cur_y, cur_d, doc = [], [], [], 0
        for i in order:
            ex = examples[i]
            if len(cur_x) + len(ex.x) > block_size:
                rows_x.append(cur_x); rows_y.append(cur_y); rows_d.append(cur_d)
                cur_x, cur_y, cur_d = [], [], []
            cur_x += ex.x.tolist(); cur_y += ex.y.tolist(); cur_d += [doc] * len(ex.x)
            doc += 1
        if cur_x:
            rows_x.append(cur_x); rows_y.append(cur_y); rows_d.append(cur_d)
        n = len(rows_x)
        self.x = np.full((n, block_size), pad_id, dtype=np.int64)
        self.y = np.full((n, block_size), -1, dtype=np.int64)
        self.doc = np.full((n, block_size), -1, dtype=np.int64)  # padding is its own "document"
        for r in range(n):
            k = len(rows_x[r])
            self.x[r, :k], self.y[r, :k], self.doc[r, :k] = rows_x[r], rows_y[r], rows_d[r]
        self.seed = seed

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, index: int, batch_size: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        rows = rng.choice(len(self.x), size=batch_size, replace=len(self.x) < batch_size)
        return {"idx": torch.from_numpy(self.x[rows]), "targets": torch.from_numpy(self.y[rows]),
                "doc_ids": torch.from_numpy(self.doc[rows])}

    def eval_batches(self, batch_size: int):
        """All rows in order, for a deterministic held-out loss."""
        for s in range(0, len(self.x), batch_size):
            yield {"idx": torch.from_numpy(self.x[s:s + batch_size]), "targets": torch.from_numpy(self.y[s:s + batch_size]),
                   "doc_ids": torch.from_numpy(self.doc[s:s + batch_size])}
