"""Importing a Hugging Face folder as a livelm run (`livelm import`, `livelm.load(hf_dir)`).

The weight names and the architecture check are shared with the export (livelm/interop/hf.py).

The model keeps its own tokenizer: tokenizer.json is copied byte for byte (no id is
renumbered or added) and tokenizer_config.json keeps its bos/eos, end-of-turn tokens
and chat template, which livelm's renderer (livelm/chat/template.py) then uses for
chat, serving, fine-tuning and evaluation alike.

Weights are read from safetensors only: pickled checkpoints are refused; files are written atomically.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from tokenizers import Tokenizer as HFTokenizer

from livelm import io
from livelm.interop.hf import (InteropError, _out_dir, check_tensors, expected_shapes, from_gpt2, from_llama,
                               log)
from livelm.models.gpt import GPTConfig
from livelm.tokenizer import CONFIG_KEYS, Tokenizer, TokenizerError

if TYPE_CHECKING:
    from livelm.interop.gguf_import import Checkpoint


# ---- import ---------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    return io.read_json_object(path, InteropError)


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
    gated = mlp != "gelu"
    base = int(1.5 * hidden) if gated else hidden    # SwiGLU/GeGLU keep 2/3 of ratio*C, rounded up to 32
    for ratio in (hint, 4.0, base / d_model, (base + 0.5) / d_model):
        if ratio and GPTConfig(d_model=d_model, n_head=1, mlp=mlp, mlp_ratio=ratio).mlp_hidden == hidden:
            return ratio
    raise InteropError(f"an MLP width of {hidden} cannot be expressed in livelm ({mlp} widths are "
                       f"{'multiples of 32' if gated else 'int(mlp_ratio * d_model)'})")


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
            gemma = fam in _GEMMA_DEFAULTS
            if gemma:   # transformers' defaults (a multimodal Gemma 3's text_config lists only what differs)
                hf = {**_GEMMA_DEFAULTS[fam], **hf}
            C, H = int(hf["hidden_size"]), int(hf["num_attention_heads"])
            act, want = (hf.get("hidden_activation"), "gelu_pytorch_tanh") if gemma else (hf.get("hidden_act", "silu"),
                                                                                         "silu")
            if act != want:
                raise InteropError(f"{hf_dir}: activation {act!r} is not supported; livelm's {fam} MLP uses {want}")
            head_dim = int(hf.get("head_dim") or C // H)
            # livelm's head_size: 0 = d_model // n_head (keep a 0 from livelm's own export for a lossless round trip)
            head_size = 0 if head_dim == C // H and not hint.get("head_size") else head_dim
            if hf.get("pretraining_tp", 1) not in (1, None):
                raise InteropError(f"{hf_dir}: pretraining_tp={hf['pretraining_tp']} is not supported")
            n_pos = int(hf.get("max_position_embeddings", 2048))
            if block_size is not None and not 0 < block_size <= n_pos:
                raise InteropError(f"--block-size must be between 1 and {n_pos} (max_position_embeddings)")
            hidden = int(hf["intermediate_size"])
            cfg = dict(position="rope", norm="rmsnorm", mlp="geglu" if gemma else "swiglu",
                       block_size=block_size or n_pos, n_layer=int(hf["num_hidden_layers"]), n_head=H,
                       n_kv_head=int(hf.get("num_key_value_heads") or H), d_model=C, head_size=head_size,
                       norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                       tie_embeddings=bool(hf.get("tie_word_embeddings", gemma)),
                       qk_norm=fam in ("qwen3", "gemma3_text"), **_rope_fields(hf, fam == "gemma3_text", hf_dir),
                       **_window_fields(hf, fam, int(hf["num_hidden_layers"]), hf_dir))
            if gemma:
                if hf.get("use_bidirectional_attention"):
                    raise InteropError(f"{hf_dir}: use_bidirectional_attention (an embedding model) is not supported; "
                                       f"livelm's decoder is causal")
                if fam == "gemma3_text" and hf.get("attn_logit_softcapping"):
                    raise InteropError(f"{hf_dir}: attn_logit_softcapping is set, which transformers' Gemma 3 "
                                       f"ignores (Gemma 2 applies it): not imported rather than guessed")
                scalar = float(hf.get("query_pre_attn_scalar") or head_dim)
                cfg.update(norm_offset=1.0, post_norms=True, embed_scale=True,
                           # 0 = head_dim, kept from livelm's own export for a lossless round trip
                           attn_scalar=0.0 if hint.get("attn_scalar") == 0 and scalar == head_dim else scalar,
                           final_softcap=float(hf.get("final_logit_softcapping") or 0.0),
                           attn_softcap=float(hf.get("attn_logit_softcapping") or 0.0))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, InteropError):
            raise
        raise InteropError(f"{hf_dir}/config.json lacks or has a bad {e} for a {fam} model") from None
    ratio = _ratio_for(hidden, C, cfg["mlp"], hint.get("mlp_ratio"))
    return GPTConfig(vocab_size=int(hf["vocab_size"]), mlp_ratio=ratio, bias=True,
                     dropout=float(hint.get("dropout", 0.0)), **cfg)


# Gemma2Config's and Gemma3TextConfig's defaults: a multimodal Gemma 3's config.json lists only where its
# text_config differs, and Gemma 2's softcaps are on unless a config says null
_GEMMA_COMMON = dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                     num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
                     tie_word_embeddings=True, query_pre_attn_scalar=256, sliding_window=4096)
_GEMMA_DEFAULTS = {
    "gemma2": dict(_GEMMA_COMMON, vocab_size=256_000, max_position_embeddings=8192, rope_theta=10_000.0,
                   final_logit_softcapping=30.0, attn_logit_softcapping=50.0, sliding_window_pattern=2),
    "gemma3_text": dict(_GEMMA_COMMON, vocab_size=262_208, max_position_embeddings=131_072, rope_theta=1_000_000.0,
                        rope_local_base_freq=10_000.0, sliding_window_pattern=6),
}


def _rope_scaling(params: dict, hf: dict, hf_dir: Path) -> dict | None:
    """GPTConfig.rope_scaling from one HF rope dict (rope_parameters or the older rope_scaling): None for plain
    RoPE, or a complete linear / llama3 scaling; any other kind is an InteropError naming it."""
    kind = params.get("rope_type", params.get("type", "default"))
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor")) or 1.0
    if partial != 1.0:
        raise InteropError(f"{hf_dir}: partial_rotary_factor={partial} is not supported (livelm rotates whole heads)")
    if kind == "default":
        return None
    keys = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor")}.get(kind)
    if keys is None:
        raise InteropError(f"{hf_dir}: rope scaling {kind!r} is not supported; livelm computes plain, linear and "
                           f"llama3 RoPE")
    missing = [k for k in keys if not isinstance(params.get(k), (int, float))]
    if missing:
        raise InteropError(f"{hf_dir}: rope scaling {kind!r} needs {', '.join(missing)}")
    out = {"rope_type": kind, **{k: float(params[k]) for k in keys}}
    if kind == "llama3":   # transformers falls back to max_position_embeddings too
        out["original_max_position_embeddings"] = int(params.get("original_max_position_embeddings")
                                                      or hf.get("max_position_embeddings", 8192))
    return out


def _rope_fields(hf: dict, gemma: bool, hf_dir: Path) -> dict:
    """rope_theta, rope_scaling (and Gemma's rope_local_theta) from transformers 5's rope_parameters or the
    older rope_theta / rope_scaling / rope_local_base_freq keys."""
    params = hf.get("rope_parameters") if isinstance(hf.get("rope_parameters"), dict) else {}
    old = hf.get("rope_scaling") if isinstance(hf.get("rope_scaling"), dict) else {}
    if not gemma:
        full = {"rope_theta": hf.get("rope_theta", 10000.0), **old, **params}
        return {"rope_theta": float(full["rope_theta"]), "rope_scaling": _rope_scaling(full, hf, hf_dir)}
    # Gemma 3 (gemma=True): the full-attention layers' RoPE (4B and up: linear scaling) and the sliding layers' own
    full = params.get("full_attention") or {**old, "rope_theta": hf["rope_theta"]}
    local = params.get("sliding_attention") or {"rope_theta": hf["rope_local_base_freq"]}
    theta, scaling = float(full.get("rope_theta") or hf["rope_theta"]), _rope_scaling(full, hf, hf_dir)
    local_theta = float(local.get("rope_theta") or hf["rope_local_base_freq"])
    if (local_theta, _rope_scaling(local, hf, hf_dir)) == (theta, scaling):
        local_theta = 0.0                                     # livelm's "as the full layers"
    elif _rope_scaling(local, hf, hf_dir) is not None:
        raise InteropError(f"{hf_dir}: scaled RoPE on the sliding layers is not supported (only on the full ones)")
    return {"rope_theta": theta, "rope_scaling": scaling, "rope_local_theta": local_theta}


def _window_fields(hf: dict, fam: str, n_layer: int, hf_dir: Path) -> dict:
    """sliding_window and layer_types: Mistral slides on every layer when sliding_window is set; Qwen2/3 from
    max_window_layers on, and only with use_sliding_window; Gemma per layer_types (or every
    sliding_window_pattern-th layer global: 2nd in Gemma 2, 6th in Gemma 3). Empty when no layer slides."""
    window = hf.get("sliding_window")
    if fam == "mistral":
        types = None
    elif fam in ("qwen2", "qwen3"):
        window = window if hf.get("use_sliding_window") else None
        types = hf.get("layer_types") or ["sliding_attention" if i >= hf.get("max_window_layers", 28)
                                          else "full_attention" for i in range(n_layer)]
    elif fam in _GEMMA_DEFAULTS:   # Gemma 2: every other layer global; Gemma 3: every 6th
        pattern = hf.get("sliding_window_pattern") or _GEMMA_DEFAULTS[fam]["sliding_window_pattern"]
        types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % pattern else "full_attention"
                                          for i in range(n_layer)]
    else:
        window = None
    if not window:
        return {}
    if types is None:
        return {"sliding_window": int(window)}
    odd = sorted({str(t) for t in types} - {"full_attention", "sliding_attention"})
    if odd or len(types) != n_layer:
        raise InteropError(f"{hf_dir}: layer_types {odd or types} not supported (livelm has full_attention and "
                           f"sliding_attention layers, one per layer)")
    sliding = [t == "sliding_attention" for t in types]
    if not any(sliding):
        return {}
    return {"sliding_window": int(window), "layer_types": None if all(sliding) else list(types)}


_ARCHS = {"gpt2": ("GPT2LMHeadModel", "GPT2Model"), "llama": ("LlamaForCausalLM", "LlamaModel"),
          "mistral": ("MistralForCausalLM", "MistralModel"), "qwen2": ("Qwen2ForCausalLM", "Qwen2Model"),
          "qwen3": ("Qwen3ForCausalLM", "Qwen3Model"), "gemma2": ("Gemma2ForCausalLM", "Gemma2Model"),
          "gemma3_text": ("Gemma3ForCausalLM", "Gemma3TextModel"),
          # the multimodal Gemma 3: its language model is imported, the vision tower left behind
          "gemma3": ("Gemma3ForConditionalGeneration", "Gemma3ForCausalLM")}


def read_hf_folder(hf_dir) -> "Checkpoint":
    """A Hugging Face model folder in memory: config, tensors (safetensors only), tokenizer files."""
    from livelm.interop.gguf_import import Checkpoint
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise InteropError(f"Hugging Face model folder not found: {hf_dir}")
    if not (hf_dir / "config.json").is_file():
        raise InteropError(f"{hf_dir} has no config.json; it is not a Hugging Face model folder")
    hf = _read_json(hf_dir / "config.json")
    if "arch" in hf and "model" in hf:
        raise InteropError(f"{hf_dir} is already a livelm run; use it directly")
    _model_config(hf, hf_dir, None)   # an unsupported architecture or feature fails before the weights are read
    tensors = read_hf_weights(hf_dir)
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        raise InteropError(f"{hf_dir} has no tokenizer.json (livelm needs the fast-tokenizer file; write it with "
                           f"AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR))")
    tok_config = _read_json(hf_dir / "tokenizer_config.json") if (hf_dir / "tokenizer_config.json").is_file() else {}
    if "chat_template" not in tok_config and (hf_dir / "chat_template.jinja").is_file():   # transformers 5
        try:
            tok_config["chat_template"] = (hf_dir / "chat_template.jinja").read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise InteropError(f"{hf_dir / 'chat_template.jinja'} is not UTF-8 text ({e.reason} at byte "
                               f"{e.start}); re-save it as UTF-8") from None
    gen = _read_json(hf_dir / "generation_config.json") if (hf_dir / "generation_config.json").is_file() else {}
    return Checkpoint(hf, tensors, path.read_text(encoding="utf-8"), tok_config, gen)


def import_hf(hf_dir, run_dir, block_size: int | None = None) -> dict:
    """Turn a GPT-2, Llama, Mistral, Qwen2/3 or Gemma 3 folder (_ARCHS) into a livelm run directory."""
    return import_checkpoint(read_hf_folder(hf_dir), run_dir, block_size, Path(hf_dir))


def import_gguf(path, run_dir, block_size: int | None = None) -> dict:
    """Turn a GGUF file (llama.cpp, Ollama) into a livelm run directory: weights dequantized to fp32."""
    from livelm.interop.gguf_import import GGUFImportError, read_gguf
    _out_dir(run_dir)   # fail on a bad --out before minutes of dequantizing
    try:
        ckpt = read_gguf(path)
    except GGUFImportError as e:
        raise InteropError(str(e)) from None
    return import_checkpoint(ckpt, run_dir, block_size, Path(path))


def import_model(source, run_dir, block_size: int | None = None) -> dict:
    """`livelm import`: a Hugging Face folder or a .gguf file."""
    source = Path(source)
    if source.is_file() or source.suffix.lower() == ".gguf":
        return import_gguf(source, run_dir, block_size)
    return import_hf(source, run_dir, block_size)


def _model_config(hf: dict, source: Path, block_size: int | None) -> tuple[str, list[str], dict, GPTConfig]:
    """(family, architectures, the language model's HF config, livelm's config), or an InteropError."""
    fam, archs = _family(hf, source)
    if fam == "gemma3":   # multimodal: the language model's config is text_config; tying is decided at the top
        text = hf.get("text_config") if isinstance(hf.get("text_config"), dict) else {}
        hf = {**text, "tie_word_embeddings": hf.get("tie_word_embeddings", text.get("tie_word_embeddings", True))}
        fam = "gemma3_text"
    return fam, archs, hf, _livelm_config(hf, fam, source, block_size)


def _family(hf: dict, source: Path) -> tuple[str, list[str]]:
    fam = hf.get("model_type")
    archs = hf.get("architectures") or list(_ARCHS.get(fam, ("?",))[:1])
    if fam not in _ARCHS or any(a not in _ARCHS[fam] for a in archs):
        raise InteropError(f"{source} holds a {'/'.join(map(str, archs))} model (model_type {fam!r}); livelm imports "
                           f"{', '.join(f'{a[0]} ({t})' for t, a in _ARCHS.items())} models")
    return fam, archs


def import_checkpoint(ckpt, run_dir, block_size: int | None, source: Path) -> dict:
    """A checkpoint in memory (read_hf_folder, read_gguf) -> a livelm run directory.

    block_size caps the context window of a RoPE model (Llama folders often say
    128K positions); positions below it are unaffected. Returns a summary dict.
    """
    from livelm.config import TrainConfig
    hf_dir = source
    run_dir = _out_dir(run_dir)
    fam, archs, hf, cfg = _model_config(ckpt.config, source, block_size)
    multimodal = ckpt.config.get("model_type") == "gemma3"
    raw = ckpt.tensors

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
        if multimodal:   # transformers 5 names: model.language_model.*, 4.x: language_model.model.*
            raw = {k.replace("model.language_model.", "model.").replace("language_model.", ""): v
                   for k, v in raw.items() if not any(p in k for p in ("vision_tower.", "multi_modal_projector."))}
        raw = {(k if k.startswith(("model.", "lm_head.")) else "model." + k): v for k, v in raw.items()
               if not k.endswith("rotary_emb.inv_freq")}
        sd = from_llama(raw, fam)
        # biases on q/k/v only are Qwen2's (qkv_bias); otherwise HF has two bias switches (attention_bias,
        # mlp_bias) and livelm one: a missing side is zeros
        has = {k for k in sd if k.endswith(".bias")}
        cfg.qkv_bias = bool(has) and all(k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")) for k in has)
        cfg.bias = bool(has) and not cfg.qkv_bias
        if has:
            for k, shape in expected_shapes(cfg).items():
                if k.endswith(".bias") and k not in sd:
                    sd[k] = torch.zeros(shape, dtype=sd["wte.weight"].dtype)
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)    # HF ties it to the embedding whatever the file holds
    elif "lm_head.weight" not in sd:
        raise InteropError(f"{hf_dir}: tie_word_embeddings is false but there is no lm_head.weight")
    check_tensors(sd, cfg, hf_dir)

    tok_json = ckpt.tokenizer_json
    tok_config = tokenizer_config(tok_json, ckpt.tokenizer_config, ckpt.generation_config, cfg.vocab_size, source)

    # the training preset is GPT-2 or Llama (the switches of the other families are in the model section)
    preset = "gpt2" if fam == "gpt2" else "llama"
    train = TrainConfig(preset=preset,
                        **{k: v for k, v in cfg.to_dict().items() if k in TrainConfig.__dataclass_fields__})
    io.write_bytes(run_dir / "model.safetensors", save(sd, metadata={"step": "0", "format": "pt"}))
    io.write_text(run_dir / "tokenizer.json", tok_json)
    if tok_config:
        io.write_json(run_dir / "tokenizer_config.json", tok_config)
    io.write_json(run_dir / "config.json", {"arch": "gpt", "model": cfg.to_dict(), "train": train.to_dict(),
                                             "imported_from": str(Path(source).resolve()), "step": 0})
    n = sum(t.numel() for t in sd.values())
    log(f"imported {hf_dir} ({archs[0]}, {n / 1e6:.2f}M parameters) into {run_dir}")
    return {"run": str(run_dir), "from": str(hf_dir), "architecture": archs[0], "preset": preset, "family": fam,
            "vocab_size": cfg.vocab_size, "chat_template": bool(tok_config.get("chat_template")), "params": n}


# ---- tokenizer import --------------------------------------------------------------------------
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
