"""Run directories: save and load models safely.

A run directory holds
    config.json         {"arch": "gpt", "model": {...GPTConfig}, "train": {...TrainConfig}, "step": N}
    model.safetensors   the weights (never pickled)
    tokenizer.json      the tokenizer
    train_state.pt      optimizer moments, step, RNG states — for --resume only,
                        loaded with torch.load(weights_only=True)
    metrics.jsonl, loss.png

Every file is written to a temporary name, fsync'ed and renamed (livelm.io), so
a process killed in the middle of a save leaves the previous checkpoint whole.
The step is stored in all three checkpoint files; a mismatch (a kill between
the renames) is reported instead of silently resuming from a mixed state.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from livelm import io
from livelm.models.gpt import GPT, GPTConfig
from livelm.tokenizer import Tokenizer


class CheckpointError(Exception):
    pass


def state_dict_for_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights as contiguous CPU tensors, with tied weights stored once (safetensors refuses shared storage)."""
    seen: dict[int, str] = {}
    out = {}
    for name, t in model.state_dict().items():
        key = t.data_ptr()
        if key in seen and t.numel():
            continue  # e.g. lm_head.weight tied to wte.weight
        seen[key] = name
        out[name] = t.detach().to("cpu").contiguous()
    return out


def save_checkpoint(run_dir: str | Path, model: torch.nn.Module, tokenizer: Tokenizer | None, config: dict,
                    step: int, train_state: dict | None = None) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)          # unwrap DDP
    model = getattr(model, "_orig_mod", model)       # unwrap torch.compile
    blob = save(state_dict_for_save(model), metadata={"step": str(step), "format": "pt"})
    # Serialise everything first, then rename in quick succession: the window in
    # which a kill could leave files from two different steps is a few syscalls.
    if train_state is not None:
        io.write_bytes(run_dir / "train_state.pt.next", _torch_bytes({**train_state, "step": step}))
    io.write_bytes(run_dir / "model.safetensors", blob)
    io.write_json(run_dir / "config.json", {**config, "step": step})
    if train_state is not None:
        (run_dir / "train_state.pt.next").replace(run_dir / "train_state.pt")
    if tokenizer is not None and not (run_dir / "tokenizer.json").exists():
        tokenizer.save(run_dir / "tokenizer.json")


def _torch_bytes(obj) -> bytes:
    import io as _io
    buf = _io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def read_config(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"run directory not found: {run_dir}")
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a livelm run (no config.json); train one with `livelm train`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); restore it or retrain") from None


def load_weights(path: Path, device="cpu") -> tuple[dict[str, torch.Tensor], dict]:
    if not path.is_file():
        raise CheckpointError(f"missing weights file {path}")
    try:
        tensors = load_file(str(path), device=str(device))
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({e}); restore it from a backup or retrain") from None
    return tensors, metadata


def load_model(run_dir: str | Path, device="cpu") -> tuple[GPT, Tokenizer, dict]:
    """Load (model, tokenizer, config) from a run directory, in eval mode."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    arch = config.get("arch", "gpt")
    if arch != "gpt":
        raise CheckpointError(f"{run_dir} holds a {arch!r} model; this command needs a GPT run")
    try:
        model = GPT(GPTConfig.from_dict(config["model"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{run_dir}/config.json has an invalid model section: {e}") from None
    tensors, _ = load_weights(run_dir / "model.safetensors")
    if "quantization" in config or "sparse" in config:  # written by `livelm quantize` / `livelm prune`
        from livelm.compress import prepare_load
        tensors = prepare_load(model, tensors, config)
    load_state(model, tensors, run_dir / "model.safetensors")
    tokenizer = Tokenizer.load(run_dir / "tokenizer.json")
    return model.to(device).eval(), tokenizer, config


def load_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors and not _is_tied(model, k)]
    unexpected = [k for k in tensors if k not in expected]
    bad_shape = [k for k in tensors if k in expected and tensors[k].shape != expected[k].shape]
    if missing or unexpected or bad_shape:
        raise CheckpointError(f"{where} does not match its config.json: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, wrong shape {bad_shape[:3]}")
    model.load_state_dict(tensors, strict=False)


def _is_tied(model, key: str) -> bool:
    return key == "lm_head.weight" and getattr(getattr(model, "cfg", None), "tie_embeddings", False)


def load_train_state(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    path = run_dir / "train_state.pt"
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} not found (was the run saved with an older livelm, or not at all?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises a variety of errors for truncated zip files
        raise CheckpointError(f"{path} is corrupt or truncated ({type(e).__name__}: {e})") from None
    _, meta = load_weights(run_dir / "model.safetensors")
    cfg_step = read_config(run_dir).get("step")
    if not (str(state.get("step")) == meta.get("step") == str(cfg_step)):
        raise CheckpointError(f"{run_dir}: checkpoint files are from different steps (state {state.get('step')}, "
                              f"weights {meta.get('step')}, config {cfg_step}) — the last save was interrupted; "
                              f"start a fresh run or restore a backup")
    return state
