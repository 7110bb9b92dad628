"""Prompt-lookup speculation: the same greedy tokens as plain decoding, in fewer passes."""
import pytest
import torch

from livelm.infer.engine import Engine
from livelm.infer.lookup import propose
from livelm.models.gpt import GPT, GPTConfig, PRESETS
from livelm.sampling import SamplingParams
from tests.infer.conftest import TEXT


@pytest.fixture(scope="module")
def model(tok):
    """Trained a little on the repeating texts, so its greedy answers repeat (and drafts get accepted)."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=2, n_head=4, d_model=32, **PRESETS["llama"]))
    ids = torch.tensor([tok.encode(" ".join(TEXT * 3))[:128]])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(40):
        _, loss = m(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def test_propose_follows_the_latest_earlier_occurrence():
    assert propose([1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3], k=2) == [7, 5]      # the most recent match
    assert propose([4, 5, 6, 4, 5], k=3) == [6, 4, 5]
    assert propose([1, 2, 3, 4], k=3) == [] and propose([7], k=3) == [] and propose([1, 1], k=0) == []
    assert propose([8, 1, 9, 1], k=2, min_ngram=1) == [9, 1] and propose([8, 1, 9, 1], k=2) == []


@pytest.mark.parametrize("prompt", ["你好，世界！🙂 Hello world. 枫叶小铺", "ab" * 6, "émoji 中英 text 👍🏽"])
def test_speculation_gives_the_tokens_of_plain_greedy_decoding(model, tok, prompt):
    ids = tok.encode(prompt)
    params = SamplingParams.greedy(60, ignore_eos=True)
    plain = Engine(model, tok, max_batch=1).generate([ids], params.copy())[0]
    eng = Engine(model, tok, max_batch=1, speculate=3)
    steps, seq = 0, eng.add(ids, params.copy())
    while not seq.finished:
        eng.step()
        steps += 1
    assert seq.out_ids == plain.token_ids and len(seq.out_ids) == 60 and seq.finish_reason == "length"
    assert seq.text == plain.text
    assert eng.accepted > 0 and steps < 60          # some passes gave more than one token
    assert eng.pool.used == 0


def test_speculation_respects_stop_strings_budget_and_other_rows(model, tok):
    ids = tok.encode("ab" * 6)
    stop = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, stop=["ba"])
    plain = Engine(model, tok, max_batch=2).generate([ids], stop.copy())[0]
    spec = Engine(model, tok, max_batch=2, speculate=3).generate([ids], stop.copy())[0]
    assert (spec.text, spec.finish_reason) == (plain.text, plain.finish_reason)
    # a sampled row beside a greedy one: neither speculates into the other's tokens
    sampled = SamplingParams(max_tokens=30, temperature=0.9, seed=3, ignore_eos=True)
    greedy = SamplingParams.greedy(30, ignore_eos=True)
    alone = [Engine(model, tok, max_batch=1).generate([ids], p.copy())[0].token_ids for p in (sampled, greedy)]
    together = Engine(model, tok, max_batch=2, speculate=1).generate([ids, ids], [sampled.copy(), greedy.copy()])
    assert [c.token_ids for c in together] == alone
