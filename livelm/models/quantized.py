"""Quantized Linear layers (int8 per-channel, int8 dynamic, int4 group-wise) and the kernels they run.

Written by `livelm quantize` (livelm/compress/quantize.py), loaded by the run layer (livelm/runs.py).

    int8          weight-only: W ≈ Wq · s, Wq int8 (out, in), one scale per output row
    int8-dynamic  the same weights; each token's activations are also quantized to int8
                  on the fly (one scale per row of x) and multiplied in int32
    int4          weight-only, asymmetric per group of `group_size` input columns:
                  W ≈ q · s + z, q in 0..15 packed two per byte, s and z per (row, group)

The projections inside the blocks are quantized (q/k/v/o, gate/up/down). So is the
lm_head where it is a large share of the weights (HEAD_SHARE; a real vocabulary:
SmolLM2's 49,152 x 576 head is 21% of the model, 113 MB in fp32, more than all its
int4 blocks), always to int8, per row, whatever the method: the head sees every logit,
and llama.cpp too keeps its output tensor at higher precision (Q6_K) in a Q4_0 file.
A tied head gets a quantized copy; the token embedding (rows looked up, not streamed)
and the norms stay in fp32.

The kernels are ATen's own CPU ops, called from plain nn.Modules. Measured on this
2-core CPU, one thread, a 512 -> 2048 layer, µs per call at batch 1 / 8 / 128 tokens:

    fp32 nn.Linear                                   140 /  385 / 3420
    int8 weight-only, torch._weight_int8pack_mm       64 /  291 / 3870   (bf16 activations)
    int8 weight-only, dequantize + F.linear          194 /  470 / 3760
    int8 dynamic, torch._int_mm                       72 /  199 /  939
    int4, torch._weight_int4pack_mm_for_cpu           66 /  255 / 3630   (bf16 activations)
    int4, unpack + dequantize + F.linear            1380 / 5990 / 6780
    torchao 0.18 Int8WeightOnlyConfig (fp32)         258 /  479 / 3900
    torchao 0.18 Int8DynamicActivationInt8Weight     739 / 1360 / 2060

so torchao (whose int4 config does not run here: "Requires mslk >= 1.0.0") is not
used, and the fp32 versions of the two weight-only kernels (10-100x slower than
their bf16 paths) are avoided by casting activations to bf16 around the matmul.
Whole model, greedy decode through the Engine at batch 1, one thread, 8 layers x 512
(23M parameters): fp32 75 tok/s, bf16 86, int8 145, int8-dynamic 113, int4 140.
int8-dynamic pays for quantizing every activation row, which wins at prefill and
large batches (the 128-token column above), not at batch-1 decode.

Storage is our own simple layout (int tensors + scales in model.safetensors,
the method in config.json): the CPU int4 kernel wants a tiled layout that depends
on the CPU, so it is built from the plain nibbles when the model is loaded (and
held beside them: an int4 layer takes 1 byte per weight in memory, half a byte on
disk). On other devices, or shapes the kernels refuse, the layers dequantize and
call F.linear. LoRA adapters wrap nn.Linear only: merge an adapter into its base
run before quantizing it.
"""
from __future__ import annotations

import functools
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from livelm.models.kernels import STREAMING_BYTES, linear

METHODS = ("int8", "int8-dynamic", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)   # what the CPU int4 kernel accepts


class Int8Linear(nn.Module):
    """y = x Wᵀ + b with W stored as int8 (out, in) and an fp32 scale per output row (out,)."""

    is_quantized = True
    kernels = ("int8pack", "int8pack")   # (up to FEW_ROWS rows, more rows): set per machine by select_kernels
    dense = None                         # fp32 copy of W, built on first use by the "dense" kernel
    streams = False                      # the fp32 model is past the caches (models.kernels.Linear.streams)

    def __init__(self, in_features: int, out_features: int, bias: bool, dynamic: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.dynamic = in_features, out_features, dynamic
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, lin: nn.Linear, dynamic: bool = False) -> "Int8Linear":
        w = lin.weight.detach().float()
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, dynamic)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127                     # (out,) symmetric, per row
        m.weight.copy_(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        m.scale.copy_(scale)
        if lin.bias is not None:
            m.bias.copy_(lin.bias.detach().float())
        return m

    def dequantize(self) -> torch.Tensor:
        return self.weight.float() * self.scale.float()[:, None]                # (out, in)

    def matmul(self, x2: torch.Tensor, kernel: str) -> torch.Tensor:
        """x2 (M, in) @ Wᵀ -> (M, out) by the named kernel (see KERNELS)."""
        if kernel == "int_mm":
            # per-token symmetric int8 activations; int8 x int8 -> int32 matmul; rescale by both scales
            sx = x2.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127   # (M, 1)
            xq = torch.round(x2.float() / sx).clamp(-127, 127).to(torch.int8)
            return torch._int_mm(xq, self.weight.t()).float() * sx * self.scale.float()  # (M, out)
        if kernel == "int8pack":
            return torch._weight_int8pack_mm(x2.to(torch.bfloat16).contiguous(), self.weight,
                                             self.scale.to(torch.bfloat16))
        return _dense_matmul(self, x2, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], self.out_features)
        x2 = x.reshape(-1, self.in_features)                                    # (M, in)
        y = self.matmul(x2, _kernel_for(self, x2)).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(shape)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.dense = None

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, dynamic={self.dynamic}"


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(N, K) integers in 0..15 -> (N, K/2) uint8; column 2j in the low nibble, 2j+1 in the high one."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(N, K/2) uint8 -> (N, K) uint8 in 0..15; the inverse of pack_int4."""
    return torch.stack((packed & 15, packed >> 4), dim=-1).view(packed.size(0), -1)


class Int4Linear(nn.Module):
    """y = x Wᵀ + b with W ≈ q · s + z per group of `group_size` input columns.

    Kernels and the dense copy as for Int8Linear.

    Buffers (what model.safetensors holds):
        qweight (out, in/2) uint8   two 4-bit codes per byte (pack_int4)
        scales, zeros (out, in/group_size) bf16
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int = 64):
        super().__init__()
        if in_features % group_size:
            raise ValueError(f"in_features={in_features} is not a multiple of group_size={group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        n_groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, n_groups, dtype=torch.bfloat16))
        self.register_buffer("zeros", torch.zeros(out_features, n_groups, dtype=torch.bfloat16))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.kernels, self.dense, self.streams = ("int4pack", "int4pack"), None, False
        # the CPU kernel's own tiled copy of the weights, rebuilt from qweight (not saved)
        self.register_buffer("cpu_packed", None, persistent=False)
        self.register_buffer("cpu_scales_zeros", None, persistent=False)

    @classmethod
    def from_linear(cls, lin: nn.Linear, group_size: int = 64) -> "Int4Linear":
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, group_size)
        N, K, G = lin.out_features, lin.in_features, group_size
        w = lin.weight.detach().float().view(N, K // G, G)
        lo, hi = w.amin(dim=-1), w.amax(dim=-1)                                 # (N, K/G)
        # round the scales to bf16 first, so the codes are chosen for the scales actually stored
        scales = ((hi - lo) / 15).clamp(min=1e-8).to(torch.bfloat16)
        zeros = lo.to(torch.bfloat16)
        q = torch.round((w - zeros.float()[..., None]) / scales.float()[..., None]).clamp(0, 15)
        m.qweight.copy_(pack_int4(q.view(N, K)))
        m.scales.copy_(scales)
        m.zeros.copy_(zeros)
        if lin.bias is not None:
            m.bias.copy_(lin.bias.detach().float())
        m.repack()
        return m

    is_quantized = True

    def dequantize(self) -> torch.Tensor:
        N, K, G = self.out_features, self.in_features, self.group_size
        q = unpack_int4(self.qweight).view(N, K // G, G).float()
        return (q * self.scales.float()[..., None] + self.zeros.float()[..., None]).view(N, K)

    @torch.no_grad()
    def repack(self) -> None:
        """Build the CPU kernel's layout; the kernel wants out % 16 == 0 and value = (q - 8)·s + z'."""
        if self.out_features % 16 or self.group_size not in INT4_GROUP_SIZES or self.qweight.device.type != "cpu":
            self.cpu_packed = self.cpu_scales_zeros = None
            return
        q = unpack_int4(self.qweight).to(torch.int32)                            # (N, K)
        self.cpu_packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
        # q·s + z = (q - 8)·s + (z + 8s); the kernel takes (K/G, N, 2) pairs of (s, z + 8s)
        s, z = self.scales.float(), self.zeros.float()
        self.cpu_scales_zeros = torch.stack((s, z + 8 * s), dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.repack()
        self.dense = None

    def matmul(self, x2: torch.Tensor, kernel: str) -> torch.Tensor:
        """x2 (M, in) @ Wᵀ -> (M, out) by the named kernel (see KERNELS)."""
        if kernel == "int4pack" and self.cpu_packed is not None:
            return torch._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16).contiguous(), self.cpu_packed,
                                                     self.group_size, self.cpu_scales_zeros)
        return _dense_matmul(self, x2, "dequantize" if kernel == "int4pack" else kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], self.out_features)
        x2 = x.reshape(-1, self.in_features)
        y = self.matmul(x2, _kernel_for(self, x2)).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(shape)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, group_size={self.group_size}"

# ---- kernels, chosen per machine -------------------------------------------------------------
# Which matmul a quantized layer runs depends on the CPU: ATen's int8/int4 weight-only kernels take
# bf16 activations and beat fp32 4x at decode on a CPU with AVX-512 BF16, yet where only AVX2 is there
# they win at decode but lose to fp32 at prefill (measured, 1024 -> 2816, µs at 1 / 16 / 128 rows:
# fp32 140 / 775 / 3732, int8pack 76 / 614 / 4922, int4pack 144 / 614 / 5002). So each layer keeps two
# kernels, one for few rows (decode) and one for many (prefill), picked by timing the candidates on this
# machine (select_kernels, cached). "dense" keeps an fp32 copy of the weights and runs F.linear: as fast
# as the fp32 model, so a quantized model is never slower than it, at the cost of that copy's memory.
KERNELS = {"int8": ("int8pack", "dequantize", "dense"),
           "int8-dynamic": ("int_mm", "int8pack", "dequantize", "dense"),   # weight-only kernels round alike
           "int4": ("int4pack", "dequantize", "dense")}
FEW_ROWS = 16          # up to this many rows a product counts as decode
PROBE_ROWS = (1, 128)  # rows timed for each regime


def _kernel_for(layer: nn.Module, x2: torch.Tensor) -> str:
    if x2.device.type != "cpu":
        return "dequantize"
    return layer.kernels[0] if x2.size(0) <= FEW_ROWS else layer.kernels[1]


def _dense_matmul(layer: nn.Module, x2: torch.Tensor, kernel: str) -> torch.Tensor:
    if kernel == "dense":   # the fp32 model's own path (its few-row detour included), on an fp32 copy
        if layer.dense is None or layer.dense.device != x2.device:
            layer.dense = layer.dequantize().to(x2.device)
        return linear(x2.float(), layer.dense, None, layer.streams)
    return F.linear(x2.float(), layer.dequantize().to(x2.device))


def _time_us(fns: dict, seconds: float = 0.3) -> dict[str, float]:
    """Best µs per call of each function, timed in interleaved rounds: a machine busy with something else
    slows every candidate alike instead of whichever happened to run at the wrong moment."""
    for fn in fns.values():
        fn()   # warm-up
    best = {k: float("inf") for k in fns}
    deadline, rounds = time.perf_counter() + seconds, 0
    while rounds < 3 or (time.perf_counter() < deadline and rounds < 200):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
        rounds += 1
    return {k: round(v * 1e6, 1) for k, v in best.items()}


# A kernel must compute the layer's product, not just compute it fast: measured, torch._int_mm under
# ATen's AVX2 kernels is off by 11-25% of the output's largest value (the native AVX-512 path by < 1%;
# the weight-only kernels by < 0.4% on both), so every candidate is checked against the dequantized
# product on the probe rows and one that misses by more than this share is never chosen.
MAX_KERNEL_ERROR = 0.03


def kernel_error(layer: nn.Module, x2: torch.Tensor, kernel: str) -> float:
    """max |kernel's product - dequantized fp32 product|, relative to the product's largest value."""
    ref = F.linear(x2.float(), layer.dequantize())
    return float((layer.matmul(x2, kernel).float() - ref).abs().max() / ref.abs().max().clamp(min=1e-12))


def measure_kernels(method: str, in_features: int, out_features: int, group_size: int = 64,
                    streams: bool = False) -> dict:
    """Time each candidate kernel against the fp32 model's own matmul (models.kernels.linear: `streams` says
    whether the model is past the caches, where decode takes its few-row detour) on one (out, in) layer at
    PROBE_ROWS rows; pick, per regime, the fastest quantized kernel that computes the product to within
    MAX_KERNEL_ERROR, unless fp32 beats it, then "dense" (the same fp32 path on an fp32 copy of the weights)."""
    torch.manual_seed(0)
    lin = nn.Linear(in_features, out_features, bias=False)
    layer = Int4Linear.from_linear(lin, group_size) if method == "int4" else \
        Int8Linear.from_linear(lin, dynamic=method == "int8-dynamic")
    report: dict = {}
    chosen = []
    with torch.inference_mode():
        for rows in PROBE_ROWS:
            x = torch.randn(rows, in_features)
            fns = {"fp32": lambda: linear(x, lin.weight, None, streams)}
            for k in KERNELS[method]:
                if k == "dense" or (k == "int4pack" and layer.cpu_packed is None):
                    continue   # dense is F.linear on an fp32 copy: fp32's own time
                error = kernel_error(layer, x, k)
                if error > MAX_KERNEL_ERROR:
                    report.setdefault("inaccurate", {})[k] = round(error, 4)
                    continue
                fns[k] = functools.partial(layer.matmul, x, k)
            row = _time_us(fns)
            candidates = [k for k in row if k != "fp32"]
            best = min(candidates, key=row.get) if candidates else "dense"
            chosen.append(best if candidates and row[best] <= row["fp32"] else "dense")
            report[f"{rows}_rows_us"] = row
    return {"decode": chosen[0], "prefill": chosen[1], **report}


def select_kernels(model: nn.Module, method: str, group_size: int = 64) -> dict:
    """Set every quantized layer's (decode, prefill) kernels from this machine's measurement on the model's
    largest quantized shape (measured once per machine, method and shape; cached by livelm.machine)."""
    from livelm import machine
    layers = [m for m in model.modules() if getattr(m, "is_quantized", False)]
    if not layers:
        return {}
    # would the fp32 model stream its weights from memory when decoding (models.kernels.Linear.streams)?
    fp32_bytes = 4 * (sum(p.numel() for p in model.parameters()) + sum(m.in_features * m.out_features for m in layers))
    streams = fp32_bytes > STREAMING_BYTES
    if any(p.device.type != "cpu" for p in model.buffers()):
        return {"decode": "dequantize", "prefill": "dequantize"}
    # the blocks' layers by their largest shape; an int8 head of an int4 or int8-dynamic model on its own
    groups: dict[str, list] = {}
    for m in layers:
        kind = "int4" if isinstance(m, Int4Linear) else "int8-dynamic" if m.dynamic else "int8"
        groups.setdefault(kind, []).append(m)
    choices = {}
    for kind, members in groups.items():
        big = max(members, key=lambda m: m.in_features * m.out_features)
        key = f"quant {kind} {big.out_features}x{big.in_features}" + (f" g{group_size}" if kind == "int4" else "") \
            + (" streams" if streams else "")
        choices[kind] = machine.cached(key, lambda: measure_kernels(kind, big.in_features, big.out_features,
                                                                     group_size, streams))
        for m in members:
            m.kernels = (choices[kind]["decode"], choices[kind]["prefill"])
            m.dense, m.streams = None, streams
    choice = dict(choices.get(method) or next(iter(choices.values())))
    if len(choices) > 1:
        choice["head"] = {k: v for k, v in choices.items() if k != method}
    return choice


HEAD_SHARE = 0.1   # the lm_head is quantized (to int8) when it holds at least this share of the weights


def targets(model: nn.Module) -> list[str]:
    """Names of the Linear layers that get quantized: every projection inside the blocks, and the lm_head
    when it is a large share of the model (see HEAD_SHARE)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.startswith("blocks.")]
    head = getattr(model, "lm_head", None)
    total = sum(p.numel() for p in model.parameters())
    if isinstance(head, nn.Linear) and head.weight.numel() >= HEAD_SHARE * total:
        names.append("lm_head")
    return names


def quantized_layer(name: str, lin: nn.Module, method: str, group_size: int = 64, empty: bool = False) -> nn.Module:
    """The quantized layer for Linear `lin` called `name` (empty: shaped only, to load weights into)."""
    if method == "int4" and name != "lm_head":
        return Int4Linear(lin.in_features, lin.out_features, lin.bias is not None, group_size) if empty \
            else Int4Linear.from_linear(lin.cpu(), group_size)
    dynamic = method == "int8-dynamic" and name != "lm_head"   # the head is weight-only int8 (see above)
    return Int8Linear(lin.in_features, lin.out_features, lin.bias is not None, dynamic=dynamic) if empty \
        else Int8Linear.from_linear(lin.cpu(), dynamic=dynamic)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def prepare_quantized(model: nn.Module, record: dict) -> None:
    """Swap in empty quantized layers named by a config.json record, ready for load_state_dict."""
    method = record.get("method")
    if method not in METHODS:
        raise ValueError(f"config.json names an unknown quantization method {method!r}")
    for name in record["modules"]:
        _set(model, name, quantized_layer(name, model.get_submodule(name), method, record.get("group_size", 64),
                                          empty=True))
    select_kernels(model, method, record.get("group_size", 64))
