"""The generation engine: prefill + KV-cached decode with continuous batching.

Everything that generates text — `livelm generate`, the chat REPL, the HTTP
server, evaluation, RL — goes through `Engine`. Its unit of work is `step()`:

  1. admit waiting sequences while there is a free row and KV memory for their
     prompts; a prompt that starts like a cached one takes the cached blocks and
     skips their prefill (prefix caching, see infer/kv_blocks.py);
  2. give every row a KV block for the tokens this step writes; when the pool
     runs out, the sequence admitted last is preempted: its blocks go back, and
     it waits to be prefilled again (prompt and output so far) when memory frees;
  3. one forward pass: decode one token for every running sequence (each row at
     its own position) and prefill one chunk of each new prompt (long prompts
     take several steps, so they never stall others), packed together when
     there are chunks (see Packing in models/gpt.py);
  4. sample each row with its own parameters and its own seeded generator,
     update its text stream, and retire finished sequences, freeing their blocks.

KV memory is a PagedKVCache (models/kv_cache.py): one pool of blocks, sized by
`kv_cache_memory`, that sequences take as their tokens grow, so memory follows
the tokens held rather than rows x the context window.

`generate()` and `stream()` are loops over `step()` for callers that do not
need a scheduler. The server runs `step()` in a process of its own (serve/engine_process.py).

With `compile=True` the forward pass of step 2 runs through torch.compile
(`compiled_decoder`) when it only decodes; passes with prompt chunks stay eager
(their shapes vary with every prompt).

The engine is not thread-safe: one thread drives it (the server's engine
process has just one).
"""
from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import torch

from livelm import footprint
from livelm.sampling import SamplingParams, is_plain, sample_next, sample_plain, top_logprobs
from livelm.infer.grammar import Constraints, GrammarError
from livelm.infer.textstream import TextStream
from livelm.models import lora
from livelm.infer.kv_blocks import BlockPool, block_keys
from livelm.infer.lookup import propose
from livelm.models.gpt import BatchPlan
from livelm.models.kv_cache import PagedKVCache

log = logging.getLogger("livelm.engine")


def compiled_decoder(model):
    """The model under torch.compile, tuned for decode steps (a few rows, one token each).

    Each decode step reads every weight once, so its floor is memory bandwidth; eager
    PyTorch adds ~400 operator calls per step on top (half the step of a 30M-parameter
    model here). Compiled, inductor fuses each layer into a few C++ loops and computes
    the few-row products as vectorized dot products (models/gpt.py: reduce_linear).
    realize_cpu_opcount_threshold=4 makes inductor store a normalized activation once
    instead of recomputing the layer norm inside the product's loop for every output row
    (measured: the lm_head loop took twice its bandwidth time with the default of 50).
    Guards on module attributes are skipped (0.43 -> 0.08 ms per step at 12 layers): the
    graph is the model as it was compiled, so a model whose modules change later (LoRA
    adapters switched per row, see Engine.step) must decode eagerly or get a new Engine.
    """
    return torch.compile(model, options={"realize_cpu_opcount_threshold": 4,
                                         "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})


@dataclass
class Sequence:
    id: int
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None = None
    out_ids: list[int] = field(default_factory=list)
    text: str = ""                      # text emitted so far (never contains a stop string)
    finish_reason: str | None = None    # "stop" | "length" | "cancelled"
    slot: int | None = None
    prefill_ids: list[int] = field(default_factory=list)   # tokens to prefill: the prompt, or after a
                                        # preemption the prompt and the output so far
    prefilled: int = 0                  # of prefill_ids, tokens already in the cache
    blocks: list[int] = field(default_factory=list)        # KV blocks held, in position order
    keys: list[bytes] = field(default_factory=list)        # names of the full ones (prefix caching)
    key_salt: str = ""                  # the adapter and its load epoch those names were made with
    cached_tokens: int = 0              # prompt tokens found in the prefix cache at admission
    preemptions: int = 0
    kv_len: int = 0                     # positions written in the cache
    draft: list[int] = field(default_factory=list)         # tokens guessed for this step (speculation)
    logprobs: list[dict] = field(default_factory=list)
    created: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    stream: TextStream | None = None
    generator: torch.Generator | None = None
    next_logits: torch.Tensor | None = None   # logits for the next token, after prefill
    raw_logits: torch.Tensor | None = None    # the same before a grammar's mask (for logprobs)
    matcher: object | None = None             # the grammar's state, when the row is constrained (and triggered)
    closed_early: bool = False                # near its token budget, the grammar was steered to close
    cancelled: bool = False

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    logprobs: list[dict]
    cached_tokens: int = 0

    @classmethod
    def of(cls, seq: Sequence) -> "Completion":
        return cls(seq.text, list(seq.out_ids), seq.finish_reason, len(seq.prompt_ids), seq.logprobs,
                   seq.cached_tokens)


@dataclass
class Event:
    """What one step did to one sequence: new text (maybe empty) and whether it finished."""
    seq: Sequence
    delta: str
    finished: bool


class PromptTooLong(ValueError):
    pass


def check_request(prompt_ids: list[int], params: SamplingParams, max_len: int) -> None:
    """Raise ValueError (PromptTooLong for a long prompt) unless the engine can take this sequence."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    if len(prompt_ids) >= max_len:
        raise PromptTooLong(f"the prompt has {len(prompt_ids)} tokens but the context window is "
                            f"{max_len}; shorten it (nothing was truncated)")
    params.validate()


# The KV pool's size when the caller does not name one: what max_batch sequences of the whole window
# need, but at most this much (SmolLM2 in fp32: 46 KB per token, so 512 MiB hold 11,600 tokens, e.g.
# 16 conversations of 700 tokens). The pool's pages become resident as its blocks are first used.
KV_CACHE_BYTES = 512 << 20

# speculation only while a pass stays this few rows (decode rows x (1 + draft)): the few-row products that
# cost what reading the weights costs (models/kernels.py: FEW_ROWS)
SPEC_ROWS = 4


def kv_pool_blocks(cfg, max_batch: int, max_len: int, block_size: int, dtype: torch.dtype,
                   memory: int | None = None) -> int:
    """How many blocks of `block_size` positions a pool of `memory` bytes holds (default: see KV_CACHE_BYTES),
    plus block 0, which pads the tables."""
    per_block = PagedKVCache.bytes_per_block(cfg, block_size, dtype)
    if memory is None:
        memory = min(KV_CACHE_BYTES, max_batch * -(-max_len // block_size) * per_block)
    return memory // per_block + 1


class Engine:
    def __init__(self, model, tokenizer, max_batch: int = 8, max_len: int | None = None,
                 prefill_chunk: int = 256, cache_dtype: torch.dtype | None = None, compile: bool = False,
                 row_adapters: bool = False, kv_cache_memory: int | None = None, kv_block_size: int = 16,
                 prefix_caching: bool = True, speculate: int = 0, memory_reserve: int = 0):
        """max_batch: rows decoded together; max_len: the context window of each sequence (default the
        model's, at most what the KV pool holds); kv_cache_memory: bytes of the KV pool (default
        KV_CACHE_BYTES, or less when max_batch x max_len need less); kv_block_size: positions per block;
        speculate: draft tokens per step guessed by prompt lookup (infer/lookup.py) for greedy rows when
        few rows decode (0 = off); memory_reserve: bytes that must stay free beside the KV pool (a server's
        live-learning updates)."""
        self.model = model.eval()
        # compile=True: decode steps run through torch.compile (compiled_decoder). The first steps compile
        # three graphs (1 row, 2-4 rows, 5+ rows; tens of seconds on a CPU, see warm_up)
        self.decode_model = compiled_decoder(model) if compile else model
        self.tokenizer = tokenizer
        self.cfg = model.cfg
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.device = next(model.parameters()).device
        # the KV cache's dtype: the model's, but fp32 on a CPU (the attention then runs in fp32, 6-8x faster
        # than PyTorch's bf16 CPU attention at decode shapes, measured with ATen at AVX512 and at AVX2 alike:
        # 0.17 vs 1.5 ms per call at 16 rows x 272 positions; see CausalSelfAttention)
        dtype = cache_dtype or (torch.float32 if self.device.type == "cpu" else next(model.parameters()).dtype)
        window = min(max_len or self.cfg.block_size, self.cfg.block_size)
        blocks = kv_pool_blocks(self.cfg, max_batch, window, kv_block_size, dtype, kv_cache_memory)
        # one sequence may fill the whole pool, not more
        self.max_len = min(window, (blocks - 1) * kv_block_size)
        if self.max_len < 2 or blocks < 2:
            raise ValueError(f"kv_cache_memory={kv_cache_memory} bytes hold no useful sequence: a block of "
                             f"{kv_block_size} positions takes "
                             f"{PagedKVCache.bytes_per_block(self.cfg, kv_block_size, dtype)} bytes")
        self.kv_bytes = blocks * PagedKVCache.bytes_per_block(self.cfg, kv_block_size, dtype)
        # the pool's pages become resident as it fills: a pool larger than the memory there is would run
        # out mid-request, hours later (or fail to allocate with a raw RuntimeError); refuse now instead
        parts = {"KV pool": self.kv_bytes, **({"reserved for learning": memory_reserve} if memory_reserve else {})}
        footprint.check(footprint.Estimate("the engine's KV pool", parts, [
            f"--kv-cache-memory {max(self.kv_bytes // 2 >> 20, 1)}MB", "--max-context or --max-batch"]), self.device)
        self.cache = PagedKVCache(self.cfg, max_batch, self.max_len, blocks, kv_block_size,
                                  device=self.device, dtype=dtype)
        self.pool = BlockPool(blocks)
        self.block_size = kv_block_size
        self.prefix_caching = prefix_caching
        self.adapter_epochs: dict[str | None, int] = {}   # bumped when an adapter's weights change (prefix keys)
        self.preemptions = 0
        self.speculate = speculate
        self.drafted = self.accepted = 0   # speculation so far: tokens guessed, tokens kept
        # a min-heap: new sequences take the lowest free rows, so a busy batch occupies rows 0..B-1
        self.free_slots = list(range(max_batch))
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._ids = itertools.count()
        self.default_stop_ids = set(tokenizer.stop_ids)   # eos and the end-of-turn tokens
        # imported models often pad the embedding past the tokenizer (Qwen: 151,936 rows for 151,665
        # tokens); the padding rows are no tokens, so they are never sampled
        self.vocab = min(tokenizer.vocab_size, self.cfg.vocab_size)
        # row_adapters: each sequence may name its own LoRA adapter (serving several, live learning): the rows
        # of a step then run their adapters through lora.set_row_adapters, and decode stays eager (a compiled
        # graph would not see the modules change)
        self.row_adapters = row_adapters
        self.constraints = None   # grammar.Constraints, made when the first constrained request arrives

    def use_row_adapters(self) -> None:
        """From now on each row runs its own adapter (a live-learning server loaded its first one).

        An engine built without adapters keeps its compiled decode until this is called: building
        every learning server in row mode from the start would give up compiled decode, and a step
        per token of set_row_adapters, for servers that never load an adapter."""
        self.row_adapters = True

    def warm_up(self) -> None:
        """Run a few tiny batches so a compiled engine compiles before real requests arrive: one row
        (static shapes), then two (batch and lengths become symbolic), then more rows than the few-row
        path takes (their products go to the usual matmul). A no-op when decode is eager."""
        if self.decode_model is self.model or self.row_adapters:
            return
        from livelm.models.kernels import Linear
        params = SamplingParams.greedy(4, ignore_eos=True)
        for rows in sorted({1, min(2, self.max_batch), min(Linear.few_rows + 1, self.max_batch)}):
            self.generate([[self.tokenizer.pad_id] * 2] * rows, [params.copy() for _ in range(rows)])

    # ---- queueing ----------------------------------------------------------
    def add(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None = None) -> Sequence:
        check_request(prompt_ids, params, self.max_len)
        seq = Sequence(next(self._ids), list(prompt_ids), params, adapter=adapter, prefill_ids=list(prompt_ids))
        if params.grammar is not None:
            if self.constraints is None:
                self.constraints = Constraints(self.tokenizer, self.vocab)
            if params.grammar_trigger is None:
                seq.matcher = self.constraints.matcher(params.grammar)   # GrammarError (a ValueError) if unusable
        seq.stream = TextStream(self.tokenizer, params.stop)
        seq.generator = torch.Generator(device="cpu")
        if params.seed is not None:
            seq.generator.manual_seed(params.seed)
        else:
            seq.generator.seed()
        self.waiting.append(seq)
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Mark a sequence cancelled; the next step retires it and frees its slot."""
        seq.cancelled = True

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- one scheduler step ------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[Event]:
        events: list[Event] = []
        for seq in [s for s in self.waiting if s.cancelled]:
            self.waiting.remove(seq)
            seq.finish_reason = "cancelled"
            events.append(Event(seq, "", True))
        for seq in [s for s in self.running if s.cancelled]:
            self._retire(seq, "cancelled")
            events.append(Event(seq, "", True))
        self._admit()

        # One forward pass: a decode token for every sequence whose next-token logits are not pending,
        # and one prompt chunk for every admitted-but-unfilled sequence (long prompts take several
        # steps, so they never stall the others). Packed together, the chunks' tokens share every
        # Linear with the decode rows (see Packing in models/gpt.py) instead of a pass of their own.
        if self.speculate:
            self._propose()
        self._reserve_blocks()   # may preempt the latest sequences when the pool runs out
        decode = sorted((s for s in self.running if s.prefilled == len(s.prefill_ids) and s.next_logits is None),
                        key=lambda s: s.slot)
        verify = [s for s in decode if s.draft]
        decode = [s for s in decode if not s.draft]
        fills = [s for s in self.running if s.prefilled < len(s.prefill_ids)]
        # constrained rows that get logits in this pass: their masks are computed while it runs
        masked = [s for s in decode + [f for f in fills if f.prefilled + self.prefill_chunk >= len(f.prefill_ids)]
                  if s.matcher is not None] if self.constraints is not None else []
        masks = self.constraints.start(masked) if masked else None
        if fills or verify:
            self._forward_packed(decode, fills, verify)
        elif decode:
            self._forward_decode(decode)
        if masks is not None:
            self.constraints.apply(masked, masks, [self._budget(s) - len(s.out_ids) for s in masked])
        ready = [s for s in self.running if s.next_logits is not None and not s.draft]   # drafts: see _accept
        # rows that only use a temperature are sampled together; penalties and filters go row by row
        plain = [s for s in ready if is_plain(s.params)]
        tokens = dict(zip((s.id for s in plain),
                          sample_plain(torch.stack([s.next_logits for s in plain]), [s.params for s in plain],
                                       [s.generator for s in plain]) if plain else []))
        for seq in ready:
            events.append(self._sample(seq, tokens.get(seq.id)))
        for seq in verify:
            events += self._accept(seq)
        if self.prefix_caching:
            for seq in decode + fills + verify:
                self._publish(seq)
        return events

    def _forward_decode(self, seqs: list[Sequence]) -> None:
        """The last token of each sequence through one batched pass (rows sorted by slot)."""
        idx = torch.tensor([[s.out_ids[-1]] for s in seqs], device=self.device)
        # the longest row's length after this step is known here, so the model needs no device
        # sync (or graph break) for it
        kv_len = max(len(s.prompt_ids) + len(s.out_ids) for s in seqs)
        for s in seqs:
            s.kv_len = len(s.prompt_ids) + len(s.out_ids)
        self._activate_adapters([s.adapter for s in seqs])
        # adapters are switched per step by changing modules, which a compiled graph would not see
        model = self.model if self.row_adapters else self.decode_model
        # a tensor (eager, the model reads consecutive rows as views of the cache); compiled, one
        # with a symbolic length, so one graph serves every batch size (slice bounds would be
        # constants, one graph per batch)
        slots = torch.tensor([s.slot for s in seqs], device=self.device)
        if model is not self.model:
            torch._dynamo.maybe_mark_dynamic(idx, 0)
            torch._dynamo.maybe_mark_dynamic(slots, 0)
        logits = model(idx, plan=BatchPlan(cache=self.cache, slots=slots, last_only=True, kv_len=kv_len))[:, -1]
        for s, row in zip(seqs, logits[:, :self.vocab]):
            s.next_logits = row

    def _forward_packed(self, decode: list[Sequence], fills: list[Sequence], verify: list[Sequence] = ()) -> None:
        """Decode tokens, drafts to verify and prompt chunks in one eager pass, a row per token: (N, 1)."""
        tokens = [s.out_ids[-1] for s in decode]
        slots = [s.slot for s in decode]
        adapters = [s.adapter for s in decode]
        segments, done, checked = [], [], []
        kv_len = max((len(s.prompt_ids) + len(s.out_ids) for s in decode), default=0)
        for s in decode:
            s.kv_len = len(s.prompt_ids) + len(s.out_ids)
        for s in verify:   # the last token and the draft after it: logits at every one of them
            run = [s.out_ids[-1]] + s.draft
            segments.append((len(tokens), len(tokens) + len(run)))
            checked.append((s, len(tokens), len(tokens) + len(run)))
            tokens += run
            slots += [s.slot] * len(run)
            adapters += [s.adapter] * len(run)
            kv_len = max(kv_len, len(s.prompt_ids) + len(s.out_ids) + len(s.draft))
        for s in fills:
            chunk = s.prefill_ids[s.prefilled:s.prefilled + self.prefill_chunk]
            segments.append((len(tokens), len(tokens) + len(chunk)))
            tokens += chunk
            slots += [s.slot] * len(chunk)
            adapters += [s.adapter] * len(chunk)
            s.prefilled += len(chunk)
            s.kv_len = s.prefilled
            kv_len = max(kv_len, s.prefilled)
            if s.prefilled == len(s.prefill_ids):
                done.append((s, len(tokens) - 1))   # its last prompt token's logits pick the first answer token
        out = decode + [s for s, _ in done]
        rows = list(range(len(decode))) + [row for _, row in done]
        for _, lo, hi in checked:
            rows += range(lo, hi)
        self._activate_adapters(adapters)
        plan = BatchPlan(cache=self.cache, slots=torch.tensor(slots, device=self.device), segments=segments,
                         out_rows=torch.tensor(rows, dtype=torch.long, device=self.device), kv_len=kv_len)
        logits = self.model(torch.tensor(tokens, device=self.device)[:, None], plan=plan)[:, -1, :self.vocab]
        for s, row in zip(out, logits):
            s.next_logits = row
        at = len(out)
        for s, lo, hi in checked:
            s.next_logits = logits[at:at + hi - lo]        # (1 + len(draft), V): read by _accept
            at += hi - lo

    # ---- speculation (prompt lookup) ------------------------------------------
    def _propose(self) -> None:
        """Drafts for this step's greedy decode rows, when few rows decode: at batch 1 a pass's cost is
        reading the weights, so verifying k guesses costs little more than decoding one token; in a full
        batch every extra row is compute, and speculation would slow the others down."""
        rows = [s for s in self.running if s.prefilled == len(s.prefill_ids) and s.next_logits is None]
        k = min(self.speculate, SPEC_ROWS // max(len(rows), 1) - 1)
        for s in rows:
            s.draft = []
            p = s.params
            if k < 1 or p.temperature != 0 or not is_plain(p) or p.grammar is not None or p.logprobs is not None:
                continue
            room = self._budget(s) - len(s.out_ids) - 1          # the model's own token follows the draft
            s.draft = propose(s.prompt_ids + s.out_ids, min(k, room))

    def _accept(self, seq: Sequence) -> list[Event]:
        """Keep the draft up to the model's first disagreement, then the model's token there."""
        logits, draft = seq.next_logits, seq.draft
        seq.next_logits, seq.draft = None, []
        choice = logits.argmax(-1).tolist()                         # greedy rows only (see _propose)
        n = 0
        while n < len(draft) and draft[n] == choice[n]:
            n += 1
        self.drafted += len(draft)
        self.accepted += n
        # the pass wrote the last token and the whole draft; only the kept part stays in the cache
        seq.kv_len = len(seq.prompt_ids) + len(seq.out_ids) + n
        self.cache.lengths[seq.slot] = seq.kv_len
        events = []
        for token, row in zip(draft[:n] + [choice[n]], logits):
            seq.next_logits = row
            events.append(self._sample(seq, token))
            if seq.finished:
                break
        return events

    # ---- KV memory -----------------------------------------------------------
    def _salt(self, seq: Sequence) -> str:
        """What computed a sequence's keys and values besides its tokens: its adapter, as loaded now."""
        return f"{seq.adapter}#{self.adapter_epochs.get(seq.adapter, 0)}"

    def adapter_changed(self, name: str | None) -> None:
        """An adapter's weights changed (loaded or reloaded under `name`): prefixes it computed are stale."""
        self.adapter_epochs[name] = self.adapter_epochs.get(name, 0) + 1

    def _admit(self) -> None:
        """Move waiting sequences to free rows, first come first served, while the pool has blocks for
        their prompts (beyond the blocks found in the prefix cache) and a few to spare for the running
        rows' next tokens."""
        P = self.block_size
        while self.waiting and self.free_slots:
            seq = self.waiting[0]
            hits = []
            if self.prefix_caching:
                # full blocks only, and never the whole prompt: its last token must run to give logits.
                # Named once per wait (a prompt waiting for memory is looked up again at every step),
                # again if its adapter was reloaded meanwhile
                salt = self._salt(seq)
                if seq.key_salt != salt or len(seq.keys) != (len(seq.prefill_ids) - 1) // P:
                    seq.keys, seq.key_salt = block_keys(seq.prefill_ids[:len(seq.prefill_ids) - 1], P, salt), salt
                hits = self.pool.lookup(seq.keys)
            need = -(-len(seq.prefill_ids) // P) - len(hits)
            if need + len(self.running) > self.pool.available:   # a block to spare for each running row
                self.pool.release(hits)
                break      # wait for memory; no overtaking, so a long prompt is not starved
            self.waiting.popleft()
            seq.keys = seq.keys[:len(hits)]
            seq.blocks, seq.prefilled = hits, len(hits) * P
            seq.kv_len = seq.prefilled
            if seq.preemptions == 0:
                seq.cached_tokens = seq.prefilled
                self.pool.hit_tokens += seq.prefilled
                self.pool.query_tokens += len(seq.prefill_ids)
            seq.slot = heapq.heappop(self.free_slots)
            self.cache.assign(seq.slot, hits, seq.prefilled)
            self.running.append(seq)

    def _reserve_blocks(self) -> None:
        """Blocks for every position this step writes: a decode row's next token, a prefill's next chunk.
        Oldest sequences first; when the pool is out of blocks, the newest running sequence is preempted
        (vLLM's policy: the least work lost) until the rest fit."""
        P = self.block_size
        for seq in list(self.running):
            if seq not in self.running:        # preempted to make room for an older one
                continue
            if seq.prefilled < len(seq.prefill_ids):
                end = min(seq.prefilled + self.prefill_chunk, len(seq.prefill_ids))
            else:
                end = len(seq.prompt_ids) + len(seq.out_ids) + len(seq.draft)
            fresh = []
            while len(seq.blocks) * P < end:
                block = self.pool.allocate()
                if block is None:
                    victim = self.running[-1]
                    self._preempt(victim)
                    if victim is seq:
                        break
                    continue
                self.cache.extend(seq.slot, len(seq.blocks), block)
                seq.blocks.append(block)
                fresh.append(block)
            if fresh:
                self.cache.clear(fresh)

    def _preempt(self, seq: Sequence) -> None:
        """Give back a running sequence's blocks; it waits at the head of the queue and, when admitted
        again, prefills its prompt and output so far (recompute: on a CPU cheaper than swapping out)."""
        log.info("sequence %d preempted: the KV pool is full", seq.id)
        self.running.remove(seq)
        self.pool.release(seq.blocks)
        seq.blocks, seq.keys, seq.draft = [], [], []
        heapq.heappush(self.free_slots, seq.slot)
        seq.slot = None
        seq.prefill_ids = seq.prompt_ids + seq.out_ids
        seq.prefilled = 0
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)

    def _publish(self, seq: Sequence) -> None:
        """Name the blocks this pass filled, so later prompts that start the same way can share them."""
        if seq.slot is None:
            return
        full = seq.kv_len // self.block_size
        if full > len(seq.keys):
            tokens = (seq.prompt_ids + seq.out_ids)[:full * self.block_size]
            new = block_keys(tokens, self.block_size, self._salt(seq), seq.keys[-1] if seq.keys else None,
                             len(seq.keys))
            for i, key in enumerate(new, start=len(seq.keys)):
                self.pool.publish(seq.blocks[i], key)
            seq.keys += new

    def kv_stats(self) -> dict:
        """The KV pool now: size, blocks held and cached, prefix-cache hits, preemptions so far."""
        pool = self.pool
        return {"kv_cache_bytes": self.kv_bytes, "block_size": self.block_size, "blocks": pool.num_blocks - 1,
                "blocks_used": pool.used, "blocks_cached": len(pool.cached),
                "prefix_hit_tokens": pool.hit_tokens, "prefix_query_tokens": pool.query_tokens,
                "preemptions": self.preemptions, "spec_drafted": self.drafted, "spec_accepted": self.accepted}

    def _activate_adapters(self, names: list[str | None]) -> None:
        if self.row_adapters:
            lora.set_row_adapters(self.model, names)

    def _sample(self, seq: Sequence, token: int | None = None) -> Event:
        """Append a token (sampled here unless `token` was already drawn in a batch) and stream its text."""
        logits, seq.next_logits = seq.next_logits, None
        if token is None:
            processed = logits.float()   # logprobs below still report the model's own
            for proc in seq.params.processors:
                out = proc(seq.prompt_ids, seq.out_ids, processed)
                if isinstance(out, int):
                    if processed[out] > -float("inf"):   # a token the grammar (if any) allows
                        token = out
                        break
                    continue
                processed = out
            if token is None:
                token = sample_next(processed, seq.params, seq.prompt_ids, seq.out_ids, seq.generator)
        if seq.params.logprobs is not None:
            raw, seq.raw_logits = (seq.raw_logits if seq.raw_logits is not None else logits), None
            seq.logprobs.append(top_logprobs(raw, token, seq.params.logprobs, self.tokenizer))
        if seq.first_token_at is None:
            seq.first_token_at = time.perf_counter()
        stop_ids = self.default_stop_ids if seq.params.stop_token_ids is None else set(seq.params.stop_token_ids)
        if token in stop_ids and not seq.params.ignore_eos:
            delta = seq.stream.finish()
            seq.text += delta
            self._retire(seq, "stop")
            return Event(seq, delta, True)
        seq.out_ids.append(token)
        delta, stopped = seq.stream.push(token)
        # a complete grammar leaves nothing to say: the row ends now, without a step for its end token
        complete = not stopped and seq.params.grammar is not None and self._advance_grammar(seq, token)
        if complete or not stopped and len(seq.out_ids) >= self._budget(seq):
            delta += seq.stream.finish()
            # a grammar closed early to fit the budget still ends as "length": the answer was cut
            stopped = seq.stream.stopped or complete and not seq.closed_early
            seq.text += delta
            self._retire(seq, "stop" if stopped else "length")
            return Event(seq, delta, True)
        seq.text += delta
        if stopped:
            self._retire(seq, "stop")
        return Event(seq, delta, stopped)

    def _budget(self, seq: Sequence) -> int:
        """How many tokens the sequence may produce in all: max_tokens, or what the window leaves."""
        return min(seq.params.max_tokens, self.max_len - len(seq.prompt_ids))

    def _advance_grammar(self, seq: Sequence, token: int) -> bool:
        """Move a constrained row's matcher past `token` (or start it, if this token completed its trigger);
        True when the grammar is complete, so the row ends here without waiting for its end token."""
        if seq.matcher is None:
            seq.matcher = self.constraints.after_trigger(seq)
            return False
        try:
            return self.constraints.advance(seq, token)
        except GrammarError as e:   # cannot happen through the mask; end this row, not the whole step
            log.warning("sequence %d: %s", seq.id, e)
            return True

    def abort(self, seq: Sequence) -> None:
        """Retire a sequence now, without waiting for a step (the server gives up on it); frees its slot."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        if not seq.finished:
            self._retire(seq, "cancelled")

    def _retire(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        if seq.slot is not None:
            if self.prefix_caching and seq.next_logits is None:   # (mid-pass, the cache holds more than kv_len)
                self._publish(seq)
            heapq.heappush(self.free_slots, seq.slot)
            seq.slot = None
        self.pool.release(seq.blocks)
        seq.blocks, seq.keys = [], []

    # ---- convenience loops -------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                 adapters: list[str | None] | None = None) -> list[Completion]:
        """Generate for a batch of prompts (any lengths); returns completions in prompt order."""
        plist = params if isinstance(params, list) else [params.copy() for _ in prompts]
        seqs = [self.add(p, sp, adapter=(adapters[i] if adapters else None))
                for i, (p, sp) in enumerate(zip(prompts, plist))]
        while not all(s.finished for s in seqs):
            self.step()
        return [Completion.of(s) for s in seqs]

    def stream(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None = None) -> Iterator[str]:
        """Yield text deltas for one prompt. Closing the iterator early cancels the sequence."""
        return self.iter_text(self.add(prompt_ids, params, adapter=adapter))

    def iter_text(self, seq: Sequence) -> Iterator[str]:
        """Drive the engine until `seq` finishes, yielding its text deltas; the caller keeps `seq`
        for its finish_reason and token counts. Closing the iterator early cancels it."""
        try:
            while not seq.finished:
                for ev in self.step():
                    if ev.seq is seq and ev.delta:
                        yield ev.delta
        finally:
            if not seq.finished:
                self.cancel(seq)
                self.step()
