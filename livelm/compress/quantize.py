"""`livelm quantize`: turn a run's Linear layers into int8 / int4 ones and write a new run.

The quantized layers, their kernels and how a machine picks between them are livelm/models/quantized.py
(the run layer needs them to load what this writes); this file does the converting and the report.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from livelm.models.quantized import INT4_GROUP_SIZES, METHODS, _set, quantized_layer, select_kernels, targets


def quantize_model(model: nn.Module, method: str, group_size: int = 64) -> dict:
    """Replace the target Linear layers in place; returns the record config.json keeps ("quantization")."""
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; choose from {', '.join(METHODS)}")
    if method == "int4" and group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"--group-size must be one of {', '.join(map(str, INT4_GROUP_SIZES))} for int4")
    done, skipped = [], []
    with torch.no_grad():
        for name in targets(model):
            lin = model.get_submodule(name)
            if method == "int4" and name != "lm_head" and lin.in_features % group_size:
                skipped.append(name)   # e.g. a 48-wide model with groups of 64
                continue
            _set(model, name, quantized_layer(name, lin, method, group_size))
            done.append(name)
    if not done:
        raise ValueError(f"no layer could be quantized with {method} (group size {group_size} divides none "
                         f"of the input widths); try a smaller --group-size")
    record = {"method": method, "modules": done}
    if method == "int4":
        record["group_size"] = group_size
    select_kernels(model, method, group_size)
    if skipped:
        record["kept_fp32"] = skipped
    return record


def quantize_run(run: str | Path, out: str | Path, method: str, group_size: int = 64,
                 eval_data: str | Path | None = None, eval_tokens: int = 100_000) -> dict:
    """Quantize a run into a new run directory; returns a report (sizes, logit drift, perplexities)."""
    from livelm.compress import check_out, file_mb
    from livelm.infer.evaluate import perplexity
    from livelm.runs import load_model, save_tensors as save_run, state_dict_for_save
    check_out(run, out)
    model, _, config = load_model(run)
    if "quantization" in config:
        raise ValueError(f"{run} is already quantized ({config['quantization']['method']}); quantize the original run")
    # a fixed probe sequence: how far do the logits move? (eval data gives real text, else random ids)
    probe = torch.randint(0, model.cfg.vocab_size, (1, min(64, model.cfg.block_size)),
                          generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(probe)
    before = perplexity(model, eval_data, eval_tokens) if eval_data else None
    record = quantize_model(model, method, group_size)
    config = {k: v for k, v in config.items() if k != "sparse"}   # weights are now stored dense (and quantized)
    save_run(out, run, state_dict_for_save(model), {**config, "quantization": record, "source_run": str(Path(run).resolve())})
    with torch.inference_mode():
        drift = (model(probe) - ref).abs().max().item()
    report = {"out": str(out), "method": method, "quantized_layers": len(record["modules"]),
              "kept_fp32": record.get("kept_fp32", []), "size_mb": round(file_mb(out), 3),
              "source_size_mb": round(file_mb(run), 3), "max_abs_logit_diff": round(drift, 5)}
    if record.get("group_size"):
        report["group_size"] = record["group_size"]
    # which matmul this machine runs, and why (the measured µs per call, fp32 alongside)
    from livelm import machine
    choice = select_kernels(model, method, group_size)
    report["kernels"] = {**choice, "cpu": f"{machine.cpu_info()[0]}, {machine.cpu_capability()}"}
    if before:
        after = perplexity(model, eval_data, eval_tokens)
        report.update(source_perplexity=round(before["perplexity"], 4), perplexity=round(after["perplexity"], 4),
                      perplexity_change=round(after["perplexity"] / before["perplexity"] - 1, 5))
    return report
