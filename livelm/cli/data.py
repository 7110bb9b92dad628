"""`livelm prepare`: text files, folders and JSONL -> a tokenizer and token shards (livelm/data/prepare.py)."""
from __future__ import annotations

from pathlib import Path

from livelm.cli import emit

PARSER_KW = {"prepare": {"description": "Train (or reuse) a tokenizer and write token shards with a train/val split."}}


def prepare_flags(p) -> None:
    p.add_argument("inputs", nargs="+", help="text files, folders, or JSONL files")
    p.add_argument("--out", required=True, type=Path, help="output data directory")
    p.add_argument("--tokenizer", choices=["bpe", "char"], default="bpe", help="tokenizer kind (default bpe)")
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size (default 4096)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="tail of each file kept for validation (default 0.1)")
    p.add_argument("--reuse-tokenizer", metavar="PATH", help="use this tokenizer.json (or run dir) instead of training one")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_prepare(a) -> int:
    from livelm.data.prepare import prepare
    meta = prepare(a.inputs, a.out, tokenizer_kind=a.tokenizer, vocab_size=a.vocab_size,
                   val_fraction=a.val_fraction, reuse_tokenizer=a.reuse_tokenizer, progress=not a.quiet)
    emit({"out": str(a.out), "vocab_size": meta["vocab_size"], "train_tokens": meta["train"]["tokens"],
          "val_tokens": meta["val"]["tokens"]})
    return 0
