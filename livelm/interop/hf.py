"""Hugging Face interop: a livelm run <-> a `transformers` model folder.

    livelm export RUN --out DIR [--adapter ADAPTER]    ->  GPT2LMHeadModel, LlamaForCausalLM, ... folder
    livelm import DIR --out RUN                        <-  such a folder, written by livelm or not

livelm's GPT (livelm/models/gpt.py) is one module with switches; these settings
of those switches are exactly a Hugging Face architecture:

    learned positions + LayerNorm + GELU-tanh MLP        = GPT2LMHeadModel
    RoPE ("rotate half") + RMSNorm + SwiGLU MLP (+ GQA)  = LlamaForCausalLM (rope_scaling: Llama 3.1+)
      + sliding_window on every layer                    = MistralForCausalLM
      + qkv_bias                                         = Qwen2ForCausalLM
      + qk_norm                                          = Qwen3ForCausalLM
    GeGLU + x·(1+w) norms + post_norms + √C embeddings
      (+ sliding/global layer_types, softcaps)           = Gemma2ForCausalLM
      + qk_norm (+ a RoPE base of the sliding layers)    = Gemma3ForCausalLM

Anything else (say RoPE with LayerNorm) has no HF class computing the same
function and is refused, naming the switch. Mapping the weights is renaming, except for GPT-2:
its Conv1D layers store weights as (in, out), the transpose of nn.Linear, and
its attention has one fused c_attn projection = [q; k; v] stacked on the
output axis. livelm applies RoPE in HF Llama's own "rotate half" layout
(first half of each head pairs with the second half), so q/k_proj need no
permutation.

Tokenizer: livelm's tokenizer.json *is* a `tokenizers` file, copied unchanged;
tokenizer_config.json adds the special tokens and the chat template (a Jinja
version of livelm/chat/template.py, so `apply_chat_template` gives the same ids
as livelm's renderer). One known difference: HF turns special-token *text*
inside a message ("<|end|>" typed by a user) into the special id; livelm keeps
it as plain text (livelm/tokenizer.py).

Importing such a folder: livelm/interop/hf_import.py.

Files are written atomically (livelm/io.py), config.json last, so an
interrupted export or import never leaves a folder that looks complete.
Weights are read from safetensors only: pickled checkpoints are refused.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
from safetensors.torch import save

from livelm import io
from livelm.models.gpt import GPT, GPTConfig
from livelm.tokenizer import SPECIAL_TOKENS, Tokenizer

# one sentence per architecture that has no faithful HF counterpart; printed as the refusal
UNSUPPORTED = {
    "bert": "livelm's BERT encoder is pre-norm (LayerNorm before each sub-layer, one final LayerNorm, none on the "
            "embeddings), while BertForMaskedLM/BertForSequenceClassification are post-norm (LayerNorm after each "
            "residual add and on the embeddings): no renaming of weights computes the same function",
    "seq2seq": "livelm's encoder-decoder is pre-norm with plain learned positions; BART and Marian are post-norm, "
               "mBART adds a LayerNorm on the embeddings and T5 uses relative position buckets, so none of them "
               "computes the same function",
    "lstm": "transformers has no LSTM language model class; the run's model.safetensors is already plain "
            "torch.nn.LSTM weights (livelm/models/lstm.py)",
}


class InteropError(ValueError):
    """A folder or run that cannot be converted; the message says why and what to do."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- which HF architecture a livelm GPT is -----------------------------------------------
# HF model_type -> (the architecture export writes, the switches (GPTConfig.features) it can hold)
FAMILIES = {
    "gpt2": ("GPT2LMHeadModel", ()),
    "llama": ("LlamaForCausalLM", ("rope_scaling",)),
    "mistral": ("MistralForCausalLM", ("rope_scaling", "sliding_window")),
    "qwen2": ("Qwen2ForCausalLM", ("rope_scaling", "qkv_bias", "sliding_window", "layer_types")),
    "qwen3": ("Qwen3ForCausalLM", ("rope_scaling", "qk_norm", "sliding_window", "layer_types")),
    "gemma2": ("Gemma2ForCausalLM", ("rope_scaling", "sliding_window", "layer_types", "norm_offset", "post_norms",
                                     "embed_scale", "attn_scalar", "attn_softcap", "final_softcap")),
    # transformers' Gemma 3 reads attn_logit_softcapping but never applies it: no attn_softcap here
    "gemma3_text": ("Gemma3ForCausalLM", ("rope_scaling", "rope_local_theta", "sliding_window", "layer_types",
                                          "qk_norm", "norm_offset", "post_norms", "embed_scale", "attn_scalar",
                                          "final_softcap")),
}
GEMMA = dict(position="rope", norm="rmsnorm", norm_offset=1.0, post_norms=True, embed_scale=True, bias=False,
             qkv_bias=False)


def family(cfg: GPTConfig) -> str:
    """The HF model_type (a FAMILIES key) a livelm GPT exports as, or InteropError naming the switch that
    has no HF equivalent."""
    fam = _layout(cfg)
    extra = [f for f in cfg.features() if f not in FAMILIES[fam][1]]
    if extra:
        raise InteropError(f"{FAMILIES[fam][0]} has no equivalent of "
                           f"{', '.join(f'{f}={getattr(cfg, f)!r}' for f in extra)}")
    if fam != "gpt2" and cfg.d_model % cfg.n_head:
        raise InteropError(f"transformers' {FAMILIES[fam][0]} requires hidden_size divisible by num_attention_heads "
                           f"even with an explicit head_dim, here d_model={cfg.d_model}, n_head={cfg.n_head}")
    return fam


def _layout(cfg: GPTConfig) -> str:
    """Which family the switches that decide the weights' layout pick (the others are checked by family())."""
    if cfg.mlp == "geglu":
        wrong = [f"{k}={getattr(cfg, k)!r}" for k, v in GEMMA.items() if getattr(cfg, k) != v]
        if wrong:
            raise InteropError(f"a GeGLU MLP exports as Gemma2/Gemma3ForCausalLM only, which have "
                               f"{', '.join(f'{k}={v!r}' for k, v in GEMMA.items())}; this run has {', '.join(wrong)}")
        return "gemma3_text" if cfg.qk_norm else "gemma2"
    if (cfg.position, cfg.norm, cfg.mlp) == ("rope", "rmsnorm", "swiglu") and (cfg.qk_norm or cfg.qkv_bias):
        if cfg.bias:
            raise InteropError("Qwen2/Qwen3 have no MLP or o_proj biases (bias=True); only LlamaForCausalLM does")
        if cfg.qk_norm and cfg.qkv_bias:
            raise InteropError("no HF architecture has both qk_norm and qkv_bias (Qwen3 has the norm, Qwen2 the "
                               "biases)")
        return "qwen3" if cfg.qk_norm else "qwen2"
    if (cfg.position, cfg.norm, cfg.mlp) == ("rope", "rmsnorm", "swiglu") and cfg.sliding_window:
        if cfg.bias:
            raise InteropError("MistralForCausalLM has no biases (bias=True); a sliding window exports as Mistral")
        return "mistral"
    if (cfg.position, cfg.norm, cfg.mlp) == ("learned", "layernorm", "gelu"):
        if cfg.n_kv_head != cfg.n_head:
            raise InteropError(f"GPT2LMHeadModel has no grouped-query attention (n_kv_head={cfg.n_kv_head}, "
                               f"n_head={cfg.n_head}); only the llama layout (rope, rmsnorm, swiglu) exports with GQA")
        if cfg.n_head * cfg.head_dim != cfg.d_model:
            raise InteropError(f"GPT2LMHeadModel needs n_head x head size = d_model, here {cfg.n_head} x "
                               f"{cfg.head_dim} != {cfg.d_model} (heads pruned?); only the llama layout has head_dim")
        return "gpt2"
    if (cfg.position, cfg.norm, cfg.mlp) == ("rope", "rmsnorm", "swiglu"):
        return "llama"
    raise InteropError(f"position={cfg.position}, norm={cfg.norm}, mlp={cfg.mlp} has no Hugging Face counterpart: "
                       f"export supports learned+layernorm+gelu (GPT2LMHeadModel), rope+rmsnorm+swiglu "
                       f"(LlamaForCausalLM, Mistral, Qwen2, Qwen3) and rope+rmsnorm+geglu (Gemma 2, Gemma 3)")


def expected_shapes(cfg: GPTConfig) -> dict[str, torch.Size]:
    """Tensor name -> shape of a livelm GPT with this config (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = GPT(cfg)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        shapes.pop("lm_head.weight")
    return shapes


def check_tensors(sd: dict[str, torch.Tensor], cfg: GPTConfig, where) -> None:
    want = expected_shapes(cfg)
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    bad = [k for k in want if k in sd and sd[k].shape != want[k]]
    if missing or unexpected or bad:
        raise InteropError(f"{where} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}, "
                           f"wrong shape {[(k, tuple(sd[k].shape), tuple(want[k])) for k in bad[:3]]}")


# ---- weights: livelm names <-> HF names ----------------------------------------------------
def _bias(sd, name: str, n: int, like: torch.Tensor) -> torch.Tensor:
    """livelm with bias=False has no bias tensors; HF GPT-2 always has them: zeros are the same function."""
    return sd[name] if name in sd else torch.zeros(n, dtype=like.dtype)


def to_gpt2(sd: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """livelm gpt2-layout tensors -> GPT2LMHeadModel tensors.

    Conv1D weights are (in, out): nn.Linear's (out, in) transposed. c_attn is
    [q; k; v] along the output axis: (C, 3C), bias (3C,).
    """
    C, out = cfg.d_model, {}
    out["transformer.wte.weight"] = sd["wte.weight"]
    out["transformer.wpe.weight"] = sd["wpe.weight"]
    for i in range(cfg.n_layer):
        p, h = f"blocks.{i}.", f"transformer.h.{i}."
        w = sd[p + "ln_1.weight"]
        for ln in ("ln_1", "ln_2"):
            out[h + f"{ln}.weight"] = sd[p + f"{ln}.weight"]
            out[h + f"{ln}.bias"] = _bias(sd, p + f"{ln}.bias", C, w)
        qkv = [sd[p + f"attn.{x}_proj.weight"] for x in "qkv"]                       # 3 x (C, C)
        out[h + "attn.c_attn.weight"] = torch.cat(qkv, 0).t().contiguous()          # (C, 3C)
        out[h + "attn.c_attn.bias"] = torch.cat([_bias(sd, p + f"attn.{x}_proj.bias", C, w) for x in "qkv"])
        out[h + "attn.c_proj.weight"] = sd[p + "attn.o_proj.weight"].t().contiguous()
        out[h + "attn.c_proj.bias"] = _bias(sd, p + "attn.o_proj.bias", C, w)
        up, down = sd[p + "mlp.up_proj.weight"], sd[p + "mlp.down_proj.weight"]   # (F, C), (C, F)
        out[h + "mlp.c_fc.weight"] = up.t().contiguous()                             # (C, F)
        out[h + "mlp.c_fc.bias"] = _bias(sd, p + "mlp.up_proj.bias", up.shape[0], w)
        out[h + "mlp.c_proj.weight"] = down.t().contiguous()                         # (F, C)
        out[h + "mlp.c_proj.bias"] = _bias(sd, p + "mlp.down_proj.bias", C, w)
    out["transformer.ln_f.weight"] = sd["ln_f.weight"]
    out["transformer.ln_f.bias"] = _bias(sd, "ln_f.bias", C, sd["ln_f.weight"])
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def from_gpt2(hf: dict[str, torch.Tensor], n_layer: int, bias: bool) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel tensors (prefix 'transformer.' already stripped) -> livelm names; inverse of to_gpt2."""
    sd = {"wte.weight": hf["wte.weight"], "wpe.weight": hf["wpe.weight"], "ln_f.weight": hf["ln_f.weight"]}
    if bias:
        sd["ln_f.bias"] = hf["ln_f.bias"]
    if "lm_head.weight" in hf:
        sd["lm_head.weight"] = hf["lm_head.weight"]
    for i in range(n_layer):
        p, h = f"blocks.{i}.", f"h.{i}."
        for ln in ("ln_1", "ln_2"):
            sd[p + f"{ln}.weight"] = hf[h + f"{ln}.weight"]
        q, k, v = hf[h + "attn.c_attn.weight"].t().chunk(3, dim=0)
        for x, w in zip("qkv", (q, k, v)):
            sd[p + f"attn.{x}_proj.weight"] = w.contiguous()
        sd[p + "attn.o_proj.weight"] = hf[h + "attn.c_proj.weight"].t().contiguous()
        sd[p + "mlp.up_proj.weight"] = hf[h + "mlp.c_fc.weight"].t().contiguous()
        sd[p + "mlp.down_proj.weight"] = hf[h + "mlp.c_proj.weight"].t().contiguous()
        if bias:
            for ln in ("ln_1", "ln_2"):
                sd[p + f"{ln}.bias"] = hf[h + f"{ln}.bias"]
            for x, b in zip("qkv", hf[h + "attn.c_attn.bias"].chunk(3)):
                sd[p + f"attn.{x}_proj.bias"] = b.contiguous()
            sd[p + "attn.o_proj.bias"] = hf[h + "attn.c_proj.bias"]
            sd[p + "mlp.up_proj.bias"] = hf[h + "mlp.c_fc.bias"]
            sd[p + "mlp.down_proj.bias"] = hf[h + "mlp.c_proj.bias"]
    return sd


# Llama and the families after it are a pure renaming. livelm suffix -> HF suffix, inside block i / layer i:
_LLAMA_BLOCK = {"ln_1.weight": "input_layernorm.weight", "ln_2.weight": "post_attention_layernorm.weight",
                **{f"attn.{x}_proj.{t}": f"self_attn.{x}_proj.{t}" for x in "qkvo" for t in ("weight", "bias")},
                **{f"attn.{x}_norm.weight": f"self_attn.{x}_norm.weight" for x in "qk"},      # qk_norm (Qwen3)
                **{f"mlp.{x}_proj.{t}": f"mlp.{x}_proj.{t}" for x in ("gate", "up", "down") for t in ("weight", "bias")}}
# Gemma has four norms a layer, and its post_attention_layernorm is the norm *after* attention, where Llama's
# is the one before the MLP
_GEMMA_BLOCK = {**_LLAMA_BLOCK, "ln_2.weight": "pre_feedforward_layernorm.weight",
                "post_attn_norm.weight": "post_attention_layernorm.weight",
                "post_mlp_norm.weight": "post_feedforward_layernorm.weight"}
_LLAMA_TOP = {"wte.weight": "model.embed_tokens.weight", "ln_f.weight": "model.norm.weight",
              "lm_head.weight": "lm_head.weight"}


def _block_names(fam: str) -> dict[str, str]:
    return _GEMMA_BLOCK if fam.startswith("gemma") else _LLAMA_BLOCK


def to_llama(sd: dict[str, torch.Tensor], cfg: GPTConfig, fam: str = "llama") -> dict[str, torch.Tensor]:
    """livelm tensors -> the HF names of a Llama-layout family (all but gpt2)."""
    block, out = _block_names(fam), {}
    for name, t in sd.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
        out[f"model.layers.{m[1]}.{block[m[2]]}" if m else _LLAMA_TOP[name]] = t
    return out


def from_llama(hf: dict[str, torch.Tensor], fam: str = "llama") -> dict[str, torch.Tensor]:
    """HF tensors of a Llama-layout family -> livelm names; unknown names raise InteropError."""
    block = {v: k for k, v in _block_names(fam).items()}
    top = {v: k for k, v in _LLAMA_TOP.items()}
    sd = {}
    for name, t in hf.items():
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
        new = f"blocks.{m[1]}.{block.get(m[2], '?')}" if m else top.get(name)
        if new is None or new.endswith("?"):
            raise InteropError(f"unexpected tensor {name!r} in a {fam} checkpoint")
        sd[new] = t
    return sd


# ---- export ---------------------------------------------------------------------------------
def hf_config(cfg: GPTConfig, fam: str, dtype: torch.dtype, tok: Tokenizer) -> dict:
    common = {"vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
              "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id,
              "dtype": str(dtype).removeprefix("torch."), "use_cache": True,
              # livelm's own config, so an import restores switches HF cannot show (bias=False, mlp_ratio)
              "livelm_model": cfg.to_dict()}
    if fam == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", **common,
                "n_positions": cfg.block_size, "n_embd": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                "n_inner": cfg.mlp_hidden, "activation_function": "gelu_new", "layer_norm_epsilon": cfg.norm_eps,
                "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "initializer_range": 0.02}
    base = {"architectures": [FAMILIES[fam][0]], "model_type": fam, **common,
            "hidden_size": cfg.d_model, "intermediate_size": cfg.mlp_hidden, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
            "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
            "attention_dropout": cfg.dropout, "initializer_range": 0.02,
            # rope_theta (and rope_scaling) for transformers 4.x readers, rope_parameters for 5.x
            "rope_theta": cfg.rope_theta, **({"rope_scaling": dict(cfg.rope_scaling)} if cfg.rope_scaling else {})}
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta, **(cfg.rope_scaling or {})}
    types = cfg.layer_types or ["sliding_attention" if cfg.sliding_window else "full_attention"] * cfg.n_layer
    window = cfg.sliding_window or None
    if fam == "llama":
        return {**base, "hidden_act": "silu", "rope_parameters": rope, "attention_bias": cfg.bias, "mlp_bias": cfg.bias}
    if fam == "mistral":
        return {**base, "hidden_act": "silu", "rope_parameters": rope, "sliding_window": window}
    if fam in ("qwen2", "qwen3"):
        # transformers 4.x derives the layer types: layers from max_window_layers on slide
        first_sliding = next((i for i, t in enumerate(types) if t == "sliding_attention"), cfg.n_layer)
        return {**base, "hidden_act": "silu", "rope_parameters": rope, "use_sliding_window": bool(window),
                "sliding_window": window, "max_window_layers": first_sliding, "layer_types": types,
                **({"attention_bias": False} if fam == "qwen3" else {})}
    scalar = cfg.attn_scalar or cfg.head_dim
    gemma = {**base, "hidden_activation": "gelu_pytorch_tanh",
             "query_pre_attn_scalar": int(scalar) if float(scalar).is_integer() else scalar,   # an int field in HF
             # HF builds the sliding mask even when no layer slides, so it needs some window
             "sliding_window": window or cfg.block_size, "layer_types": types,
             "final_logit_softcapping": cfg.final_softcap or None, "attn_logit_softcapping": cfg.attn_softcap or None,
             "attention_bias": False, "use_bidirectional_attention": False}
    if fam == "gemma2":
        return {**gemma, "rope_parameters": rope}
    local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta} if cfg.rope_local_theta else rope
    return {**gemma, "rope_parameters": {"full_attention": rope, "sliding_attention": local},
            "rope_local_base_freq": cfg.rope_local_theta or cfg.rope_theta}


def tokenizer_files(tok: Tokenizer, block_size: int) -> dict[str, dict]:
    """tokenizer_config.json, special_tokens_map.json and generation_config.json for a run's tokenizer."""
    from livelm.chat.template import JINJA_TEMPLATE
    if not tok.own:   # an imported model's own tokenizer: give back what it came with
        gen = {"eos_token_id": sorted(tok.stop_ids), "pad_token_id": tok.pad_id}
        if tok.bos_id is not None:
            gen["bos_token_id"] = tok.bos_id
        tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size,
                   "clean_up_tokenization_spaces": False, **tok.config}
        if tok.chat_template:
            tok_cfg["chat_template"] = tok.chat_template
        return {"tokenizer_config.json": tok_cfg, "generation_config.json": gen}
    named = {"bos_token": tok.bos_id, "eos_token": tok.eos_id, "pad_token": tok.pad_id, "unk_token": tok.unk_id,
             "mask_token": tok.mask_id, "sep_token": tok.sep_id, "cls_token": tok.cls_id}
    specials = {k: SPECIAL_TOKENS[i] for k, i in named.items()}
    extra = [SPECIAL_TOKENS[i] for i in (tok.system_id, tok.user_id, tok.assistant_id, tok.end_id)]
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", **specials,
               "additional_special_tokens": extra, "model_max_length": block_size,
               "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
               "chat_template": JINJA_TEMPLATE}
    # generation stops at end of text and at end of turn, like livelm's engine
    gen = {"bos_token_id": tok.bos_id, "eos_token_id": [tok.eos_id, tok.end_id], "pad_token_id": tok.pad_id}
    return {"tokenizer_config.json": tok_cfg, "special_tokens_map.json": {**specials, "additional_special_tokens": extra},
            "generation_config.json": gen}


def _out_dir(out: Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InteropError(f"{out} already exists and is not an empty folder; choose a new --out")
    return out


def export_hf(run_dir, out_dir, adapter_dir=None) -> dict:
    """Write `run_dir` (a livelm GPT run, or a LoRA adapter directory) as a HF model folder.

    Returns a summary dict (what the CLI prints). With `adapter_dir` (or when
    run_dir is an adapter), the adapter goes to out_dir/adapter in PEFT's layout
    for the HF module names.
    """
    from livelm.models.lora import read_adapter_config
    from livelm.runs import load_weights, read_config
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InteropError(f"run directory not found: {run_dir}")
    if (run_dir / "adapter_config.json").is_file() and not (run_dir / "model.safetensors").is_file():
        if adapter_dir is not None:
            raise InteropError(f"{run_dir} is an adapter, and --adapter was given too; "
                               f"run `livelm export BASE_RUN --adapter ADAPTER`")
        from livelm.runs import adapter_base as resolve_base
        run_dir, adapter_dir = resolve_base(run_dir), run_dir
    config = read_config(run_dir)
    arch = config.get("arch", "gpt")
    if arch in UNSUPPORTED:
        raise InteropError(f"{run_dir} is a {arch!r} run, which does not export to Hugging Face: {UNSUPPORTED[arch]}")
    if arch != "gpt":
        raise InteropError(f"{run_dir} holds an unknown architecture {arch!r}")
    try:
        cfg = GPTConfig.from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise InteropError(f"{run_dir}/config.json has an invalid model section: {e}") from None
    fam = family(cfg)
    sd, _ = load_weights(run_dir / "model.safetensors")
    check_tensors(sd, cfg, run_dir / "model.safetensors")
    tok = Tokenizer.load(run_dir / "tokenizer.json")
    if tok.vocab_size > cfg.vocab_size:
        raise InteropError(f"{run_dir}: the tokenizer has {tok.vocab_size} tokens but the model only {cfg.vocab_size}")
    out = _out_dir(out_dir)

    adapter = None
    if adapter_dir is not None:  # convert first: a bad adapter fails before anything is written
        adapter = adapter_to_hf(adapter_dir, cfg, fam, out)
        base = read_adapter_config(adapter_dir)[1].get("base_model_name_or_path")
        if base and Path(base).resolve() != run_dir.resolve():
            log(f"note: {adapter_dir} was trained on {base}, not {run_dir}; its shapes fit, so it is exported anyway")
    hf = to_gpt2(sd, cfg) if fam == "gpt2" else to_llama(sd, cfg, fam)
    dtype = sd["wte.weight"].dtype
    io.write_bytes(out / "model.safetensors", save(hf, metadata={"format": "pt"}))
    io.write_bytes(out / "tokenizer.json", (run_dir / "tokenizer.json").read_bytes())  # unchanged
    for name, obj in tokenizer_files(tok, cfg.block_size).items():
        io.write_json(out / name, obj)
    if adapter is not None:
        io.write_bytes(out / "adapter" / "adapter_model.safetensors", save(adapter[1], metadata={"format": "pt"}))
        io.write_json(out / "adapter" / "adapter_config.json", adapter[0])
    arch_name = FAMILIES[fam][0]
    io.write_json(out / "config.json", hf_config(cfg, fam, dtype, tok))  # last: the folder is complete
    log(f"exported {run_dir} as {arch_name} ({sum(t.numel() for t in hf.values()) / 1e6:.2f}M parameters) to {out}")
    return {"format": "hf", "out": str(out), "architecture": arch_name, "run": str(run_dir),
            "adapter": str(out / "adapter") if adapter is not None else None,
            "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())}


# ---- adapters -------------------------------------------------------------------------------
def adapter_to_hf(adapter_dir, cfg: GPTConfig, fam: str, out: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """A livelm LoRA adapter -> (PEFT adapter_config, tensors) for the exported HF module names.

    Llama-layout families: a renaming. GPT-2: q/k/v live in one fused c_attn, y = x·W_attn + b
    with W_attn = [Wq; Wk; Wv]; the three updates B_q A_q x, B_k A_k x, B_v A_v x
    stacked on the output axis are exactly one LoRA of rank n·r (n = how many of
    q/k/v were adapted):
        A = [A_q; A_k; A_v]                     (n·r, C)
        B = blockdiag(B_q, B_k, B_v)            (3C, n·r), zero rows for a part not adapted
    PEFT's scaling is alpha/r per module, so c_attn gets rank n·r and alpha n·alpha
    (rank_pattern / alpha_pattern) to keep alpha/r unchanged.
    """
    from livelm.models.lora import PREFIX, read_adapter_config
    from livelm.runs import load_weights
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise InteropError(f"adapter directory not found: {adapter_dir}")
    lcfg, raw = read_adapter_config(adapter_dir)
    tensors, _ = load_weights(adapter_dir / "adapter_model.safetensors")
    r, C = lcfg.r, cfg.d_model
    parts: dict[str, dict[str, torch.Tensor]] = {}          # livelm module -> {"A": (r, in), "B": (out, r)}
    for key, t in tensors.items():
        m = re.fullmatch(re.escape(PREFIX) + r"(.+)\.lora_([AB])\.weight", key)
        if not m:
            raise InteropError(f"{adapter_dir}: unexpected tensor {key!r} (not a LoRA A/B weight)")
        parts.setdefault(m[1], {})[m[2]] = t
    shapes = expected_shapes(cfg)
    for mod, ab in parts.items():
        w = shapes.get(mod + ".weight") if mod != "lm_head" else torch.Size((cfg.vocab_size, C))
        if w is None or len(w) != 2 or set(ab) != {"A", "B"}:
            raise InteropError(f"{adapter_dir}: adapter tensors for {mod!r} do not fit this model")
        if ab["A"].shape != (r, w[1]) or ab["B"].shape != (w[0], r):
            raise InteropError(f"{adapter_dir}: {mod} has shapes {tuple(ab['A'].shape)}/{tuple(ab['B'].shape)}, "
                               f"expected {(r, w[1])}/{(w[0], r)} — an adapter for a different base model?")

    peft = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(out.resolve()),
            "r": r, "lora_alpha": lcfg.lora_alpha, "lora_dropout": lcfg.lora_dropout, "bias": "none",
            "fan_in_fan_out": fam == "gpt2", "inference_mode": True, "modules_to_save": None,
            "init_lora_weights": True, "use_rslora": False, "use_dora": False,
            "rank_pattern": {}, "alpha_pattern": {}}
    out_t, targets = {}, set()

    def put(hf_mod: str, A: torch.Tensor, B: torch.Tensor) -> None:
        out_t[f"{PREFIX}{hf_mod}.lora_A.weight"] = A.contiguous()
        out_t[f"{PREFIX}{hf_mod}.lora_B.weight"] = B.contiguous()

    if fam != "gpt2":     # the Llama layout: a renaming
        for mod, ab in parts.items():
            m = re.fullmatch(r"blocks\.(\d+)\.(attn|mlp)\.(\w+)", mod)
            hf_mod = f"model.layers.{m[1]}.{'self_attn' if m[2] == 'attn' else 'mlp'}.{m[3]}" if m else mod
            put(hf_mod, ab["A"], ab["B"])
            targets.add(hf_mod.rsplit(".", 1)[-1])
    else:
        rename = {"attn.o_proj": "attn.c_proj", "mlp.up_proj": "mlp.c_fc", "mlp.down_proj": "mlp.c_proj"}
        n_fused = set()
        for i in range(cfg.n_layer):
            p = f"blocks.{i}."
            qkv = [(j, parts.pop(p + f"attn.{x}_proj")) for j, x in enumerate("qkv") if p + f"attn.{x}_proj" in parts]
            if qkv:
                A = torch.cat([ab["A"] for _, ab in qkv], 0)                        # (n r, C)
                B = torch.zeros(3 * C, len(qkv) * r, dtype=qkv[0][1]["B"].dtype)     # (3C, n r)
                for col, (j, ab) in enumerate(qkv):
                    B[j * C:(j + 1) * C, col * r:(col + 1) * r] = ab["B"]
                put(f"transformer.h.{i}.attn.c_attn", A, B)
                targets.add("attn.c_attn")
                n_fused.add(len(qkv))
            for lv, hv in rename.items():
                if p + lv in parts:
                    ab = parts.pop(p + lv)
                    put(f"transformer.h.{i}.{hv}", ab["A"], ab["B"])
                    targets.add(hv)
        if "lm_head" in parts:
            ab = parts.pop("lm_head")
            put("lm_head", ab["A"], ab["B"])
            targets.add("lm_head")
        if parts:
            raise InteropError(f"{adapter_dir}: no GPT-2 module for adapted layer(s) {sorted(parts)[:3]}")
        if len(n_fused) > 1:
            raise InteropError(f"{adapter_dir}: layers adapt different subsets of q/k/v, which PEFT cannot "
                               f"express as one c_attn rank")
        if n_fused and n_fused != {1}:
            n = n_fused.pop()
            peft["rank_pattern"] = {"c_attn": n * r}
            peft["alpha_pattern"] = {"c_attn": n * lcfg.lora_alpha}
    peft["target_modules"] = sorted(targets)
    return peft, out_t
