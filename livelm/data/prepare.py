"""`livelm prepare`: text files, folders and JSONL -> tokenizer + token shards.

Input is streamed line by line (a file larger than RAM is fine): one pass to
train the tokenizer (skipped when one is reused), one pass to encode. The last
`val_fraction` of every file's bytes becomes validation data — for a single
file this is exactly nanoGPT's split (first 90% train, last 10% val).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from livelm import io
from livelm.data.shards import DataError, ShardWriter
from livelm.tokenizer import Tokenizer

TEXT_SUFFIXES = {".txt", ".md", ".text", ".jsonl", ".json", ".tsv", ".csv"}
CHUNK_BYTES = 256 * 1024   # encode in ~256 KB pieces: large enough for batch speed, small enough for memory


def find_inputs(inputs: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise DataError(f"folder {p} holds no text files ({', '.join(sorted(TEXT_SUFFIXES))})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        elif p.exists():
            raise DataError(f"{p} is neither a file nor a folder")
        else:
            raise DataError(f"input not found: {p}")
    for f in files:
        try:
            with open(f, "rb"):
                pass
        except OSError as e:
            raise DataError(f"cannot read {f}: {e.strerror}") from None
    if sum(f.stat().st_size for f in files) == 0:
        raise DataError("all inputs are empty; nothing to prepare")
    return files


def jsonl_text(record, where: str) -> str:
    """The trainable text of one JSONL record: `text`, chat `messages`, or Alpaca fields."""
    if isinstance(record, dict):
        if isinstance(record.get("text"), str):
            return record["text"]
        if isinstance(record.get("messages"), list):
            return "\n".join(str(m.get("content", "")) for m in record["messages"] if isinstance(m, dict))
        if "instruction" in record and "output" in record:
            return "\n".join(str(record.get(k, "")) for k in ("instruction", "input", "output") if record.get(k))
    raise DataError(f"{where}: expected an object with \"text\", \"messages\" or \"instruction\"/\"output\"")


def iter_pieces(files: list[Path], val_fraction: float, progress: tqdm | None = None) -> Iterator[tuple[str, str, bool]]:
    """Yield (split, text, ends_document). Each JSONL record and each text file is one document."""
    for path in files:
        size = path.stat().st_size
        boundary = int(size * (1 - val_fraction))
        is_jsonl = path.suffix.lower() == ".jsonl"
        offset, buf, buf_split = 0, [], "train"
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                split = "train" if offset < boundary else "val"
                offset += len(raw)
                if progress is not None:
                    progress.update(len(raw))
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start} of the line); "
                                    f"convert the file to UTF-8 first (e.g. iconv -f GBK -t UTF-8)") from None
                if is_jsonl:
                    if not line.strip():
                        continue
                    try:
                        record = io.parse_json(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
                    yield split, jsonl_text(record, f"{path}:{lineno}"), True
                    continue
                if split != buf_split and buf:
                    yield buf_split, "".join(buf), False
                    buf = []
                buf_split = split
                buf.append(line)
                if sum(map(len, buf)) >= CHUNK_BYTES:
                    yield split, "".join(buf), False
                    buf = []
        if not is_jsonl:
            yield buf_split, "".join(buf), True


def prepare(inputs: list[str | Path], out: str | Path, tokenizer_kind: str = "bpe", vocab_size: int = 4096,
            val_fraction: float = 0.1, reuse_tokenizer: str | Path | None = None, progress: bool = True) -> dict:
    if not 0 < val_fraction < 1:
        raise DataError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    files = find_inputs(inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    total = sum(f.stat().st_size for f in files)

    def bar(desc):
        return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not progress, dynamic_ncols=True)

    if reuse_tokenizer:
        tok = Tokenizer.load(reuse_tokenizer)
    else:
        with bar("tokenizer") as pbar:
            texts = (text for _, text, _ in iter_pieces(files, val_fraction, pbar))
            tok = Tokenizer.train_char(texts) if tokenizer_kind == "char" else \
                Tokenizer.train_bpe(texts, vocab_size=vocab_size, show_progress=False)
    tok.save(out / "tokenizer.json")

    dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
    writers = {s: ShardWriter(out, s, dtype) for s in ("train", "val")}
    nbytes = {"train": 0, "val": 0}
    with bar("encode") as pbar:
        for split, text, doc_end in iter_pieces(files, val_fraction, pbar):
            ids = tok.encode(text) if text else []
            if doc_end:
                ids.append(tok.eos_id)
            writers[split].write(ids)
            nbytes[split] += len(text.encode("utf-8"))
    for w in writers.values():
        w.close()
    if writers["train"].tokens == 0:
        raise DataError("the inputs produced no training tokens")
    meta = {
        "version": 1,
        "tokenizer": "tokenizer.json",
        "tokenizer_kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "dtype": np.dtype(dtype).name,
        "val_fraction": val_fraction,
        "inputs": [str(f) for f in files],
        **{s: {"shards": w.shards, "tokens": w.tokens, "bytes": nbytes[s]} for s, w in writers.items()},
    }
    io.write_json(out / "meta.json", meta)
    return meta
