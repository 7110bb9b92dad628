"""GGUF export: the file reads back with gguf's reader with the expected tensors and metadata, and a
from-scratch forward pass with llama.cpp's conventions (interleaved RoPE pairs) on the file's tensors
gives livelm's logits — which checks the rotary permutation without building llama.cpp."""
import json
import math

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from livelm.chat.template import JINJA_TEMPLATE
from livelm.compress.prune import prune_heads
from livelm.interop.gguf import GGUFExportError, export_gguf, gguf_vocab
from livelm.models.gpt import GPT, GPTConfig, PRESETS
from livelm.tokenizer import Tokenizer
from livelm.runs import load_model, save_checkpoint

TEXT = ["First Citizen: Before we proceed any further, hear me speak.", "所有人：说吧，说吧。 Mixed 中英 text."] * 50


@pytest.fixture(scope="module")
def bpe():
    return Tokenizer.train_bpe(TEXT, vocab_size=320, show_progress=False)


def make_run(path, tokenizer, preset="llama", prune=None, **kw):
    torch.manual_seed(0)
    cfg = GPTConfig(**{**dict(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, d_model=64, block_size=64),
                       **PRESETS[preset], "n_kv_head": 2 if preset == "llama" else 0, **kw})
    model = GPT(cfg)
    with torch.no_grad():   # sharper attention than the 0.02 init, so a wrong rotary layout shows in the logits
        for block in model.blocks:
            block.attn.q_proj.weight.mul_(15)
            block.attn.k_proj.weight.mul_(15)
    if prune:
        model, _ = prune_heads(model, prune)
    save_checkpoint(path, model, tokenizer, {"arch": "gpt", "model": model.cfg.to_dict()}, step=0)
    return path


def field(reader, key):
    return reader.fields[key].contents()


def llamacpp_forward(reader: gguf.GGUFReader, ids: list[int]) -> torch.Tensor:
    """Logits (S, V) computed the way llama.cpp's llama / gpt2 graphs do, from the GGUF file alone."""
    t = {x.name: torch.from_numpy(np.array(x.data, dtype=np.float32)) for x in reader.tensors}
    arch = field(reader, "general.architecture")
    H, Hkv = field(reader, f"{arch}.attention.head_count"), field(reader, f"{arch}.attention.head_count_kv")
    L, C = field(reader, f"{arch}.block_count"), field(reader, f"{arch}.embedding_length")
    S = len(ids)
    if arch == "llama":
        D, eps = field(reader, "llama.rope.dimension_count"), field(reader, "llama.attention.layer_norm_rms_epsilon")
        theta = field(reader, "llama.rope.freq_base")
        angles = torch.arange(S, dtype=torch.float32)[:, None] * theta ** (-torch.arange(0, D, 2).float() / D)
        cos, sin = angles.cos()[:, None], angles.sin()[:, None]                 # (S, 1, D/2)
    else:
        D, eps = C // H, field(reader, "gpt2.attention.layer_norm_epsilon")

    def rope(v):   # (S, heads, D); neighbours (2i, 2i+1) rotate together: LLAMA_ROPE_TYPE_NORM
        a, b = v[..., 0::2], v[..., 1::2]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)

    def norm(v, name):
        if arch == "llama":   # RMSNorm
            return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * t[name + ".weight"]
        return F.layer_norm(v, (v.size(-1),), t[name + ".weight"], t[name + ".bias"], eps)

    def linear(v, name):
        return v @ t[name + ".weight"].T + t.get(name + ".bias", 0)

    x = t["token_embd.weight"][ids]                                             # (S, C)
    if arch == "gpt2":
        x = x + t["position_embd.weight"][:S]
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    for i in range(L):
        p = f"blk.{i}."
        h = norm(x, p + "attn_norm")
        if arch == "llama":
            q = rope(linear(h, p + "attn_q").view(S, H, D))
            k = rope(linear(h, p + "attn_k").view(S, Hkv, D))
            v = linear(h, p + "attn_v").view(S, Hkv, D)
        else:
            q, k, v = linear(h, p + "attn_qkv").split([H * D, Hkv * D, Hkv * D], dim=-1)
            q, k, v = q.view(S, H, D), k.view(S, Hkv, D), v.view(S, Hkv, D)
        k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
        att = torch.einsum("shd,thd->hst", q, k) / math.sqrt(D)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        x = x + linear(torch.einsum("hst,thd->shd", att, v).reshape(S, H * D), p + "attn_output")
        h = norm(x, p + "ffn_norm")
        if arch == "llama":
            h = F.silu(linear(h, p + "ffn_gate")) * linear(h, p + "ffn_up")
        else:
            h = F.gelu(linear(h, p + "ffn_up"), approximate="tanh")
        x = x + linear(h, p + "ffn_down")
    head = t.get("output.weight", t["token_embd.weight"])
    return norm(x, "output_norm") @ head.T


def test_gguf_reads_back_with_expected_tensors_and_metadata(tmp_path, bpe):
    run = make_run(tmp_path / "run", bpe)
    path = export_gguf(run, tmp_path / "out")
    assert path == tmp_path / "out" / "model.gguf"
    r = gguf.GGUFReader(path)
    assert field(r, "general.architecture") == "llama"
    expected = {"llama.context_length": 64, "llama.embedding_length": 64, "llama.block_count": 2,
                "llama.feed_forward_length": 192, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
                "llama.rope.dimension_count": 16, "llama.vocab_size": 320, "tokenizer.ggml.model": "gpt2",
                "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.eot_token_id": 6,
                "tokenizer.ggml.padding_token_id": 0, "tokenizer.chat_template": JINJA_TEMPLATE}
    assert {k: field(r, k) for k in expected} == expected
    assert field(r, "llama.rope.freq_base") == pytest.approx(10000.0)
    assert field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    tokens = field(r, "tokenizer.ggml.tokens")
    vocab = json.loads((run / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(tokens) == 320 and all(tokens[i] == tok for tok, i in vocab.items())
    assert field(r, "tokenizer.ggml.token_type")[:11] == [3] * 11 and set(field(r, "tokenizer.ggml.token_type")[11:]) == {1}
    assert len(field(r, "tokenizer.ggml.merges")) > 0

    shapes = {x.name: tuple(int(n) for n in reversed(x.shape)) for x in r.tensors}   # back to PyTorch's (out, in)
    assert shapes["token_embd.weight"] == (320, 64) and shapes["output.weight"] == (320, 64)
    assert shapes["output_norm.weight"] == (64,)
    for i in range(2):
        assert shapes[f"blk.{i}.attn_q.weight"] == (64, 64) and shapes[f"blk.{i}.attn_k.weight"] == (32, 64)
        assert shapes[f"blk.{i}.attn_v.weight"] == (32, 64) and shapes[f"blk.{i}.attn_output.weight"] == (64, 64)
        assert shapes[f"blk.{i}.ffn_gate.weight"] == (192, 64) and shapes[f"blk.{i}.ffn_down.weight"] == (64, 192)
        assert shapes[f"blk.{i}.attn_norm.weight"] == (64,) and shapes[f"blk.{i}.ffn_norm.weight"] == (64,)
    assert len(shapes) == 3 + 2 * 9
    assert all(x.tensor_type == gguf.GGMLQuantizationType.F32 for x in r.tensors)

    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\n")
    assert "<|{{ .Role }}|>{{ .Content }}<|end|>" in modelfile and "<|assistant|>" in modelfile
    assert 'PARAMETER stop "<|end|>"' in modelfile


@pytest.mark.parametrize("variant", [dict(), dict(prune=0.5), dict(n_kv_head=4, tie_embeddings=True),
                                     dict(preset="gpt2"), dict(preset="gpt2", tie_embeddings=False)])
def test_llamacpp_style_forward_on_gguf_tensors_matches_livelm(tmp_path, bpe, variant):
    run = make_run(tmp_path / "run", bpe, **variant)
    r = gguf.GGUFReader(export_gguf(run, tmp_path / "out"))
    model, _, _ = load_model(run)
    ids = bpe.encode("First Citizen: Before we proceed 中英 any further, hear me speak.")[:40]
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0]
    theirs = llamacpp_forward(r, ids)
    assert (ours - theirs).abs().max() <= 1e-4
    # and the rotary permutation matters: without it the logits would differ
    assert ours.std() > 0.1


def test_char_tokenizer_becomes_byte_level(tmp_path):
    tok = Tokenizer.train_char(["hi 中\n"])
    tj = json.loads(tok._hf.to_str())
    tokens, types, merges = gguf_vocab(tj, tok.special_ids)
    byte_level = {t for i, t in enumerate(tokens) if i not in tok.special_ids}
    assert byte_level == {"h", "i", "Ġ", "Ċ", "ä¸Ń"}         # GPT-2's byte -> printable-character map
    assert merges == ["ä ¸", "ä¸ Ń"]                         # rebuilds the 3-byte character from its bytes
    assert types.count(3) == 11


def test_f16_keeps_norms_fp32(tmp_path, bpe):
    r = gguf.GGUFReader(export_gguf(make_run(tmp_path / "run", bpe), tmp_path / "out", outtype="f16"))
    kinds = {x.name: x.tensor_type for x in r.tensors}
    assert kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert field(r, "general.file_type") == 1


def test_gpt2_preset_tensors(tmp_path, bpe):
    r = gguf.GGUFReader(export_gguf(make_run(tmp_path / "run", bpe, preset="gpt2"), tmp_path / "out"))
    assert field(r, "general.architecture") == "gpt2"
    assert field(r, "gpt2.context_length") == 64 and field(r, "gpt2.feed_forward_length") == 256
    shapes = {x.name: tuple(int(n) for n in reversed(x.shape)) for x in r.tensors}
    assert shapes["position_embd.weight"] == (64, 64) and "output.weight" not in shapes    # tied head
    assert shapes["blk.0.attn_qkv.weight"] == (3 * 64, 64) and shapes["blk.0.attn_qkv.bias"] == (3 * 64,)
    assert shapes["blk.1.ffn_up.bias"] == (256,) and shapes["output_norm.bias"] == (64,)


def test_unsupported_runs_are_refused_clearly(tmp_path, bpe):
    mixed = make_run(tmp_path / "mixed", bpe, preset="gpt2", position="rope")
    with pytest.raises(GGUFExportError, match="supports the llama preset .* and the gpt2 preset .*position='rope'"):
        export_gguf(mixed, tmp_path / "out")
    pruned_gpt2 = make_run(tmp_path / "pruned", bpe, preset="gpt2", prune=0.5)
    with pytest.raises(GGUFExportError, match="heads pruned away"):
        export_gguf(pruned_gpt2, tmp_path / "out")
    from livelm.compress.quantize import quantize_run
    quantize_run(make_run(tmp_path / "llama", bpe), tmp_path / "q", "int8")
    with pytest.raises(GGUFExportError, match="quantized"):
        export_gguf(tmp_path / "q", tmp_path / "out")
    assert not (tmp_path / "out" / "model.gguf").exists()
