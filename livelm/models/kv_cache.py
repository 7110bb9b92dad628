"""Where a decoder keeps the keys and values of the tokens it has seen: contiguous rows, or paged blocks.

Both caches give the attention (models/gpt.py) the same three things: `lengths` (tokens stored per
row), `write` (the new tokens' keys and values, each at its row and position) and `read` (a row's
first T positions as (R, Hkv, T, D) tensors, in position order). So every model family, the packed
prefill and the masks (causal, sliding window) work unchanged over either.

KVCache       one row of max_len positions per sequence, allocated up front. Simple, and reads are
              views; used by translation's beam search (it reorders rows) and by small fixed batches.
PagedKVCache  one pool of fixed-size blocks; a row holds only the blocks its tokens fill, listed in
              its block table (vLLM's PagedAttention). Memory follows the tokens actually held, and
              rows may share the blocks of a common prefix. Which row owns which block is the
              engine's business (livelm/infer/kv_blocks.py); this class only moves keys and values.

Shapes: L layers, R rows, Hkv K/V heads, D head size, T positions, N blocks of P positions each.
"""
from __future__ import annotations

import math

import torch


class KVCache:
    """Keys and values of every layer for up to `slots` sequences of `max_len` positions.

    k, v: (L, slots, Hkv, max_len, D); lengths: (slots,) tokens stored per slot.
    """

    def __init__(self, cfg, slots: int, max_len: int, device=None, dtype=torch.float32):
        shape = (cfg.n_layer, slots, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self.max_len = max_len

    def write(self, layer: int, rows: torch.Tensor, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v (B, Hkv, S, D) of the new tokens; rows, pos (B, S): each token's cache row and position."""
        kt, vt = k.transpose(1, 2).to(self.k.dtype), v.transpose(1, 2).to(self.v.dtype)   # (B, S, Hkv, D)
        # one index_put_ on the whole cache, the layer given as an index too: under torch.compile a
        # write into a view of the cache (self.k[layer]) makes inductor copy the whole cache each step
        at_layer = torch.full_like(rows, layer)
        self.k[at_layer, rows, :, pos] = kt
        self.v[at_layer, rows, :, pos] = vt

    def read(self, layer: int, rows: torch.Tensor | slice, T: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of `rows` (a slice: views of the cache; a tensor: a gather), the first T
        positions, as `dtype`: (R, Hkv, T, D) each."""
        if isinstance(rows, slice):
            return self.k[layer, rows, :, :T].to(dtype), self.v[layer, rows, :, :T].to(dtype)
        return self.k[layer][rows, :, :T].to(dtype), self.v[layer][rows, :, :T].to(dtype)


class PagedKVCache:
    """Keys and values in blocks of `block_size` positions drawn from one pool of `num_blocks`.

    k, v: (L, Hkv, N, P, D): block b holds P consecutive positions of one sequence, for every layer.
    tables: (rows, max_len / P) block ids: row r's position p lives in block tables[r, p // P], at
    offset p % P. Block 0 is never handed out: it stays zero and pads the tables, so reading a short
    row next to a long one gathers finite zeros where its mask hides the keys (a masked weight is an
    exact 0, and 0 * finite = 0; stale NaNs would not be).

    The pool is made with torch.empty and a block is zeroed when the engine hands it out
    (`clear`), so a pool's pages become resident as its blocks are first used, not all at start.
    """

    def __init__(self, cfg, rows: int, max_len: int, num_blocks: int, block_size: int = 16,
                 device=None, dtype=torch.float32):
        if num_blocks < 2:
            raise ValueError(f"a paged KV cache needs at least 2 blocks (block 0 pads the tables); got {num_blocks}")
        self.block_size, self.num_blocks, self.max_len = block_size, num_blocks, max_len
        shape = (cfg.n_layer, cfg.n_kv_head, num_blocks, block_size, cfg.head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.clear([0])
        self.tables = torch.zeros(rows, math.ceil(max_len / block_size), dtype=torch.long, device=device)
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self._where = None   # (positions, flat index) of the pass being written (see write)
        self._buffer = None  # gathered keys and values (see read)

    @staticmethod
    def bytes_per_block(cfg, block_size: int, dtype: torch.dtype) -> int:
        return 2 * cfg.n_layer * cfg.n_kv_head * block_size * cfg.head_dim * (torch.finfo(dtype).bits // 8)

    def clear(self, blocks: list[int]) -> None:
        """Zero these blocks (in every layer) before a row uses them."""
        idx = torch.tensor(blocks, device=self.k.device)
        self.k[:, :, idx] = 0
        self.v[:, :, idx] = 0

    def assign(self, row: int, blocks: list[int], length: int) -> None:
        """Row `row` now holds `blocks` (in position order), the first `length` positions already written."""
        self.tables[row].zero_()
        if blocks:
            self.tables[row, :len(blocks)] = torch.tensor(blocks, device=self.tables.device)
        self.lengths[row] = length

    def extend(self, row: int, index: int, block: int) -> None:
        """Row `row`'s block number `index` (positions index*P .. index*P+P-1) is `block`."""
        self.tables[row, index] = block

    def write(self, layer: int, rows: torch.Tensor, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v (B, Hkv, S, D) of the new tokens; rows, pos (B, S): each token's row and position."""
        P = self.block_size
        if torch.compiler.is_compiling():
            # one index_put_ on the whole pool, the layer given as an index too (as KVCache.write): a write
            # into a view of it (self.k[layer]) makes inductor copy the whole pool every step. And nothing
            # remembered between layers: dynamo would guard on the remembered tensor and recompile.
            block, offset = self.tables[rows, pos // P], pos % P                              # (B, S)
            at_layer = torch.full_like(block, layer)
            self.k[at_layer, :, block, offset] = k.transpose(1, 2).to(self.k.dtype)          # (B, S, Hkv, D)
            self.v[at_layer, :, block, offset] = v.transpose(1, 2).to(self.v.dtype)
            return
        # every layer of a pass writes the same positions: their pool index is worked out once (the
        # attention hands each layer the same `pos` tensor)
        if self._where is None or self._where[0] is not pos:
            self._where = (pos, self.tables[rows, pos // P] * P + pos % P)
        flat = self._where[1]
        Hkv, N, _, D = self.k.shape[1:]
        self.k[layer].view(Hkv, N * P, D)[:, flat] = k.transpose(0, 1).to(self.k.dtype)    # (Hkv, B, S, D)
        self.v[layer].view(Hkv, N * P, D)[:, flat] = v.transpose(0, 1).to(self.v.dtype)

    def read(self, layer: int, rows: torch.Tensor | slice, T: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of `rows`, the first T positions, gathered through the block tables: (R, Hkv, T, D)
        each (a copy; the batch and head strides are the gather's, each row's (T, D) is contiguous)."""
        if torch.compiler.is_compiling():
            return self._read_positions(layer, rows, T, dtype)
        P = self.block_size
        blocks = self.tables[rows, :-(-T // P)]                                               # (R, nb)
        R, nb = blocks.shape
        Hkv, D = self.k.shape[1], self.k.shape[-1]
        # index_select, not self.k[layer][:, blocks]: the advanced index took ~8 ms per call here (a generic
        # strided kernel), index_select ~5 us for the same copy (bench: 10 blocks of 3 x 16 x 64). Into
        # buffers kept from layer to layer: a fresh 12 MB tensor per gather (16 rows x 1,024 positions)
        # cost 2.8x the copy itself in page faults. Each layer's attention has used its keys before the
        # next layer reads, so one pair of buffers serves every layer.
        flat = blocks.reshape(-1)
        k, v = self._scratch(R * nb)
        torch.index_select(self.k[layer], 1, flat, out=k)
        torch.index_select(self.v[layer], 1, flat, out=v)
        k = k.view(Hkv, R, nb * P, D)[:, :, :T].transpose(0, 1)                              # (R, Hkv, T, D)
        v = v.view(Hkv, R, nb * P, D)[:, :, :T].transpose(0, 1)
        return k.to(dtype), v.to(dtype)

    def _read_positions(self, layer: int, rows: torch.Tensor | slice, T: int, dtype: torch.dtype):
        """read() as a compiled graph wants it: one index per position (T of them per row, block and offset
        worked out from the table), so no shape depends on T // P. Sizes computed from both T and the
        block count made dynamo specialize on how they relate and recompile as sequences grew. (Inductor may
        fuse the gather into the attention's loops; compiled decode measured as fast as before paging.)"""
        P = self.block_size
        pos = torch.arange(T, device=self.tables.device)
        table = self.tables[rows]                                                          # (R, max blocks)
        flat = (table[:, pos // P] * P + pos % P).reshape(-1)                              # (R * T,)
        Hkv, N, _, D = self.k.shape[1:]
        R = table.size(0)
        k = self.k[layer].view(Hkv, N * P, D).index_select(1, flat).view(Hkv, R, T, D).transpose(0, 1)
        v = self.v[layer].view(Hkv, N * P, D).index_select(1, flat).view(Hkv, R, T, D).transpose(0, 1)
        return k.to(dtype), v.to(dtype)

    def _scratch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two contiguous (Hkv, n, P, D) buffers for gathered keys and values, grown as needed."""
        Hkv, _, P, D = self.k.shape[1:]
        size = Hkv * n * P * D
        if self._buffer is None or self._buffer.numel() < 2 * size:
            self._buffer = torch.empty(2 * max(size, self._buffer.numel() if self._buffer is not None else 0),
                                       dtype=self.k.dtype, device=self.k.device)
        return self._buffer[:size].view(Hkv, n, P, D), self._buffer[size:2 * size].view(Hkv, n, P, D)
