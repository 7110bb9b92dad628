"""A BERT-style bidirectional Transformer encoder, and the inputs it is pretrained on.

The encoder is GPT's stack (livelm/models/gpt.py: pre-norm Block of attention
and MLP) run *without* the causal mask: every token attends to every real
(non-padding) token on both sides. On top of token and position embeddings it
adds a segment embedding (sentence A = 0, sentence B = 1) as in BERT. Pre-norm
rather than BERT's post-norm: it trains from scratch without a long warmup.

Heads, all on the final hidden states h (B, S, C):
    MLM        dense -> GELU -> norm -> vocab projection tied to the token embedding,
               computed only at the masked positions (the vocab matmul is the costly part)
    pooler     tanh(Linear(h[:, 0])) — the [CLS] representation
    NSP        Linear(pooler) -> 2 (is B the real next sentence?)
    classify   Linear(tanh(Linear(pool(h)))) -> n labels (sequence classification, fine-tuning);
               pool = the [CLS] state (BERT), or the mean or max over the real tokens
               (`pooling`; on SST-2 and ChnSentiCorp from scratch, mean and max measured no
               better than [CLS], bench/RESULTS.md)
    tag        Linear(h) -> n labels per token (token classification, fine-tuning)

Pretraining inputs (second half of this file): a token stream from `livelm
prepare` is cut into sentences at newline tokens (a blank line or <|eos|> ends a
document); each row is `[CLS] A [SEP] B [SEP]` where B is the real continuation
half of the time and a random sentence otherwise; 15% of real tokens are chosen
for prediction and of those 80% become [MASK], 10% a random token, 10% stay.

Shapes: B batch, S tokens, C = d_model, V vocab, L labels, N masked positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict, field, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from livelm.models.gpt import GPT, GPTConfig, Block, make_norm, rope_tables

TASKS = ("pretrain", "classify", "tag")
POOLINGS = ("cls", "mean", "max")


@dataclass
class BertConfig:
    vocab_size: int = 4096
    block_size: int = 128          # longest input, [CLS] and [SEP]s included
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    bias: bool = True
    position: str = "learned"      # learned | rope
    norm: str = "layernorm"
    mlp: str = "gelu"
    norm_eps: float = 1e-5
    tie_embeddings: bool = True    # the MLM output projection shares the token embedding
    n_segments: int = 2            # 0 = no segment embedding (seq2seq's encoder)
    task: str = "pretrain"         # pretrain | classify | tag: which fine-tuning head exists
    labels: list = field(default_factory=list)   # label names, index = class id
    pooling: str = "cls"           # cls | mean | max: the sentence vector the classify head reads

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}; expected one of {TASKS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r}; expected one of {POOLINGS}")
        if self.task != "pretrain" and len(self.labels) < 2:
            raise ValueError(f"a {self.task} model needs at least 2 labels, got {self.labels}")
        self.block_config()  # validates heads/width

    def block_config(self) -> GPTConfig:
        """The GPTConfig that GPT's Block (attention + MLP) is built from."""
        return GPTConfig(vocab_size=self.vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, d_model=self.d_model, mlp_ratio=self.mlp_ratio, dropout=self.dropout,
                         bias=self.bias, position=self.position, norm=self.norm, mlp=self.mlp, norm_eps=self.norm_eps)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class Encoder(nn.Module):
    """Embeddings -> n bidirectional pre-norm blocks -> final norm. Also seq2seq's encoder."""

    def __init__(self, cfg: GPTConfig, n_segments: int = 2):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.block_size, cfg.d_model) if cfg.position == "learned" else None
        self.wse = nn.Embedding(n_segments, cfg.d_model) if n_segments else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        if cfg.position == "rope":
            cos, sin = rope_tables(cfg.head_dim, cfg.block_size, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, idx: torch.Tensor, pad_mask: torch.Tensor | None = None,
                segments: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, S); pad_mask (B, S) True = real token; segments (B, S) in {0, 1}. Returns (B, S, C)."""
        B, S = idx.shape
        if S > self.cfg.block_size:
            raise ValueError(f"input of {S} tokens exceeds the encoder's {self.cfg.block_size}-token window")
        if pad_mask is None:
            pad_mask = torch.ones(B, S, dtype=torch.bool, device=idx.device)
        # (B, 1, 1, S): every query may attend every real key, before or after it — no causal mask.
        # (An explicit mask also tells GPT's attention not to apply its causal default.)
        attn_mask = pad_mask[:, None, None, :]
        positions = torch.arange(S, device=idx.device)
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(positions)[None]
        if self.wse is not None and segments is not None:
            x = x + self.wse(segments)
        x = self.drop(x)
        rope = None
        if self.wpe is None:
            rope = (self.rope_cos[positions][None, None], self.rope_sin[positions][None, None])  # (1, 1, S, D/2)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, attn_mask, layer, None, None)
        return self.ln_f(x)


class Bert(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        bcfg = cfg.block_config()
        C = cfg.d_model
        self.encoder = Encoder(bcfg, cfg.n_segments)
        self.mlm_dense = nn.Linear(C, C)
        self.mlm_norm = make_norm(bcfg)
        self.lm_head = nn.Linear(C, cfg.vocab_size, bias=True)
        self.pooler = nn.Linear(C, C)
        self.nsp_head = nn.Linear(C, 2)
        n_labels = len(cfg.labels)
        self.cls_head = nn.Linear(C, n_labels) if cfg.task == "classify" else None
        self.tag_head = nn.Linear(C, n_labels) if cfg.task == "tag" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.apply(GPT._init_weights)
        for name, p in self.named_parameters():   # GPT-2's scaled init of residual projections
            if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        if cfg.tie_embeddings:
            self.lm_head.weight = self.encoder.wte.weight

    def forward(self, idx: torch.Tensor, pad_mask: torch.Tensor | None = None, segments: torch.Tensor | None = None,
                mlm_mask: torch.Tensor | None = None, nsp: bool = False) -> dict:
        """idx/pad_mask/segments (B, S). Returns a dict with
            hidden (B, S, C), and when asked or when the head exists:
            mlm    (N, V) logits at the positions where mlm_mask (B, S) is True, row-major order
            nsp    (B, 2) when nsp=True
            logits (B, L) for a classify model, (B, S, L) for a tag model.
        Everything goes through forward (not helper methods) so DDP sees one call."""
        h = self.encoder(idx, pad_mask, segments)
        out = {"hidden": h}
        if mlm_mask is not None:
            x = h[mlm_mask]                                                  # (N, C)
            x = self.mlm_norm(F.gelu(self.mlm_dense(x)))
            out["mlm"] = self.lm_head(x)                                     # (N, V)
        if nsp:
            out["nsp"] = self.nsp_head(torch.tanh(self.pooler(h[:, 0])))    # NSP always reads [CLS]
        if self.cls_head is not None:
            pooled = torch.tanh(self.pooler(self.pool(h, pad_mask)))         # (B, C)
            out["logits"] = self.cls_head(self.drop(pooled))
        if self.tag_head is not None:
            out["logits"] = self.tag_head(self.drop(h))
        return out

    def pool(self, h: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, S, C) -> (B, C) by cfg.pooling; padding never counts (pad_mask True = real token)."""
        if self.cfg.pooling == "cls":
            return h[:, 0]
        if pad_mask is None:
            return h.mean(1) if self.cfg.pooling == "mean" else h.amax(1)
        real = pad_mask[..., None]                                            # (B, S, 1)
        if self.cfg.pooling == "mean":
            return (h * real).sum(1) / real.sum(1).clamp(min=1)
        return h.masked_fill(~real, float("-inf")).amax(1)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ---- pretraining inputs: sentences, NSP pairs, MLM masking ------------------------------
def sentence_spans(stream: np.ndarray, newlines_per_id: np.ndarray, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut a token stream into sentences at tokens that contain a newline.

    stream: (T,) token ids; newlines_per_id: (V,) how many "\\n" each token's bytes hold.
    Returns spans (N, 2) of [start, end) excluding the boundary tokens, and doc (N,) a
    document number per sentence: a blank line (an empty span, or a token holding two
    newlines) or <|eos|> starts a new document.
    """
    nl = newlines_per_id[stream]
    is_eos = stream == eos_id
    bounds = np.flatnonzero((nl > 0) | is_eos)
    starts = np.concatenate(([0], bounds + 1))
    ends = np.concatenate((bounds, [len(stream)]))
    # a document ends after a boundary token with >= 2 newlines or eos, or at an empty line
    closes = np.concatenate(((nl[bounds] >= 2) | is_eos[bounds], [True]))
    keep = ends > starts
    empty_closes = ~keep
    # doc id increments after every closing boundary or empty line
    new_doc = closes | empty_closes
    doc = np.concatenate(([0], np.cumsum(new_doc)[:-1]))
    return np.stack([starts[keep], ends[keep]], axis=1), doc[keep]


def nsp_pair(stream: np.ndarray, spans: np.ndarray, doc: np.ndarray, rng: np.random.Generator,
             max_len: int) -> tuple[list[int], list[int], int]:
    """One NSP example: (tokens of A, tokens of B, is_next) with len(A) + len(B) <= max_len - 3.

    A is one or more consecutive sentences from a random start (about half the budget);
    with probability 1/2 B is the sentences that really follow A in its document
    (is_next = 1), otherwise B starts at a random sentence elsewhere (is_next = 0).
    """
    budget = max_len - 3                                   # [CLS] A [SEP] B [SEP]
    n = len(spans)

    def take(first: int, limit: int) -> tuple[list[int], int]:
        """Sentences first, first+1, ... of one document until `limit` tokens; returns (tokens, next index)."""
        toks, i = [], first
        while i < n and doc[i] == doc[first] and (not toks or len(toks) + spans[i, 1] - spans[i, 0] <= limit):
            toks.extend(stream[spans[i, 0]:spans[i, 1]].tolist())
            i += 1
        return toks, i

    a = int(rng.integers(n))
    tok_a, after = take(a, budget // 2)
    has_next = after < n and doc[after] == doc[a]
    is_next = int(rng.random() < 0.5 and has_next)
    if is_next:
        tok_b, _ = take(after, budget - len(tok_a))
    else:
        # a random sentence that is not the true continuation (nor inside A)
        b = int(rng.integers(n))
        for _ in range(10):
            if not (a <= b <= after):
                break
            b = int(rng.integers(n))
        tok_b, _ = take(b, budget - len(tok_a))
    while len(tok_a) + len(tok_b) > budget:                  # truncate the longer side from its end
        (tok_a if len(tok_a) >= len(tok_b) else tok_b).pop()
    return tok_a, tok_b, is_next


def mask_tokens(ids: np.ndarray, maskable: np.ndarray, rng: np.random.Generator, prob: float, mask_id: int,
                first_id: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masking. ids (B, S); maskable (B, S) True for real, non-special tokens.

    `prob` of the maskable tokens are chosen; a chosen token becomes [MASK] 80% of the
    time, a random ordinary token (ids first_id..vocab_size-1) 10%, itself 10%.
    Returns (inputs, targets): targets hold the original id where chosen, -1 elsewhere.
    At least one token per batch is chosen, so the loss is never an empty mean.
    """
    chosen = (rng.random(ids.shape) < prob) & maskable
    if not chosen.any() and maskable.any():
        flat = np.flatnonzero(maskable)
        chosen.flat[flat[rng.integers(len(flat))]] = True
    r = rng.random(ids.shape)
    inputs = ids.copy()
    inputs[chosen & (r < 0.8)] = mask_id
    rand = chosen & (r >= 0.8) & (r < 0.9)
    inputs[rand] = rng.integers(first_id, vocab_size, size=int(rand.sum()))
    return inputs, np.where(chosen, ids, -1)
