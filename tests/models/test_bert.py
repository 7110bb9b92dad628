import numpy as np
import pytest
import torch

from livelm.models.bert import Bert, BertConfig, mask_tokens, nsp_pair, sentence_spans
from livelm.training.objectives import classify_loss, mlm_nsp_loss


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


TINY = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, d_model=32, dropout=0.0)


def test_mlm_masking_statistics():
    rng = np.random.default_rng(0)
    ids = rng.integers(11, 1000, size=(200, 500))
    maskable = np.ones_like(ids, dtype=bool)
    maskable[:, :5] = False                      # e.g. [CLS] and padding: never chosen
    inputs, targets = mask_tokens(ids, maskable, rng, 0.15, mask_id=7, first_id=11, vocab_size=1000)
    chosen = targets >= 0
    assert not chosen[:, :5].any()
    assert abs(chosen.sum() / maskable.sum() - 0.15) < 0.005
    assert (targets[chosen] == ids[chosen]).all() and (targets[~chosen] == -1).all()
    assert (inputs[~chosen] == ids[~chosen]).all()           # unchosen tokens are untouched
    n = chosen.sum()
    masked = (inputs == 7) & chosen
    kept = (inputs == ids) & chosen
    replaced = chosen & ~masked & ~kept
    assert abs(masked.sum() / n - 0.8) < 0.01
    assert abs(kept.sum() / n - 0.1) < 0.01                  # (a random token equal to the original counts as kept)
    assert abs(replaced.sum() / n - 0.1) < 0.01
    assert inputs[replaced].min() >= 11                      # random replacements are never special ids


def test_mask_always_chooses_something():
    ids = np.full((1, 3), 20)
    _, targets = mask_tokens(ids, np.ones_like(ids, dtype=bool), np.random.default_rng(1), 0.0, 7, 11, 64)
    assert (targets >= 0).sum() == 1


def _corpus():
    """Sentence k is [100 + k] * (1 + k % 3); newline id 1; a blank line (two newlines) after sentence 9."""
    stream, NL = [], 1
    for k in range(30):
        stream += [100 + k] * (1 + k % 3) + [NL]
        if k == 9:
            stream.append(NL)
    newlines = np.zeros(200, dtype=int)
    newlines[NL] = 1
    return np.array(stream), newlines


def test_sentence_spans_and_documents():
    stream, newlines = _corpus()
    spans, doc = sentence_spans(stream, newlines, eos_id=2)
    assert len(spans) == 30
    assert [stream[s] for s, _ in spans] == [100 + k for k in range(30)]
    assert [int(e - s) for s, e in spans] == [1 + k % 3 for k in range(30)]
    assert (doc[:10] == doc[0]).all() and (doc[10:] == doc[10]).all() and doc[0] != doc[10]


def test_nsp_pairs_are_real_continuations_half_the_time():
    stream, newlines = _corpus()
    spans, doc = sentence_spans(stream, newlines, eos_id=2)
    rng = np.random.default_rng(0)
    labels = []
    for _ in range(2000):
        a, b, is_next = nsp_pair(stream, spans, doc, rng, max_len=12)
        assert a and b and len(a) + len(b) <= 12 - 3
        last_a, first_b = a[-1] - 100, b[0] - 100
        if is_next:
            assert first_b == last_a + 1 and (last_a < 9) == (first_b <= 9)   # the next sentence, same document
        else:
            assert first_b != last_a + 1
        labels.append(is_next)
    # sentences at the end of a document have no real continuation, so slightly under 50%
    assert 0.4 < np.mean(labels) < 0.5


def test_encoder_is_bidirectional():
    torch.manual_seed(0)
    model = Bert(BertConfig(**TINY)).eval()
    x = torch.randint(11, 64, (1, 10))
    y = x.clone()
    y[0, 8] = (x[0, 8] + 1 - 11) % 53 + 11       # change a later token
    h1, h2 = model(x)["hidden"], model(y)["hidden"]
    assert not torch.allclose(h1[0, 2], h2[0, 2], atol=1e-5)   # an earlier position sees it
    # padding is invisible: appending pad tokens does not change the real positions
    xp = torch.cat([x, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.arange(14)[None] < 10
    torch.testing.assert_close(model(xp, mask)["hidden"][:, :10], h1, atol=1e-5, rtol=1e-5)


ROWS = torch.tensor([[9, 20, 21, 8], [9, 30, 31, 8], [9, 40, 41, 8], [9, 50, 51, 8]])


def _fit(model, objective, batch, steps, lr=3e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        loss = objective(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_classifier_overfits_a_tiny_dataset():
    torch.manual_seed(0)
    model = Bert(BertConfig(**TINY, task="classify", labels=["neg", "pos"]))
    batch = {"idx": ROWS, "pad_mask": torch.ones_like(ROWS, dtype=torch.bool), "labels": torch.tensor([0, 1, 0, 1])}
    assert _fit(model, classify_loss, batch, 40) < 0.05
    assert model.eval()(ROWS)["logits"].argmax(-1).tolist() == [0, 1, 0, 1]


def test_masked_lm_and_nsp_overfit_a_tiny_dataset():
    torch.manual_seed(0)
    model = Bert(BertConfig(**TINY))
    targets = torch.full_like(ROWS, -1)
    targets[:, 1] = ROWS[:, 1]                  # predict the masked 2nd token from the 3rd
    inputs = ROWS.clone()
    inputs[:, 1] = 7
    batch = {"idx": inputs, "pad_mask": torch.ones_like(ROWS, dtype=torch.bool), "segments": torch.zeros_like(ROWS),
             "mlm_targets": targets, "nsp_labels": torch.tensor([0, 1, 0, 1])}
    first = mlm_nsp_loss(model, batch).item()
    assert _fit(model, mlm_nsp_loss, batch, 80) < 0.3 < first


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
def test_classifier_pooling_ignores_padding_and_fits(pooling):
    torch.manual_seed(0)
    model = Bert(BertConfig(**TINY, task="classify", labels=["neg", "pos"], pooling=pooling))
    batch = {"idx": ROWS, "pad_mask": torch.ones_like(ROWS, dtype=torch.bool), "labels": torch.tensor([0, 1, 0, 1])}
    assert _fit(model, classify_loss, batch, 40) < 0.05
    model.eval()
    # padding (and whatever the pad positions hold) never reaches the pooled vector
    padded = torch.cat([ROWS, torch.full((4, 3), 5)], 1)
    mask = torch.arange(7)[None] < 4
    torch.testing.assert_close(model(padded, mask.expand(4, 7))["logits"], model(ROWS)["logits"], atol=1e-5, rtol=1e-5)


def test_mean_and_max_pooling_read_every_real_token():
    torch.manual_seed(0)
    model = Bert(BertConfig(**TINY, task="classify", labels=["a", "b"], pooling="mean")).eval()
    h = torch.randn(2, 5, 32)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    torch.testing.assert_close(model.pool(h, mask), torch.stack([h[0].mean(0), h[1, :3].mean(0)]))
    model.cfg.pooling = "max"
    torch.testing.assert_close(model.pool(h, mask), torch.stack([h[0].amax(0), h[1, :3].amax(0)]))
    with pytest.raises(ValueError, match="pooling"):
        BertConfig(**TINY, pooling="sum")
