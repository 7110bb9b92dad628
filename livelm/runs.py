"""The run layer: a run directory on disk <-> a model in memory, for every kind of run.

A run directory holds
    config.json         {"arch": "gpt" | "bert" | "seq2seq" | "lstm", "model": {...its config}, "step": N, ...}
    model.safetensors   the weights (never pickled); a tied weight is stored once, under its first name
    tokenizer.json      the tokenizer (seq2seq runs with two vocabularies add src_tokenizer.json)
    tokenizer_config.json  an imported model's bos/eos, end-of-turn tokens and chat template (livelm/tokenizer.py)
    train_state.pt      optimizer state for --resume (livelm/training/checkpoint.py reads it)

How the weights are stored is said in config.json, and decoded here for every caller:
    "quantization": {...}   int8/int4 Linear layers (livelm/models/quantized.py; written by `livelm quantize`)
    "sparse": [names]       these weights as a bitmask + the non-zeros (written by `livelm prune --method magnitude`)

A GPT run whose config.json says "task": "classify" (with its "labels") is a decoder classifier: the
weights hold a head beside the GPT's (score.weight, score.bias; livelm/training/recipes/classify.py).

A LoRA adapter folder (PEFT layout: adapter_config.json + adapter_model.safetensors, no
model.safetensors) is a run too: `load` loads its base run and activates it. (Hugging Face
folders are converted by livelm/interop/hf.py, above this layer: `livelm.load` and `livelm import`.)

Every file is written to a temporary name, fsync'ed and renamed (livelm.io), so a process killed in
the middle of a save leaves the previous checkpoint whole. The step is stored in the weights, the
config and the training state; a mismatch (a kill between the renames) is reported, not resumed from.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from livelm import io, machine
from livelm.models import lora
from livelm.models.bert import Bert, BertConfig
from livelm.models.gpt import GPT, GPTConfig
from livelm.models.lstm import LSTMConfig, LSTMLM
from livelm.models.seq2seq import Seq2Seq, Seq2SeqConfig
from livelm.tokenizer import Tokenizer

# config.json["arch"] -> (model class, its config class)
ARCHS = {"gpt": (GPT, GPTConfig), "bert": (Bert, BertConfig), "seq2seq": (Seq2Seq, Seq2SeqConfig),
         "lstm": (LSTMLM, LSTMConfig)}
SHARDED = "checkpoint_sharded"   # --fsdp runs keep their training state here instead of train_state.pt


class CheckpointError(Exception):
    """A run directory that cannot be read as asked; the message says why and what to do."""


# ---- files ---------------------------------------------------------------------------------------------
def read_config(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"run directory not found: {run_dir}")
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a livelm run (no config.json); train one with `livelm train`")
    try:
        config = io.parse_json(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); restore it or retrain") from None
    if not isinstance(config, dict) or not isinstance(config.get("model", {}), dict):
        raise CheckpointError(f"{path} is corrupt: it must hold a JSON object with a \"model\" object; "
                              f"restore it or retrain")
    return config


def _check_size(config: dict, weights: Path) -> None:
    """Refuse a config.json that describes a model far bigger than its weights file, before building it.

    A hostile or damaged config.json (n_layer 10^9, d_model 10^7) would otherwise make the model's
    constructor loop for hours or allocate terabytes. A lower bound of the parameter count
    (layers x d_model^2 + vocab x d_model) is compared with the file: every stored format takes at
    least one bit per weight (sparse runs: the mask), so a model needs >= params / 8 bytes."""
    m = config.get("model") or {}

    def num(*keys) -> int:
        v = sum(m.get(k) for k in keys if isinstance(m.get(k), int) and not isinstance(m.get(k), bool))
        return max(int(v), 0)
    d = num("d_model")
    width = min(d, num("hidden") or d)
    params = num("n_layer", "n_enc_layer", "n_dec_layer") * d * width + num("vocab_size", "src_vocab_size",
                                                                          "tgt_vocab_size") * d
    if not weights.is_file():
        return                  # load_weights says it is missing
    size = weights.stat().st_size
    if params / 8 > size + (1 << 20):
        raise CheckpointError(f"{weights.parent}/config.json describes a model of at least {params:,} weights, but "
                              f"{weights.name} holds only {size:,} bytes; the config or the weights are corrupt "
                              f"(restore them or retrain)")


def load_weights(path: Path, device="cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a safetensors file; a missing or damaged file is a CheckpointError."""
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


def tied_names(model: torch.nn.Module) -> set[str]:
    """State-dict names that share storage with an earlier name (lm_head.weight tied to wte.weight, ...).
    The one rule for tied weights: stored once under the first name, expected once when loading."""
    seen, tied = set(), set()
    for name, t in model.state_dict().items():
        if t.numel() and t.data_ptr() in seen:
            tied.add(name)
        seen.add(t.data_ptr())
    return tied


def state_dict_for_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights as contiguous CPU tensors, tied weights once (safetensors refuses shared storage)."""
    tied = tied_names(model)
    return {k: t.detach().to("cpu").contiguous() for k, t in model.state_dict().items() if k not in tied}


def load_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where, allow_new: tuple[str, ...] = ()) -> None:
    """Strict load that knows tied weights. allow_new: name prefixes that may be missing (a fresh head)."""
    expected, tied = model.state_dict(), tied_names(model)
    missing = [k for k in expected if k not in tensors and k not in tied and not k.startswith(allow_new)]
    unexpected = [k for k in tensors if k not in expected]
    bad_shape = [k for k in tensors if k in expected and tensors[k].shape != expected[k].shape]
    if missing or unexpected or bad_shape:
        raise CheckpointError(f"{where} does not match its config.json: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, wrong shape {bad_shape[:3]}")
    model.load_state_dict(tensors, strict=False)


def _torch_bytes(obj) -> bytes:
    import io as _io
    buf = _io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(run_dir: str | Path, model: torch.nn.Module, tokenizer: Tokenizer | None, config: dict,
                    step: int, train_state: dict | None = None) -> None:
    """Write the model's weights, config.json (with `step`) and, once, its tokenizer; with train_state
    also train_state.pt (what --resume reads)."""
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
        shutil.rmtree(run_dir / SHARDED, ignore_errors=True)  # an --fsdp-era state, older than this one
    if tokenizer is not None and not (run_dir / "tokenizer.json").exists():
        tokenizer.save(run_dir / "tokenizer.json")


# Files a run may hold besides its weights, config and tokenizer that belong to the run whatever its
# weights (a quantized or pruned copy keeps them: save_tensors). The layers that own them declare them
# (register_side_file: live learning registers its probes, livelm/learn/probes.py), so this layer names none.
SIDE_FILES: list[str] = []


def register_side_file(name: str) -> None:
    """Declare a file of a run folder that runs made from its weights (save_tensors) keep."""
    if name not in SIDE_FILES:
        SIDE_FILES.append(name)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def save_tensors(out: str | Path, src: str | Path, tensors: dict[str, torch.Tensor], config: dict,
                 side_files: list[str] | None = None) -> Path:
    """A run from stored tensors (quantized, sparse: see the module docstring) with src's tokenizer and
    whichever of `side_files` (default: the registered SIDE_FILES) src has."""
    out, src = Path(out), Path(src)
    out.mkdir(parents=True, exist_ok=True)
    step = config.get("step", 0)
    io.write_bytes(out / "model.safetensors", save(tensors, metadata={"step": str(step), "format": "pt"}))
    io.write_json(out / "config.json", config)
    for name in TOKENIZER_FILES:   # the tokenizer, and an imported model's bos/eos, stop tokens and chat template
        if (src / name).is_file() and (src / name).resolve() != (out / name).resolve():
            io.write_bytes(out / name, (src / name).read_bytes())
    for name in SIDE_FILES if side_files is None else side_files:
        if (src / name).is_file() and (src / name).resolve() != (out / name).resolve():
            io.write_bytes(out / name, (src / name).read_bytes())
    return out


# ---- stored formats ------------------------------------------------------------------------------------
def sparsify(tensors: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """Store each named weight as NAME.mask (uint8, packed bits, row-major) + NAME.values (the non-zeros)."""
    out = dict(tensors)
    for name in names:
        w = out.pop(name)
        nonzero = w != 0
        out[name + ".mask"] = torch.from_numpy(np.packbits(nonzero.flatten().numpy()))
        out[name + ".values"] = w[nonzero].contiguous()
    return out


def densify(tensors: dict[str, torch.Tensor], names: list[str], shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """The inverse of sparsify: rebuild each named dense weight of the given shape."""
    out = dict(tensors)
    for name in names:
        try:
            bits, values = out.pop(name + ".mask"), out.pop(name + ".values")
        except KeyError:
            raise ValueError(f"config.json lists {name} as sparse but model.safetensors has no {name}.mask/.values") from None
        n = int(np.prod(shapes[name]))
        mask = torch.from_numpy(np.unpackbits(bits.numpy(), count=n).astype(bool))
        if int(mask.sum()) != values.numel():
            raise ValueError(f"{name}: the sparse mask has {int(mask.sum())} entries but {values.numel()} values are stored")
        dense = torch.zeros(n, dtype=values.dtype)
        dense[mask] = values
        out[name] = dense.view(shapes[name])
    return out


def decode_stored(model: torch.nn.Module, tensors: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Make `model` and `tensors` fit each other: swap in quantized layers, densify sparse weights."""
    if "quantization" in config:
        from livelm.models.quantized import prepare_quantized
        prepare_quantized(model, config["quantization"])
    if config.get("sparse"):
        tensors = densify(tensors, config["sparse"], {k: v.shape for k, v in model.state_dict().items()})
    return tensors


# ---- loading -------------------------------------------------------------------------------------------
def build_model(config: dict, where) -> torch.nn.Module:
    """The untrained model a config.json describes."""
    arch = config.get("arch", "gpt")
    if arch not in ARCHS:
        raise CheckpointError(f"{where} holds a model of unknown kind {arch!r} (known: {', '.join(ARCHS)})")
    cls, cfg_cls = ARCHS[arch]
    try:
        if arch == "gpt" and config.get("task") == "classify":   # a decoder with a classifier head
            from livelm.models.classifier import GPTClassifier
            return GPTClassifier(cfg_cls.from_dict(config["model"]), config["labels"])
        return cls(cfg_cls.from_dict(config["model"]))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{where}/config.json has an invalid model section: {e}") from None


def load_model(run_dir: str | Path, device="cpu", arch: str | tuple[str, ...] | None = "gpt"):
    """(model in eval mode, tokenizer, config) from a run directory; `arch` names the kinds the caller
    can use (None: any; a different kind is a CheckpointError that says which it is)."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    kind = config.get("arch", "gpt")
    wanted = (arch,) if isinstance(arch, str) else arch
    if wanted and kind not in wanted:
        raise CheckpointError(f"{run_dir} holds a {kind!r} model; this command needs a {'/'.join(wanted)} run")
    _check_size(config, run_dir / "model.safetensors")
    model = build_model(config, run_dir)
    tensors, _ = load_weights(run_dir / "model.safetensors")
    tensors = decode_stored(model, tensors, config)
    load_state(model, tensors, run_dir / "model.safetensors")
    return model.to(device).eval(), Tokenizer.load(run_dir / "tokenizer.json"), config


def restore_weights(model: torch.nn.Module, run_dir: str | Path) -> None:
    """Load a run's weights into a model built for them (resuming, fine-tuning a head)."""
    path = Path(run_dir) / "model.safetensors"
    tensors, _ = load_weights(path)
    load_state(model, tensors, path)


def is_adapter(path: str | Path) -> bool:
    """A LoRA adapter folder (PEFT layout) rather than a full run."""
    path = Path(path)
    return (path / "adapter_config.json").is_file() and not (path / "model.safetensors").is_file()


def adapter_base(adapter_dir: Path) -> Path:
    """The run an adapter was trained on (adapter_config.json's base_model_name_or_path)."""
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
    their own kernels' choice (livelm/models/quantized.py) unless a dtype is named."""
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
         batch: int = 1, arch: str | tuple[str, ...] | None = "gpt"):
    """A run for inference: (model, tokenizer, config, adapter_names), in the dtype `dtype` resolves to.

    `run` may itself be an adapter directory; its base run is then loaded and the adapter activated.
    Extra adapters are loaded under their directory names; with exactly one it is made active for all
    requests."""
    run = Path(run)
    adapters = [Path(a) for a in (adapters or [])]
    if is_adapter(run):
        adapters.insert(0, run)
        run = adapter_base(run)
    model, tokenizer, config = load_model(run, device=machine.pick_device(device), arch=arch)
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
