"""Labelled and paired text files: what `finetune --task classify|tag` and `train --arch seq2seq` read.

    classify   label<TAB>text (.tsv/.txt), label,text (.csv) or JSONL {"label", "text"};
               a first line whose label is "label" is a header
    tag        JSONL {"tokens": [...], "tags": [...]} or CoNLL: word<TAB>tag lines, blank line between sentences
    pairs      source<TAB>target lines (further columns, e.g. attribution, ignored)
"""
from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

from livelm import io
from livelm.data.shards import DataError
from livelm.data.split import heldout_split


def _text_field(rec: dict):
    for key in ("text", "sentence", "content", "review"):
        if isinstance(rec.get(key), str):
            return rec[key]
    return None


def _utf8(reader):
    """A reader whose file turns out not to be UTF-8 part way through raises DataError, not UnicodeDecodeError."""
    @functools.wraps(reader)
    def read(path, *args, **kwargs):
        try:
            return reader(path, *args, **kwargs)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 (byte {e.start} of a line); save it as UTF-8") from None
    return read


@_utf8
def read_labelled(path: str | Path, skip_bad: bool = False) -> tuple[list[tuple[str, str]], int]:
    """[(label, text)] from label<TAB>text, CSV (label first) or JSONL {"label", "text"}; and the bad-line count."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labelled data not found: {path}")
    out, bad = [], 0
    suffix = path.suffix.lower()
    with open(path, encoding="utf-8-sig", newline="") as fh:
        if suffix == ".csv":
            records = ((n, row[0] if row else "", ",".join(row[1:])) for n, row in enumerate(csv.reader(fh), 1))
        elif suffix in (".jsonl", ".json"):
            def parse(n, line):
                try:
                    rec = io.parse_json(line)
                except json.JSONDecodeError:
                    return n, "", None
                if not isinstance(rec, dict):
                    return n, "", None
                return n, "" if rec.get("label") is None else str(rec["label"]), _text_field(rec)
            records = (parse(n, line) for n, line in enumerate(fh, 1) if line.strip())
        else:
            records = ((n, *(line.rstrip("\r\n").split("\t", 1) + [None])[:2]) for n, line in enumerate(fh, 1)
                       if line.strip())
        for n, label, text in records:
            label = label.strip()
            if n == 1 and label.lower() in ("label", "labels"):
                continue   # a header line
            if not label or text is None or not text.strip():
                if not skip_bad:
                    raise DataError(f"{path}:{n}: expected a label and a text (label<TAB>text, CSV label,text "
                                    f"or JSONL {{\"label\", \"text\"}}); pass --skip-bad to skip such lines")
                bad += 1
                continue
            out.append((label, text.strip()))
    if not out:
        raise DataError(f"{path} holds no labelled examples")
    return out, bad


@_utf8
def read_tagged(path: str | Path, skip_bad: bool = False) -> tuple[list[tuple[list[str], list[str]]], int]:
    """[(words, tags)] from JSONL {"tokens", "tags"} or CoNLL (word<TAB>tag, blank line between sentences)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tagged data not found: {path}")
    out, bad = [], 0
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    if path.suffix.lower() in (".jsonl", ".json"):
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = io.parse_json(line)
                words, tags = rec["tokens"], rec.get("tags", rec.get("labels"))
                assert isinstance(words, list) and isinstance(tags, list) and len(words) == len(tags) and words
                out.append(([str(w) for w in words], [str(t) for t in tags]))
            except (json.JSONDecodeError, KeyError, TypeError, AssertionError):
                if not skip_bad:
                    raise DataError(f"{path}:{n}: expected {{\"tokens\": [...], \"tags\": [...]}} of equal "
                                    f"length; pass --skip-bad to skip such lines") from None
                bad += 1
    else:
        words, tags = [], []
        for n, line in enumerate(lines + [""], 1):
            if not line.strip():
                if words:
                    out.append((words, tags))
                words, tags = [], []
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) < 2:
                if not skip_bad:
                    raise DataError(f"{path}:{n}: expected word<TAB>tag; pass --skip-bad to skip such lines")
                bad += 1
                continue
            words.append(parts[0])
            tags.append(parts[-1])
    if not out:
        raise DataError(f"{path} holds no tagged sentences")
    return out, bad


@_utf8
def read_pairs(path: str | Path, reverse: bool = False) -> list[tuple[str, str]]:
    """(source, target) from source<TAB>target[<TAB>...] lines; reverse swaps the two columns."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"sentence pairs not found: {path} (expected a source<TAB>target file)")
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
            raise DataError(f"{path}:{n}: expected source<TAB>target")
        s, t = cols[0].strip(), cols[1].strip()
        pairs.append((t, s) if reverse else (s, t))
    if not pairs:
        raise DataError(f"{path} holds no sentence pairs")
    return pairs


def split_pairs(pairs: list, holdout: int, seed: int) -> tuple[list, list]:
    """A fixed held-out set, chosen by seed: (train, heldout), each in the file's order."""
    n_hold = holdout if holdout < len(pairs) else max(1, len(pairs) // 10)
    return heldout_split(pairs, n_hold, [seed, 7], keep_order=True)


def read_train_val(reader, data, val_data, val_fraction: float, skip_bad: bool, seed, log) -> tuple[list, list]:
    """(training examples, held-out examples) for fine-tuning: `reader` (read_labelled, read_tagged) on
    `data`, and on `val_data` if given, else a fixed slice of `data` chosen by `seed`. Skipped bad
    lines are reported through `log`."""
    examples, bad = reader(data, skip_bad)
    if bad:
        log(f"skipped {bad} bad line(s) in {data}")
    if val_data:
        val, vbad = reader(val_data, skip_bad)
        if vbad:
            log(f"skipped {vbad} bad line(s) in {val_data}")
        return examples, val
    rest, val = heldout_split(examples, max(1, int(len(examples) * val_fraction)), seed)
    return rest or examples, val
