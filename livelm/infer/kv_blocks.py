"""Who holds which block of the paged KV cache: allocation, shared prefixes, eviction.

The engine keeps keys and values in one pool of fixed-size blocks (models/kv_cache.PagedKVCache); a
sequence holds the blocks its tokens fill, in order. BlockPool decides which blocks those are.

- Prefix caching. A *full* block (all its positions written) is named by a hash of every token up to
  its end, and of what computed it (the adapter): the same name means the same keys and values. When
  a new sequence starts with the tokens of a cached chain — a system prompt, a conversation's earlier
  turns, live-learning notes — it takes those blocks and its prefill starts after them (vLLM's
  automatic prefix caching; SGLang's RadixAttention keeps the same in a tree).
- Sharing needs no copies. Blocks are reference-counted, and a sequence only ever writes into its last,
  partial block, which is never shared: a shared block is always full, so copy-on-write never has
  anything to copy, and no sequence can write where another reads.
- Eviction. A full block that no sequence holds stays cached, least recently used first out, until
  its memory is needed; a new block comes from the recycled blocks, then from never-used memory
  (whose pages the pool has not touched yet), then from the oldest cached block.

Hashes are blake2b over the token ids, chained block to block: a tenant cannot craft a prompt whose
blocks collide with another tenant's.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict


def block_keys(tokens: list[int], block_size: int, salt: str, parent: bytes | None = None,
               start: int = 0) -> list[bytes]:
    """Names of the full blocks of `tokens` from block `start` on; `parent` is the name of block start-1
    (None at the first block, whose name starts from `salt`)."""
    keys = []
    prev = parent if parent is not None else hashlib.blake2b(salt.encode(), digest_size=16).digest()
    for i in range(start, len(tokens) // block_size):
        chunk = array("q", tokens[i * block_size:(i + 1) * block_size]).tobytes()
        prev = hashlib.blake2b(prev + chunk, digest_size=16).digest()
        keys.append(prev)
    return keys


class BlockPool:
    """Blocks 1..num_blocks-1 of a PagedKVCache (block 0 pads the block tables and is never handed out)."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.recycled: list[int] = []          # freed blocks, reused first (their pages are resident already)
        self.next_fresh = 1                    # blocks from here on were never used
        self.refs = [0] * num_blocks
        self.key_of: dict[int, bytes] = {}     # full block -> its name
        self.block_of: dict[bytes, int] = {}   # name -> block
        self.cached: OrderedDict[int, None] = OrderedDict()   # named blocks nobody holds, oldest first
        self.hit_tokens = 0                    # prompt tokens found in the cache / asked for (statistics)
        self.query_tokens = 0

    @property
    def available(self) -> int:
        """Blocks that can be handed out now (free, never used, or cached but held by no one)."""
        return len(self.recycled) + (self.num_blocks - self.next_fresh) + len(self.cached)

    @property
    def used(self) -> int:
        """Blocks some sequence holds."""
        return self.num_blocks - 1 - self.available

    def allocate(self) -> int | None:
        """A block for one sequence's new tokens (reference count 1), or None when every block is held."""
        if self.recycled:
            block = self.recycled.pop()
        elif self.next_fresh < self.num_blocks:
            block, self.next_fresh = self.next_fresh, self.next_fresh + 1
        elif self.cached:
            block, _ = self.cached.popitem(last=False)            # the least recently used prefix goes
            del self.block_of[self.key_of.pop(block)]
        else:
            return None
        self.refs[block] = 1
        return block

    def lookup(self, keys: list[bytes]) -> list[int]:
        """The cached blocks of the longest prefix of `keys`, each now held once more by the caller."""
        blocks = []
        for key in keys:
            block = self.block_of.get(key)
            if block is None:
                break
            if self.refs[block] == 0:
                del self.cached[block]
            self.refs[block] += 1
            blocks.append(block)
        return blocks

    def publish(self, block: int, key: bytes) -> None:
        """`block` is full and holds the tokens named `key`: later sequences may share it. (When another
        block already holds the same tokens, that one stays the cached copy and this one stays private.)"""
        if key not in self.block_of and block not in self.key_of:
            self.block_of[key] = block
            self.key_of[block] = key

    def release(self, blocks: list[int]) -> None:
        """The caller no longer holds `blocks`. Named ones stay cached (most recent last); others are free."""
        for block in reversed(blocks):   # a sequence's last blocks are the least likely to be shared again
            self.refs[block] -= 1
            if self.refs[block] == 0:
                if block in self.key_of:
                    self.cached[block] = None
                else:
                    self.recycled.append(block)

    def forget_cached(self) -> None:
        """Drop every cached prefix nobody holds (their blocks become free)."""
        for block in self.cached:
            del self.block_of[self.key_of.pop(block)]
            self.recycled.append(block)
        self.cached.clear()
