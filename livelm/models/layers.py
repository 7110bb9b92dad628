"""The decoder's small parts: norms and rotary position embeddings (used by gpt.py, bert.py, seq2seq.py).

Each follows the Hugging Face model it stands in for to the rounding, so imported weights give the
same logits: RMSNorm in fp32 (Llama; Gemma scales by 1 + w instead of w), RoPE in the "rotate half"
layout, and the inverse frequencies of Llama 3's and linear RoPE scaling as transformers computes them.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class RMSNorm(nn.Module):
    """x / rms(x) · (offset + weight). offset=1 is Gemma's norm: its checkpoints store weight - 1 (zeros at init)."""

    def __init__(self, dim: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.ones(dim) - offset)

    def forward(self, x):
        # normalise in fp32: under bf16 autocast the mean of squares loses too much precision
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        w = self.weight.float()
        if self.offset:
            w = w + self.offset     # in fp32 before the product, as Gemma does: (x·(1 + w)).to(dtype)
        return (xf * w).type_as(x)


def make_norm(cfg, dim: int | None = None) -> nn.Module:
    """The norm a GPTConfig asks for (norm, norm_eps, norm_offset, bias) over `dim` features (default d_model)."""
    dim = dim or cfg.d_model
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps, getattr(cfg, "norm_offset", 0.0))
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


ROPE_SCALINGS = ("linear", "llama3")     # rope_scaling["rope_type"] values livelm computes


def check_rope_scaling(scaling: dict | None) -> None:
    """ValueError unless `scaling` is None or a complete linear / llama3 scaling."""
    if scaling is None:
        return
    kind = scaling.get("rope_type")
    need = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                              "original_max_position_embeddings")}.get(kind)
    if need is None:
        raise ValueError(f"rope_scaling type {kind!r} is not supported; livelm computes {', '.join(ROPE_SCALINGS)}")
    missing = [k for k in need if not isinstance(scaling.get(k), (int, float))]
    if missing:
        raise ValueError(f"rope_scaling {kind!r} needs {', '.join(missing)}")


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """(head_dim/2,) rotation speeds: theta^(-2i/D), slowed down by Llama 3 / linear context extension.

    linear: every frequency / factor (positions stretched factor times).
    llama3: only the slow ones: wavelengths longer than original_len / low_freq_factor are divided by
    factor, shorter than original_len / high_freq_factor kept, in between interpolated (Llama 3.1's
    recipe; the same fp32 operations as transformers' _compute_llama3_parameters).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    factor = scaling["factor"]
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def rope_tables(head_dim: int, length: int, theta: float,
                scaling: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (length, head_dim/2) for rotary embeddings."""
    angles = torch.outer(torch.arange(length, dtype=torch.float32), rope_inv_freq(head_dim, theta, scaling))
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, S, D) by per-position angles; cos/sin are (B, 1, S, D/2).

    Uses the "rotate half" layout (first half pairs with second half), the same
    as Hugging Face's Llama, so exported weights need no permutation.
    """
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.type_as(x)
