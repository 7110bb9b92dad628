"""Training objectives: small functions `objective(model, batch) -> scalar loss`.

The trainer loop is the same for all of them; only the batch layout differs.
"""
from __future__ import annotations

from livelm.models.gpt import BatchPlan


def lm_loss(model, batch: dict):
    """Next-token cross-entropy.

    batch: idx (B, S), targets (B, S) with -1 where no loss is taken (e.g. the
    user's turns in chat fine-tuning), optional doc_ids (B, S) when several
    conversations are packed into one row: attention and positions then
    restart at every boundary, exactly as at inference time.
    """
    plan = BatchPlan.packed(batch["doc_ids"]) if "doc_ids" in batch else None
    _, loss = model(batch["idx"], batch["targets"], plan)
    return loss


# ---- the other architectures (--arch bert | seq2seq | lstm; batches built in livelm/training/recipes/) ----
import torch.nn.functional as F  # noqa: E402


def mlm_nsp_loss(model, batch: dict):
    """BERT pretraining: masked-LM cross-entropy, plus next-sentence prediction when the batch has labels.

    batch: idx, pad_mask (True = real), segments (B, S); mlm_targets (B, S) the original id at
    the chosen positions, -1 elsewhere; optional nsp_labels (B,) 1 = B really follows A.
    """
    chosen = batch["mlm_targets"] >= 0
    nsp = "nsp_labels" in batch
    out = model(batch["idx"], batch["pad_mask"], batch["segments"], mlm_mask=chosen, nsp=nsp)
    loss = F.cross_entropy(out["mlm"].float(), batch["mlm_targets"][chosen])
    if nsp:
        loss = loss + F.cross_entropy(out["nsp"].float(), batch["nsp_labels"])
    return loss


def classify_loss(model, batch: dict):
    """Fine-tuning: labels (B,) from the [CLS] representation, or (B, S) per token (-1 = no label)."""
    logits = model(batch["idx"], batch["pad_mask"])["logits"]
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch["labels"].reshape(-1), ignore_index=-1)


def seq2seq_loss(model, batch: dict, label_smoothing: float = 0.0):
    """Teacher forcing: src, src_pad (B, S); idx = [BOS] y (B, T); targets = y [EOS] (B, T), -1 = padding."""
    _, loss = model(batch["src"], batch["src_pad"], batch["idx"], batch["targets"], label_smoothing)
    return loss


def lstm_loss(model, batch: dict, carry: dict | None = None):
    """Next-token loss for the LSTM with truncated BPTT.

    `carry` (one dict per training run) keeps, per split, the detached final state of the
    last chunk and that batch's index. A batch continues from it only when it is the
    next chunk of the same window (batch["chunk"] > 0 and the previous index is
    batch["index"] - 1); otherwise it starts from zeros. See lstm_batch in recipes/lstm.py.
    """
    state = None
    if carry is not None:
        prev = carry.get(batch["split"])
        if batch["chunk"] > 0 and prev is not None and prev["index"] == batch["index"] - 1:
            state = tuple(s.to(batch["idx"].device) for s in prev["state"])   # (restored on CPU by --resume)
    _, loss, new_state = model(batch["idx"], batch["targets"], state=state)
    if carry is not None:
        carry[batch["split"]] = {"index": batch["index"], "state": tuple(s.detach() for s in new_state)}
    return loss
