"""Training objectives: small functions `objective(model, batch) -> scalar loss`.

The trainer loop is the same for all of them; only the batch layout differs.
"""
from __future__ import annotations

from livelm.models.gpt import doc_attention_mask, doc_positions


def lm_loss(model, batch: dict):
    """Next-token cross-entropy.

    batch: idx (B, S), targets (B, S) with -1 where no loss is taken (e.g. the
    user's turns in chat fine-tuning), optional doc_ids (B, S) when several
    conversations are packed into one row: attention and positions then
    restart at every boundary, exactly as at inference time.
    """
    kwargs = {}
    if "doc_ids" in batch:
        kwargs["attn_mask"] = doc_attention_mask(batch["doc_ids"])
        kwargs["positions"] = doc_positions(batch["doc_ids"])
    _, loss = model(batch["idx"], batch["targets"], **kwargs)
    return loss
