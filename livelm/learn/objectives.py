"""Learning-from-feedback objectives: SFT, DPO, KTO and the GRPO policy gradient.

Each is a small function of (model, batch) used by the one trainer loop.
Reference log-probabilities (the model before this update — for a LoRA
update, the same model with the adapter switched off) are computed once when
the batch is built and travel in it, so no second model is held in memory.

Shapes: B rows, S tokens. A "scored" batch holds
    idx     (B, S) token ids (prompt + answer, right-padded)
    targets (B, S) next-token ids, -1 everywhere except answer tokens
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from livelm.chat.template import render


def answer_batch(conversations: list[list[dict]], answers: list[str], tokenizer, block_size: int) -> dict:
    """Render (conversation, answer) pairs into a scored batch; the answer ends with <|end|> like in training."""
    rows = []
    for conv, ans in zip(conversations, answers):
        ids, mask = render(list(conv) + [{"role": "assistant", "content": ans}], tokenizer)
        ids, mask = ids[-(block_size + 1):], mask[-(block_size + 1):]  # keep the answer if the prompt is long
        rows.append((ids, mask))
    S = max(len(ids) for ids, _ in rows) - 1
    idx = torch.full((len(rows), S), tokenizer.pad_id, dtype=torch.long)
    targets = torch.full((len(rows), S), -1, dtype=torch.long)
    for r, (ids, mask) in enumerate(rows):
        t = torch.tensor(ids)
        m = torch.tensor(mask[1:], dtype=torch.bool)
        idx[r, :len(ids) - 1] = t[:-1]
        targets[r, :len(ids) - 1] = torch.where(m, t[1:], torch.full_like(t[1:], -1))
    return {"idx": idx, "targets": targets}


def sequence_logprob(model, batch: dict) -> torch.Tensor:
    """Sum of log p(answer token) per row: (B,)."""
    logits = model(batch["idx"]).float()                         # (B, S, V)
    targets = batch["targets"]
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)   # (B, S)
    return (picked * (targets >= 0)).sum(-1)


def token_logprobs(model, batch: dict) -> torch.Tensor:
    """log p(token) at every answer position: (B, S), zero elsewhere."""
    logits = model(batch["idx"]).float()
    targets = batch["targets"]
    picked = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * (targets >= 0)


def sft_loss(model, b: dict) -> torch.Tensor:
    _, loss = model(b["idx"], b["targets"], plan=b["plan"]) if "plan" in b else model(b["idx"], b["targets"])
    return loss


def dpo_loss(model, b: dict, beta: float = 0.1) -> torch.Tensor:
    """Direct Preference Optimization (Rafailov et al. 2023).

    b["idx"] stacks the chosen rows then the rejected rows (2B, S); b["ref"] (2B,) their reference log-probs.
    loss = -log sigmoid(beta * [(pi_c - ref_c) - (pi_r - ref_r)])
    """
    lp = sequence_logprob(model, b)
    n = lp.shape[0] // 2
    margin = (lp[:n] - b["ref"][:n]) - (lp[n:] - b["ref"][n:])
    return -F.logsigmoid(beta * margin).mean()


def kto_loss(model, b: dict, beta: float = 0.1, w_good: float = 1.0, w_bad: float = 1.0) -> torch.Tensor:
    """Kahneman-Tversky Optimization (Ethayarajh et al. 2024) for unpaired 👍/👎.

    b["label"] (B,) is +1 for desirable, -1 for undesirable answers. The reference
    point z0 is the batch's (detached, non-negative) mean log-ratio, a cheap
    stand-in for the paper's KL estimate from mismatched pairs.
    """
    ratio = sequence_logprob(model, b) - b["ref"]
    z0 = ratio.detach().mean().clamp(min=0)
    good = b["label"] > 0
    value = torch.where(good, w_good * torch.sigmoid(beta * (ratio - z0)), w_bad * torch.sigmoid(beta * (z0 - ratio)))
    weight = torch.where(good, torch.full_like(ratio, w_good), torch.full_like(ratio, w_bad))
    return (weight - value).mean()


def distill_loss(model, b: dict) -> torch.Tensor:
    """KL(reference || model) over the whole vocabulary at every answer position, averaged over them.

    b["ref_logp"] (N, V): the reference model's log-probs at the rows' N answer positions (targets >= 0),
    row by row. Used on replayed conversations: it keeps the model's distribution where it was (which
    answer template it prefers, not only which facts it states), where SFT on the replayed text would
    pull it towards whichever wording that training example happened to use.
    """
    # the head only at the N answer positions: a real vocabulary's logits at every position were a third
    # of a SmolLM2 update step
    answer = b["targets"] >= 0
    if hasattr(model, "hidden") and hasattr(model, "head"):
        logits = model.head(model.hidden(b["idx"], b.get("plan"))[answer]).float()   # (N, V)
    else:
        logits = model(b["idx"])[answer].float()
    logp = torch.log_softmax(logits, dim=-1)
    ref = b["ref_logp"]
    return (ref.exp() * (ref - logp)).sum() / max(1, ref.shape[0])


def feedback_loss(model, batch: dict) -> torch.Tensor:
    """The live learner's objective: the sum of whichever parts the batch carries."""
    total = 0.0
    if "sft" in batch:
        total = total + sft_loss(model, batch["sft"])
    if "replay" in batch:
        total = total + batch.get("replay_weight", 1.0) * distill_loss(model, batch["replay"])
    if "dpo" in batch:
        total = total + dpo_loss(model, batch["dpo"], batch.get("beta", 0.1))
    if "kto" in batch:
        total = total + kto_loss(model, batch["kto"], batch.get("beta", 0.1))
    return total


def grpo_loss(model, b: dict, kl_coef: float = 0.0) -> torch.Tensor:
    """GRPO-style policy gradient (Shao et al. 2024), one on-policy update per sample.

    b["adv"] (B,) = reward - mean reward of the row's group. Loss per answer token:
    -adv * log pi(token) (+ kl_coef * KL(pi || ref) with the k3 estimator
    exp(ref - pi) - (ref - pi) - 1, given per-token reference log-probs b["ref_tok"]).
    Averaged over answer tokens, then rows.
    """
    lp = token_logprobs(model, b)                               # (B, S)
    mask = (b["targets"] >= 0).float()
    per_tok = -b["adv"][:, None] * lp
    if kl_coef and "ref_tok" in b:
        d = b["ref_tok"] - lp
        per_tok = per_tok + kl_coef * (torch.exp(d) - d - 1)
    return ((per_tok * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
