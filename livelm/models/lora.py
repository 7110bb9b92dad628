"""Low-rank adapters (LoRA) on the attention and MLP projections.

    y = W x + (alpha / r) * B A x        A: (r, in), B: (out, r), B starts at zero

A LoRALinear wraps one nn.Linear and can hold several named adapters at once.
Training uses one adapter for every row (`active`); the serving engine sets a
per-row adapter list, so requests for different adapters share one batched
forward pass over the shared base weights.

Adapters are saved in PEFT's layout — adapter_config.json plus
adapter_model.safetensors with keys `base_model.model.<module>.lora_A.weight`
— so an adapter is a small file next to (not inside) its base run.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from livelm import io

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PREFIX = "base_model.model."


@dataclass
class LoRAConfig:
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    # Only these blocks get the adapter (PEFT's field of the same name; None = every block). A live
    # update adapts the top blocks only: backward then stops there (livelm/learn/update.py).
    layers_to_transform: list[int] | None = None

    def peft_json(self, base: str) -> dict:
        return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
                "r": self.r, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout,
                "target_modules": list(self.target_modules), "bias": "none", "fan_in_fan_out": False,
                "inference_mode": True, "modules_to_save": None,
                "layers_to_transform": self.layers_to_transform,
                "layers_pattern": "blocks" if self.layers_to_transform is not None else None}

    def covers(self, module_name: str) -> bool:
        """Does the adapter go on this module ("blocks.12.attn.q_proj")?"""
        if module_name.rsplit(".", 1)[-1] not in self.target_modules:
            return False
        if self.layers_to_transform is None:
            return True
        layer = re.search(r"(?:^|\.)(?:blocks|layers|h)\.(\d+)\.", module_name)
        return layer is not None and int(layer.group(1)) in self.layers_to_transform


def _key(name: str) -> str:
    """ParameterDict keys may not contain '.' nor shadow its methods ('update', 'keys'...): prefix and escape."""
    return "ad_" + re.sub(r"[^0-9A-Za-z_]", lambda m: f"_{ord(m.group()):x}_", name)


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.scaling: dict[str, float] = {}
        self.dropout = nn.ModuleDict()
        self.active: str | None = None                 # adapter for all rows (training, single-user chat)
        self.row_adapters: list[str | None] | None = None  # per-row adapters (batched serving)
        self.merged: str | None = None

    def has(self, name: str) -> bool:
        return _key(name) in self.lora_A

    def A(self, name: str) -> nn.Parameter:
        return self.lora_A[_key(name)]

    def B(self, name: str) -> nn.Parameter:
        return self.lora_B[_key(name)]

    def add(self, name: str, r: int, alpha: float, dropout: float) -> None:
        k = _key(name)
        self.lora_A[k] = nn.Parameter(torch.empty(r, self.base.in_features, device=self.base.weight.device))
        self.lora_B[k] = nn.Parameter(torch.zeros(self.base.out_features, r, device=self.base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A[k], a=math.sqrt(5))  # PEFT's default init
        self.scaling[name] = alpha / r
        self.dropout[k] = nn.Dropout(dropout)

    def remove(self, name: str) -> None:
        k = _key(name)
        del self.lora_A[k], self.lora_B[k], self.dropout[k]
        self.scaling.pop(name)

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        k = _key(name)
        A, B = self.lora_A[k], self.lora_B[k]
        return (self.dropout[k](x) @ A.t().to(x.dtype)) @ B.t().to(x.dtype) * self.scaling[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.row_adapters is not None:
            # x: (B, S, in); add each adapter's delta to its own rows only
            for name in set(self.row_adapters) - {None, self.merged}:
                if not self.has(name):      # an adapter of some blocks only (layers_to_transform)
                    continue
                rows = torch.tensor([i for i, n in enumerate(self.row_adapters) if n == name], device=x.device)
                y = y.index_add(0, rows, self.delta(name, x.index_select(0, rows)))
        elif self.active is not None and self.active != self.merged:
            y = y + self.delta(self.active, x)
        return y

    @torch.no_grad()
    def merge(self, name: str) -> None:
        if self.merged is not None:
            raise ValueError(f"adapter {self.merged!r} is already merged")
        self.base.weight += (self.B(name) @ self.A(name)) * self.scaling[name]
        self.merged = name

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged is None:
            return
        self.base.weight -= (self.B(self.merged) @ self.A(self.merged)) * self.scaling[self.merged]
        self.merged = None


class AdapterError(Exception):
    pass


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def add_adapter(model: nn.Module, name: str, cfg: LoRAConfig) -> None:
    """Wrap the target Linear layers (once) and give each a new adapter `name`."""
    targets = set(cfg.target_modules)
    for mod_name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child))
    wrapped = lora_modules(model)
    hit = {n.rsplit(".", 1)[-1] for n in wrapped}
    if not wrapped or not targets & hit:
        raise AdapterError(f"no layer matches target modules {sorted(targets)}")
    covered = [m for mod_name, m in wrapped.items() if cfg.covers(mod_name)]
    if not covered:
        raise AdapterError(f"no block {cfg.layers_to_transform} of this model has target modules {sorted(targets)}")
    for m in covered:
        if m.has(name):
            raise AdapterError(f"adapter {name!r} is already loaded")
        m.add(name, cfg.r, cfg.lora_alpha, cfg.lora_dropout)


def remove_adapter(model: nn.Module, name: str) -> None:
    for m in lora_modules(model).values():
        if m.has(name):
            if m.merged == name:
                m.unmerge()
            m.remove(name)


def set_active(model: nn.Module, name: str | None) -> None:
    for m in lora_modules(model).values():
        m.active = name if (name is None or m.has(name)) else None
        m.row_adapters = None


def set_row_adapters(model: nn.Module, names: list[str | None]) -> None:
    """Engine hook: the adapter of each row of the next forward pass."""
    per_row = None if all(n is None for n in names) else list(names)
    for m in lora_modules(model).values():
        m.row_adapters = per_row


def adapter_names(model: nn.Module) -> list[str]:
    names: set[str] = set()
    for m in lora_modules(model).values():
        names |= set(m.scaling)
    return sorted(names)


def only_adapter_trainable(model: nn.Module, name: str) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for m in lora_modules(model).values():
        if m.has(name):
            m.A(name).requires_grad_(True)
            m.B(name).requires_grad_(True)


def merge(model: nn.Module, name: str) -> None:
    for m in lora_modules(model).values():
        if m.has(name):
            m.merge(name)


def unmerge(model: nn.Module) -> None:
    for m in lora_modules(model).values():
        m.unmerge()


def adapter_state_dict(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    out = {}
    for mod_name, m in lora_modules(model).items():
        if m.has(name):
            out[f"{PREFIX}{mod_name}.lora_A.weight"] = m.A(name).detach().cpu().contiguous()
            out[f"{PREFIX}{mod_name}.lora_B.weight"] = m.B(name).detach().cpu().contiguous()
    return out


def save_adapter(out_dir: str | Path, model: nn.Module, name: str, cfg: LoRAConfig, base: str,
                 extra: dict | None = None) -> None:
    out_dir = Path(out_dir)
    io.write_bytes(out_dir / "adapter_model.safetensors", save(adapter_state_dict(model, name), metadata={"format": "pt"}))
    io.write_json(out_dir / "adapter_config.json", {**cfg.peft_json(base), **(extra or {})})


def attach_for_training(model: nn.Module, name: str, cfg: LoRAConfig, base: str, extra: dict | None = None,
                        init_from: str | Path | None = None):
    """Add adapter `name` to `model` and make it the active one, for the trainer loop: returns the loop's
    (trainable, save_fn) pair, which freezes everything but the adapter and saves it in PEFT's layout
    at every checkpoint (with the step and `extra` in adapter_config.json). One helper for
    `finetune --lora`, `rl` and live-learning updates. `init_from`: an adapter folder to go on
    training from (its shape must be `cfg`'s), instead of a fresh adapter."""
    if init_from is not None:
        saved, _ = read_adapter_config(init_from)
        if (saved.r, saved.target_modules, saved.layers_to_transform) != (cfg.r, cfg.target_modules,
                                                                           cfg.layers_to_transform):
            raise AdapterError(f"{init_from} has another shape (rank {saved.r}, blocks {saved.layers_to_transform}) "
                               f"than the adapter to train (rank {cfg.r}, blocks {cfg.layers_to_transform})")
        load_adapter(model, init_from, name)
    else:
        add_adapter(model, name, cfg)
    set_active(model, name)

    def trainable(m: nn.Module) -> None:
        only_adapter_trainable(m, name)

    def save_fn(run_dir, m: nn.Module, step: int, state) -> None:
        save_adapter(run_dir, m, name, cfg, base, extra={"livelm_step": step, **(extra or {})})
    return trainable, save_fn


def read_adapter_config(adapter_dir: str | Path) -> tuple[LoRAConfig, dict]:
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise AdapterError(f"{adapter_dir} is not a LoRA adapter (no adapter_config.json)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AdapterError(f"{path} is corrupt: {e}") from None
    if raw.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{path}: only LoRA adapters are supported, not {raw.get('peft_type')}")
    layers = raw.get("layers_to_transform")
    if isinstance(layers, int):    # PEFT allows one index
        layers = [layers]
    if layers is not None and not (isinstance(layers, list) and all(isinstance(i, int) for i in layers)):
        raise AdapterError(f"{path}: layers_to_transform must be a list of block indices, not {layers!r}")
    cfg = LoRAConfig(r=int(raw["r"]), lora_alpha=float(raw["lora_alpha"]),
                     lora_dropout=float(raw.get("lora_dropout", 0.0)), target_modules=list(raw["target_modules"]),
                     layers_to_transform=[int(i) for i in layers] if layers is not None else None)
    return cfg, raw


def load_adapter(model: nn.Module, adapter_dir: str | Path, name: str) -> LoRAConfig:
    """Add the adapter saved in `adapter_dir` to `model` under `name` (not activated)."""
    cfg, _ = read_adapter_config(adapter_dir)
    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise AdapterError(f"{adapter_dir}: missing weights file {path.name}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{path} is corrupt or truncated ({e}); delete the adapter or restore it") from None
    add_adapter(model, name, cfg)
    modules = lora_modules(model)
    expected = set()
    try:
        for mod_name, m in modules.items():
            if not m.has(name):
                continue
            for part, param in (("lora_A", m.A(name)), ("lora_B", m.B(name))):
                key = f"{PREFIX}{mod_name}.{part}.weight"
                expected.add(key)
                if key not in tensors:
                    raise AdapterError(f"{adapter_dir}: missing tensor {key}")
                if tensors[key].shape != param.shape:
                    raise AdapterError(f"{adapter_dir}: {key} has shape {tuple(tensors[key].shape)}, "
                                       f"expected {tuple(param.shape)} — adapter for a different base model?")
                with torch.no_grad():
                    param.copy_(tensors[key])
        extra = set(tensors) - expected
        if extra:
            raise AdapterError(f"{adapter_dir}: tensors for layers this model does not have: {sorted(extra)[:3]}")
    except AdapterError:
        remove_adapter(model, name)
        raise
    return cfg
