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
    threads: int = 0               # torch intra-op threads; 0 = leave PyTorch's default
    progress: bool = True
    # --- other architectures (--arch bert|seq2seq|lstm; livelm/training/recipes/). The GPT ignores these.
    # Shared fields mean the same there: n_layer, n_head, d_model, mlp_ratio, dropout, block_size.
    mlm_prob: float = 0.15         # bert: share of real tokens chosen for masked-LM prediction
    nsp: bool = True               # bert: also train next-sentence prediction (50% real / 50% random)
    pooling: str = "cls"           # bert classify: sentence vector from [CLS], or mean/max over the tokens
    n_enc_layer: int = 0           # seq2seq: encoder layers (0 = n_layer); the decoder has n_layer
    label_smoothing: float = 0.1   # seq2seq: label-smoothed cross-entropy on the target tokens
    shared_vocab: bool = True      # seq2seq: one tokenizer and embedding for both sides, else one each
    bpe_vocab: int = 8000          # seq2seq: BPE vocabulary trained on the pairs (per side if not shared)
    reverse: bool = False          # seq2seq: translate column 2 -> column 1 of the pairs file
    holdout: int = 1000            # seq2seq: pairs held out (fixed by seed) for validation and `eval`
    lstm_hidden: int = 0           # lstm: LSTM width (0 = d_model, the embedding size)
    carry_chunks: int = 8          # lstm: consecutive block_size chunks the hidden state flows through

    def model_config(self, vocab_size: int) -> GPTConfig:
        model_fields = {f.name for f in fields(GPTConfig)}
        return GPTConfig(vocab_size=vocab_size, **{k: v for k, v in asdict(self).items() if k in model_fields})

    def to_dict(self) -> dict:
        return asdict(self)


def _field_types() -> dict[str, type]:
    # `from __future__ import annotations` makes f.type a string; map it back to the builtin
    return {f.name: {"int": int, "float": float, "str": str, "bool": bool}[f.type] for f in fields(TrainConfig)}


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ValueError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of field: value")
    known = _field_types()
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"config file {path}: unknown field(s) {', '.join(unknown)}")
    return data


def resolve_config(config_file: str | Path | None = None, base: dict | None = None, **values) -> TrainConfig:
    """Build a TrainConfig: defaults < base (e.g. a run's saved config) < preset < YAML file < values.

    `values` are what the caller sets on purpose: the command line's flags (livelm.cli.flags.train_values)
    or a recipe's settings."""
    merged = dict(base or {})
    yaml_values = load_yaml(config_file) if config_file else {}
    preset = values.get("preset") or yaml_values.get("preset") or merged.get("preset") or "gpt2"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(sorted(PRESETS))}")
    types = _field_types()
    if not base:  # a resumed/fine-tuned run keeps its own architecture
        merged.update({k: v for k, v in PRESETS[preset].items() if k in types})
    merged.update(yaml_values)
    merged.update(values)
    merged["preset"] = preset
    for k, v in merged.items():
        if k in types and types[k] is float and isinstance(v, int):
            merged[k] = float(v)
    cfg = TrainConfig(**{k: v for k, v in merged.items() if k in types})
    cfg.model_config(vocab_size=16)  # validate the architecture early, with a readable error
    return cfg
