import pytest
import torch

from livelm.models.gpt import BatchPlan, GPT, GPTConfig, KVCache, PRESETS, doc_positions


def tiny(preset: str, **kw) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=4, d_model=32, **{**PRESETS[preset], **kw})
    return GPT(cfg).eval()


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_causal_mask_future_tokens_do_not_change_past_logits(preset):
    model = tiny(preset)
    x = torch.randint(0, 97, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:], atol=1e-3)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_kv_cache_decode_matches_full_forward(preset):
    model = tiny(preset)
    x = torch.randint(0, 97, (1, 24))
    with torch.no_grad():
        full = model(x)
        cache = KVCache(model.cfg, slots=1, max_len=32)
        steps = [model(x[:, :10], plan=BatchPlan(cache=cache))]
        for t in range(10, 24):
            steps.append(model(x[:, t:t + 1], plan=BatchPlan(cache=cache)))
    inc = torch.cat(steps, dim=1)
    assert (inc - full).abs().max().item() < 1e-4


def test_kv_cache_rows_at_different_positions_batch_correctly():
    """Two sequences of different lengths decoded in one batched pass equal each decoded alone."""
    model = tiny("llama")
    a, b = torch.randint(0, 97, (1, 7)), torch.randint(0, 97, (1, 15))
    with torch.no_grad():
        cache = KVCache(model.cfg, slots=3, max_len=32)
        model(a, plan=BatchPlan(cache=cache, slots=torch.tensor([2])))
        model(b, plan=BatchPlan(cache=cache, slots=torch.tensor([0])))
        nxt = torch.tensor([[5], [9]])
        batched = model(nxt, plan=BatchPlan(cache=cache, slots=torch.tensor([2, 0])))
        alone_a = model(torch.cat([a, nxt[:1]], 1))[:, -1]
        alone_b = model(torch.cat([b, nxt[1:]], 1))[:, -1]
    assert (batched[0, -1] - alone_a[0]).abs().max() < 1e-4
    assert (batched[1, -1] - alone_b[0]).abs().max() < 1e-4
    assert cache.lengths.tolist() == [16, 0, 8]


def test_consecutive_and_scattered_cache_rows_agree():
    """Consecutive rows read the cache as views, scattered rows gather it: both equal decoding alone."""
    model = tiny("llama")
    prompts = [torch.randint(0, 97, (1, n)) for n in (5, 11, 8)]
    nxt = torch.tensor([[3], [7], [4]])
    with torch.no_grad():
        alone = [model(torch.cat([p, nxt[i:i + 1]], 1))[0, -1] for i, p in enumerate(prompts)]
        for rows in ([0, 1, 2], [3, 1, 0]):
            cache = KVCache(model.cfg, slots=4, max_len=32)
            for p, r in zip(prompts, rows):
                model(p, plan=BatchPlan(cache=cache, slots=torch.tensor([r])))
            out = model(nxt, plan=BatchPlan(cache=cache, slots=torch.tensor(rows)))[:, -1]
            for i in range(3):
                assert (out[i] - alone[i]).abs().max() < 1e-4, rows


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_packed_pass_prefills_and_decodes_like_separate_passes(preset):
    """One pass, a row per token: a decode token of one sequence and prompt chunks of two others
    (segments) give the logits and cache each would get alone; a later plain decode step agrees too."""
    model = tiny(preset)
    a, b, c = (torch.randint(0, 97, (1, n)) for n in (6, 9, 4))
    with torch.no_grad():
        cache = KVCache(model.cfg, slots=4, max_len=32)
        model(a, plan=BatchPlan(cache=cache, slots=torch.tensor([2])))
        rows = [2] + [0] * 9 + [3] * 4
        tokens = torch.cat([torch.tensor([[5]]), b.T, c.T])                       # (14, 1)
        plan = BatchPlan(cache=cache, slots=torch.tensor(rows), segments=[(1, 10), (10, 14)],
                         out_rows=torch.tensor([0, 9, 13]))
        out = model(tokens, plan=plan)[:, -1]
        alone = [model(torch.cat([a, torch.tensor([[5]])], 1))[0, -1], model(b)[0, -1], model(c)[0, -1]]
        for got, want in zip(out, alone):
            assert (got - want).abs().max() < 1e-4
        assert cache.lengths.tolist() == [9, 0, 7, 4]
        nxt = model(torch.tensor([[1], [2], [3]]), plan=BatchPlan(cache=cache, slots=torch.tensor([0, 2, 3])))[:, -1]
        for got, seq, t in zip(nxt, (b, torch.cat([a, torch.tensor([[5]])], 1), c), (1, 2, 3)):
            assert (got - model(torch.cat([seq, torch.tensor([[t]])], 1))[0, -1]).abs().max() < 1e-4
    with pytest.raises(ValueError, match="consecutive runs"):
        model(tokens, plan=BatchPlan(cache=KVCache(model.cfg, slots=4, max_len=32), slots=torch.tensor(rows),
                                     segments=[(1, 12)]))


def test_gqa_and_untied_head_shapes():
    model = tiny("llama")
    assert model.cfg.n_kv_head == 2 and model.blocks[0].attn.k_proj.out_features == 2 * 8
    assert model.lm_head.weight is not model.wte.weight
    g = tiny("gpt2")
    assert g.lm_head.weight is g.wte.weight


def test_param_count_and_flops_reported():
    model = tiny("gpt2")
    n = model.num_params()
    assert 0 < n < sum(p.numel() for p in model.parameters())  # position table excluded
    assert model.flops_per_token() > 6 * n


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_tiny_model_overfits_one_batch(preset):
    model = tiny(preset).train()
    x = torch.randint(0, 97, (4, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_packed_documents_do_not_see_each_other():
    model = tiny("gpt2")
    doc = torch.tensor([[0] * 6 + [1] * 6])
    x = torch.randint(0, 97, (1, 12))
    y = x.clone()
    y[0, :6] = torch.randint(0, 97, (6,))  # change only the first document
    plan = BatchPlan.packed(doc)
    with torch.no_grad():
        a, b = model(x, plan=plan), model(y, plan=plan)
        alone = model(x[:, 6:])  # the second document on its own, from position 0
    assert torch.allclose(a[:, 6:], b[:, 6:], atol=1e-6)
    assert torch.allclose(a[:, 6:], alone, atol=1e-5)
    assert doc_positions(doc).tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]]


def test_context_window_overflow_is_a_clear_error():
    model = tiny("gpt2")
    with pytest.raises(ValueError, match="context window"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_set_dropout_reaches_every_layer():
    """A fine-tune's --dropout on a run built without dropout must reach the residual and MLP dropouts too."""
    model = tiny("gpt2")
    x = torch.randint(0, 97, (2, 12))
    model.train()
    assert torch.equal(model(x), model(x))          # built with dropout 0: deterministic in train mode
    model.set_dropout(0.3)
    assert all(m.p == 0.3 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_few_rows_linear_equals_linear_and_decode_takes_it(monkeypatch):
    """The decode-time bmm detour computes F.linear, with or without bias, for any N (also N % 8 != 0)."""
    import torch.nn.functional as F
    from livelm.models import kernels
    torch.manual_seed(0)
    for n_out in (8, 1000, 1003):
        lin = kernels.Linear(96, n_out)
        for rows in (1, 3, 4):
            x = torch.randn(1, rows, 96)
            torch.testing.assert_close(kernels.few_rows_linear(x, lin.weight, lin.bias), F.linear(x, lin.weight, lin.bias),
                                       atol=1e-5, rtol=1e-5)
    # a decode step of a model whose matrices pass min_numel goes through the detour; its logits match
    # the ones the plain path gives (and training, with grad on, never takes it)
    cfg = GPTConfig(vocab_size=512, block_size=32, n_layer=1, n_head=2, d_model=64)
    model = GPT(cfg).eval()
    calls = []
    real = kernels.few_rows_linear
    monkeypatch.setattr(kernels, "few_rows_linear", lambda *a: calls.append(1) or real(*a))
    idx = torch.randint(0, 512, (1, 1))
    with torch.no_grad():
        assert not model.lm_head.streams, "a 1-layer 64-wide model fits in the caches"
        for m in model.modules():
            if isinstance(m, kernels.Linear):
                m.streams = True
        fast = model(idx)
        assert calls, "one-row inference should take the few-row path"
        n = len(calls)
        monkeypatch.setattr(kernels.Linear, "few_rows", 0)
        plain = model(idx)
        assert len(calls) == n
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(kernels.Linear, "few_rows", 4)
    model(idx)[0].sum().backward()
    assert len(calls) == n, "with autograd on, the usual F.linear runs"


def test_activation_checkpointing_and_chunked_loss_give_the_same_gradients(monkeypatch):
    """The memory-saving path (blocks recomputed in backward, the loss a chunk of logits at a time)
    computes the same loss and gradients as the plain one."""
    import livelm.models.gpt as gpt
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=300, n_layer=2, d_model=64, n_head=4, block_size=64)).train()
    x, y = torch.randint(0, 300, (3, 60)), torch.randint(0, 300, (3, 60))
    y[:, :10] = -1                                          # the user's turns: no loss
    logits, plain = m(x, y)
    assert logits.shape == (3 * 50, 300)
    plain.backward()
    grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.activation_checkpointing = True
    monkeypatch.setattr(gpt, "LOSS_CHUNK", 7)                # several chunks, the last one short
    logits, saved = m(x, y)
    assert logits is None and torch.allclose(saved, plain)
    saved.backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(grads, m.parameters()))
