"""Token shards on disk and deterministic batch sampling from them.

A prepared data directory holds:
    meta.json             dtype, vocab size, shard lists, token and byte counts
    tokenizer.json        the tokenizer that produced the ids
    train_000.bin ...     flat uint16/uint32 token ids (numpy memmap)
    val_000.bin ...

Batches are a pure function of (seed, split, index): the same run with the same
seed sees the same data in the same order, which is what makes `--resume` and
multi-process training reproduce a single-process loss curve.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch


class DataError(Exception):
    pass


class ShardWriter:
    """Append token ids to <prefix>_NNN.bin files, rolling over every `shard_tokens` tokens."""

    def __init__(self, out_dir: Path, prefix: str, dtype: np.dtype, shard_tokens: int = 50_000_000):
        self.out_dir, self.prefix, self.dtype, self.shard_tokens = Path(out_dir), prefix, dtype, shard_tokens
        self.shards: list[str] = []
        self.tokens = 0
        self._fh = None
        self._in_shard = 0

    def write(self, ids) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        while arr.size:
            if self._fh is None or self._in_shard >= self.shard_tokens:
                self._roll()
            take = min(arr.size, self.shard_tokens - self._in_shard)
            self._fh.write(arr[:take].tobytes())
            self._in_shard += take
            self.tokens += take
            arr = arr[take:]

    def _roll(self) -> None:
        self._close_current()
        name = f"{self.prefix}_{len(self.shards):03d}.bin"
        self.shards.append(name)
        self._fh = open(self.out_dir / (name + ".tmp"), "wb")
        self._in_shard = 0

    def _close_current(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            name = self.shards[-1]
            os.replace(self.out_dir / (name + ".tmp"), self.out_dir / name)
            self._fh = None

    def close(self) -> None:
        self._close_current()


class TokenData:
    """Memory-mapped train/val token streams with deterministic random windows."""

    def __init__(self, data_dir: str | Path):
        self.dir = Path(data_dir)
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{self.dir} is not a prepared data directory (no meta.json); "
                            f"run `livelm prepare INPUT --out {self.dir}` first")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{meta_path} is corrupt: {e}") from None
        dtype = np.dtype(self.meta["dtype"])
        self.splits: dict[str, list[np.memmap]] = {}
        for split in ("train", "val"):
            arrays = []
            for name in self.meta[split]["shards"]:
                path = self.dir / name
                if not path.is_file():
                    raise DataError(f"missing shard {path}; re-run `livelm prepare`")
                if path.stat().st_size:
                    arrays.append(np.memmap(path, dtype=dtype, mode="r"))
            self.splits[split] = arrays
        self.vocab_size = int(self.meta["vocab_size"])

    def tokens(self, split: str) -> int:
        return sum(a.size for a in self.splits[split])

    def bytes_per_token(self, split: str = "val") -> float:
        info = self.meta[split]
        return info["bytes"] / max(1, info["tokens"])

    def windows(self, split: str, block_size: int):
        """Every token of `split` once, in consecutive windows: (x, y) int64 tensors of shape (1, T),
        T <= block_size (shorter at a shard's end). No sampling noise: what `livelm eval` reads."""
        for arr in self.splits[split]:
            for start in range(0, arr.size - 1, block_size):
                window = torch.from_numpy(arr[start:start + block_size + 1].astype(np.int64))
                if window.numel() >= 2:
                    yield window[:-1][None], window[1:][None]

    def batch(self, split: str, index: int, batch_size: int, block_size: int, seed: int):
        """Batch number `index` of `split`: (x, y) int64 tensors of shape (batch_size, block_size)."""
        arrays = [a for a in self.splits[split] if a.size > block_size + 1]
        if not arrays:
            need = block_size + 2
            raise DataError(f"the {split} split has no shard with more than {need} tokens; "
                            f"use a smaller --block-size or more data (or a larger --val-fraction)")
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
        sizes = np.array([a.size - block_size - 1 for a in arrays], dtype=np.float64)
        which = rng.choice(len(arrays), size=batch_size, p=sizes / sizes.sum())
        x = np.empty((batch_size, block_size), dtype=np.int64)
        y = np.empty((batch_size, block_size), dtype=np.int64)
        for row, k in enumerate(which):
            start = int(rng.integers(0, arrays[k].size - block_size - 1))
            window = arrays[k][start:start + block_size + 1].astype(np.int64)
            x[row], y[row] = window[:-1], window[1:]
        return {"idx": torch.from_numpy(x), "targets": torch.from_numpy(y)}
