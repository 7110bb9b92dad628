"""Evaluating a language model on held-out tokens: loss, perplexity, bits per byte.

One function for `livelm eval`, the quantize/prune reports and the benchmarks, so they all read
the same windows: every validation token once, in consecutive windows of the model's context
(no sampling noise), up to `max_tokens`.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch


@torch.inference_mode()
def perplexity(model: torch.nn.Module, data_dir: str | Path, max_tokens: int = 1_000_000, run=None) -> dict:
    """{"val_loss", "perplexity", "bits_per_byte", "tokens"} of `model` on the val split of a prepared
    data directory. `run` only names the model in the error about a mismatched vocabulary."""
    from livelm.data.shards import TokenData
    data = TokenData(data_dir)
    if data.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"{data_dir} was prepared with a {data.vocab_size}-token vocabulary but "
                         f"{run or 'the model'} uses {model.cfg.vocab_size}; prepare it with "
                         f"--reuse-tokenizer {run or 'RUN'}")
    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    for x, y in data.windows("val", model.cfg.block_size):
        if total_tokens >= max_tokens:
            break
        _, loss = model(x.to(device), y.to(device))
        total_loss += loss.item() * y.numel()
        total_tokens += y.numel()
    if not total_tokens:
        raise ValueError(f"{data_dir} has no validation tokens")
    val_loss = total_loss / total_tokens
    return {"val_loss": val_loss, "perplexity": math.exp(min(val_loss, 50)),
            "bits_per_byte": val_loss / math.log(2) / data.bytes_per_token("val"), "tokens": total_tokens}
