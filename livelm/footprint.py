"""How much memory a job will take, estimated before it starts, and a clear refusal when it will not fit.

A training step that does not fit dies deep inside PyTorch with "DefaultCPUAllocator: can't allocate
memory" after minutes of work, or the kernel's OOM killer ends it with no message at all. The big
parts of a step are known from its shapes before anything is allocated, so the trainer, the live
learner and the engine ask here first:

    weights           every parameter, in the dtype it is stored in
    gradients         trainable parameters (all of them, or LoRA's), fp32
    optimizer         AdamW: two fp32 moments per trainable parameter
    activations       what backward keeps per token and layer (projections, MLP, attention scores:
                      livelm's CPU attention writes its (S x S) scores out), or with activation
                      checkpointing only each block's input plus one block being recomputed
    logits            the positions that take a loss x the vocabulary, fp32, three copies (logits,
                      softmax, gradient); LOSS_CHUNK positions at a time when checkpointing
    runtime           Python, PyTorch and the tokenizer: RUNTIME_BYTES

The constants were calibrated against peak resident memory measured on real runs (bench/footprint.py:
SmolLM2-135M LoRA and small full fine-tunes); the estimate is meant to be above the measurement, so
that a job it lets start does not run out, and close to it, so that a job that would fit is not refused.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

RUNTIME_BYTES = 450 << 20      # python + torch + tokenizers + the trainer's own bookkeeping, measured ~380 MB
HEADROOM = 0.9                 # never plan to use more than this share of the memory available now
GiB = 1 << 30


def available(device=None) -> int:
    """Bytes that can be allocated now: the GPU's free memory, or the RAM the kernel says is available
    (MemAvailable: free plus reclaimable caches), within a cgroup limit if one is set."""
    import torch
    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.mem_get_info(torch.device(device))[0]
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:   # no /proc/meminfo: what the machine has at all
        from livelm.machine import total_memory
        avail = total_memory()
    try:   # cgroup v2: the container's limit minus what it already uses
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


@dataclass
class Estimate:
    what: str                                   # "this training step", ...
    parts: dict[str, int] = field(default_factory=dict)
    advice: list[str] = field(default_factory=list)   # what to lower, most effective first

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        return ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.parts.items() if v >= 1 << 20) + " GiB"


class NotEnoughMemory(ValueError):
    """A job's estimate is more than the memory available; the message says what to lower."""


def in_use(device=None) -> int:
    """Bytes this process holds now: the GPU memory it allocated, or its resident set."""
    import torch
    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.memory_allocated(torch.device(device))
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def check(est: Estimate, device=None, budget: int | None = None, held: int = 0) -> None:
    """Raise NotEnoughMemory unless `est` fits HEADROOM of the memory available now (or of `budget`).
    held: bytes of the estimate this process already holds (a trainer's loaded weights and runtime:
    in_use()), which count as available to it."""
    have = int((budget if budget is not None else available(device) + held) * HEADROOM)
    if est.total > have:
        tips = "; ".join(est.advice) if est.advice else "use a smaller model"
        raise NotEnoughMemory(
            f"{est.what} needs about {est.total / GiB:.1f} GiB ({est.describe()}) but {have / GiB:.1f} GiB is "
            f"available; lower it: {tips}. (The estimate is livelm/footprint.py's; pass --memory-check false "
            f"to start anyway.)")


def training_step(cfg, n_params: int, n_trainable: int, batch: int, block: int, weight_bytes: int = 4,
                  act_bytes: int = 4, checkpointing: bool = False, lora: bool = False,
                  loss_chunk: int = 512) -> Estimate:
    """One step of `livelm train` / `finetune` of a GPTConfig `cfg` (see the module docstring for the parts).
    weight_bytes: 4 for fp32 weights, 2 for bf16; act_bytes: the activations' (2 under bf16 autocast)."""
    C, L, V, H = cfg.d_model, cfg.n_layer, cfg.vocab_size, cfg.n_head
    Ckv = cfg.n_kv_head * cfg.head_dim
    F = cfg.mlp_hidden * (2 if cfg.mlp != "gelu" else 1)
    tokens = batch * block
    # saved for backward per token and layer: norms' inputs and outputs, q/k/v, attention output, the
    # residuals, the MLP's hidden states (gate, up, their product); attention's scores (fp32) and
    # probabilities (activation dtype), written out by livelm's CPU attention, per query: H x S each
    per_token_layer = act_bytes * (8 * C + 2 * Ckv + 3 * F) + (4 + act_bytes) * H * block
    if checkpointing:   # the blocks' inputs, and one block recomputed in backward with its gradients
        activations = L * tokens * C * act_bytes + 3 * tokens * per_token_layer // 2
        logits = 3 * min(tokens, loss_chunk) * V * 4 + tokens * C * 4
    else:
        activations = L * tokens * per_token_layer
        logits = 3 * tokens * V * 4
    est = Estimate("this training step", {
        "weights": n_params * weight_bytes, "gradients": n_trainable * 4, "optimizer": 2 * n_trainable * 4,
        "activations": activations, "logits": logits, "runtime": RUNTIME_BYTES})
    if batch > 1:
        est.advice.append(f"--batch-size {max(1, batch // 2)} (and --grad-accum to keep the tokens per step)")
    if not checkpointing:
        est.advice.append("--activation-checkpointing true")
    if block > 256:
        est.advice.append(f"--block-size {block // 2}")
    if not lora and n_trainable > 1e7:
        est.advice.append("--lora (train an adapter, not every weight)")
    return est


def model_params(cfg) -> int:
    """Parameters of a decoder with GPTConfig `cfg`, counted without allocating it (meta tensors)."""
    import torch
    from livelm.models.gpt import GPT
    with torch.device("meta"):
        return sum(p.numel() for p in GPT(cfg).parameters())


def live_update(cfg, batch: int, rank: int = 8) -> Estimate:
    """A live-learning update (livelm/learn/update.py) in its own process: the model loaded again, a
    rank-`rank` LoRA on every projection, `batch` short conversations per step (at most 512 tokens each)."""
    n = model_params(cfg)
    # A (r x in) and B (out x r) on q, o; k, v; gate, up, down
    per_layer = 2 * (cfg.d_model + cfg.n_head * cfg.head_dim) + 2 * (cfg.d_model + cfg.n_kv_head * cfg.head_dim) \
        + 3 * (cfg.d_model + cfg.mlp_hidden)
    est = training_step(cfg, n, rank * per_layer * cfg.n_layer, batch, min(cfg.block_size, 512),
                        checkpointing=n >= 50_000_000, lora=True)
    est.what = "a live-learning update"
    est.advice = ["free memory (fewer --max-batch rows or a smaller --kv-cache-memory for the engine)",
                  "--learn-batch / --learn-replay"]
    return est
