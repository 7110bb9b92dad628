"""Importing a Hugging Face GPT-2 / Llama folder as a livelm run (`livelm import`, `livelm.load(hf_dir)`).

The weight names and the architecture check are shared with the export (livelm/interop/hf.py).

Importing a folder whose tokenizer lacks livelm's 11 special tokens (ids 0..10,
livelm/tokenizer.py) — any GPT-2 or Llama-3 style checkpoint — makes room for
them: the vocabulary is renumbered, the model's own end-of-text token *becomes*
<|eos|> (and a distinct begin-of-text <|bos|>), keeping its embedding, so
generation works at once and stops where the model stops; the other specials
(turn markers, pad, mask...) are new rows initialised to the mean embedding,
which chat fine-tuning (`livelm finetune`) then teaches. Logits over the
original tokens are unchanged, only their ids move.

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
from livelm.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerError


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

    tok_json, mapping = import_tokenizer(hf_dir, cfg.vocab_size)
    if mapping is not None:
        sd, cfg.vocab_size = remap_vocab(sd, mapping), int(mapping.max()) + 1
        check_tensors(sd, cfg, "the renumbered vocabulary")

    train = TrainConfig(preset=fam, **{k: v for k, v in cfg.to_dict().items() if k in TrainConfig.__dataclass_fields__})
    io.write_bytes(run_dir / "model.safetensors", save(sd, metadata={"step": "0", "format": "pt"}))
    io.write_text(run_dir / "tokenizer.json", tok_json)
    io.write_json(run_dir / "config.json", {"arch": "gpt", "model": cfg.to_dict(), "train": train.to_dict(),
                                             "imported_from": str(hf_dir.resolve()), "step": 0})
    n = sum(t.numel() for t in sd.values())
    log(f"imported {hf_dir} ({archs[0]}, {n / 1e6:.2f}M parameters) into {run_dir}" +
        ("; livelm's special tokens were added to the vocabulary (see livelm/interop/hf.py)" if mapping is not None
         else ""))
    return {"run": str(run_dir), "from": str(hf_dir), "architecture": archs[0], "preset": fam,
            "vocab_size": cfg.vocab_size, "added_special_tokens": mapping is not None, "params": n}


# ---- tokenizer import --------------------------------------------------------------------------
def import_tokenizer(hf_dir: Path, model_vocab: int) -> tuple[str, torch.Tensor | None]:
    """(tokenizer.json text for the run, old id -> new id map or None when ids are unchanged)."""
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        raise InteropError(f"{hf_dir} has no tokenizer.json (livelm needs the fast-tokenizer file; write it with "
                           f"AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR))")
    text = path.read_text(encoding="utf-8")
    try:
        tok = Tokenizer.load(path)            # a livelm tokenizer already: keep it byte for byte
    except TokenizerError:
        tok = None
    if tok is not None:
        if tok.vocab_size > model_vocab:
            raise InteropError(f"{hf_dir}: the tokenizer has {tok.vocab_size} tokens but the model {model_vocab}")
        return text, None
    hf = _read_json(path)
    gen = _read_json(hf_dir / "generation_config.json") if (hf_dir / "generation_config.json").is_file() else {}
    cfg = _read_json(hf_dir / "config.json")

    def first(key):
        v = gen.get(key, cfg.get(key))
        return v[0] if isinstance(v, list) and v else v

    new_json, mapping = add_special_tokens(hf, model_vocab, eos=first("eos_token_id"), bos=first("bos_token_id"))
    try:
        Tokenizer(HFTokenizer.from_str(new_json))
    except TokenizerError as e:
        raise InteropError(f"{hf_dir}: its tokenizer cannot be used by livelm ({e}); livelm reads byte-level BPE "
                           f"(GPT-2, Llama 3 style) and its own char tokenizers, not SentencePiece-style ones "
                           f"(e.g. Llama 2)") from None
    except Exception as e:  # tokenizers raises plain Exceptions for schema errors
        raise InteropError(f"{hf_dir}/tokenizer.json could not be rebuilt with livelm's special tokens: {e}") from None
    return new_json, mapping


def add_special_tokens(hf: dict, model_vocab: int, eos: int | None, bos: int | None) -> tuple[str, torch.Tensor]:
    """Renumber a tokenizers JSON so livelm's specials hold ids 0..10.

    An existing special token becomes a livelm special (keeping its embedding)
    when it is the model's eos (-> <|eos|>), its bos (-> <|bos|>, if distinct), or
    already has a livelm special's name. Every other id keeps its order after
    the 11 specials. Returns (JSON text, mapping (model_vocab,) old id -> new id).
    """
    model = hf.get("model") or {}
    if not isinstance(model.get("vocab"), dict):
        raise InteropError(f"tokenizer model type {model.get('type')!r} is not supported (livelm reads BPE "
                           f"and WordLevel tokenizers)")
    added = hf.get("added_tokens") or []
    special_added = {t["id"]: t["content"] for t in added if t.get("special")}
    absorb: dict[int, int] = {}                           # old id -> livelm special id
    for old, content in special_added.items():
        if content in SPECIAL_TOKENS:
            absorb[old] = SPECIAL_TOKENS.index(content)
    for old, target in ((eos, 2), (bos, 1)):
        if old in special_added and old not in absorb and target not in absorb.values():
            absorb[old] = target
    n_spec = len(SPECIAL_TOKENS)
    mapping = torch.empty(model_vocab, dtype=torch.long)
    nxt = n_spec
    for old in range(model_vocab):
        if old in absorb:
            mapping[old] = absorb[old]
        else:
            mapping[old] = nxt
            nxt += 1
    renamed = {old: SPECIAL_TOKENS[new] for old, new in absorb.items()}

    def new_id(old: int) -> int:
        if not 0 <= old < model_vocab:
            raise InteropError(f"tokenizer id {old} is outside the model's {model_vocab}-row embedding")
        return int(mapping[old])

    vocab = {}
    for tok, old in model["vocab"].items():
        vocab[renamed.get(old, tok)] = new_id(old)
    new_added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": True} for i, t in enumerate(SPECIAL_TOKENS)]
    for t in added:
        if t["id"] not in absorb:
            new_added.append({**t, "id": new_id(t["id"])})
    for i, t in enumerate(SPECIAL_TOKENS):
        vocab[t] = i
    hf = {**hf, "model": {**model, "vocab": dict(sorted(vocab.items(), key=lambda kv: kv[1]))},
          "added_tokens": sorted(new_added, key=lambda t: t["id"]),
          # livelm adds bos/turn markers itself (chat template); a post-processor would add them twice
          "post_processor": None, "truncation": None, "padding": None}
    return json.dumps(hf, ensure_ascii=False), mapping


def remap_vocab(sd: dict[str, torch.Tensor], mapping: torch.Tensor) -> dict[str, torch.Tensor]:
    """Move embedding / head rows to their new ids; rows of new specials get the mean embedding."""
    V = int(mapping.max()) + 1
    out = dict(sd)
    for name in ("wte.weight", "lm_head.weight"):
        if name in sd:
            old = sd[name]
            new = old.mean(0, keepdim=True).expand(V, -1).clone()
            new[mapping] = old
            out[name] = new
    return out
