"""Pruning: unstructured magnitude pruning, and structured removal of attention heads and MLP channels.

torch.nn.utils.prune only multiplies weights by masks it keeps beside them: the file
grows and nothing runs faster. The two kinds here each save something real:

    magnitude  zero the `amount` smallest |w| of every projection matrix in the blocks.
               Stored sparsely: a bitmask (1 bit per weight) + the surviving values, so
               at 50% the matrices take 0.125 + 2 = 2.1 bytes per weight instead of 4.
               Loaded back dense: smaller files, the same speed and memory when running.
    heads      physically remove attention heads: smaller q/k/v/o projections, fewer
               K/V heads in the cache, less compute.
    mlp        physically remove MLP hidden channels: smaller up/gate/down projections.

Importance is weight magnitude (no calibration data needed):
    head h      ‖W_o[:, h]‖ · ‖W_v[kv(h)]‖   (how much the head can write into the residual stream)
    channel j   ‖W_down[:, j]‖ · ‖W_up[j]‖ (· ‖W_gate[j]‖ for SwiGLU)

GPTConfig has one size for every layer, so every layer loses the same number of heads
(or channels), each layer choosing its own least important ones. Grouped-query
attention stays consistent: either whole K/V groups go (a K/V head with all the query
heads it serves), or every group loses the same number of query heads — whichever
lands closer to the requested amount (whole groups on a tie: they also shrink the
KV cache). Heads keep their size (GPTConfig.head_size). SwiGLU widths are multiples
of 32 in GPTConfig, so its channel count is rounded to one.

An optional short fine-tune (--finetune-data) recovers much of the loss, through the
same trainer and objective as pretraining; masked weights stay zero during it.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn

from livelm.models.gpt import GPT, GPTConfig

METHODS = ("magnitude", "heads", "mlp")


# ---- unstructured: magnitude --------------------------------------------------------------------
def magnitude_prune(model: GPT, amount: float) -> dict[str, torch.Tensor]:
    """Zero the `amount` smallest-|w| entries of each projection weight in place; returns {name: keep mask}."""
    masks = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.startswith("blocks."):
                w = module.weight
                k = int(amount * w.numel())
                if k == 0:
                    continue
                threshold = w.abs().flatten().kthvalue(k).values
                mask = w.abs() > threshold                  # ties at the threshold go too: at least `amount`
                w.mul_(mask)
                masks[name + ".weight"] = mask
    return masks


# ---- structured: attention heads ----------------------------------------------------------------
def head_layout(cfg: GPTConfig, amount: float) -> tuple[int, int]:
    """(n_head, n_kv_head) after pruning: a consistent GQA layout closest to removing `amount` of the heads."""
    H, G = cfg.n_head, cfg.n_kv_head
    rep = H // G
    target = H * (1 - amount)
    drop_groups = [(g * rep, g) for g in range(1, G + 1)]           # fewer K/V groups, each still whole
    thin_groups = [(G * r, G) for r in range(1, rep + 1)]           # every group loses the same query heads
    # closest to the target; on a tie prefer fewer K/V heads (a smaller cache)
    return min(drop_groups + thin_groups, key=lambda hg: (abs(hg[0] - target), hg[1]))


def head_scores(attn, cfg: GPTConfig) -> torch.Tensor:
    """(n_head,) importance of each query head: ‖its o_proj columns‖ · ‖its K/V group's v_proj rows‖."""
    D, rep = cfg.head_dim, cfg.n_head // cfg.n_kv_head
    wo = attn.o_proj.weight.detach().view(cfg.d_model, cfg.n_head, D)          # (C, H, D)
    wv = attn.v_proj.weight.detach().view(cfg.n_kv_head, D, cfg.d_model)       # (Hkv, D, C)
    return wo.norm(dim=(0, 2)) * wv.norm(dim=(1, 2)).repeat_interleave(rep)


def prune_heads(model: GPT, amount: float) -> tuple[GPT, dict]:
    cfg = model.cfg
    n_head, n_kv = head_layout(cfg, amount)
    if n_head == cfg.n_head:
        raise ValueError(f"--amount {amount} removes no head of {cfg.n_head} (with {cfg.n_kv_head} K/V heads); "
                         f"use a larger amount")
    D, rep = cfg.head_dim, cfg.n_head // cfg.n_kv_head
    new_cfg = replace(cfg, n_head=n_head, n_kv_head=n_kv, head_size=D)
    sd = model.state_dict()
    kept = []
    for i, block in enumerate(model.blocks):
        scores = head_scores(block.attn, cfg).view(cfg.n_kv_head, rep)          # (Hkv, rep)
        if n_kv < cfg.n_kv_head:   # drop whole groups: keep the n_kv groups with the largest total importance
            groups = scores.sum(1).topk(n_kv).indices.sort().values
            heads = (groups[:, None] * rep + torch.arange(rep)).flatten()
        else:                      # thin every group to the same number of query heads
            groups = torch.arange(cfg.n_kv_head)
            per = n_head // n_kv
            heads = (scores.topk(per, dim=1).indices.sort(dim=1).values + groups[:, None] * rep).flatten()
        kept.append(heads.tolist())
        q_rows = (heads[:, None] * D + torch.arange(D)).flatten()               # (n_head * D,)
        kv_rows = (groups[:, None] * D + torch.arange(D)).flatten()             # (n_kv * D,)
        p = f"blocks.{i}.attn."
        for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            sd[p + name + ".weight"] = sd[p + name + ".weight"][rows]
            if p + name + ".bias" in sd:
                sd[p + name + ".bias"] = sd[p + name + ".bias"][rows]
        sd[p + "o_proj.weight"] = sd[p + "o_proj.weight"][:, q_rows]
    return _rebuild(new_cfg, sd), {"n_head": [cfg.n_head, n_head], "n_kv_head": [cfg.n_kv_head, n_kv], "kept_heads": kept}


# ---- structured: MLP channels -------------------------------------------------------------------
def mlp_ratio_for(cfg: GPTConfig, hidden: int) -> float:
    """An mlp_ratio for which GPTConfig.mlp_hidden == hidden (its formula rounds, so try the nearby values)."""
    d = cfg.d_model
    for ratio in (hidden / d, (hidden + 0.5) / d, 1.5 * hidden / d, (1.5 * hidden + 0.5) / d):
        if replace(cfg, mlp_ratio=ratio).mlp_hidden == hidden:
            return ratio
    raise ValueError(f"GPTConfig cannot express an MLP of {hidden} channels")


def prune_mlp(model: GPT, amount: float) -> tuple[GPT, dict]:
    cfg = model.cfg
    hidden = cfg.mlp_hidden
    keep = round(hidden * (1 - amount))
    gated = cfg.mlp != "gelu"          # SwiGLU, GeGLU
    if gated:
        keep = max(32, 32 * round(keep / 32))
    keep = max(1, keep)
    if keep >= hidden:
        raise ValueError(f"--amount {amount} removes no MLP channel of {hidden}"
                         + (" (SwiGLU/GeGLU widths are multiples of 32)" if gated else ""))
    new_cfg = replace(cfg, mlp_ratio=mlp_ratio_for(cfg, keep))
    sd = model.state_dict()
    for i, block in enumerate(model.blocks):
        mlp, p = block.mlp, f"blocks.{i}.mlp."
        score = mlp.down_proj.weight.detach().norm(dim=0) * mlp.up_proj.weight.detach().norm(dim=1)   # (hidden,)
        if gated:
            score = score * mlp.gate_proj.weight.detach().norm(dim=1)
        idx = score.topk(keep).indices.sort().values
        for name in ("up_proj", "gate_proj"):
            if p + name + ".weight" in sd:
                sd[p + name + ".weight"] = sd[p + name + ".weight"][idx]
                if p + name + ".bias" in sd:
                    sd[p + name + ".bias"] = sd[p + name + ".bias"][idx]
        sd[p + "down_proj.weight"] = sd[p + "down_proj.weight"][:, idx]
    return _rebuild(new_cfg, sd), {"mlp_hidden": [hidden, keep]}


def _rebuild(cfg: GPTConfig, sd: dict[str, torch.Tensor]) -> GPT:
    model = GPT(cfg)
    model.load_state_dict(sd)
    return model.eval()


# ---- recovery fine-tune ---------------------------------------------------------------------------
def recover(model: GPT, tokenizer, run_config: dict, data_dir: str | Path, out: Path, iters: int, lr: float,
            masks: dict[str, torch.Tensor] | None = None, save_fn=None):
    """A short next-token fine-tune on a prepared data directory, through the one trainer loop."""
    from livelm.config import resolve_config
    from livelm.data.shards import TokenData
    from livelm.training.objectives import lm_loss
    from livelm.training.trainer import train
    data = TokenData(data_dir)
    if data.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"{data_dir} was prepared with a {data.vocab_size}-token vocabulary but the model uses "
                         f"{model.cfg.vocab_size}; prepare it with --reuse-tokenizer RUN")
    base = run_config.get("train") or {"preset": "llama" if model.cfg.position == "rope" else "gpt2"}
    cfg = resolve_config(None, base=base, max_iters=iters, lr=lr, min_lr=lr / 10, warmup_iters=min(20, iters // 10),
                         eval_interval=iters, save_interval=0, eval_iters=min(int(base.get("eval_iters", 20)), 20),
                         block_size=min(int(base.get("block_size", 256)), model.cfg.block_size), dropout=0.0,
                         compile=False, sample_interval=0)
    trainable = None
    if masks:   # magnitude pruning: gradients of pruned weights are zeroed, so they stay zero
        def trainable(m):
            for name, mask in masks.items():
                m.get_parameter(name).register_hook(lambda g, mask=mask: g * mask.to(g.device))
    # updated in place: a save_fn that writes config.json sees the fine-tune's settings too
    run_config.update(train=cfg.to_dict(), data=str(Path(data_dir).resolve()))
    return train(cfg, out, model, tokenizer,
                   get_batch=lambda split, i: data.batch(split, i, cfg.batch_size, cfg.block_size, cfg.seed),
                   objective=lm_loss, run_config=run_config, bytes_per_token=data.bytes_per_token("val"),
                   trainable=trainable, save_fn=save_fn)


# ---- livelm prune -----------------------------------------------------------------------------------
def prune_run(run: str | Path, out: str | Path, method: str, amount: float, finetune_data: str | Path | None = None,
              finetune_iters: int = 200, finetune_lr: float = 3e-4, eval_data: str | Path | None = None,
              eval_tokens: int = 100_000) -> dict:
    from livelm.compress import check_out, file_mb
    from livelm.infer.evaluate import perplexity
    from livelm.runs import load_model, save_tensors as save_run, sparsify, state_dict_for_save
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose from {', '.join(METHODS)}")
    if not 0 < amount < 1:
        raise ValueError(f"--amount must be between 0 and 1 (the share to remove), got {amount}")
    check_out(run, out)
    out = Path(out)
    model, tokenizer, config = load_model(run)
    if "quantization" in config:
        raise ValueError(f"{run} is quantized; prune the original run, then quantize the pruned one")
    eval_data = eval_data or finetune_data
    report = {"out": str(out), "method": method, "amount": amount, "source_params": model.num_params()}
    if eval_data:
        report["source_perplexity"] = round(perplexity(model, eval_data, eval_tokens)["perplexity"], 4)

    masks = None
    if method == "magnitude":
        masks = magnitude_prune(model, amount)
        pruned = sum(int((~m).sum()) for m in masks.values())
        record = {"method": method, "amount": amount, "sparsity": round(pruned / sum(m.numel() for m in masks.values()), 4)}
        report["note"] = "stored sparsely (bitmask + values); loaded dense, so memory and speed are unchanged"
    else:
        model, record = prune_heads(model, amount) if method == "heads" else prune_mlp(model, amount)
        record = {"method": method, "amount": amount, **record}
    config = {k: v for k, v in config.items() if k not in ("sparse", "pruning")}
    config.update(model=model.cfg.to_dict(), pruning=record, source_run=str(Path(run).resolve()),
                  n_params=model.num_params())
    if masks:
        config["sparse"] = sorted(masks)

    def save(run_dir, m, step, state=None):   # the trainer's save_fn signature
        tensors = state_dict_for_save(m)
        if masks:
            tensors = sparsify(tensors, sorted(masks))
        save_run(run_dir, run, tensors, {**config, "step": step})

    if eval_data:
        report["pruned_perplexity"] = round(perplexity(model, eval_data, eval_tokens)["perplexity"], 4)
    if finetune_data:
        recover(model, tokenizer, config, finetune_data, out, finetune_iters, finetune_lr,
                masks=masks, save_fn=save if masks else None)
        model.eval()
        report["finetune_iters"] = finetune_iters
        if eval_data:
            report["finetuned_perplexity"] = round(perplexity(model, eval_data, eval_tokens)["perplexity"], 4)
    else:
        save(out, model, config.get("step", 0))
    report.update(params=model.num_params(), size_mb=round(file_mb(out), 3), source_size_mb=round(file_mb(run), 3),
                  **{k: v for k, v in record.items() if k not in ("method", "amount", "kept_heads")})
    return report
