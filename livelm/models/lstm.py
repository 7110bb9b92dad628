"""An LSTM language model: embedding -> multi-layer LSTM -> linear head.

The recurrent baseline the Transformer replaced (Zaremba et al. 2014; Merity
et al.'s AWD-LSTM for the tying): dropout on the embedding, between layers and
before the head; optionally the head shares the embedding matrix (when the LSTM
is wider than the embedding, a linear projection brings it back down first).

Unlike the GPT there is no context window: the hidden state (h, c) summarises
everything read so far. Training uses truncated backpropagation through time:
the stream is read in chunks of `block_size` tokens, the state at the end of
one chunk is the starting state of the next, but gradients stop at the chunk
boundary (`detach_state`). How the trainer decides which chunks follow each
other is in livelm/training/recipes/lstm.py (`lstm_batch`).

Shapes: B batch, S tokens, E embedding size, Hd hidden size, L layers, V vocab.
State: (h, c), each (L, B, Hd).
"""
from __future__ import annotations

from dataclasses import dataclass, asdict, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class LSTMConfig:
    vocab_size: int = 4096
    block_size: int = 256          # BPTT chunk length used in training (the model itself has no limit)
    n_layer: int = 2
    d_model: int = 256             # embedding size E
    hidden: int = 0                # LSTM width Hd; 0 = d_model
    dropout: float = 0.0
    tie_embeddings: bool = True

    def __post_init__(self):
        if self.hidden == 0:
            self.hidden = self.d_model

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LSTMConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


State = tuple[torch.Tensor, torch.Tensor]


def detach_state(state: State) -> State:
    """Keep the values, cut the graph: truncated BPTT."""
    return tuple(s.detach() for s in state)


class LSTMLM(nn.Module):
    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(cfg.d_model, cfg.hidden, num_layers=cfg.n_layer, batch_first=True,
                            dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        # tying needs the head's input to be E wide
        self.proj = nn.Linear(cfg.hidden, cfg.d_model, bias=False) \
            if cfg.tie_embeddings and cfg.hidden != cfg.d_model else None
        self.lm_head = nn.Linear(cfg.d_model if self.proj is not None or cfg.tie_embeddings else cfg.hidden,
                                 cfg.vocab_size, bias=True)
        nn.init.uniform_(self.wte.weight, -0.1, 0.1)
        nn.init.zeros_(self.lm_head.bias)
        if not cfg.tie_embeddings:
            nn.init.uniform_(self.lm_head.weight, -0.1, 0.1)
        # forget-gate bias 1 (Jozefowicz et al. 2015): remember by default early in training.
        # PyTorch orders the gates input, forget, cell, output in each bias vector.
        for name, p in self.lstm.named_parameters():
            if name.startswith("bias_ih"):
                with torch.no_grad():
                    p[cfg.hidden:2 * cfg.hidden].fill_(1.0)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def init_state(self, batch: int, device=None) -> State:
        z = torch.zeros(self.cfg.n_layer, batch, self.cfg.hidden, device=device)
        return z, z.clone()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, state: State | None = None,
                last_only: bool = False):
        """idx (B, S); state (h, c) from the previous chunk, or None for zeros.

        Returns (logits (B, S, V), new_state), or (logits, loss, new_state) with targets
        (targets == -1 ignored). last_only: logits for the final position only (generation).
        """
        x = self.drop(self.wte(idx))                                 # (B, S, E)
        y, state = self.lstm(x, state)                                # (B, S, Hd), ((L, B, Hd), (L, B, Hd))
        if last_only:
            y = y[:, -1:]
        y = self.drop(y)
        if self.proj is not None:
            y = self.proj(y)
        logits = self.lm_head(y)
        if targets is None:
            return logits, state
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss, state

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
