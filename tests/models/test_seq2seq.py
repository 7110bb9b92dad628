import pytest
import torch

from livelm.models.gpt import KVCache
from livelm.models.seq2seq import Seq2Seq, Seq2SeqConfig, beam_search, greedy
from livelm.training.objectives import seq2seq_loss


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


BOS, EOS, PAD = 1, 2, 0
TINY = dict(src_vocab_size=40, tgt_vocab_size=40, block_size=16, n_enc_layer=2, n_dec_layer=2, n_head=2,
            d_model=32, dropout=0.0)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return Seq2Seq(Seq2SeqConfig(**{**TINY, **kw})).eval()


def test_decoder_is_causal_and_cross_attention_reads_the_source():
    model = _model()
    src = torch.randint(11, 40, (1, 6))
    pad = torch.ones_like(src, dtype=torch.bool)
    tgt = torch.randint(11, 40, (1, 8))
    later = tgt.clone()
    later[0, 6] = (tgt[0, 6] - 10) % 29 + 11                       # change a later target token
    a, b = model(src, pad, tgt), model(src, pad, later)
    torch.testing.assert_close(a[:, :6], b[:, :6])                  # earlier positions cannot see it
    assert not torch.allclose(a[:, 6], b[:, 6])
    other = src.clone()
    other[0, 0] = (src[0, 0] - 10) % 29 + 11                        # change one source token
    assert not torch.allclose(model(other, pad, tgt)[:, 0], a[:, 0])   # every target position sees the source
    # ... and source padding is invisible
    src_p = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], 1)
    torch.testing.assert_close(model(src_p, torch.arange(9)[None] < 6, tgt), a, atol=1e-5, rtol=1e-5)


def test_cached_decoding_matches_teacher_forcing():
    model = _model()
    src = torch.randint(11, 40, (2, 5))
    pad = torch.ones_like(src, dtype=torch.bool)
    tgt = torch.randint(11, 40, (2, 7))
    full = model(src, pad, tgt)
    kv = model.encode(src, pad)
    cache = KVCache(model.dec_cfg, 2, 8)
    slots = torch.arange(2)
    steps = [model.decode(tgt[:, :3], kv, pad, cache, slots)]        # a 3-token prefill, then one at a time
    steps += [model.decode(tgt[:, t:t + 1], kv, pad, cache, slots) for t in range(3, 7)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def _fit_copy_reverse(model):
    """Teach the model to reverse 4 short sequences."""
    srcs = [[11, 12, 13, EOS], [14, 15, EOS], [16, 17, 18, 19, EOS], [20, 11, EOS]]
    tgts = [list(reversed(s[:-1])) for s in srcs]
    from livelm.models.seq2seq import pad_batch
    src = pad_batch(srcs, PAD)
    batch = {"src": src, "src_pad": src != PAD, "idx": pad_batch([[BOS, *t] for t in tgts], PAD),
             "targets": pad_batch([[*t, EOS] for t in tgts], -1)}
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(120):
        loss = seq2seq_loss(model, batch, label_smoothing=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return srcs, tgts, loss.item()


def test_overfits_tiny_pairs_and_beam_1_equals_greedy():
    model = _model(seed=1)
    srcs, tgts, loss = _fit_copy_reverse(model)
    assert loss < 0.05
    assert greedy(model, srcs, BOS, EOS, PAD) == tgts
    assert beam_search(model, srcs, BOS, EOS, PAD, beam=3) == tgts
    # beam 1 is greedy, also where translations are garbage and run to the length limit
    fresh = _model(seed=2)
    noise = [[int(t) for t in torch.randint(11, 40, (n,))] + [EOS] for n in (3, 6, 9)]
    for m in (model, fresh):
        assert beam_search(m, noise, BOS, EOS, PAD, beam=1, max_len=10) == greedy(m, noise, BOS, EOS, PAD, max_len=10)
    # separate vocabularies: the source side has its own embedding
    sep = _model(shared_vocab=False, src_vocab_size=50)
    assert sep.encoder.wte.weight.shape[0] == 50 and sep.wte.weight is not sep.encoder.wte.weight
    assert len(greedy(sep, [[45, 46, EOS]], BOS, EOS, PAD, max_len=4)[0]) <= 4
