"""The CPU kernels of the decoder: matmuls for decode's few-row products, attention for training and decode.

Plain functions over tensors (and nn.Linear with a faster path), used by livelm/models/gpt.py, the
quantized layers' fp32 fallback (livelm/models/quantized.py) and the benchmarks. Each says why it
exists and what it was measured against.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


STREAMING_BYTES = 16 << 20   # fp32 models above this size stream their weights from memory when decoding


FEW_ROWS = 4                 # decode's few-row products: faster up to 4 rows on every shape measured, mixed at 8


class Linear(nn.Linear):
    """nn.Linear, with a faster path for the few-row products of decoding on a CPU.

    Decoding one token per sequence multiplies a handful of rows by every weight
    matrix, so each step streams all weights from memory once, and its speed is
    memory bandwidth. For such products PyTorch's fp32 CPU path (MKL sgemv/sgemm)
    reads weights at ~10 GB/s on the 2-core AMD machines we measure on, while a
    batched matmul over the weight's rows split into 8 blocks reads the very same
    (N, K) layout at 20-40 GB/s (bench/gemv.py). bf16 goes through oneDNN,
    which is better as it is, so only fp32 inference takes the detour; results
    differ from F.linear by float rounding only. A model small enough to stay in
    the CPU's caches (the 128-wide default assistant) is faster the usual way, so
    GPT turns the detour on only for models bigger than the caches (`streams`).
    """

    few_rows = FEW_ROWS
    streams = False       # set by GPT for models whose weights do not fit in the caches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.streams, self.few_rows)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, streams: bool,
           few_rows: int = FEW_ROWS) -> torch.Tensor:
    """F.linear, or for the few-row products of CPU decoding the faster paths Linear describes. Also the
    "dense" kernel of quantized layers (livelm/compress/quantize.py), so their fp32 fallback is exactly
    as fast as the fp32 model."""
    if x.device.type == "cpu" and x.numel() <= few_rows * weight.shape[1] and not torch.is_grad_enabled():
        if torch.compiler.is_compiling():
            return reduce_linear(x, weight, bias)
        if x.dtype == torch.float32 and weight.dtype == torch.float32 and streams:
            return few_rows_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def few_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, blocks: int = 8) -> torch.Tensor:
    """F.linear(x, weight, bias) for x (..., K) with few rows R, as one bmm over `blocks` row blocks of weight (N, K)."""
    K, N = x.shape[-1], weight.shape[0]
    xr = x.reshape(-1, K)                                                      # (R, K)
    n = N - N % blocks                                                         # rows that split evenly
    xb = xr.t().unsqueeze(0).expand(blocks, K, xr.size(0))                     # (blocks, K, R), a view
    y = torch.bmm(weight[:n].view(blocks, n // blocks, K), xb)                 # (blocks, N/blocks, R)
    y = y.permute(2, 0, 1).reshape(xr.size(0), n)                              # (R, n)
    if n < N:                                                                  # the N % blocks leftover rows
        y = torch.cat([y, xr @ weight[n:].t()], dim=1)
    if bias is not None:
        y = y + bias
    return y.view(*x.shape[:-1], N)


def reduce_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) for few rows, written as a product and a sum over K.

    Under torch.compile, inductor fuses this into one vectorized loop that reads each weight
    once and widens bf16 to fp32 in registers: 25-30 GB/s here in fp32 and 18-25 GB/s in bf16
    (twice the weights per second), where PyTorch's own bf16 one-row path reads ~12 GB/s.
    Run eagerly it would materialize (R, N, K), so it is only used while compiling."""
    y = (x.float().unsqueeze(-2) * weight.float()).sum(-1)                    # (..., N) in fp32
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0,
                     scale: float | None = None, softcap: float = 0.0) -> torch.Tensor:
    """softmax(q·kᵀ/√D + causal mask)·v written out as two matmuls: (B, H, S, D) -> (B, H, S, D).

    Equal to F.scaled_dot_product_attention(..., is_causal=True), and faster on CPU
    for the short sequences and small heads trained there: PyTorch's fused CPU
    kernel is tuned for long sequences and its bf16 backward is ~3x slower than
    fp32, while here the matmuls run in bf16 under autocast and torch.compile
    fuses the scale, mask and softmax into one loop. The softmax is taken in fp32.
    scale replaces 1/√D (Gemma); softcap > 0 squashes the scores into ±softcap (see attention).
    """
    pos = torch.arange(q.size(-2), device=q.device)
    future = pos[None, :] > pos[:, None]                        # (S, S); compiled, an index test, not a tensor
    scores = _capped((q @ k.transpose(-2, -1)).float() * (scale or 1.0 / math.sqrt(q.size(-1))), softcap)
    probs = scores.masked_fill(future, float("-inf")).softmax(dim=-1).to(v.dtype)
    probs = F.dropout(probs, p=dropout, training=dropout > 0)
    return probs @ v


def _capped(scores: torch.Tensor, softcap: float) -> torch.Tensor:
    """Gemma 2's logit soft-capping: softcap·tanh(scores/softcap), smooth and bounded; 0 = off."""
    return softcap * torch.tanh(scores / softcap) if softcap else scores


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
              dropout: float = 0.0, is_causal: bool = False, scale: float | None = None,
              softcap: float = 0.0) -> torch.Tensor:
    """F.scaled_dot_product_attention for q (B, H, S, D) and k/v (B, Hkv, T, D), attn_mask boolean (True = may
    attend) broadcastable to (B, H, S, T): the general case (masks, GPUs, the KV cache) -> (B, H, S, D).

    When Hkv < H, enable_gqa broadcasts K/V heads inside the kernel: repeating them would copy the whole cached
    prefix every decode step (measured: 4x slower attention at batch 16 on CPU). PyTorch's kernels have no
    score soft-capping, so with softcap the scores are written out (as transformers' eager attention does)."""
    gqa = k.size(1) != q.size(1)     # each K/V head serves H/Hkv query heads
    if not softcap:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal,
                                              scale=scale, enable_gqa=gqa)
    if gqa:
        rep = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = _capped((q @ k.transpose(-2, -1)).float() * (scale or 1.0 / math.sqrt(q.size(-1))), softcap)
    if is_causal:
        attn_mask = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    probs = F.dropout(scores.softmax(dim=-1).to(v.dtype), p=dropout, training=dropout > 0)
    return probs @ v


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor,
                     scale: float | None = None, softcap: float = 0.0) -> torch.Tensor:
    """One new token per row over the cache, written out for torch.compile: q (B, H, 1, D), k/v (B, Hkv, T, D),
    attn_mask (B, 1, 1, T) -> (B, H, 1, D).

    Compiled, these few-row products become inductor loops fused with the softmax, where PyTorch's
    CPU SDPA kernel costs ~60 µs per call however little it computes (6 calls per token at 6 layers:
    a tenth of a decode step). Query heads that share a K/V head are a dimension of their own,
    so grouped-query attention needs no copy of the cache."""
    B, H, _, D = q.shape
    Hkv = k.size(1)
    qg = q.reshape(B, Hkv, H // Hkv, D).float()                                        # (B, Hkv, H/Hkv, D)
    scale = scale or 1.0 / math.sqrt(D)
    scores = (qg[:, :, :, None, :] * k[:, :, None].float()).sum(-1) * scale                 # (B, Hkv, H/Hkv, T)
    probs = _capped(scores, softcap).masked_fill(~attn_mask, float("-inf")).softmax(-1)
    y = (probs[..., None] * v[:, :, None].float()).sum(-2)                                  # (B, Hkv, H/Hkv, D)
    return y.reshape(B, H, 1, D).to(q.dtype)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU ("gelu_new"): 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).

    torch.compile on CPU gets it as x·sigmoid(2·√(2/π)·(...)), the same function
    (0.5·(1 + tanh z) = sigmoid(2z)), for which inductor's CPU loop is ~2x faster;
    run eagerly, PyTorch's own kernel is the fastest form.
    """
    if torch.compiler.is_compiling() and x.device.type == "cpu":
        return x * torch.sigmoid(2 * math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x))
    return F.gelu(x, approximate="tanh")
