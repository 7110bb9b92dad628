"""A decoder-only Transformer covering the GPT-2, Llama, Mistral, Qwen2/3 and Gemma 2/3 families.

One readable module: token embedding, positions (learned or rotary), pre-norm
blocks of causal self-attention (optionally grouped-query) and an MLP (GELU,
SwiGLU or GeGLU), a final norm and a (tied or untied) head. The families differ
only in configuration (GPTConfig's fields, no subclasses):

    gpt2:    learned positions, LayerNorm, GELU MLP, all heads have their own K/V
    llama:   RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, no biases
             (Llama 3.1+: rope_scaling "llama3" stretches the slow RoPE frequencies)
    mistral: llama + sliding_window (each token sees only the last W positions)
    qwen2:   llama + qkv_bias (biases on q/k/v only)
    qwen3:   llama + qk_norm (RMSNorm over each head of q and k before RoPE), explicit head_size
    gemma3:  llama with a GeGLU MLP, norms computing x·(1 + w) (norm_offset), a second norm after
             attention and after the MLP (post_norms), embeddings times √d_model (embed_scale),
             scores scaled by attn_scalar^-1/2, and sliding-window layers (own RoPE base
             rope_local_theta) interleaved with global ones (layer_types)
    gemma2:  gemma3 without qk_norm and rope_local_theta; soft-capped scores and logits
             (attn_softcap, final_softcap)

Shapes: B batch, S new tokens, T attended positions, H query heads, Hkv K/V
heads, D head size, C = d_model.

Incremental decoding reads and extends a KV cache (models/kv_cache.py: contiguous
rows, or the engine's paged blocks) with one row ("slot") per sequence. Every
slot keeps its own length, so sequences at different positions can decode in
one batched forward pass — the basis of continuous batching in livelm.infer.
Sliding-window layers keep every position in the cache too; their mask hides
the keys older than the window (in prefill and decode alike).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from livelm.models.kernels import STREAMING_BYTES, Linear, attention, causal_attention, decode_attention, gelu_tanh
from livelm.models.layers import apply_rope, check_rope_scaling, make_norm, rope_tables   # bert, seq2seq import these here
from livelm.models.kv_cache import KVCache   # seq2seq imports it from here


LOSS_CHUNK = 512   # positions per chunk of the checkpointed loss (512 x 49,152 fp32 logits = 100 MB)


@dataclass
class GPTConfig:
    vocab_size: int = 4096
    block_size: int = 256          # longest sequence the model is trained for
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 0             # 0 means n_head (plain multi-head attention)
    d_model: int = 256
    head_size: int = 0             # 0 means d_model // n_head; set when `livelm prune` removed heads (head_dim stays)
    mlp_ratio: float = 4.0         # hidden = mlp_ratio * d_model (SwiGLU/GeGLU: 2/3 of it, rounded)
    dropout: float = 0.0
    bias: bool = True
    position: str = "learned"      # learned | rope
    norm: str = "layernorm"        # layernorm | rmsnorm
    mlp: str = "gelu"              # gelu | swiglu | geglu (gated, tanh GELU: Gemma)
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    # ---- the other families' switches (imported checkpoints, livelm/interop/hf_import.py); the
    # defaults are GPT-2 / Llama as above, so older config.json files load unchanged
    rope_scaling: dict | None = None   # {"rope_type": "llama3" | "linear", "factor": ..., ...} as in HF; full layers
    rope_local_theta: float = 0.0      # RoPE base of the sliding layers, unscaled (Gemma); 0 = as the full layers
    sliding_window: int = 0            # sliding layers see the last W positions, their own included; 0 = none
    layer_types: list | None = None    # per layer "full_attention" | "sliding_attention"; None = all sliding
                                       # when sliding_window is set (Mistral), else all full
    qkv_bias: bool = False             # biases on q/k/v_proj even when `bias` is off (Qwen2)
    qk_norm: bool = False              # a norm over each head of q and of k, before RoPE (Qwen3, Gemma 3)
    norm_offset: float = 0.0           # RMSNorm scales by (norm_offset + weight): Gemma stores weight - 1
    post_norms: bool = False           # a norm on the attention and the MLP outputs too, before the residual add
    embed_scale: bool = False          # embeddings times sqrt(d_model), rounded to their dtype (Gemma)
    attn_scalar: float = 0.0           # attention scores scaled by attn_scalar^-1/2; 0 = head_dim (the usual)
    attn_softcap: float = 0.0          # scores -> c·tanh(scores/c) (Gemma 2); 0 = off
    final_softcap: float = 0.0         # logits -> c·tanh(logits/c) (Gemma 2); 0 = off

    def __post_init__(self):
        if self.n_kv_head == 0:
            self.n_kv_head = self.n_head
        if self.d_model % self.n_head and not self.head_size:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} must be divisible by n_kv_head={self.n_kv_head}")
        for name, allowed in (("position", ("learned", "rope")), ("norm", ("layernorm", "rmsnorm")),
                              ("mlp", ("gelu", "swiglu", "geglu"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {allowed}")
        check_rope_scaling(self.rope_scaling)
        if self.layer_types is not None:
            kinds = ("full_attention", "sliding_attention")
            if len(self.layer_types) != self.n_layer or any(t not in kinds for t in self.layer_types):
                raise ValueError(f"layer_types must list one of {kinds} for each of the {self.n_layer} layers")
        if self.sliding_window < 0:
            raise ValueError(f"sliding_window={self.sliding_window} must be >= 0")

    @property
    def head_dim(self) -> int:
        return self.head_size or self.d_model // self.n_head

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.mlp_ratio * self.d_model)
        if self.mlp != "gelu":  # gated: keep parameter count equal to a GELU MLP of the same ratio
            hidden = 32 * math.ceil(2 * hidden / 3 / 32)
        return hidden

    def sliding(self, layer: int) -> bool:
        """Whether `layer` attends over a sliding window of the last sliding_window positions."""
        return bool(self.sliding_window) and (self.layer_types is None or
                                              self.layer_types[layer] == "sliding_attention")

    def features(self) -> list[str]:
        """The family switches set away from their defaults (interop refuses what a format cannot hold)."""
        defaults = GPTConfig.__dataclass_fields__
        return [name for name in FAMILY_FIELDS if getattr(self, name) != defaults[name].default]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


FAMILY_FIELDS = ("rope_scaling", "rope_local_theta", "sliding_window", "layer_types", "qkv_bias", "qk_norm",
                 "norm_offset", "post_norms", "embed_scale", "attn_scalar", "attn_softcap", "final_softcap")


PRESETS = {
    "gpt2": dict(position="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True),
    "llama": dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False,
                  n_kv_head=2, norm_eps=1e-6),
}


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        # separate projections (not one fused qkv) keep GQA shapes obvious and map 1:1 to Llama's q/k/v_proj
        qkv_bias = cfg.bias or cfg.qkv_bias
        self.q_proj = Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=qkv_bias)
        self.k_proj = Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=qkv_bias)
        self.v_proj = Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=qkv_bias)
        self.o_proj = Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=cfg.bias)
        # qk_norm: each head's q and k normalised over D (one weight of D shared by the heads), which keeps
        # the scores bounded (Qwen3, Gemma 3)
        self.q_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_norm else None
        self.k_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_norm else None
        self.scale = cfg.attn_scalar ** -0.5 if cfg.attn_scalar else None     # None: 1/sqrt(D)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, attn_mask, layer: int, cache: KVCache | None, slots: torch.Tensor | None,
                positions: torch.Tensor | None = None, packing: "Packing | None" = None):
        B, S, C = x.shape
        q = self.q_proj(x).view(B, S, self.n_head, self.head_dim).transpose(1, 2)      # (B, H, S, D)
        k = self.k_proj(x).view(B, S, self.n_kv_head, self.head_dim).transpose(1, 2)   # (B, Hkv, S, D)
        v = self.v_proj(x).view(B, S, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)

        is_causal = attn_mask is None
        if cache is not None:
            # write the new keys at each row's offset, then attend over the stored prefix
            pos = positions if positions is not None else \
                cache.lengths[slots][:, None] + torch.arange(S, device=x.device)      # (B, S)
            T = attn_mask.size(-1)                                                    # keys after this pass
            rows = (torch.arange(slots.start, slots.stop, device=x.device) if isinstance(slots, slice)
                    else slots)[:, None].expand(B, S)                                 # (B, S) cache rows
            cache.write(layer, rows, pos, k, v)
            # attend in the cache's dtype: on a CPU the engine keeps fp32 keys for a bf16 model, because
            # PyTorch's CPU attention in bf16 is 6-8x slower at decode shapes (1.5 ms vs 0.18 ms per call,
            # 16 rows x 272 positions); bf16 pays in the products around it, not here
            q = q.to(cache.k.dtype)
            if packing is not None:
                y = packed_attention(q, cache, layer, T, attn_mask, packing, self.scale, self.cfg.attn_softcap)
                y = y.to(x.dtype).transpose(1, 2).reshape(B, S, self.n_head * self.head_dim)
                return self.resid_dropout(self.o_proj(y))
            # consecutive rows (the usual case in a full batch) come as a slice: views of the cache, not copies
            k, v = cache.read(layer, slots, T, q.dtype)                               # (B, Hkv, T, D)
            is_causal = False
        dropout = self.cfg.dropout if self.training else 0.0
        softcap = self.cfg.attn_softcap
        if cache is not None and S == 1 and torch.compiler.is_compiling() and x.device.type == "cpu":
            y = decode_attention(q, k, v, attn_mask, self.scale, softcap)
        elif is_causal and x.device.type == "cpu":
            if self.n_kv_head != self.n_head:   # each K/V head serves n_head/n_kv_head query heads
                rep = self.n_head // self.n_kv_head
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            y = causal_attention(q, k, v, dropout, self.scale, softcap)
        else:
            y = attention(q, k, v, attn_mask, dropout, is_causal, self.scale, softcap)
        y = y.to(x.dtype).transpose(1, 2).reshape(B, S, self.n_head * self.head_dim)
        return self.resid_dropout(self.o_proj(y))


def consecutive(slots: torch.Tensor) -> torch.Tensor | slice:
    """Cache rows as a slice when they are consecutive (attention then reads views, not a gather)."""
    lo = int(slots[0])
    if torch.equal(slots, torch.arange(lo, lo + len(slots), device=slots.device)):
        return slice(lo, lo + len(slots))
    return slots


@dataclass
class Packing:
    """A cached pass whose rows are single tokens, some of them one sequence's consecutive tokens.

    Rows [0, segments[0][0]) are one-token sequences (decode steps), attended together as a batch;
    each segment (lo, hi, slot) is rows lo..hi-1 of one sequence (a chunk of its prompt), attended
    over its own cache row. So a prompt's prefill shares one forward pass with the other sequences'
    decode steps: every Linear, norm and LoRA delta runs once over all rows, as vLLM's chunked
    prefill mixes prompts into decode batches.
    """
    singles: torch.Tensor | slice                  # cache rows of the one-token sequences
    segments: list[tuple[int, int, int]]


def packed_attention(q: torch.Tensor, cache: KVCache, layer: int, T: int, attn_mask: torch.Tensor,
                     packing: Packing, scale: float | None = None, softcap: float = 0.0) -> torch.Tensor:
    """q: (B, H, 1, D), one row per token, their keys already in the cache -> (B, H, 1, D).
    attn_mask: (B, 1, 1, T), row i may see key j iff j <= its position (causal within a segment too;
    in a sliding-window layer also j > its position - W)."""
    parts = []
    n1 = packing.segments[0][0] if packing.segments else q.size(0)
    if n1:
        k, v = cache.read(layer, packing.singles, T, q.dtype)
        parts.append(attention(q[:n1], k, v, attn_mask[:n1], scale=scale, softcap=softcap))
    for lo, hi, slot in packing.segments:
        k, v = cache.read(layer, slice(slot, slot + 1), T, q.dtype)                        # (1, Hkv, T, D), views
        y = attention(q[lo:hi].transpose(0, 2), k, v, attn_mask[lo:hi, 0, 0][None, None],  # as (1, H, n, D)
                      scale=scale, softcap=softcap)
        parts.append(y.transpose(0, 2))                                                   # back to (n, H, 1, D)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


class MLP(nn.Module):
    """gelu: down(gelu(up(x))); gated: down(act(gate(x)) * up(x)), act = SiLU (SwiGLU) or tanh GELU (GeGLU)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        self.gated = cfg.mlp != "gelu"
        hidden = cfg.mlp_hidden
        self.up_proj = Linear(cfg.d_model, hidden, bias=cfg.bias)
        if self.gated:
            self.gate_proj = Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.down_proj = Linear(hidden, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        if self.gated:
            h = (F.silu if self.swiglu else gelu_tanh)(self.gate_proj(x)) * self.up_proj(x)
        else:
            h = gelu_tanh(self.up_proj(x))
        return self.dropout(self.down_proj(h))


class Block(nn.Module):
    """x + attn(ln_1(x)), then + mlp(ln_2(x)); with post_norms (Gemma) each output is normalised again
    (post_attn_norm, post_mlp_norm) before it joins the residual stream."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.post_attn_norm = make_norm(cfg) if cfg.post_norms else None
        self.post_mlp_norm = make_norm(cfg) if cfg.post_norms else None

    def forward(self, x, rope, attn_mask, layer, cache, slots, positions=None, packing=None):
        h = self.attn(self.ln_1(x), rope, attn_mask, layer, cache, slots, positions, packing)
        x = x + (h if self.post_attn_norm is None else self.post_attn_norm(h))
        h = self.mlp(self.ln_2(x))
        return x + (h if self.post_mlp_norm is None else self.post_mlp_norm(h))


@dataclass
class BatchPlan:
    """How the rows of one forward pass are laid out: the one object the model's forward takes besides
    the tokens. Training builds it for packed conversations (BatchPlan.packed), the engine for each
    continuous-batching step; plain causal rows need none.

    positions   (B, S) position of each token; default 0..S-1, or each slot's cache length onwards
    attn_mask   (B, 1, S, S) boolean, True = may attend (packed conversations do not see each other);
                default plain causal
    cache       the KVCache or PagedKVCache the rows read and extend (their lengths advance by S after the pass)
    slots       (B,) cache rows of these sequences: a tensor, or a slice for consecutive rows
                (default rows 0..B-1)
    last_only   logits for the final position only (generation)
    kv_len      with a cache, the longest row's length after this pass, if the caller knows it; read
                from the cache otherwise (a device sync, and a graph break under torch.compile)
    segments    with a cache, idx (B, 1) and a tensor of slots: runs (lo, hi) of rows that are one
                sequence's consecutive tokens (a prompt chunk), after the rows that are one token each
                (see Packing). One pass then prefills prompts and decodes other sequences.
    out_rows    logits only for these rows (B',)
    stop_at     plain rows: return the hidden states entering block stop_at (un-normed, (B, S, C))
    resume      plain rows: (L, x): start at block L from hidden states x (B, S, C) that blocks < L made.
                A live update trains an adapter on the top blocks only; the frozen blocks below give each
                training row the same output at every step, so it is computed once (stop_at) and each
                step resumes from it (livelm/learn/update.py: FrozenTrunk)
    """
    positions: torch.Tensor | None = None
    attn_mask: torch.Tensor | None = None
    cache: "KVCache | None" = None
    slots: torch.Tensor | slice | None = None
    last_only: bool = False
    kv_len: int | None = None
    segments: list[tuple[int, int]] | None = None
    out_rows: torch.Tensor | None = None
    stop_at: int | None = None
    resume: "tuple[int, torch.Tensor] | None" = None

    @classmethod
    def packed(cls, doc_ids: torch.Tensor) -> "BatchPlan":
        """Several conversations per row (doc_ids (B, S)): attention and positions restart at each."""
        return cls(positions=doc_positions(doc_ids), attn_mask=doc_attention_mask(doc_ids))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.block_size, cfg.d_model) if cfg.position == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.activation_checkpointing = False    # training: recompute blocks in backward (set by the trainer)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if cfg.position == "rope":
            cos, sin = rope_tables(cfg.head_dim, cfg.block_size, cfg.rope_theta, cfg.rope_scaling)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
            if cfg.rope_local_theta:   # Gemma's sliding layers rotate with a base of their own, unscaled
                cos, sin = rope_tables(cfg.head_dim, cfg.block_size, cfg.rope_local_theta)
                self.register_buffer("rope_local_cos", cos, persistent=False)
                self.register_buffer("rope_local_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # decode reads every weight once per step: from DRAM, unless the model fits in the last-level cache
        # (32 MiB here); only then is Linear's few-row detour faster (bench/gemv.py, bench/hf_decode.py)
        streams = sum(p.numel() for p in self.parameters()) * 4 > STREAMING_BYTES
        for m in self.modules():
            if isinstance(m, Linear):
                m.streams = streams
        # GPT-2: scale the residual output projections by 1/sqrt(2 * n_layer) so the residual stream does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, plan: "BatchPlan | None" = None):
        """idx: (B, S) token ids; targets (B, S) for a loss; plan: how the rows are laid out (BatchPlan:
        packed conversations in training, KV-cache rows in the engine; None = plain causal rows).

        Returns logits (B, S, V) (or (B, 1, V) with plan.last_only, (B', S, V) with plan.out_rows).
        With targets: (logits of the positions that have a target (N, V), their mean loss); targets == -1
        take no loss and get no logits — in chat fine-tuning most positions are the user's, and a real
        vocabulary is large (49,152 x every position is most of the memory of a step). With activation
        checkpointing the loss is taken LOSS_CHUNK positions at a time and the logits are None.
        """
        x = self.hidden(idx, plan)
        if targets is None:
            return self.head(x)
        keep = targets != -1
        x, targets = x[keep], targets[keep]                                            # (N, C), (N,)
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            # a chunk of logits at a time, recomputed in backward: a real vocabulary's (N, V) fp32 logits,
            # their softmax and gradient are otherwise the largest tensors of a fine-tuning step
            total = x.new_zeros((), dtype=torch.float32)
            for i in range(0, len(x), LOSS_CHUNK):
                total = total + torch.utils.checkpoint.checkpoint(
                    self._loss_sum, x[i:i + LOSS_CHUNK], targets[i:i + LOSS_CHUNK], use_reentrant=False)
            return None, total / max(len(x), 1)
        logits = self.head(x)                                                          # (N, V)
        return logits, F.cross_entropy(logits.float(), targets)

    def _loss_sum(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.head(x).float(), targets, reduction="sum")

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Final hidden states (..., C) -> logits (..., V)."""
        logits = self.lm_head(x)
        if self.cfg.final_softcap:
            logits = self.cfg.final_softcap * torch.tanh(logits / self.cfg.final_softcap)
        return logits

    def hidden(self, idx: torch.Tensor, plan: "BatchPlan | None" = None) -> torch.Tensor:
        """The final normed hidden states (B, S, C) that the head turns into logits (see forward for `plan`);
        a classifier reads them too (livelm/training/recipes)."""
        plan = plan or BatchPlan()
        positions, attn_mask, cache, slots = plan.positions, plan.attn_mask, plan.cache, plan.slots
        last_only, kv_len, segments, out_rows = plan.last_only, plan.kv_len, plan.segments, plan.out_rows
        B, S = idx.shape
        packing = None
        if cache is not None:
            if slots is None:
                slots = slice(0, B)
            elif segments:
                packing = self._packing(slots, segments, S)
            elif not isinstance(slots, slice) and not torch.compiler.is_compiling():
                slots = consecutive(slots)   # consecutive rows: attention reads views of the cache
            start = cache.lengths[slots]
            if positions is None:
                positions = start[:, None] + torch.arange(S, device=idx.device)
            if packing is not None:   # a segment's rows are one sequence: positions go on within it
                offsets = [0] * B
                for lo, hi in segments:
                    offsets[lo:hi] = range(hi - lo)
                positions = positions + torch.tensor(offsets, device=idx.device)[:, None]
            T = int(positions.max()) + 1 if kv_len is None else kv_len
            if T > min(cache.max_len, self.cfg.block_size):
                raise ValueError(f"sequence would exceed the context window of {self.cfg.block_size} tokens")
            # each new token may see the slot's stored prefix and the new tokens up to itself
            key_pos = torch.arange(T, device=idx.device)
            attn_mask = (key_pos[None, None, :] <= positions[:, :, None])[:, None]   # (B, 1, S, T)
        elif S > self.cfg.block_size:
            raise ValueError(f"sequence of {S} tokens exceeds the context window of {self.cfg.block_size}")
        window_mask = self._window_mask(attn_mask, positions if cache is not None else None, S, idx.device)
        if positions is None:
            positions = torch.arange(S, device=idx.device)[None].expand(B, S)

        first = 0
        if plan.resume is not None:
            first, x = plan.resume
        else:
            x = self.wte(idx)
            if self.cfg.embed_scale:   # Gemma: times sqrt(C) rounded to the embedding's dtype first, as HF does
                x = x * torch.tensor(self.cfg.d_model ** 0.5, dtype=x.dtype)
            if self.wpe is not None:
                x = x + self.wpe(positions)
            x = self.drop(x)
        rope = rope_local = None
        if self.cfg.position == "rope":
            rope = (self.rope_cos[positions][:, None], self.rope_sin[positions][:, None])  # (B, 1, S, D/2)
            rope_local = rope
            if self.cfg.rope_local_theta:
                rope_local = (self.rope_local_cos[positions][:, None], self.rope_local_sin[positions][:, None])
        for layer, block in enumerate(self.blocks):
            if layer < first:
                continue
            if layer == plan.stop_at:
                return x
            sliding = self.cfg.sliding(layer)
            args = (x, rope_local if sliding else rope, window_mask if sliding else attn_mask, layer, cache, slots,
                    positions if cache is not None else None, packing)
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                # keep only each block's input; its insides are recomputed in backward (~1.3x the compute,
                # a fraction of the memory: what lets a real model's LoRA step fit in a laptop's RAM)
                x = torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)
        if packing is not None:
            cache.lengths.index_add_(0, slots, torch.ones_like(slots))   # a slot may take several rows
        elif cache is not None:
            cache.lengths[slots] += S
        if out_rows is not None:
            x = x[out_rows]
        if last_only:
            x = x[:, -1:]
        return self.ln_f(x)

    def _window_mask(self, attn_mask: torch.Tensor | None, positions: torch.Tensor | None, S: int,
                     device) -> torch.Tensor | None:
        """The mask of the sliding-window layers: attn_mask, and key j visible to query i only if j > i - W.

        With a cache, i is the query's position (B, S) and j the key's cache position (attn_mask (B, 1, S, T));
        without, both are row indices (attn_mask (B, 1, S, S), or None = causal). None if no layer slides."""
        W = self.cfg.sliding_window
        if not any(self.cfg.sliding(i) for i in range(self.cfg.n_layer)):
            return None
        if positions is None:
            pos = torch.arange(S, device=device)
            recent = pos[None, :] > pos[:, None] - W                                     # (S, S)
            causal = pos[None, :] <= pos[:, None]
            return recent & (causal if attn_mask is None else attn_mask)
        key_pos = torch.arange(attn_mask.size(-1), device=device)
        return attn_mask & (key_pos[None, None, None, :] > positions[:, None, :, None] - W)   # (B, 1, S, T)

    @staticmethod
    def _packing(slots: torch.Tensor, segments: list[tuple[int, int]], S: int) -> Packing:
        if S != 1 or isinstance(slots, slice):
            raise ValueError("segments need one token per row (idx of shape (B, 1)) and a tensor of slots")
        rows = slots.tolist()
        n1 = segments[0][0]
        if any(a[1] != b[0] for a, b in zip(segments, segments[1:])) or segments[-1][1] != len(rows) \
                or any(len(set(rows[lo:hi])) != 1 for lo, hi in segments):
            raise ValueError("segments must be consecutive runs of one slot each, up to the last row")
        return Packing(consecutive(slots[:n1]) if n1 else slots[:0], [(lo, hi, rows[lo]) for lo, hi in segments])

    def set_dropout(self, p: float) -> None:
        """Change the dropout of every layer (a fine-tune's --dropout on a loaded run). Attention reads
        cfg.dropout at each call, but the nn.Dropout modules keep the rate they were built with."""
        self.cfg.dropout = p
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.p = p

    # ---- reporting -------------------------------------------------------
    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.wpe is not None:
            n -= self.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), as in the PaLM paper: 6N + 12·L·H·D·T."""
        cfg = self.cfg
        T = seq_len or cfg.block_size
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * T


def doc_attention_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Causal mask that keeps packed documents apart.

    doc_ids: (B, S) an id per token, equal within one document.
    Returns (B, 1, S, S) boolean: query i may attend key j iff j <= i and same document.
    """
    S = doc_ids.size(1)
    causal = torch.ones(S, S, dtype=torch.bool, device=doc_ids.device).tril()
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    return (causal[None] & same_doc)[:, None]


def doc_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """Positions that restart at 0 at each document boundary: (B, S) -> (B, S)."""
    B, S = doc_ids.shape
    idx = torch.arange(S, device=doc_ids.device).expand(B, S)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    start_idx = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - start_idx
