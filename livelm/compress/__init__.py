"""Making trained models smaller: quantization (quantize.py) and pruning (prune.py).

Both write an ordinary run directory (livelm.runs.save_tensors). config.json says how the
weights are stored, so the run layer (livelm/runs.py) rebuilds the model transparently:

    "quantization": {"method": "int8" | "int8-dynamic" | "int4", "modules": [...], ...}
        these Linear layers are stored quantized (livelm/models/quantized.py)
    "sparse": [tensor names]
        these weights are stored as a bitmask + the non-zero values (magnitude pruning)
    "pruning": {...}
        what was pruned (a record only; structurally pruned models just have a smaller config)

Everything else about a run (tokenizer, chat flag, training config, system prompts, and the side
files the layers above declare in livelm.runs.SIDE_FILES, such as live learning's probes.jsonl) is
copied unchanged.
"""
from __future__ import annotations

from pathlib import Path


def check_out(run: str | Path, out: str | Path) -> None:
    if Path(out).resolve() == Path(run).resolve():
        raise ValueError(f"--out {out} is the source run; write the compressed model to a new directory")


def file_mb(run: str | Path) -> float:
    return (Path(run) / "model.safetensors").stat().st_size / 2**20
