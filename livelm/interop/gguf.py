"""GGUF export for llama.cpp and Ollama: a run as one model.gguf + an Ollama Modelfile (the gguf extra).

    out_dir/model.gguf   general.architecture = "llama" (llama preset) or "gpt2" (gpt2 preset),
                         its hyperparameters, the tokenizer (tokenizer.ggml.model = "gpt2":
                         byte-level BPE), special token ids and the chat template; tensors in
                         fp32 (or fp16)
    out_dir/Modelfile    FROM ./model.gguf, TEMPLATE with livelm's turn markers, stop at <|end|>

Tensor names (livelm -> GGUF):
    wte.weight, wpe.weight           token_embd.weight, position_embd.weight (gpt2)
    blocks.N.ln_1                    blk.N.attn_norm
    blocks.N.attn.{q,k,v}_proj       llama: blk.N.attn_{q,k,v}; gpt2: one fused blk.N.attn_qkv
    blocks.N.attn.o_proj             blk.N.attn_output
    blocks.N.ln_2                    blk.N.ffn_norm
    blocks.N.mlp.{gate,up,down}_proj blk.N.ffn_{gate,up,down}
    ln_f, lm_head                    output_norm, output (omitted when tied: llama.cpp reuses token_embd)
(.weight, and .bias where the gpt2 preset has biases.)

Rotary layout. livelm rotates dimension i of a head with dimension i + D/2 ("rotate half",
like Hugging Face's Llama). llama.cpp's llama architecture rotates neighbours (2i, 2i+1).
So, exactly as llama.cpp's convert_hf_to_gguf.py does for Hugging Face checkpoints, the
rows of each head in W_q and W_k are reordered: row i of the first half goes to 2i, row i
of the second half to 2i + 1. q·k is unchanged by the reordering (both sides move alike),
and V / the output projection do not see positions, so nothing else changes.

The gpt2 architecture needs no permutation: its positions are learned, not rotary.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from livelm import extras, io
from livelm.tokenizer import _bytes_to_unicode
from livelm.runs import load_model


class GGUFExportError(ValueError):
    pass


def rope_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(n_heads·D, C) rows in rotate-half order -> llama.cpp's interleaved pair order, per head."""
    out_features, C = w.shape
    D = out_features // n_heads
    return w.view(n_heads, 2, D // 2, C).transpose(1, 2).reshape(out_features, C)


ARCHS = {"llama": dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False),
         "gpt2": dict(position="learned", norm="layernorm", mlp="gelu", bias=True)}


def gguf_arch(cfg, config: dict) -> str:
    """"llama" or "gpt2": the llama.cpp architecture this run's config is, or a clear error."""
    if "quantization" in config:
        raise GGUFExportError("this run is quantized with livelm's own int8/int4 layout; export the original run "
                              "and quantize the GGUF with llama.cpp's llama-quantize")
    if cfg.features():   # Qwen/Mistral/Gemma switches: llama.cpp has other architectures for them
        raise GGUFExportError(f"GGUF export writes the llama and gpt2 architectures only; this run also has "
                              f"{', '.join(f'{k}={getattr(cfg, k)!r}' for k in cfg.features())} (an imported Mistral, "
                              f"Qwen or Gemma model?): export it with `livelm export` (Hugging Face) instead")
    for arch, fields in ARCHS.items():
        if all(getattr(cfg, k) == v for k, v in fields.items()):
            if arch == "gpt2" and cfg.n_head * cfg.head_dim != cfg.d_model:
                raise GGUFExportError("llama.cpp's gpt2 architecture needs n_head x head size = d_model; this run had "
                                      "heads pruned away. Prune MLP channels instead, or use the llama preset")
            return arch
    have = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in ARCHS["llama"])
    raise GGUFExportError(f"GGUF export supports the llama preset (rope, rmsnorm, swiglu, no biases) and the gpt2 "
                          f"preset (learned positions, layernorm, gelu, biases); this run mixes them ({have})")


def gguf_vocab(tokenizer_json: dict, special_ids: frozenset[int]) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, token types, merges) in the byte-level BPE form llama.cpp's "gpt2" tokenizer reads."""
    gguf = extras.need("gguf", "gguf", "GGUF export")
    model = tokenizer_json["model"]
    vocab = dict(model["vocab"])
    vocab.update({t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])})
    tokens = [""] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    if model["type"] == "BPE":
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    else:
        # the character tokenizer: write each character as its byte-level form, and give every
        # multi-byte character the merges that rebuild it from its bytes
        b2u = _bytes_to_unicode()
        merges = []
        for i, text in enumerate(tokens):
            if i in special_ids:
                continue
            parts = [b2u[b] for b in text.encode("utf-8")]
            tokens[i] = "".join(parts)
            for j in range(1, len(parts)):
                merges.append("".join(parts[:j]) + " " + parts[j])
        # llama.cpp refuses a file without merges; an ASCII-only vocabulary needs none, so it gets one
        # that never changes a result ("~~" is not in the vocabulary: llama.cpp falls back to "~", "~")
        merges = list(dict.fromkeys(merges)) or ["~ ~"]
    types = [int(gguf.TokenType.CONTROL if i in special_ids else gguf.TokenType.NORMAL) for i in range(len(tokens))]
    return tokens, types, merges


def modelfile(block_size: int, tokenizer) -> str:
    """Ollama's Modelfile. livelm's own format as a Go TEMPLATE (the turn markers are parsed as special
    tokens, so the prompt is the token sequence livelm's renderer produces); an imported model keeps
    its own chat template in the GGUF file, which Ollama reads, so only its stop tokens are named."""
    stops = "".join(f'PARAMETER stop "{tokenizer.decode([i])}"\n' for i in sorted(tokenizer.stop_ids))
    if not tokenizer.own:
        return f"FROM ./model.gguf\n{stops}PARAMETER num_ctx {block_size}\n"
    return ('FROM ./model.gguf\n'
            'TEMPLATE """<|bos|>{{ range .Messages }}<|{{ .Role }}|>{{ .Content }}<|end|>{{ end }}<|assistant|>"""\n'
            'PARAMETER stop "<|end|>"\n'
            'PARAMETER stop "<|eos|>"\n'
            f'PARAMETER num_ctx {block_size}\n')


def export_gguf(run_dir: str | Path, out_dir: str | Path, outtype: str = "f32") -> Path:
    """Write out_dir/model.gguf and out_dir/Modelfile for a llama- or gpt2-preset run; returns the .gguf path."""
    gguf = extras.need("gguf", "gguf", "GGUF export")   # the gguf extra; asked first, before loading the run
    if outtype not in ("f32", "f16"):
        raise GGUFExportError(f"outtype must be f32 or f16, got {outtype!r}")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model, tokenizer, config = load_model(run_dir)
    cfg = model.cfg
    arch = gguf_arch(cfg, config)
    if tokenizer.kind == "spm":
        raise GGUFExportError("GGUF export writes byte-level BPE tokenizers; this run's is SentencePiece-style "
                              "(Gemma, Llama 2, Mistral): export it to Hugging Face instead (livelm export RUN --out DIR)")
    tok_json = json.loads((run_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tokens, types, merges = gguf_vocab(tok_json, tokenizer.special_ids)
    if len(tokens) != cfg.vocab_size:
        raise GGUFExportError(f"tokenizer has {len(tokens)} tokens but the model's vocabulary is {cfg.vocab_size}")

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = io.temp_path(out_dir / "model.gguf")   # GGUFWriter opens it by name
    try:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name(run_dir.resolve().name)
        w.add_file_type(int(gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16))
        w.add_vocab_size(cfg.vocab_size)
        w.add_context_length(cfg.block_size)
        w.add_embedding_length(cfg.d_model)
        w.add_block_count(cfg.n_layer)
        w.add_feed_forward_length(cfg.mlp_hidden)
        w.add_head_count(cfg.n_head)
        w.add_head_count_kv(cfg.n_kv_head)
        if arch == "llama":
            w.add_key_length(cfg.head_dim)        # differs from d_model / n_head after head pruning
            w.add_value_length(cfg.head_dim)
            w.add_rope_dimension_count(cfg.head_dim)
            w.add_rope_freq_base(cfg.rope_theta)
            w.add_layer_norm_rms_eps(cfg.norm_eps)
        else:
            w.add_layer_norm_eps(cfg.norm_eps)

        w.add_tokenizer_model("gpt2")
        # livelm's own: GPT-2's split regex (livelm also isolates each CJK character); an imported model's:
        # the rule its GGUF file named, else llama.cpp's default
        w.add_tokenizer_pre("gpt-2" if tokenizer.own else tokenizer.config.get("gguf_pre", "default"))
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        for add_id, i in ((w.add_bos_token_id, tokenizer.bos_id), (w.add_eos_token_id, tokenizer.eos_id),
                          (w.add_eot_token_id, tokenizer.end_id),   # end of an assistant turn: chat stops here
                          (w.add_pad_token_id, tokenizer.pad_id), (w.add_unk_token_id, tokenizer.unk_id)):
            if i is not None:
                add_id(i)
        w.add_add_bos_token(bool(tokenizer.prefix_ids))   # livelm's models: never; the template adds <|bos|>
        if tokenizer.chat_template:
            w.add_chat_template(tokenizer.chat_template)

        def add(name: str, t: torch.Tensor) -> None:
            a = t.detach().float().cpu().numpy()
            if outtype == "f16" and a.ndim == 2:  # norms stay fp32, as llama.cpp expects
                a = a.astype(np.float16)
            w.add_tensor(name, np.ascontiguousarray(a))

        def add_module(name: str, module) -> None:   # weight, and bias when there is one
            add(name + ".weight", module.weight)
            if getattr(module, "bias", None) is not None:
                add(name + ".bias", module.bias)

        add("token_embd.weight", model.wte.weight)
        if arch == "gpt2":
            add("position_embd.weight", model.wpe.weight)
        for i, block in enumerate(model.blocks):
            attn, mlp, p = block.attn, block.mlp, f"blk.{i}."
            add_module(p + "attn_norm", block.ln_1)
            if arch == "llama":
                add(p + "attn_q.weight", rope_permute(attn.q_proj.weight, cfg.n_head))
                add(p + "attn_k.weight", rope_permute(attn.k_proj.weight, cfg.n_kv_head))
                add(p + "attn_v.weight", attn.v_proj.weight)
            else:                                 # one fused projection: rows q, then k, then v
                add(p + "attn_qkv.weight", torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
                add(p + "attn_qkv.bias", torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
            add_module(p + "attn_output", attn.o_proj)
            add_module(p + "ffn_norm", block.ln_2)
            if arch == "llama":
                add_module(p + "ffn_gate", mlp.gate_proj)
            add_module(p + "ffn_up", mlp.up_proj)
            add_module(p + "ffn_down", mlp.down_proj)
        add_module("output_norm", model.ln_f)
        if not cfg.tie_embeddings:                # tied: llama.cpp reuses token_embd as the head
            add("output.weight", model.lm_head.weight)

        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out_dir / "model.gguf")
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    io.write_text(out_dir / "Modelfile", modelfile(cfg.block_size, tokenizer))
    return out_dir / "model.gguf"
