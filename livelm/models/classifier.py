"""A decoder with a classification head: the GPT of livelm/models/gpt.py, pooled at each row's last real token.

What `livelm finetune RUN --task classify` makes of a GPT run (livelm/training/recipes/classify.py
trains it; livelm/runs.py loads it when config.json says "task": "classify").
"""
from __future__ import annotations

import torch
import torch.nn as nn

from livelm.models.gpt import GPT, GPTConfig

HEAD_STD = 1e-3   # a small head: the first steps start near chance instead of from a random opinion


class GPTClassifier(GPT):
    """A GPT with a classification head on the last real token: forward(idx, pad_mask) -> {"logits": (B, L)},
    the interface of livelm's BERT classifier (objectives.classify_loss). idx is right-padded; pad_mask
    (B, S) is True on real tokens. The state dict is the GPT's plus score.weight and score.bias, so a
    pretrained run's weights and LoRA adapters keep their names."""

    def __init__(self, cfg: GPTConfig, labels: list[str]):
        super().__init__(cfg)
        self.labels = list(labels)
        self.score = nn.Linear(cfg.d_model, len(self.labels))
        nn.init.normal_(self.score.weight, std=HEAD_STD)
        nn.init.zeros_(self.score.bias)

    def forward(self, idx: torch.Tensor, pad_mask: torch.Tensor | None = None, *lm_args, **lm_kwargs) -> dict:
        if not isinstance(pad_mask, torch.Tensor) or pad_mask.dtype != torch.bool or lm_args or lm_kwargs:
            raise ValueError("this run is a classifier (`livelm predict`, `livelm eval`), not a language model; "
                             "generate with the run it was fine-tuned from (config.json's base_run)")
        h = self.hidden(idx)                                                   # (B, S, C)
        last = pad_mask.sum(1) - 1                                             # each row's last real token
        pooled = h[torch.arange(idx.size(0), device=idx.device), last]        # (B, C)
        return {"logits": self.score(pooled.to(self.score.weight.dtype))}
