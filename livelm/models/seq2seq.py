"""An encoder-decoder Transformer for translation, with greedy and beam-search decoding.

Encoder: the bidirectional encoder of livelm/models/bert.py (no segment
embedding). Decoder: GPT's causal self-attention and MLP (livelm/models/gpt.py)
with a cross-attention sub-layer between them, in pre-norm order

    x = x + SelfAttn(norm(x))            causal, over the target prefix
    x = x + CrossAttn(norm(x), memory)   queries from the target, keys/values from the source
    x = x + MLP(norm(x))

Training is teacher forcing: the decoder reads [BOS] y1 .. yn and predicts
y1 .. yn [EOS] in one pass, with label-smoothed cross-entropy.

Decoding reuses what the GPT uses: the decoder's self-attention keys/values go
in GPT's KVCache (one slot per hypothesis), the source is encoded once and each
layer's cross-attention keys/values are computed once and kept ("encoder output
cached"), and greedy/sampled decoding picks tokens with the shared
`sample_next`. Beam search keeps K hypotheses per sentence as K cache slots and
reorders the slots when hypotheses are extended.

Vocabularies are shared (one tokenizer, one embedding matrix for the source,
the target and the output layer) or separate (two tokenizers and embeddings).

Shapes: B sentences, K beams, S source tokens, T target tokens, H heads,
D head size, C = d_model, V target vocab.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from livelm.sampling import SamplingParams, sample_next
from livelm.models.bert import Encoder
from livelm.models.gpt import GPT, GPTConfig, KVCache, CausalSelfAttention, MLP, make_norm, rope_tables


@dataclass
class Seq2SeqConfig:
    src_vocab_size: int = 8000
    tgt_vocab_size: int = 8000
    block_size: int = 128          # longest source and longest target, specials included
    n_enc_layer: int = 3
    n_dec_layer: int = 3
    n_head: int = 4
    d_model: int = 256
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    bias: bool = True
    position: str = "learned"      # learned | rope
    norm: str = "layernorm"
    mlp: str = "gelu"
    norm_eps: float = 1e-5
    shared_vocab: bool = True      # one embedding for source, target and output layer
    tie_embeddings: bool = True    # output layer = target embedding

    def __post_init__(self):
        if self.shared_vocab and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError("a shared vocabulary needs src_vocab_size == tgt_vocab_size")
        self.side_config(self.n_enc_layer)

    def side_config(self, n_layer: int) -> GPTConfig:
        return GPTConfig(vocab_size=self.tgt_vocab_size, block_size=self.block_size, n_layer=n_layer,
                         n_head=self.n_head, d_model=self.d_model, mlp_ratio=self.mlp_ratio, dropout=self.dropout,
                         bias=self.bias, position=self.position, norm=self.norm, mlp=self.mlp, norm_eps=self.norm_eps)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Seq2SeqConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class CrossAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim, self.dropout = cfg.n_head, cfg.head_dim, cfg.dropout
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output (B, S, C) -> keys and values (B, H, S, D); computed once per source when decoding."""
        B, S, _ = memory.shape
        k = self.k_proj(memory).view(B, S, self.n_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(memory).view(B, S, self.n_head, self.head_dim).transpose(1, 2)
        return k, v

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], src_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) queries; src_mask (B, 1, 1, S) True = real source token."""
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)       # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=src_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.o_proj(y.transpose(1, 2).reshape(B, T, C)))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg)
        self.cross = CrossAttention(cfg)
        self.ln_3 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, self_mask, layer, cache, slots, kv, src_mask):
        x = x + self.attn(self.ln_1(x), rope, self_mask, layer, cache, slots)
        x = x + self.cross(self.ln_2(x), kv, src_mask)
        return x + self.mlp(self.ln_3(x))


class Seq2Seq(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.cfg = cfg
        enc_cfg = cfg.side_config(cfg.n_enc_layer)
        enc_cfg.vocab_size = cfg.src_vocab_size
        self.dec_cfg = cfg.side_config(cfg.n_dec_layer)        # also sizes the decoder's KVCache
        self.encoder = Encoder(enc_cfg, n_segments=0)
        self.wte = nn.Embedding(cfg.tgt_vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.block_size, cfg.d_model) if cfg.position == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(DecoderBlock(self.dec_cfg) for _ in range(cfg.n_dec_layer))
        self.ln_f = make_norm(self.dec_cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        if cfg.position == "rope":
            cos, sin = rope_tables(self.dec_cfg.head_dim, cfg.block_size, self.dec_cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(GPT._init_weights)
        n_res = 2 * (cfg.n_enc_layer + cfg.n_dec_layer)
        for name, p in self.named_parameters():
            if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(n_res))
        if cfg.shared_vocab:
            self.wte.weight = self.encoder.wte.weight
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    # ---- the two halves --------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_pad: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """src, src_pad (B, S) -> per decoder layer, the cross-attention keys/values (B, H, S, D)."""
        memory = self.encoder(src, src_pad)
        return [block.cross.memory_kv(memory) for block in self.blocks]

    def decode(self, tgt: torch.Tensor, kv: list, src_pad: torch.Tensor, cache: KVCache | None = None,
               slots: torch.Tensor | None = None) -> torch.Tensor:
        """tgt (B, T) target prefix (or, with a cache, the next T tokens) -> logits (B, T, V)."""
        B, T = tgt.shape
        self_mask = None                                       # None = causal inside GPT's attention
        if cache is not None:
            # as in GPT.forward: new tokens see the slot's cached prefix and themselves
            start = cache.lengths[slots]
            if int(start.max()) + T > cache.max_len:
                raise ValueError(f"translation would exceed {cache.max_len} target tokens")
            positions = start[:, None] + torch.arange(T, device=tgt.device)             # (B, T)
            key_pos = torch.arange(int((start + T).max()), device=tgt.device)
            self_mask = (key_pos[None, None, :] <= positions[:, :, None])[:, None]       # (B, 1, T, T_all)
        else:
            if T > self.cfg.block_size:
                raise ValueError(f"target of {T} tokens exceeds the {self.cfg.block_size}-token window")
            positions = torch.arange(T, device=tgt.device)[None].expand(B, T)
        x = self.wte(tgt)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        x = self.drop(x)
        rope = None if self.wpe is not None else (self.rope_cos[positions][:, None], self.rope_sin[positions][:, None])
        src_mask = src_pad[:, None, None, :]                                              # (B, 1, 1, S)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, self_mask, layer, cache, slots, kv[layer], src_mask)
        if cache is not None:
            cache.lengths[slots] += T
        return self.lm_head(self.ln_f(x))

    def forward(self, src, src_pad, tgt_in, targets=None, label_smoothing: float = 0.0):
        """Teacher forcing. src/src_pad (B, S); tgt_in, targets (B, T), targets -1 = padding.
        Returns logits (B, T, V), and the mean label-smoothed loss if targets are given."""
        logits = self.decode(tgt_in, self.encode(src, src_pad), src_pad)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               label_smoothing=label_smoothing)
        return logits, loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ---- decoding ------------------------------------------------------------------------------
def pad_batch(seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    """Right-pad id lists -> (B, S) int64."""
    S = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), S), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return ids


def _source(model: Seq2Seq, srcs: list[list[int]], pad_id: int):
    device = next(model.parameters()).device
    lengths = torch.tensor([len(s) for s in srcs])
    if int(lengths.max()) > model.cfg.block_size:
        raise ValueError(f"a source sentence has {int(lengths.max())} tokens; the model reads at most "
                         f"{model.cfg.block_size}")
    src = pad_batch(srcs, pad_id).to(device)
    src_pad = torch.arange(src.size(1), device=device)[None] < lengths.to(device)[:, None]   # (B, S)
    return src, src_pad, device


@torch.inference_mode()
def greedy(model: Seq2Seq, srcs: list[list[int]], bos: int, eos: int, pad_id: int, max_len: int = 0,
           params: SamplingParams | None = None) -> list[list[int]]:
    """Translate a batch of sources one token at a time; temperature 0 (the default) is greedy.

    Tokens are chosen by the same `sample_next` as GPT generation, so temperature /
    top-k / top-p / seed behave identically. Returns target ids without BOS/EOS.
    """
    model.eval()
    params = params or SamplingParams(temperature=0.0)
    src, src_pad, device = _source(model, srcs, pad_id)
    B = len(srcs)
    max_len = min(max_len or model.cfg.block_size - 1, model.cfg.block_size - 1)
    kv = model.encode(src, src_pad)
    cache = KVCache(model.dec_cfg, B, max_len + 1, device=device, dtype=next(model.parameters()).dtype)
    slots = torch.arange(B, device=device)
    gens = [torch.Generator().manual_seed(params.seed if params.seed is not None else 0) for _ in range(B)]
    outs: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    tok = torch.full((B, 1), bos, dtype=torch.long, device=device)
    for _ in range(max_len):
        logits = model.decode(tok, kv, src_pad, cache, slots)[:, -1].float()                 # (B, V)
        nxt = []
        for i in range(B):
            t = eos if done[i] else sample_next(logits[i], params, [], outs[i], gens[i])
            if t == eos:
                done[i] = True
            else:
                outs[i].append(t)
            nxt.append(t)
        if all(done):
            break
        tok = torch.tensor(nxt, device=device)[:, None]
    return outs


@torch.inference_mode()
def beam_search(model: Seq2Seq, srcs: list[list[int]], bos: int, eos: int, pad_id: int, beam: int = 4,
                max_len: int = 0, length_penalty: float = 1.0) -> list[list[int]]:
    """Beam search over a batch of sources (fairseq's scheme).

    Each sentence keeps K = beam live hypotheses, one KVCache slot each (rows b*K..b*K+K-1).
    Every step scores all K*V extensions by total log-probability and takes the best 2K:
    those ending in EOS among the top K become finished, scored sum(logp) / len**length_penalty
    (len counts EOS); the best K others continue. A sentence is done when it has K finished
    hypotheses; the best finished one is returned (after max_len steps, live ones compete
    too). With beam=1 this is exactly greedy: the best extension is kept or, if it is EOS, ends.
    """
    model.eval()
    src, src_pad, device = _source(model, srcs, pad_id)
    B, K = len(srcs), beam
    max_len = min(max_len or model.cfg.block_size - 1, model.cfg.block_size - 1)
    kv = [(k.repeat_interleave(K, 0), v.repeat_interleave(K, 0)) for k, v in model.encode(src, src_pad)]
    src_pad = src_pad.repeat_interleave(K, 0)                                              # (B*K, S)
    cache = KVCache(model.dec_cfg, B * K, max_len + 1, device=device, dtype=next(model.parameters()).dtype)
    slots = torch.arange(B * K, device=device)
    # only the first beam of each sentence is live at the start (the others would be duplicates)
    scores = torch.full((B, K), -math.inf, device=device)
    scores[:, 0] = 0.0
    hyps = [[[] for _ in range(K)] for _ in range(B)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    tok = torch.full((B * K, 1), bos, dtype=torch.long, device=device)
    for _ in range(max_len):
        logp = torch.log_softmax(model.decode(tok, kv, src_pad, cache, slots)[:, -1].float(), dim=-1)   # (B*K, V)
        V = logp.size(-1)
        cand = (scores[:, :, None] + logp.view(B, K, V)).view(B, K * V)
        top_scores, top_idx = cand.topk(2 * K, dim=1)                                     # (B, 2K)
        parent_beam, token = top_idx // V, top_idx % V
        new_scores = torch.full((B, K), -math.inf, device=device)
        new_parent = torch.zeros(B, K, dtype=torch.long)
        new_token = torch.full((B, K), eos, dtype=torch.long)
        new_hyps = [[[] for _ in range(K)] for _ in range(B)]
        ts, pb, tk = top_scores.tolist(), parent_beam.tolist(), token.tolist()
        for b in range(B):
            if len(finished[b]) >= K:
                continue
            n_live = 0
            for rank in range(2 * K):
                s, p, t = ts[b][rank], pb[b][rank], tk[b][rank]
                if s == -math.inf:
                    break
                if t == eos:
                    if rank < K and len(finished[b]) < K:
                        seq = hyps[b][p]
                        finished[b].append((s / (len(seq) + 1) ** length_penalty, seq))
                    continue
                if n_live < K:
                    new_scores[b, n_live], new_parent[b, n_live], new_token[b, n_live] = s, p, t
                    new_hyps[b][n_live] = hyps[b][p] + [t]
                    n_live += 1
            if len(finished[b]) >= K:
                new_scores[b] = -math.inf
        if all(len(f) >= K for f in finished):
            break
        # reorder cache slots: new beam j of sentence b continues from parent row b*K + parent
        rows = (torch.arange(B)[:, None] * K + new_parent).view(-1).to(device)
        cache.k.copy_(cache.k[:, rows])
        cache.v.copy_(cache.v[:, rows])
        scores, hyps = new_scores, new_hyps
        tok = new_token.view(B * K, 1).to(device)
    out = []
    for b in range(B):
        if len(finished[b]) < K:   # out of room: live hypotheses compete as they are
            finished[b] += [(float(scores[b, j]) / max(1, len(hyps[b][j])) ** length_penalty, hyps[b][j])
                            for j in range(K) if scores[b, j] > -math.inf]
        out.append(max(finished[b], key=lambda x: x[0])[1])
    return out
