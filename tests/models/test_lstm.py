import pytest
import torch

from livelm.models.lstm import LSTMConfig, LSTMLM
from livelm.training.objectives import lstm_loss


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def test_state_carried_across_chunks_matches_one_long_forward():
    torch.manual_seed(0)
    model = LSTMLM(LSTMConfig(vocab_size=30, n_layer=2, d_model=16, hidden=24)).eval()
    x = torch.randint(0, 30, (3, 20))
    full, _ = model(x)
    state, parts = None, []
    for lo in range(0, 20, 7):
        logits, state = model(x[:, lo:lo + 7], state=state)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    # without the carried state the later chunks differ
    fresh, _ = model(x[:, 7:14])
    assert not torch.allclose(fresh, full[:, 7:14])


def test_lstm_loss_carries_state_only_to_the_next_chunk_of_a_window():
    torch.manual_seed(0)
    model = LSTMLM(LSTMConfig(vocab_size=30, n_layer=1, d_model=16)).eval()
    x = torch.randint(0, 30, (2, 12))
    carry = {}
    b = lambda lo, index, chunk: {"idx": x[:, lo:lo + 6], "targets": x[:, lo + 1:lo + 7] if lo == 0 else  # noqa: E731
                                  torch.cat([x[:, lo + 1:], x[:, :1]], 1), "split": "train", "index": index, "chunk": chunk}
    lstm_loss(model, b(0, 4, 0), carry)
    carried = lstm_loss(model, b(6, 5, 1), carry)
    _, expected, _ = model(x[:, 6:12], b(6, 5, 1)["targets"], state=model(x[:, :6])[1])
    torch.testing.assert_close(carried, expected)
    restarted = lstm_loss(model, b(6, 7, 1), carry)          # not the batch after the last one: zeros
    _, from_zero, _ = model(x[:, 6:12], b(6, 7, 1)["targets"])
    torch.testing.assert_close(restarted, from_zero)


def test_overfits_a_tiny_sequence_with_tied_weights():
    torch.manual_seed(0)
    model = LSTMLM(LSTMConfig(vocab_size=20, n_layer=2, d_model=16, hidden=32, tie_embeddings=True))
    assert model.lm_head.weight is model.wte.weight and model.proj is not None
    seq = torch.tensor([[3, 5, 7, 9, 11, 13, 3, 5, 7, 9, 11, 13, 3, 5, 7, 9]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.0)
    for _ in range(90):
        _, loss, _ = model(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1
