"""LSTM language models on the one trainer: `train --arch lstm` on a `livelm prepare` directory (truncated
BPTT, the hidden state carried across chunks), stream evaluation and `livelm generate`."""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from livelm import runs
from livelm.data.shards import DataError, TokenData
from livelm.infer.textstream import TextStream
from livelm.models.lstm import LSTMConfig, LSTMLM
from livelm.sampling import SamplingParams, sample_next
from livelm.tokenizer import Tokenizer
from livelm.training import checkpoint
from livelm.training.objectives import lstm_loss
from livelm.training.trainer import log, run_record, train


def lstm_config(cfg, arch_cfg, vocab_size: int) -> LSTMConfig:
    return LSTMConfig(vocab_size=vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer, d_model=cfg.d_model,
                      hidden=arch_cfg.lstm_hidden, dropout=cfg.dropout, tie_embeddings=cfg.tie_embeddings)


def lstm_batch(data: TokenData, split: str, index: int, cfg, carry_chunks: int) -> dict:
    """Batch `index` for truncated BPTT, still a pure function of index.

    Batches come in windows of carry_chunks consecutive chunks: window w = index // carry_chunks
    is one of TokenData's deterministic random batches, carry_chunks * block_size long, and
    batch `index` is its chunk c = index % carry_chunks. The objective carries the hidden state
    from chunk c-1 to chunk c and starts each window from zeros.

    Why windows rather than one endless stream: it keeps batches a function of their index
    (random access for eval, DDP, exact --resume) while the state still flows through
    carry_chunks * block_size tokens. The state itself is stored in train_state.pt at every
    save, so a run resumed mid-window continues from the very same state.
    """
    window, chunk = divmod(index, carry_chunks)
    b = data.batch(split, window, cfg.batch_size, cfg.block_size * carry_chunks, cfg.seed)
    lo, hi = chunk * cfg.block_size, (chunk + 1) * cfg.block_size
    return {"idx": b["idx"][:, lo:hi], "targets": b["targets"][:, lo:hi], "split": split, "index": index,
            "chunk": chunk}


def train_lstm(cfg, arch_cfg, data_dir, out: Path, resume: bool):
    data = TokenData(data_dir)
    tok = Tokenizer.load(Path(data_dir) / "tokenizer.json")
    torch.manual_seed(cfg.seed)
    model = LSTMLM(lstm_config(cfg, arch_cfg, data.vocab_size))
    carry: dict = {}
    if resume:
        runs.restore_weights(model, out)
        saved = checkpoint.load_train_state(out).get("lstm_carry")
        if saved is not None:
            carry["train"] = saved
    run_config = run_record("lstm", model, cfg, arch_cfg, data_dir)
    log(f"model: LSTM, {cfg.n_layer} layers x {model.cfg.hidden} wide (embedding {cfg.d_model}), "
        f"{model.num_params() / 1e6:.2f}M parameters; BPTT {cfg.block_size} tokens, state carried over "
        f"{arch_cfg.carry_chunks} chunks")

    def save_fn(run_dir, m, step, state):   # the trainer's checkpoint plus the carried hidden state
        runs.save_checkpoint(run_dir, m, tok, run_config, step, {**state, "lstm_carry": carry.get("train")})

    return train(cfg, out, model, tok, lambda split, i: lstm_batch(data, split, i, cfg, arch_cfg.carry_chunks),
                 functools.partial(lstm_loss, carry=carry), run_config,
                 bytes_per_token=data.bytes_per_token("val"), resume=resume, save_fn=save_fn)


@torch.inference_mode()
def lstm_stream_loss(model: LSTMLM, arr: np.ndarray, block: int, streams: int = 16, max_tokens: int = 0):
    """Mean next-token loss over a token array read as `streams` contiguous parallel streams
    (each carrying its state from chunk to chunk, as in Zaremba et al.). Returns (loss, tokens)."""
    device = next(model.parameters()).device
    n = len(arr) - 1
    if max_tokens:
        n = min(n, max_tokens)
    per = n // streams
    if per < 1:
        streams, per = 1, n
    x = torch.from_numpy(arr[:streams * per].astype(np.int64)).view(streams, per)
    y = torch.from_numpy(arr[1:streams * per + 1].astype(np.int64)).view(streams, per)
    state, total = None, 0.0
    for lo in range(0, per, block):
        xb, yb = x[:, lo:lo + block].to(device), y[:, lo:lo + block].to(device)
        _, loss, state = model(xb, yb, state=state)
        total += loss.item() * yb.numel()
    return total / max(1, streams * per), streams * per


def lstm_stream(model: LSTMLM, tok: Tokenizer, ids: list[int], params: SamplingParams) -> Iterator[str]:
    """Text pieces of an LSTM run's continuation of `ids`: the prompt sets the hidden state, then one
    token at a time through the shared sample_next and TextStream (stop strings, UTF-8-safe pieces)."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else torch.Generator()
    if params.seed is None:
        gen.seed()
    stream = TextStream(tok, params.stop)
    stop_ids = {tok.eos_id, tok.end_id} if params.stop_token_ids is None else set(params.stop_token_ids)
    out_ids: list[int] = []
    with torch.inference_mode():
        logits, state = model(torch.tensor([ids], device=device), last_only=True)
        for _ in range(params.max_tokens):
            t = sample_next(logits[0, -1].float(), params, ids, out_ids, gen)
            if t in stop_ids and not params.ignore_eos:
                break
            out_ids.append(t)
            delta, stopped = stream.push(t)
            yield delta
            if stopped:
                break
            logits, state = model(torch.tensor([[t]], device=device), state=state, last_only=True)
    yield stream.finish()


def evaluate(run, data, model: LSTMLM, max_tokens: int) -> dict:
    """Loss, perplexity and bits per byte over the val split read as parallel streams (lstm_stream_loss)."""
    tokens = TokenData(data)
    if tokens.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"{data} was prepared with a {tokens.vocab_size}-token vocabulary but {run} uses "
                         f"{model.cfg.vocab_size}; prepare it with --reuse-tokenizer {run}")
    arrays = [arr for arr in tokens.splits["val"] if arr.size > 1]
    if not arrays:
        raise DataError(f"{data} has no validation tokens")
    loss, n = lstm_stream_loss(model, np.concatenate(arrays), model.cfg.block_size, max_tokens=max_tokens)
    result = {"val_loss": loss, "perplexity": math.exp(min(loss, 50)),
              "bits_per_byte": loss / math.log(2) / tokens.bytes_per_token("val"), "tokens": n}
    return result
