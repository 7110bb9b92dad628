"""GGUF import: a llama.cpp / Ollama .gguf file read into a Hugging Face-style checkpoint in memory.

    ckpt = read_gguf("model.gguf")          # Checkpoint(config, tensors, tokenizer_json, tokenizer_config,
                                            #            generation_config), what an HF folder holds

Architectures (general.architecture): llama (Llama, Mistral, SmolLM), qwen2, qwen3, gemma3, gpt2.
Tensors are dequantized with the gguf package (every type it knows: F32/F16/BF16, Q4_0..Q8_0, the
K-quants...) and renamed to Hugging Face's names. What llama.cpp's convert_hf_to_gguf.py changes on
the way in is undone, so the tensors equal the HF checkpoint's (up to quantization):

  * llama: llama.cpp rotates neighbouring pairs (2i, 2i+1) of a head, HF "rotate half" pairs i with
    i + D/2, so the converter reorders the rows of attn_q (per head, n_head) and attn_k (n_head_kv):
    HF row i of the first half -> 2i, of the second half -> 2i + 1 (rope_permute in gguf.py, the
    export). Undone below. qwen2, qwen3 and gemma3 run llama.cpp's NEOX rope (rotate half): stored
    as HF has them.
  * gemma3: HF's Gemma3RMSNorm computes x * (1 + w); the converter stores w + 1 for every tensor
    whose name ends in "norm.weight" (q/k norms too). Undone: w = stored - 1.
  * gpt2: HF's GPT-2 uses Conv1D, weights (in, out); the converter stores them transposed as (out, in).
  * llama 3 rope scaling is not metadata but a tensor, rope_freqs (D/2 divisors of each frequency);
    its factor / low / high frequency factors are recovered from it.

Shapes: GGUF lists dims fastest-first (ggml's ne), so a (rows, cols) matrix says [cols, rows]; the
reader's numpy arrays are already (rows, cols) (quantized: (rows, bytes per row)), and dequantize
turns the last dim into elements; the result is checked against the reversed ne.
Speed: gguf's GGUFReader parses every metadata array element by element: a 262K-token vocabulary
(Gemma 3) takes ~10 s to open on a small CPU, before any tensor is read.

The tokenizer is rebuilt from tokenizer.ggml.* as a `tokenizers` JSON whose ids are the file's:
"gpt2" -> byte-level BPE with the split regex named by tokenizer.ggml.pre; "llama" -> SentencePiece
-style BPE with byte fallback ("▁" for spaces), merges from the file or, like transformers' GGUF
loader, derived from the vocabulary ordered by score (Gemma: by position). Control tokens become
special added tokens, user-defined ones plain added tokens (llama.cpp matches both whole).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from livelm import extras
from livelm.tokenizer import _bytes_to_unicode

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "gemma3", "gpt2")
CONTROL, USER_DEFINED = 3, 4            # tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
# texts llama.cpp treats as end of generation when the file does not name them (llama-vocab.cpp)
EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>",
             "<|end_of_text|>", "<end_of_utterance>", "<|return|>", "<|call|>")


class GGUFImportError(ValueError):
    """A .gguf that cannot be imported; the message says why and what to do."""


@dataclass
class Checkpoint:
    """What a Hugging Face model folder holds, in memory."""
    config: dict                        # config.json
    tensors: dict[str, torch.Tensor]    # model.safetensors, HF names
    tokenizer_json: str                 # tokenizer.json (a `tokenizers` JSON)
    tokenizer_config: dict              # tokenizer_config.json
    generation_config: dict             # generation_config.json


# ---- split regexes for byte-level BPE, by tokenizer.ggml.pre (llama.cpp's llama-vocab.cpp) ---------
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")          # single digits
PRE_TOKENIZERS = {
    # GPT-2's own regex (ByteLevel's built-in); llama.cpp's files say "gpt-2", older ones "default"
    **dict.fromkeys(("default", "gpt-2", "gpt2", "mpt", "olmo", "jais"), "gpt2"),
    # each digit alone, then GPT-2's regex (SmolLM's tokenizer.json: Digits + ByteLevel)
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell"), "digits"),
    **dict.fromkeys(("llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral", "smaug-bpe", "dbrx"), _LLAMA3),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), _QWEN2),
}
_IGNORE_MERGES = ("llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral")   # llama.cpp: whole words first


# ---- reading ---------------------------------------------------------------------------------
def _value(field):
    """A metadata value: str, int, float, bool or a list of them (gguf's parts/data, stable across versions)."""
    import gguf
    kind = field.types[-1]

    def one(i):
        part = field.parts[i]
        return bytes(part).decode("utf-8", "replace") if kind == gguf.GGUFValueType.STRING else part[0].item()
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        return [one(i) for i in field.data]
    return one(field.data[0])


# Sizes of GGUF's scalar value types (the spec's type ids); 8 = string (a u64 length + bytes), 9 = array.
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _check_header(path: Path) -> None:
    """Walk the metadata before gguf's reader does, checking every declared count against the bytes left.

    gguf.GGUFReader trusts the counts: a 2^40-element array (or 2^63 keys) in a 1 MB file makes it loop
    for hours and grow without bound. Each item needs at least one byte, so no count may exceed the
    bytes that remain; the walk costs one pass over the metadata (a 262k-token vocabulary: ~0.2 s)."""
    import mmap
    with open(path, "rb") as fh:
        data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)   # only the pages the walk touches are read
    try:
        _walk_header(path, data)
    finally:
        data.close()


def _walk_header(path: Path, data) -> None:
    import struct
    size, at = len(data), 24

    def bad(what: str):
        return GGUFImportError(f"{path} is truncated or corrupt: {what}; download or copy it again")

    def u(fmt: str, n: int) -> int:
        nonlocal at
        if at + n > size:
            raise bad("its header ends early")
        (v,) = struct.unpack_from(fmt, data, at)
        at += n
        return v

    def skip(n: int) -> None:
        nonlocal at
        if n < 0 or at + n > size:
            raise bad("a value runs past the end of the file")
        at += n

    def value(kind: int, depth: int = 0) -> None:
        if kind in _SCALAR:
            skip(_SCALAR[kind])
        elif kind == 8:
            skip(u("<Q", 8))
        elif kind == 9 and depth == 0:
            inner, count = u("<I", 4), u("<Q", 8)
            if count > size - at:
                raise bad(f"an array declares {count:,} items in {size - at:,} bytes")
            if inner in _SCALAR:
                skip(count * _SCALAR[inner])
            else:
                for _ in range(count):
                    value(inner, depth + 1)
        else:
            raise bad(f"a value has the unknown type {kind}")

    if size < 24:
        raise bad("its header ends early")
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    if n_kv > size or n_tensors > size:
        raise bad(f"it declares {n_kv:,} metadata keys and {n_tensors:,} tensors in a {size:,}-byte header")
    for _ in range(n_kv):
        skip(u("<Q", 8))                 # the key
        value(u("<I", 4))


def _open(path: Path):
    gguf = extras.need("gguf", "gguf", "GGUF import")
    if not path.is_file():
        raise GGUFImportError(f"{path} is a folder, not a .gguf file" if path.exists() else
                              f"GGUF file not found: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        hint = " (it looks like text)" if magic and all(32 <= b < 127 or b in (9, 10, 13) for b in magic) else ""
        raise GGUFImportError(f"{path} is not a GGUF file: it starts with {magic!r}{hint}, not b'GGUF'. A GGUF "
                              f"comes from llama.cpp's convert_hf_to_gguf.py or an Ollama model blob")
    _check_header(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:   # the reader raises ValueError, IndexError, struct and numpy errors on bad bytes
        raise GGUFImportError(f"{path} is truncated or corrupt: its header cannot be read ({type(e).__name__}: "
                              f"{e}); download or copy it again") from None
    # A tensor's offset is a u64 the reader adds to the data section's start in numpy uint64, so a hostile
    # offset near 2^64 wraps around and points back into the header: check each tensor lies in the data section.
    start = int(getattr(reader, "data_offset", 0))
    for t in reader.tensors:
        if int(t.data_offset) < start:
            raise GGUFImportError(f"{path} is corrupt: tensor {t.name} has an offset outside the file's tensor "
                                  f"data; download or copy it again")
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > path.stat().st_size:
        raise GGUFImportError(f"{path} is truncated: its tensors need {end} bytes but the file has "
                              f"{path.stat().st_size}; download or copy it again")
    return reader


def _dequantize(t, dtype: torch.dtype) -> torch.Tensor:
    """One tensor as a torch tensor in HF shape order (ggml ne reversed)."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize
    shape = tuple(int(d) for d in reversed(list(t.shape)))
    if t.tensor_type in (Q.I8, Q.I16, Q.I32, Q.I64):
        raise GGUFImportError(f"tensor {t.name} has integer type {t.tensor_type.name}, not a weight type")
    try:
        a = np.asarray(t.data, np.float32) if t.tensor_type == Q.F64 else dequantize(t.data, t.tensor_type)
    except NotImplementedError:
        raise GGUFImportError(f"tensor {t.name} has type {t.tensor_type.name}, which the installed gguf package "
                              f"cannot dequantize; upgrade gguf, or requantize the model (e.g. Q4_K_M, Q8_0)") from None
    if a.size != math.prod(shape):
        raise GGUFImportError(f"tensor {t.name}: dequantized {a.size} values, its shape {list(shape)} needs "
                              f"{math.prod(shape)}; the file is corrupt")
    a = a.reshape(shape)
    if not a.flags.writeable:           # F32 comes back as a view of the read-only file mapping
        a = a.copy()
    return torch.from_numpy(a).to(dtype)


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's interleaved rows (2i, 2i+1) per head -> HF rotate-half order; (n_head*D, C) or (n_head*D,)."""
    rows = w.shape[0]
    if rows % n_head or (rows // n_head) % 2:
        raise GGUFImportError(f"an attention projection has {rows} rows, not a multiple of 2 x {n_head} heads")
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


# ---- names -----------------------------------------------------------------------------------
_BLOCK = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
          "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
          "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
          "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
# Gemma 3 has four norms per block: before/after attention, before/after the MLP
_GEMMA3_BLOCK = {**_BLOCK, "post_attention_norm": "post_attention_layernorm",
                 "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}
_GPT2_BLOCK = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj", "ffn_norm": "ln_2",
               "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_GPT2_TOP = {"token_embd": "transformer.wte", "position_embd": "transformer.wpe", "output_norm": "transformer.ln_f",
             "output": "lm_head"}


def _hf_name(arch: str, name: str) -> str:
    base, _, suffix = name.rpartition(".")             # suffix: weight / bias
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if arch == "gpt2":
        new = f"transformer.h.{m[1]}.{_GPT2_BLOCK.get(m[2])}" if m else _GPT2_TOP.get(base)
    else:
        block = _GEMMA3_BLOCK if arch == "gemma3" else _BLOCK
        new = f"model.layers.{m[1]}.{block.get(m[2])}" if m else _TOP.get(base)
    if new is None or new.endswith(".None") or suffix not in ("weight", "bias"):
        raise GGUFImportError(f"unexpected tensor {name!r} in a {arch} GGUF; livelm maps the standard llama.cpp "
                              f"names of {', '.join(SUPPORTED_ARCHS)} models only")
    return f"{new}.{suffix}"


# ---- config ----------------------------------------------------------------------------------
def _int(v, what: str) -> int:
    if isinstance(v, list):              # per-layer arrays (some files): fine while all layers agree
        if len(set(v)) != 1:
            raise GGUFImportError(f"{what} differs between layers ({sorted(set(v))}); not supported")
        v = v[0]
    return int(v)


def _llama3_rope(factors: np.ndarray, theta: float, dim: int, orig: int | None) -> dict | None:
    """rope_scaling {"rope_type": "llama3", ...} from llama.cpp's rope_freqs tensor (dim/2 divisors).

    The converter stores 1 for short wavelengths (< orig/high), `factor` for long ones (> orig/low)
    and 1 / ((1 - s)/factor + s) between, s = (orig/wavelength - low) / (high - low). Only the ratios
    orig:low:high matter, so orig is taken from metadata or, as in every Llama 3.x, 8192."""
    factor, orig = float(factors.max()), int(orig or 8192)
    if factor < 1 + 1e-4:                               # all ones: no scaling
        return None
    wavelen = 2 * math.pi * theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    mid = (np.abs(factors - 1) > 1e-4) & (np.abs(factors - factor) > 1e-4 * factor)
    low, high = 1.0, 4.0                                # Llama 3.1 / 3.2's, used when too few points fit
    if mid.sum() >= 2:
        s = (1 / factors[mid] - 1 / factor) / (1 - 1 / factor)
        b, a = np.polyfit(s, orig / wavelen[mid], 1)    # orig/wavelength = low + s * (high - low)
        low, high = round(float(a), 3), round(float(a + b), 3)
    out = {"rope_type": "llama3", "factor": round(factor, 4), "low_freq_factor": low, "high_freq_factor": high,
           "original_max_position_embeddings": orig}
    s = np.clip((orig / wavelen - low) / (high - low), 0, 1)
    if not np.allclose(1 / ((1 - s) / factor + s), factors, rtol=1e-3):
        raise GGUFImportError("rope_freqs.weight does not follow Llama 3's rope scaling formula; this kind of rope "
                              "scaling is not supported")
    return out


def _config(arch: str, md: dict, shapes: dict[str, tuple], rope_freqs) -> dict:
    def g(key, default=None):
        return md.get(f"{arch}.{key}", default)
    try:
        n_layer, hidden = int(g("block_count")), int(g("embedding_length"))
        n_head = _int(g("attention.head_count"), "attention.head_count")
    except TypeError:
        raise GGUFImportError(f"the file lacks {arch}.block_count / embedding_length / attention.head_count "
                              f"metadata; it is corrupt or not a model") from None
    vocab = shapes["token_embd.weight"][0]
    ctx = int(g("context_length", 2048))
    tie = "output.weight" not in shapes
    if arch == "gpt2":
        ffn = _int(g("feed_forward_length", 4 * hidden), "feed_forward_length")
        eps = float(g("attention.layer_norm_epsilon", 1e-5))
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": vocab, "n_embd": hidden,
                "n_layer": n_layer, "n_head": n_head, "n_positions": ctx, "n_inner": ffn, "layer_norm_epsilon": eps,
                "activation_function": "gelu_new", "tie_word_embeddings": tie,
                # the generic names too (GPT2Config maps them onto the n_* ones)
                "hidden_size": hidden, "num_hidden_layers": n_layer, "num_attention_heads": n_head,
                "num_key_value_heads": n_head, "head_dim": hidden // n_head, "intermediate_size": ffn,
                "max_position_embeddings": ctx}
    n_kv = _int(g("attention.head_count_kv", n_head), "attention.head_count_kv")
    q_rows, ffn_rows = shapes.get("blk.0.attn_q.weight", (hidden,))[0], shapes.get("blk.0.ffn_up.weight", (0,))[0]
    head_dim = int(g("attention.key_length", q_rows // n_head))
    theta = float(g("rope.freq_base", 10000.0))
    name = f"{md.get('general.name', '')} {md.get('general.basename', '')}".lower()
    family = "mistral" if arch == "llama" and "mistral" in name else "gemma3_text" if arch == "gemma3" else arch
    cls = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma3_text": "Gemma3"}
    cfg = {"model_type": family, "architectures": [f"{cls[family]}ForCausalLM"], "vocab_size": vocab,
           "hidden_size": hidden, "intermediate_size": _int(g("feed_forward_length", ffn_rows), "feed_forward_length"),
           "num_hidden_layers": n_layer, "num_attention_heads": n_head, "num_key_value_heads": n_kv,
           "head_dim": head_dim, "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-6)),
           "rope_theta": theta, "max_position_embeddings": ctx, "tie_word_embeddings": tie,
           "hidden_act": "gelu_pytorch_tanh" if arch == "gemma3" else "silu"}
    scaling, kind = None, g("rope.scaling.type")
    if rope_freqs is not None:
        scaling = _llama3_rope(rope_freqs, theta, int(g("rope.dimension_count", head_dim)),
                               g("rope.scaling.original_context_length"))
    elif kind == "linear" and g("rope.scaling.factor"):
        scaling = {"rope_type": "linear", "factor": float(g("rope.scaling.factor"))}
    elif kind == "yarn":
        scaling = {"rope_type": "yarn", "factor": float(g("rope.scaling.factor", 1.0)),
                   "original_max_position_embeddings": int(g("rope.scaling.original_context_length", ctx))}
    elif kind not in (None, "none"):
        raise GGUFImportError(f"rope scaling type {kind!r} is not supported (llama3 rope_freqs, linear, yarn are)")
    if arch in ("llama", "qwen3"):    # biases are rare there; HF has a switch for each side
        cfg.update(attention_bias="blk.0.attn_q.bias" in shapes, mlp_bias="blk.0.ffn_up.bias" in shapes)
    if arch == "qwen2":               # Qwen2 always has q/k/v biases and no switch
        cfg["use_sliding_window"] = False
    if arch == "gemma3":
        # llama.cpp hard-codes these for gemma3 (llama-model.cpp): every 6th layer global, local rope base 1e4,
        # queries scaled by 1/sqrt(head_dim) except the 27B (62 layers): 1/sqrt(hidden/heads)
        pattern = g("attention.sliding_window_pattern", 6)         # newer files: one bool per layer
        swa = pattern if isinstance(pattern, list) else [(i + 1) % int(pattern) != 0 for i in range(n_layer)]
        cfg.update(sliding_window=int(g("attention.sliding_window", 4096)), rope_local_base_freq=10000.0,
                   layer_types=["sliding_attention" if s else "full_attention" for s in swa],
                   query_pre_attn_scalar=hidden // n_head if n_layer == 62 else head_dim,
                   hidden_activation="gelu_pytorch_tanh", final_logit_softcapping=g("final_logit_softcapping"),
                   attn_logit_softcapping=None)
        if not isinstance(pattern, list):
            cfg["sliding_window_pattern"] = int(pattern)
    if scaling:
        cfg["rope_scaling"] = scaling
    return cfg


# ---- tokenizer -------------------------------------------------------------------------------
def _merge_pairs(merges: list[str], vocab: dict) -> list[tuple[str, str]]:
    out = []
    for m in merges:
        parts = m.split(" ")
        if len(parts) != 2:              # a token with a real space: find the split both sides are tokens of
            cuts = [i for i, c in enumerate(m) if c == " " and m[:i] in vocab and m[i + 1:] in vocab]
            if not cuts:
                raise GGUFImportError(f"tokenizer.ggml.merges has an unreadable entry {m!r}")
            parts = [m[:cuts[0]], m[cuts[0] + 1:]]
        out.append((parts[0], parts[1]))
    return out


def _derive_merges(vocab: dict[str, int], score: dict[str, float]) -> list[tuple[str, str]]:
    """SentencePiece files have no merges: every split of a token into two tokens is one, best score first
    (ties: longer left, then longer right piece), as transformers' GGUF loader derives them."""
    found = []
    for tok, sc in score.items():
        pairs = [(tok[:i], tok[i:]) for i in range(1, len(tok)) if tok[:i] in vocab and tok[i:] in vocab]
        pairs.sort(key=lambda p: (vocab[p[0]], vocab[p[1]]))
        found.extend((-sc, -len(a), -len(b), a, b) for a, b in pairs)
    found.sort(key=lambda f: f[:3])                     # stable: equal keys keep the token order
    return [(f[3], f[4]) for f in found]


def _tokenizer(md: dict, arch: str) -> tuple[str, dict, dict]:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    kind, pre = md.get("tokenizer.ggml.model"), md.get("tokenizer.ggml.pre", "default")
    tokens = md.get("tokenizer.ggml.tokens")
    if kind not in ("gpt2", "llama"):
        raise GGUFImportError(f"tokenizer model {kind!r} is not supported; livelm rebuilds \"gpt2\" (byte-level "
                              f"BPE) and \"llama\" (SentencePiece) tokenizers")
    if not tokens:
        raise GGUFImportError("the file has no tokenizer.ggml.tokens")
    types = md.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    added = {i for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED)}
    gemma = arch.startswith("gemma")
    if kind == "gpt2":
        if pre not in PRE_TOKENIZERS:
            raise GGUFImportError(f"tokenizer.ggml.pre {pre!r} is not supported; known: "
                                  f"{', '.join(sorted(PRE_TOKENIZERS))}")
        # ordinary tokens are spelled in GPT-2's byte alphabet; an odd one is respelled so it stays reachable
        alphabet, b2u = set(pre_tokenizers.ByteLevel.alphabet()), _bytes_to_unicode()
        spelled = [t if i in added or set(t) <= alphabet else "".join(b2u[b] for b in t.encode("utf-8"))
                   for i, t in enumerate(tokens)]
    elif gemma:       # runs of spaces are stored as real spaces; the vocabulary spells them "▁▁" (transformers)
        spelled = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in tokens]
    else:
        spelled = list(tokens)
    vocab = {}
    for i, t in enumerate(spelled):
        vocab.setdefault(t, i)                          # a duplicate keeps its first id
    if kind == "gpt2":
        tok = Tokenizer(models.BPE(vocab, _merge_pairs(md.get("tokenizer.ggml.merges") or [], vocab),
                                   fuse_unk=False, ignore_merges=pre in _IGNORE_MERGES))
        split = PRE_TOKENIZERS[pre]
        if split == "gpt2":
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        elif split == "digits":
            tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                         pre_tokenizers.ByteLevel(add_prefix_space=False)])
        else:
            tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                         pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                  use_regex=False)])
        tok.decoder = decoders.ByteLevel()
    else:
        if md.get("tokenizer.ggml.merges"):
            merges = _merge_pairs(md["tokenizer.ggml.merges"], vocab)
        else:         # Gemma's scores do not follow its merge order but its token order does
            scores = md.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
            score = {t: -float(i) for i, t in enumerate(spelled)} if gemma else dict(zip(spelled, scores))
            merges = _derive_merges(vocab, score)
        unk_id = md.get("tokenizer.ggml.unknown_token_id", vocab.get("<unk>"))
        tok = Tokenizer(models.BPE(vocab, merges, unk_token=tokens[unk_id] if unk_id is not None else None,
                                   fuse_unk=True, byte_fallback=True))
        steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        if gemma:
            tok.normalizer = normalizers.Replace(" ", "\u2581")
        else:
            prefix = bool(md.get("tokenizer.ggml.add_space_prefix", True))
            tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", split=False,
                                                         prepend_scheme="first" if prefix else "never")
            steps += [decoders.Strip(" ", 1, 0)] if prefix else []
        tok.decoder = decoders.Sequence(steps)
        added = {i for i in added if spelled[i] == tokens[i]}    # respelled ones are reached by merges
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i in sorted(added) if types[i] == CONTROL and vocab.get(tokens[i]) == i])
    tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                    for i in sorted(added) if types[i] == USER_DEFINED and vocab.get(tokens[i]) == i])

    def special(key):
        i = md.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None
    bos_id, eos_id = md.get("tokenizer.ggml.bos_token_id"), md.get("tokenizer.ggml.eos_token_id")
    add_bos = bool(md.get("tokenizer.ggml.add_bos_token", kind == "llama"))   # llama.cpp's default for SPM
    add_eos = bool(md.get("tokenizer.ggml.add_eos_token", False))
    if (add_bos and bos_id is not None) or (add_eos and eos_id is not None):
        b, e = (special("bos") if add_bos else None), (special("eos") if add_eos else None)
        single = " ".join(x for x in (b and f"{b}:0", "$A:0", e and f"{e}:0") if x)
        pair = " ".join(x for x in (single, b and f"{b}:1", "$B:1", e and f"{e}:1") if x)
        tok.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, i) for t, i in ((b, bos_id), (e, eos_id)) if t])
    for i, t in enumerate(spelled):       # the promise: every id is the file's
        if vocab[t] == i and tok.token_to_id(t) != i:
            raise GGUFImportError(f"token {t!r} got id {tok.token_to_id(t)} instead of the file's {i}")

    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": special("bos"),
               "eos_token": special("eos"), "unk_token": special("unknown"), "pad_token": special("padding"),
               "add_bos_token": add_bos, "add_eos_token": add_eos, "clean_up_tokenization_spaces": False}
    if md.get("tokenizer.chat_template"):
        tok_cfg["chat_template"] = md["tokenizer.chat_template"]
    if kind == "gpt2":
        tok_cfg["gguf_pre"] = pre          # the split rule by llama.cpp's name, for a GGUF export back
    # generation stops at eos and at the end-of-turn / end-of-message tokens, as llama.cpp's EOG set
    stops = [eos_id] if isinstance(eos_id, int) else []
    for key in ("eot", "eom"):
        i = md.get(f"tokenizer.ggml.{key}_token_id")
        if isinstance(i, int) and i not in stops:
            stops.append(i)
    stops += [i for i, t in enumerate(tokens) if t in EOG_TEXTS and i not in stops]
    gen = {"bos_token_id": bos_id, "eos_token_id": stops[0] if len(stops) == 1 else stops or None}
    if md.get("tokenizer.ggml.padding_token_id") is not None:
        gen["pad_token_id"] = md["tokenizer.ggml.padding_token_id"]
    return tok.to_str(), tok_cfg, gen


# ---- the whole file ---------------------------------------------------------------------------
def read_gguf(path, dtype: torch.dtype = torch.float32) -> Checkpoint:
    """Read a .gguf (llama.cpp / Ollama) into a Checkpoint of HF config, tensors and tokenizer files."""
    path = Path(os.fspath(path))
    reader = _open(path)
    try:
        return _read(path, reader, dtype)
    except GGUFImportError as e:   # every message names the file, also those raised deep inside
        if str(path) in str(e):
            raise
        raise GGUFImportError(f"{path}: {e}") from None


def _read(path: Path, reader, dtype: torch.dtype) -> Checkpoint:
    big = {"tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"}
    md = {}
    for key, field in reader.fields.items():
        try:
            md[key] = _value(field)
        except Exception as e:
            raise GGUFImportError(f"{path}: metadata {key} cannot be read ({e}); the file is corrupt") from None
        if key in big and not isinstance(md[key], list):
            raise GGUFImportError(f"{path}: metadata {key} is not a list; the file is corrupt")
    arch = md.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise GGUFImportError(f"{path}: architecture {arch!r} is not supported; livelm imports "
                              f"{', '.join(SUPPORTED_ARCHS)} GGUF files (llama covers Llama, Mistral and SmolLM)")
    by_name = {t.name: t for t in reader.tensors}
    shapes = {n: tuple(int(d) for d in reversed(list(t.shape))) for n, t in by_name.items()}
    if "token_embd.weight" not in shapes:
        raise GGUFImportError(f"{path} has no token_embd.weight tensor; it is not a complete model")
    rope_freqs = by_name.pop("rope_freqs.weight", None)
    rope_freqs = _dequantize(rope_freqs, torch.float64).numpy() if rope_freqs is not None else None
    cfg = _config(arch, md, shapes, rope_freqs)
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    if len(md.get("tokenizer.ggml.tokens") or ()) > cfg["vocab_size"]:
        raise GGUFImportError(f"{path}: the tokenizer has {len(md['tokenizer.ggml.tokens'])} tokens but the "
                              f"embedding only {cfg['vocab_size']} rows; the file is inconsistent")
    tok_json, tok_cfg, gen = _tokenizer(md, arch)       # before the slow part: its errors come first

    tensors = {}
    for name, t in by_name.items():
        new = _hf_name(arch, name)
        w = _dequantize(t, torch.float32)
        if arch == "llama" and ".attn_q." in name:
            w = _unpermute(w, n_head)
        elif arch == "llama" and ".attn_k." in name:
            w = _unpermute(w, n_kv)
        elif arch == "gemma3" and name.endswith("norm.weight"):
            w = w - 1
        elif arch == "gpt2" and w.ndim == 2 and any(k in name for k in ("attn_qkv", "attn_output", "ffn_")):
            w = w.t().contiguous()                       # nn.Linear (out, in) -> Conv1D (in, out)
        tensors[new] = w.to(dtype)
    tok_cfg["model_max_length"] = cfg.get("max_position_embeddings")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if gen.get(key) is not None:
            cfg[key] = gen[key]
    return Checkpoint(cfg, tensors, tok_json, tok_cfg, gen)
