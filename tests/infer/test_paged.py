"""The paged KV cache: attention through block tables, prefix caching, preemption, memory coming back."""
import pytest
import torch

from livelm.infer.engine import Engine, PromptTooLong
from livelm.infer.kv_blocks import BlockPool, block_keys
from livelm.models.gpt import GPT, GPTConfig, PRESETS, BatchPlan
from livelm.models.kv_cache import KVCache, PagedKVCache
from livelm.sampling import SamplingParams


def tiny(vocab: int, **kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=vocab, block_size=128, n_layer=3, n_head=4, d_model=32, **PRESETS["llama"])
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


@pytest.fixture(scope="module")
def model(tok):
    return tiny(tok.vocab_size)


# Mistral-style sliding windows on some layers (Gemma's mix), GQA 4/2, RoPE
FAMILIES = {"llama-gqa": {}, "sliding-mix": dict(sliding_window=5, layer_types=["sliding_attention", "full_attention",
                                                                                 "sliding_attention"]),
            "gpt2": dict(PRESETS["gpt2"], n_kv_head=4)}


@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_paged_attention_equals_contiguous(family):
    """Three rows with prompts of different lengths, prefilled in chunks that cross block boundaries, then
    decoded together: the paged cache (blocks of 4, scattered through the pool) gives the same logits as
    the contiguous one, within 1e-5 in fp32."""
    model = tiny(97, **FAMILIES[family])
    lengths, P = [11, 3, 17], 4
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (n,), generator=g) for n in lengths]
    flat = KVCache(model.cfg, 3, 64)
    paged = PagedKVCache(model.cfg, 3, 64, num_blocks=64, block_size=P)
    order = torch.randperm(63, generator=g).add(1).tolist()          # blocks handed out in a scrambled order
    for row in range(3):
        blocks = [order.pop() for _ in range(16)]
        paged.clear(blocks)                                           # as the engine does when it hands them out
        paged.assign(row, blocks, 0)
    for cache in (flat, paged):
        cache.lengths.zero_()
    outs = {}
    for name, cache in (("flat", flat), ("paged", paged)):
        logits = []
        for row, ids in enumerate(prompts):   # prefill in chunks of 6 (not a multiple of the block size)
            for lo in range(0, len(ids), 6):
                chunk = ids[lo:lo + 6][None]
                logits.append(model(chunk, plan=BatchPlan(cache=cache, slots=torch.tensor([row])))[0])
        tokens = torch.tensor([[5], [7], [9]])
        for _ in range(6):   # decode the three rows together
            out = model(tokens, plan=BatchPlan(cache=cache, slots=torch.arange(3), last_only=True))[:, -1]
            logits.append(out)
            tokens = out.argmax(-1, keepdim=True)
        outs[name] = logits
    for a, b in zip(outs["flat"], outs["paged"]):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()


def test_prefix_cache_hits_give_the_tokens_of_a_cold_run(model, tok):
    system = tok.encode("枫叶小铺的乌龙茶 ¥56。Mixed 中英 text 👍🏽 " * 3)
    turn2 = system + tok.encode("你好，世界！🙂 Hello world.")
    greedy = SamplingParams.greedy(12, ignore_eos=True)
    warm = Engine(model, tok, max_batch=2, kv_block_size=4)
    warm.generate([system], greedy.copy())
    hit = warm.generate([turn2], greedy.copy())[0]
    cold = Engine(model, tok, max_batch=2, kv_block_size=4, prefix_caching=False).generate([turn2], greedy.copy())[0]
    assert hit.cached_tokens >= len(system) - 4 and cold.cached_tokens == 0
    assert hit.token_ids == cold.token_ids
    # a different adapter name keys different blocks: nothing is shared across adapters
    assert warm.kv_stats()["prefix_hit_tokens"] == hit.cached_tokens


def test_generated_tokens_are_cached_for_the_next_turn(model, tok):
    """Turn 2's prompt holds turn 1's prompt and answer: the answer's blocks come from the cache too."""
    eng = Engine(model, tok, max_batch=1, kv_block_size=4)
    prompt = tok.encode("你好，世界！🙂 Hello")
    first = eng.generate([prompt], SamplingParams.greedy(20, ignore_eos=True))[0]
    second = eng.generate([prompt + first.token_ids + tok.encode(" ab")], SamplingParams.greedy(4, ignore_eos=True))[0]
    assert second.cached_tokens >= (len(prompt) + 20) // 4 * 4 - 4 > len(prompt)


def test_shared_blocks_are_never_written_and_rows_never_see_each_other(model, tok):
    """Two sequences share a cached prefix and then write different tokens: each gets exactly the tokens it
    gets alone, and the shared blocks' contents do not change while they decode."""
    base = tok.encode("枫叶小铺的乌龙茶 ¥56。" * 3)
    prompts = [base + tok.encode("你好"), base + tok.encode("Hello world. ab")]
    params = [SamplingParams(max_tokens=16, temperature=0.9, seed=s, ignore_eos=True) for s in (1, 2)]
    eng = Engine(model, tok, max_batch=2, kv_block_size=4)
    eng.generate([base], SamplingParams.greedy(1))
    shared = list(eng.pool.cached)
    before = eng.cache.k[:, :, shared].clone()
    together = eng.generate(prompts, [p.copy() for p in params])
    assert all(c.cached_tokens > 0 for c in together)
    assert torch.equal(eng.cache.k[:, :, shared], before)
    for prompt, p, got in zip(prompts, params, together):
        alone = Engine(model, tok, max_batch=1, prefix_caching=False).generate([prompt], p.copy())[0]
        assert got.token_ids == alone.token_ids


def test_preemption_under_a_tiny_pool_gives_the_tokens_of_an_ample_one(model, tok):
    prompts = [tok.encode(t) for t in ("你好", "Hello world. 枫叶小铺的乌龙茶", "ab" * 5, "🙂 émoji 中英", "¥56。")]
    params = [SamplingParams(max_tokens=40, temperature=0.7, seed=i, ignore_eos=True) for i in range(5)]
    ample = Engine(model, tok, max_batch=5, kv_block_size=4).generate(prompts, [p.copy() for p in params])
    per_block = PagedKVCache.bytes_per_block(model.cfg, 4, torch.float32)
    small = Engine(model, tok, max_batch=5, kv_block_size=4, kv_cache_memory=24 * per_block)
    got = small.generate(prompts, [p.copy() for p in params])
    assert small.preemptions > 0
    assert [c.token_ids for c in got] == [c.token_ids for c in ample]
    assert all(c.finish_reason == "length" and len(c.token_ids) == 40 for c in got)
    assert small.pool.used == 0


def test_memory_returns_to_the_pool_after_cancel_and_abort(model, tok):
    eng = Engine(model, tok, max_batch=3, kv_block_size=4)
    seqs = [eng.add(tok.encode(t), SamplingParams.greedy(30, ignore_eos=True)) for t in ("你好", "ab" * 9, "🙂")]
    for _ in range(5):
        eng.step()
    assert eng.pool.used > 0
    eng.cancel(seqs[0])
    eng.abort(seqs[1])             # the server gave up on it (a client disconnected)
    eng.step()
    assert eng.pool.used == len(seqs[2].blocks)
    stream = eng.stream(tok.encode("Hello"), SamplingParams.greedy(30, ignore_eos=True))
    next(stream)
    stream.close()                 # closing a stream early cancels it
    while eng.has_work:
        eng.step()
    assert eng.pool.used == 0 and eng.free_slots == [0, 1, 2]


def test_pool_size_bounds_the_window_and_refuses_what_cannot_fit(model, tok):
    per_block = PagedKVCache.bytes_per_block(model.cfg, 16, torch.float32)
    eng = Engine(model, tok, max_batch=4, kv_cache_memory=3 * per_block)
    assert eng.max_len == 48 and eng.kv_stats()["blocks"] == 3
    with pytest.raises(PromptTooLong, match="context window is 48"):
        eng.add(list(range(3, 60)), SamplingParams.greedy(4))
    with pytest.raises(ValueError, match="hold no useful sequence"):
        Engine(model, tok, kv_cache_memory=10)


def test_adapter_change_invalidates_its_prefixes(model, tok):
    eng = Engine(model, tok, max_batch=1, kv_block_size=4)
    prompt = tok.encode("枫叶小铺的乌龙茶 ¥56。" * 2)
    eng.generate([prompt], SamplingParams.greedy(1))
    assert eng.generate([prompt], SamplingParams.greedy(1))[0].cached_tokens > 0
    eng.adapter_changed(None)
    assert eng.generate([prompt], SamplingParams.greedy(1))[0].cached_tokens == 0


def test_block_pool_reuses_recycled_then_fresh_then_evicts_the_oldest_cached():
    pool = BlockPool(4)                                    # blocks 1..3
    keys = block_keys(list(range(8)), 4, "x")
    a, b = pool.allocate(), pool.allocate()
    pool.publish(a, keys[0])
    pool.release([a, b])                                   # a stays cached, b is recycled
    assert pool.available == 3 and list(pool.cached) == [a]
    assert pool.allocate() == b and pool.allocate() == 3   # recycled, then never-used memory
    assert pool.allocate() == a and not pool.cached        # then the cached prefix is evicted
    assert pool.allocate() is None and pool.lookup(keys) == []
    assert block_keys(list(range(8)), 4, "x") != block_keys(list(range(8)), 4, "y")
