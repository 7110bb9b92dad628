"""Importing a Hugging Face folder as a livelm run (`livelm import`, `livelm.load(hf_dir)`).

The weight names and the architecture check are shared with the export (livelm/interop/hf.py).

The model keeps its own tokenizer: tokenizer.json is copied byte for byte (no id is
renumbered or added) and tokenizer_config.json keeps its bos/eos, end-of-turn tokens
and chat template, which livelm's renderer (livelm/chat/template.py) then uses for
chat, serving, fine-tuning and evaluation alike.

Weights are read from safetensors only: pickled checkpoints are refused; files are written atomically.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from tokenizers import Tokenizer as HFTokenizer

from livelm import io
from livelm.interop.hf import (InteropError, _out_dir, check_tensors, expected_shapes, from_gpt2, from_llama,
                               log)
from livelm.models.gpt import GPTConfig
from livelm.tokenizer import CONFIG_KEYS, Tokenizer, TokenizerError


# ---- import ---------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InteropError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InteropError(f"{path} does not hold a JSON object")
    return obj


def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors, or of the shards listed in model.safetensors.index.json."""
    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise InteropError(f"{index} has no weight_map")
        files = [hf_dir / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise InteropError(f"{hf_dir} is missing shard(s) listed in {index.name}: {', '.join(missing[:3])}")
    elif any((hf_dir / f).is_file() for f in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise InteropError(f"{hf_dir} holds only pytorch_model.bin: pickled weights are not loaded (unpickling can "
                           f"run arbitrary code); convert to safetensors, e.g. in Python: "
                           f"AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(NEW_DIR)")
    else:
        raise InteropError(f"{hf_dir} has no model.safetensors (nor model.safetensors.index.json)")
    out = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():
                    out[k] = fh.get_tensor(k)
        except (SafetensorError, OSError, ValueError) as e:
            raise InteropError(f"{f} is corrupt or truncated ({e})") from None
    return out


def _ratio_for(hidden: int, d_model: int, mlp: str, hint: float | None) -> float:
    """An mlp_ratio for which GPTConfig.mlp_hidden == hidden (livelm derives the width from the ratio)."""
    base = int(1.5 * hidden) if mlp == "swiglu" else hidden    # SwiGLU keeps 2/3 of ratio*C, rounded up to 32
    for ratio in (hint, 4.0, base / d_model, (base + 0.5) / d_model):
        if ratio and GPTConfig(d_model=d_model, n_head=1, mlp=mlp, mlp_ratio=ratio).mlp_hidden == hidden:
            return ratio
    raise InteropError(f"an MLP width of {hidden} cannot be expressed in livelm ({mlp} widths are "
                       f"{'multiples of 32' if mlp == 'swiglu' else 'int(mlp_ratio * d_model)'})")


def _livelm_config(hf: dict, fam: str, hf_dir: Path, block_size: int | None) -> GPTConfig:
    hint = hf.get("livelm_model") if isinstance(hf.get("livelm_model"), dict) else {}
    try:
        if fam == "gpt2":
            C, H = int(hf["n_embd"]), int(hf["n_head"])
            act = hf.get("activation_function", "gelu_new")
            if act not in ("gelu_new", "gelu_pytorch_tanh"):
                raise InteropError(f"{hf_dir}: activation_function={act!r}; livelm's GPT-2 MLP is the tanh GELU "
                                   f"(gelu_new)")
            for key, ok in (("scale_attn_by_inverse_layer_idx", False), ("scale_attn_weights", True),
                            ("add_cross_attention", False)):
                if hf.get(key, ok) != ok:
                    raise InteropError(f"{hf_dir}: {key}={hf[key]} is not supported (livelm expects {ok})")
            n_pos = int(hf.get("n_positions", hf.get("n_ctx", 1024)))
            if block_size is not None and block_size != n_pos:
                raise InteropError("--block-size applies to RoPE models only; GPT-2's learned positions fix the "
                                   f"context window at {n_pos}")
            hidden = int(hf.get("n_inner") or 4 * C)
            cfg = dict(position="learned", norm="layernorm", mlp="gelu", block_size=n_pos, n_layer=int(hf["n_layer"]),
                       n_head=H, n_kv_head=H, d_model=C, norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                       tie_embeddings=bool(hf.get("tie_word_embeddings", True)))
        else:
            C, H = int(hf["hidden_size"]), int(hf["num_attention_heads"])
            if hf.get("hidden_act", "silu") != "silu":
                raise InteropError(f"{hf_dir}: hidden_act={hf['hidden_act']!r}; livelm's SwiGLU uses silu")
            rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
            kind = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else rope
            if hf.get("rope_scaling") or kind != "default":
                raise InteropError(f"{hf_dir}: rope scaling ({kind!r}) is not supported: livelm implements plain "
                                   f"RoPE only")
            head_dim = int(hf.get("head_dim") or C // H)
            # livelm's head_size: 0 = d_model // n_head (keep a 0 from livelm's own export for a lossless round trip)
            head_size = 0 if head_dim == C // H and not hint.get("head_size") else head_dim
            if hf.get("pretraining_tp", 1) not in (1, None):
                raise InteropError(f"{hf_dir}: pretraining_tp={hf['pretraining_tp']} is not supported")
            n_pos = int(hf.get("max_position_embeddings", 2048))
            if block_size is not None and not 0 < block_size <= n_pos:
                raise InteropError(f"--block-size must be between 1 and {n_pos} (max_position_embeddings)")
            hidden = int(hf["intermediate_size"])
            theta = rope.get("rope_theta") if isinstance(rope, dict) else None
            cfg = dict(position="rope", norm="rmsnorm", mlp="swiglu", block_size=block_size or n_pos,
                       n_layer=int(hf["num_hidden_layers"]), n_head=H,
                       n_kv_head=int(hf.get("num_key_value_heads") or H), d_model=C, head_size=head_size,
                       norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                       rope_theta=float(theta or hf.get("rope_theta", 10000.0)),
                       tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, InteropError):
            raise
        raise InteropError(f"{hf_dir}/config.json lacks or has a bad {e} for a {fam} model") from None
    ratio = _ratio_for(hidden, C, cfg["mlp"], hint.get("mlp_ratio"))
    return GPTConfig(vocab_size=int(hf["vocab_size"]), mlp_ratio=ratio, bias=True,
                     dropout=float(hint.get("dropout", 0.0)), **cfg)


_ARCHS = {"gpt2": ("GPT2LMHeadModel", "GPT2Model"), "llama": ("LlamaForCausalLM", "LlamaModel")}


def import_hf(hf_dir, run_dir, block_size: int | None = None) -> dict:
    """Turn a GPT2LMHeadModel / LlamaForCausalLM folder into a livelm run directory.

    block_size caps the context window of a RoPE model (Llama folders often say
    128K positions, and livelm's KV cache is sized by it); positions below it are
    unaffected. Returns a summary dict.
    """
    from livelm.config import TrainConfig
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise InteropError(f"Hugging Face model folder not found: {hf_dir}")
    if not (hf_dir / "config.json").is_file():
        raise InteropError(f"{hf_dir} has no config.json; it is not a Hugging Face model folder")
    hf = _read_json(hf_dir / "config.json")
    if "arch" in hf and "model" in hf:
        raise InteropError(f"{hf_dir} is already a livelm run; use it directly")
    fam = hf.get("model_type")
    archs = hf.get("architectures") or list(_ARCHS.get(fam, ("?",))[:1])
    if fam not in _ARCHS or any(a not in _ARCHS[fam] for a in archs):
        raise InteropError(f"{hf_dir} holds a {'/'.join(map(str, archs))} model (model_type {fam!r}); livelm imports "
                           f"GPT2LMHeadModel (gpt2) and LlamaForCausalLM (llama) folders")
    run_dir = _out_dir(run_dir)
    cfg = _livelm_config(hf, fam, hf_dir, block_size)
    raw = read_hf_weights(hf_dir)

    # strip the base-model prefix HF adds or not depending on the class that saved the folder
    if fam == "gpt2":
        raw = {k.removeprefix("transformer."): v for k, v in raw.items()
               if not k.endswith((".attn.bias", ".attn.masked_bias"))}          # old causal-mask buffers
        for k in ("wte.weight", "wpe.weight", "ln_f.weight"):
            if k not in raw:
                raise InteropError(f"{hf_dir}: tensor transformer.{k} is missing")
        # HF's GPT-2 always has biases; drop them only for livelm's own bias-free export, still all zero
        hint = hf.get("livelm_model") if isinstance(hf.get("livelm_model"), dict) else {}
        zero = all(not t.any() for k, t in raw.items() if k.endswith(".bias"))
        bias = not (zero and hint.get("bias") is False)
        try:
            sd = from_gpt2(raw, cfg.n_layer, bias)
        except KeyError as e:
            raise InteropError(f"{hf_dir}: tensor {e} is missing") from None
        cfg.bias = bias
    else:
        raw = {(k if k.startswith(("model.", "lm_head.")) else "model." + k): v for k, v in raw.items()
               if not k.endswith("rotary_emb.inv_freq")}
        sd = from_llama(raw)
        # HF has two bias switches (attention_bias, mlp_bias), livelm one: a missing side is zeros
        has = {k for k in sd if k.endswith(".bias")}
        cfg.bias = bool(has)
        if has:
            for k, shape in expected_shapes(cfg).items():
                if k.endswith(".bias") and k not in sd:
                    sd[k] = torch.zeros(shape, dtype=sd["wte.weight"].dtype)
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)    # HF ties it to the embedding whatever the file holds
    elif "lm_head.weight" not in sd:
        raise InteropError(f"{hf_dir}: tie_word_embeddings is false but there is no lm_head.weight")
    check_tensors(sd, cfg, hf_dir)

    tok_json, tok_config = import_tokenizer(hf_dir, cfg.vocab_size)

    train = TrainConfig(preset=fam, **{k: v for k, v in cfg.to_dict().items() if k in TrainConfig.__dataclass_fields__})
    io.write_bytes(run_dir / "model.safetensors", save(sd, metadata={"step": "0", "format": "pt"}))
    io.write_text(run_dir / "tokenizer.json", tok_json)
    if tok_config:
        io.write_json(run_dir / "tokenizer_config.json", tok_config)
    io.write_json(run_dir / "config.json", {"arch": "gpt", "model": cfg.to_dict(), "train": train.to_dict(),
                                             "imported_from": str(hf_dir.resolve()), "step": 0})
    n = sum(t.numel() for t in sd.values())
    log(f"imported {hf_dir} ({archs[0]}, {n / 1e6:.2f}M parameters) into {run_dir}")
    return {"run": str(run_dir), "from": str(hf_dir), "architecture": archs[0], "preset": fam,
            "vocab_size": cfg.vocab_size, "chat_template": bool(tok_config.get("chat_template")), "params": n}


# ---- tokenizer import --------------------------------------------------------------------------
def import_tokenizer(hf_dir: Path, model_vocab: int) -> tuple[str, dict]:
    """(tokenizer.json text, kept byte for byte; the tokenizer_config.json livelm writes beside it).

    The model's vocabulary and ids stay exactly as they are. The config keeps the
    facts livelm reads (bos/eos/pad/unk, the chat template, from tokenizer_config.json
    or transformers 5's chat_template.jinja) and adds stop_tokens: the end ids
    generation_config.json lists (e.g. Llama 3's <|eot_id|> beside <|end_of_text|>).
    """
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        raise InteropError(f"{hf_dir} has no tokenizer.json (livelm needs the fast-tokenizer file; write it with "
                           f"AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR))")
    text = path.read_text(encoding="utf-8")
    config = _read_json(hf_dir / "tokenizer_config.json") if (hf_dir / "tokenizer_config.json").is_file() else {}
    if "chat_template" not in config and (hf_dir / "chat_template.jinja").is_file():
        config["chat_template"] = (hf_dir / "chat_template.jinja").read_text(encoding="utf-8")
    gen = _read_json(hf_dir / "generation_config.json") if (hf_dir / "generation_config.json").is_file() else {}
    return text, tokenizer_config(text, config, gen, model_vocab, hf_dir)


def tokenizer_config(tokenizer_json: str, config: dict, generation: dict, model_vocab: int, source) -> dict:
    """The run's tokenizer_config.json, checked by building the tokenizer from it."""
    config = {k: v for k, v in config.items() if k in CONFIG_KEYS}
    ends = generation.get("eos_token_id")
    ends = ends if isinstance(ends, list) else [ends] if isinstance(ends, int) else []
    try:
        hf = HFTokenizer.from_str(tokenizer_json)
    except Exception as e:  # tokenizers raises plain Exceptions for schema errors
        raise InteropError(f"{source}: tokenizer.json is not a tokenizers file ({e})") from None
    stops = [hf.id_to_token(i) for i in ends if isinstance(i, int) and hf.id_to_token(i) is not None]
    if stops:
        config["stop_tokens"] = sorted(set(stops) | set(config.get("stop_tokens") or ()))
    if not config.get("eos_token") and stops:
        config["eos_token"] = stops[0]
    try:
        tok = Tokenizer(hf, config)
    except TokenizerError as e:
        raise InteropError(f"{source}: its tokenizer cannot be used by livelm ({e})") from None
    if tok.vocab_size > model_vocab:
        raise InteropError(f"{source}: the tokenizer has {tok.vocab_size} tokens but the model's embedding only "
                           f"{model_vocab} rows")
    return tok.config
