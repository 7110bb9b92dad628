"""Load a model for inference from a run directory or a LoRA adapter directory."""
from __future__ import annotations

from pathlib import Path

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


def load(run: str | Path, adapters: list[str | Path] | None = None, device: str = "auto"):
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
    if len(names) == 1:
        lora.set_active(model, names[0])
    return model, tokenizer, config, names
