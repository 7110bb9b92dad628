"""Training configuration: one plain dataclass, loaded from YAML, overridable from the command line.

Precedence, lowest first: dataclass defaults < architecture preset (--preset) <
YAML file (--config) < explicit command-line flags. Every field becomes a flag
(`n_layer` -> `--n-layer`, livelm/cli/flags.py), so `livelm train --help` documents them all.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from livelm.models.gpt import PRESETS, GPTConfig

ARCHS = ("gpt", "bert", "seq2seq", "lstm")


@dataclass
class TrainConfig:
    # --- model (see livelm/models/gpt.py) ---
    arch: str = "gpt"              # gpt | bert | seq2seq | lstm
    preset: str = "gpt2"           # gpt2 | llama: sets position/norm/mlp/bias/tying/n_kv_head defaults
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 0             # 0 = n_head
    d_model: int = 256
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    bias: bool = True
    position: str = "learned"
    norm: str = "layernorm"
    mlp: str = "gelu"
    tie_embeddings: bool = True
    # --- optimisation ---
    batch_size: int = 12           # sequences per micro-batch, per process
    grad_accum: int = 1            # micro-batches per step, summed over all processes
    max_iters: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 0        # 0 = max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    # --- evaluation, logging, checkpoints ---
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    sample_interval: int = 0       # 0 = never print samples during training
    sample_prompt: str = "\n"
    save_interval: int = 0         # 0 = save at every eval
    # --- runtime ---
    seed: int = 1337
    dtype: str = "auto"            # auto | float32 | bfloat16 | float16: auto is bf16 only where it is fast (livelm.machine)
    device: str = "auto"           # auto | cpu | cuda | cuda:N | mps
    compile: str = "auto"          # auto | true | false: auto compiles long runs where torch.compile works (livelm.machine)
    # same seed, same run: torch.use_deterministic_algorithms. Measured: compiled CPU training is not
    # reproducible without it (inductor scatters the embedding gradient with atomic adds, so bf16 builds
    # of the default assistant scored 84-90% from one recipe); with it, ~3% slower.
    deterministic: bool = True
    fsdp: bool = False             # under torchrun: shard params/grads/optimizer state (FSDP2) instead of DDP
    activation_checkpointing: bool = False   # recompute each block in backward: less memory, ~1.3x compute
    memory_check: bool = True      # estimate a step's memory first and refuse with advice when it will not fit
    threads: int = 0               # torch intra-op threads; 0 = leave PyTorch's default
    progress: bool = True
    # The other architectures' own settings (BERT's masking, seq2seq's vocabulary, the LSTM's width) are
    # livelm/training/recipes/config.py's ArchConfig: the same flags and YAML file set them. The GPT reads
    # none of them; a run's saved "train" record may hold them (the recipes read them back from there).

    def model_config(self, vocab_size: int) -> GPTConfig:
        model_fields = {f.name for f in fields(GPTConfig)}
        return GPTConfig(vocab_size=vocab_size, **{k: v for k, v in asdict(self).items() if k in model_fields})

    def to_dict(self) -> dict:
        return asdict(self)


def field_types(cls=None) -> dict[str, type]:
    """A config dataclass's fields and their types (TrainConfig's by default)."""
    # `from __future__ import annotations` makes f.type a string; map it back to the builtin
    return {f.name: {"int": int, "float": float, "str": str, "bool": bool}[f.type] for f in fields(cls or TrainConfig)}


def load_yaml(path: Path, also: tuple = ()) -> dict:
    """The mapping in a YAML config file, whose keys must be fields of TrainConfig or of a dataclass in
    `also` (the other architectures' ArchConfig: one file configures a run whatever its arch)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ValueError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of field: value")
    known = set(field_types()).union(*(field_types(cls) for cls in also))
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"config file {path}: unknown field(s) {', '.join(unknown)}")
    return data


def build(cls, merged: dict):
    """cls from the fields of `merged` it has (others are another config's), ints given for floats as floats."""
    types = field_types(cls)
    return cls(**{k: float(v) if types[k] is float and isinstance(v, int) else v
                  for k, v in merged.items() if k in types})


def resolve_config(config_file: str | Path | None = None, base: dict | None = None, also: tuple = (),
                   **values) -> TrainConfig:
    """Build a TrainConfig: defaults < base (e.g. a run's saved config) < preset < YAML file < values.

    `values` are what the caller sets on purpose: the command line's flags (livelm.cli.flags.train_values)
    or a recipe's settings. `also`: other config dataclasses the YAML file may hold fields of (load_yaml).
    Keys that are no TrainConfig field (another config's, in a saved record or in values) are skipped."""
    merged = dict(base or {})
    yaml_values = load_yaml(config_file, also) if config_file else {}
    preset = values.get("preset") or yaml_values.get("preset") or merged.get("preset") or "gpt2"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(sorted(PRESETS))}")
    types = field_types()
    if not base:  # a resumed/fine-tuned run keeps its own architecture
        merged.update({k: v for k, v in PRESETS[preset].items() if k in types})
    merged.update(yaml_values)
    merged.update(values)
    merged["preset"] = preset
    cfg = build(TrainConfig, merged)
    cfg.model_config(vocab_size=16)  # validate the architecture early, with a readable error
    return cfg
