"""Load a model for inference from a run directory or a LoRA adapter directory."""
from __future__ import annotations

from pathlib import Path

import torch

from livelm import machine
from livelm.models import lora
from livelm.runtime import pick_device
from livelm.train.checkpoint import CheckpointError, load_model


def resolve_base(adapter_dir: Path) -> Path:
    _, raw = lora.read_adapter_config(adapter_dir)
    base = Path(raw.get("base_model_name_or_path") or "")
    if not base.is_absolute():
        base = (adapter_dir / base).resolve()
    if not (base / "config.json").is_file():
        raise CheckpointError(f"adapter {adapter_dir} was trained on {base}, which is not a livelm run here; "
                              f"pass the base run explicitly: livelm chat BASE_RUN --adapter {adapter_dir}")
    return base


def cast_for_inference(model: torch.nn.Module, dtype: str = "auto", batch: int = 1) -> torch.dtype:
    """Put the model's floating-point weights in the inference dtype for `--dtype NAME` (livelm.machine
    decides `auto` from the hardware, the model's size and the batch) and return it. Quantized runs keep
    their own kernels' choice (livelm.compress.quantize) unless a dtype is named."""
    first = next(model.parameters())
    quantized = any(getattr(m, "is_quantized", False) for m in model.modules())
    if dtype == "auto" and quantized:
        return first.dtype
    n_bytes = 4 * sum(p.numel() for p in model.parameters())
    chosen = machine.inference_dtype(dtype, first.device, n_bytes=n_bytes, batch=batch)
    if chosen != first.dtype:
        model.to(chosen)
    return chosen


def load(run: str | Path, adapters: list[str | Path] | None = None, device: str = "auto", dtype: str = "auto",
         batch: int = 1):
    """Return (model, tokenizer, config, adapter_names).

    `run` may itself be an adapter directory; its base run is then loaded and the
    adapter activated. Extra adapters are loaded under their directory names;
    with exactly one adapter it is made active for all requests.
    """
    run = Path(run)
    adapters = [Path(a) for a in (adapters or [])]
    if (run / "adapter_config.json").is_file() and not (run / "model.safetensors").is_file():
        adapters.insert(0, run)
        run = resolve_base(run)
    model, tokenizer, config = load_model(run, device=pick_device(device))
    names = []
    for a in adapters:
        name = a.resolve().name
        if name in names:
            raise CheckpointError(f"two adapters are named {name!r}; rename one directory")
        lora.load_adapter(model, a, name)
        names.append(name)
    model.to(next(model.parameters()).device).eval()
    cast_for_inference(model, dtype, batch)
    if len(names) == 1:
        lora.set_active(model, names[0])
    return model, tokenizer, config, names
