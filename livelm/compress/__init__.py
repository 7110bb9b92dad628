"""Making trained models smaller: quantization (quantize.py) and pruning (prune.py).

Both write an ordinary run directory. config.json says how the weights are stored, so
`load_model` (livelm/train/checkpoint.py) rebuilds the model transparently:

    "quantization": {"method": "int8" | "int8-dynamic" | "int4", "modules": [...], ...}
        these Linear layers are stored quantized (see quantize.py)
    "sparse": [tensor names]
        these weights are stored as a bitmask + the non-zero values (magnitude pruning)
    "pruning": {...}
        what was pruned (a record only; structurally pruned models just have a smaller config)

Everything else about a run (tokenizer, chat flag, training config, system prompts, the update
guard's probes.jsonl) is copied unchanged.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save

from livelm import io


def prepare_load(model: torch.nn.Module, tensors: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Make `model` and `tensors` fit each other before load_state: swap in quantized layers, densify sparse weights."""
    if "quantization" in config:
        from livelm.compress.quantize import prepare_quantized
        prepare_quantized(model, config["quantization"])
    if config.get("sparse"):
        from livelm.compress.prune import densify
        tensors = densify(tensors, config["sparse"], {k: v.shape for k, v in model.state_dict().items()})
    return tensors


def save_run(out: str | Path, src: str | Path, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    """Write a run directory: tensors -> model.safetensors, config.json, and src's tokenizer.json and
    probes.jsonl (the questions live learning's update guard asks, livelm/learn/probes.py; if any)."""
    out, src = Path(out), Path(src)
    out.mkdir(parents=True, exist_ok=True)
    step = config.get("step", 0)
    io.write_bytes(out / "model.safetensors", save(tensors, metadata={"step": str(step), "format": "pt"}))
    io.write_json(out / "config.json", config)
    if (src / "tokenizer.json").resolve() != (out / "tokenizer.json").resolve():
        shutil.copyfile(src / "tokenizer.json", out / "tokenizer.json")
    probes = src / "probes.jsonl"
    if probes.is_file() and probes.resolve() != (out / "probes.jsonl").resolve():
        io.write_bytes(out / "probes.jsonl", probes.read_bytes())
    return out


def check_out(run: str | Path, out: str | Path) -> None:
    if Path(out).resolve() == Path(run).resolve():
        raise ValueError(f"--out {out} is the source run; write the compressed model to a new directory")


def file_mb(run: str | Path) -> float:
    return (Path(run) / "model.safetensors").stat().st_size / 2**20


@torch.inference_mode()
def eval_perplexity(model: torch.nn.Module, data_dir: str | Path, max_tokens: int = 100_000) -> dict:
    """Validation loss and perplexity over consecutive windows of a prepared data directory (as `livelm eval`)."""
    from livelm.data.shards import TokenData
    data = TokenData(data_dir)
    if data.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"{data_dir} was prepared with a {data.vocab_size}-token vocabulary but the model "
                         f"uses {model.cfg.vocab_size}; prepare it with --reuse-tokenizer RUN")
    block, device = model.cfg.block_size, next(model.parameters()).device
    total, count = 0.0, 0
    for arr in data.splits["val"]:
        for start in range(0, arr.size - 1, block):
            if count >= max_tokens:
                break
            window = torch.from_numpy(arr[start:start + block + 1].astype("int64"))
            if window.numel() < 2:
                continue
            _, loss = model(window[:-1][None].to(device), window[1:][None].to(device))
            total += loss.item() * (window.numel() - 1)
            count += window.numel() - 1
    if not count:
        raise ValueError(f"{data_dir} has no validation tokens")
    return {"val_loss": total / count, "perplexity": math.exp(min(total / count, 50)), "tokens": count}
