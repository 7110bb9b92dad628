"""The real-model families in livelm's one decoder (livelm/models/gpt.py), checked against transformers.

Each family is a tiny random model built with transformers' own config and model classes (3 layers x 64
wide, fp32), saved with save_pretrained and imported with livelm. Its norm weights and biases are
perturbed away from their initial values so a mix-up (Gemma's 1 + w, a q/k norm, a bias) shows in the
logits, and the sliding windows are shorter than the sequences so a window applied wrongly (or not at
all, in prefill or in decode with the KV cache) changes the tokens.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from livelm.infer.engine import Engine
from livelm.interop.hf import InteropError, export_hf
from livelm.interop.hf_import import import_hf
from livelm.models.gpt import GPT, GPTConfig
from livelm.runs import load_model, save_checkpoint
from livelm.sampling import SamplingParams
from livelm.tokenizer import Tokenizer
from tests.conftest import TEXT

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

TOL = 1e-4
WINDOW = 8                      # shorter than every test sequence
COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.1)
SLIDING, FULL = "sliding_attention", "full_attention"
FAMILIES = {
    # Llama 3.1's RoPE scaling; an original context of 32 puts the head's frequencies in all three bands
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32})),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=WINDOW)),
    # Qwen2's q/k/v biases; tied embeddings, and sliding layers from layer 1 on (use_sliding_window)
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True, use_sliding_window=True,
                                                      sliding_window=WINDOW, max_window_layers=1)),
    # Qwen3's q/k norms; a head_dim of its own (4 x 32 != 64)
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32)),
    # Gemma 2: the Gemma layout without q/k norms; sliding and global layers in turn, soft-capped scores
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        head_dim=16, query_pre_attn_scalar=24, sliding_window=WINDOW, attn_logit_softcapping=2.0,
        final_logit_softcapping=5.0)),
    # Gemma 3: sliding and global layers with their own RoPE (global: linear x8, as in the 4B+ models)
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        head_dim=16, query_pre_attn_scalar=24, sliding_window=WINDOW, layer_types=[SLIDING, FULL, SLIDING],
        final_logit_softcapping=5.0, rope_parameters={
            FULL: {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            SLIDING: {"rope_type": "default", "rope_theta": 10000.0}})),
}


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train_bpe([TEXT], vocab_size=300, show_progress=False)


def tiny_hf(family: str, vocab: int):
    cfg_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(vocab_size=vocab, attn_implementation="eager", **COMMON, **extra)
    return perturbed(getattr(transformers, model_cls)(cfg).eval())     # eager attention: the reference form


def perturbed(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.fixture(scope="module")
def imported(tmp_path_factory, tok):
    """family -> (transformers model, its folder, the livelm run imported from it)."""
    out = {}
    for family in FAMILIES:
        root = tmp_path_factory.mktemp(family)
        hf = tiny_hf(family, tok.vocab_size)
        hf.save_pretrained(root / "hf")
        tok.save(root / "hf" / "tokenizer.json")
        res = import_hf(root / "hf", root / "run")
        assert res["family"] == hf.config.model_type
        out[family] = hf, root / "hf", root / "run"
    return out


def ids(tok, n=40):
    rows = [tok.encode(TEXT[i:] * 2)[:n] for i in (0, 101)]
    return torch.tensor(rows)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_imported_logits_equal_transformers(imported, tok, family):
    hf, _, run = imported[family]
    ours, _, _ = load_model(run)
    x = ids(tok)
    with torch.no_grad():
        diff = (ours(x) - hf(x).logits).abs().max().item()
    assert diff <= TOL, f"{family}: max |logit diff| {diff}"


def greedy_full(model, prompt: list[int], steps: int, hf: bool = False) -> list[int]:
    """Greedy decoding that recomputes the whole sequence each step (no cache)."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([seq]))
            seq.append(int((logits.logits if hf else logits)[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_tokens_with_and_without_cache_and_in_a_batch(imported, tok, family):
    hf, _, run = imported[family]
    ours, tokenizer, _ = load_model(run)
    text = tok.encode(TEXT)
    prompts = [text[:5], text[20:33], text[50:69]]          # 5, 13, 19 tokens: all three outgrow the window
    want = [greedy_full(hf, p, 32, hf=True) for p in prompts]
    assert greedy_full(ours, prompts[1], 32) == want[1]
    # one continuous batch: prompts prefilled in chunks of 4 while the shorter ones already decode
    engine = Engine(ours, tokenizer, max_batch=3, prefill_chunk=4)
    params = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)
    got = engine.generate(prompts, params)
    assert [c.token_ids for c in got] == want
    alone = Engine(ours, tokenizer, max_batch=1).generate([prompts[2]], params)[0]   # prefilled in one pass
    assert alone.token_ids == want[2]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_gives_transformers_the_same_model_and_round_trips(imported, tok, tmp_path, family):
    hf, hf_dir, run = imported[family]
    res = export_hf(run, tmp_path / "hf")
    assert res["architecture"] == type(hf).__name__
    back, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert type(back) is type(hf)
    x = ids(tok)
    with torch.no_grad():
        assert (back.eval()(x).logits - hf(x).logits).abs().max().item() <= TOL
    # import -> export is lossless: the very tensors transformers saved, and the same livelm config again
    original, exported = load_file(hf_dir / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert original.keys() == exported.keys()
    assert all(torch.equal(original[k], exported[k]) for k in original)
    import_hf(tmp_path / "hf", tmp_path / "run")
    before, after = (json.loads((d / "config.json").read_text())["model"] for d in (run, tmp_path / "run"))
    assert after == before


def test_multimodal_gemma3_imports_its_language_model(tmp_path, tok):
    """A Gemma3ForConditionalGeneration folder (text_config, weights under language_model): the language
    model is imported, the vision tower left behind; text-only logits are the same."""
    torch.manual_seed(0)
    text = dict(vocab_size=tok.vocab_size, **COMMON, **FAMILIES["gemma3"][2])
    text["final_logit_softcapping"] = None      # transformers' multimodal class would not apply it
    cfg = transformers.Gemma3Config(text_config=text, mm_tokens_per_image=4, attn_implementation="eager",
                                    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                       num_attention_heads=2, image_size=28, patch_size=14))
    hf = perturbed(transformers.Gemma3ForConditionalGeneration(cfg).eval())
    hf.save_pretrained(tmp_path / "hf")
    tok.save(tmp_path / "hf" / "tokenizer.json")
    res = import_hf(tmp_path / "hf", tmp_path / "run")
    assert (res["architecture"], res["family"]) == ("Gemma3ForConditionalGeneration", "gemma3_text")
    ours, _, _ = load_model(tmp_path / "run")
    x = ids(tok)
    with torch.no_grad():
        assert (ours(x) - hf(input_ids=x).logits).abs().max().item() <= TOL


@pytest.mark.parametrize("switches", [
    dict(mlp="geglu", norm_offset=1.0, post_norms=True, qk_norm=True, embed_scale=True, sliding_window=6,
         layer_types=["sliding_attention", "full_attention"]),            # Gemma 3: defaults for scalar and RoPE
    dict(qk_norm=True, sliding_window=6, layer_types=["full_attention", "sliding_attention"]),          # Qwen3
    dict(sliding_window=6, rope_scaling={"rope_type": "linear", "factor": 2.0}),                         # Mistral
])
def test_livelm_built_models_of_each_family_export_and_come_back(tmp_path, tok, switches):
    """A model livelm itself built with a family's switches: transformers computes the same logits, and
    importing the export gives the same config and tensors back."""
    torch.manual_seed(0)
    cfg = GPTConfig(**{"vocab_size": tok.vocab_size, "block_size": 64, "n_layer": 2, "n_head": 4, "n_kv_head": 2,
                       "d_model": 32, "position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False,
                       "tie_embeddings": False, **switches})
    model = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    save_checkpoint(tmp_path / "run", model, tok, {"arch": "gpt", "model": cfg.to_dict()}, step=0)
    export_hf(tmp_path / "run", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = ids(tok)
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() <= TOL
    import_hf(tmp_path / "hf", tmp_path / "back")
    back = json.loads((tmp_path / "back" / "config.json").read_text())["model"]
    assert back == cfg.to_dict()
    a, b = load_file(tmp_path / "run" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_switches_change_the_model(imported, tok):
    """The switches matter: without one of them the same weights give other logits."""
    x = ids(tok)
    for family, field, plain in (("mistral", "sliding_window", 0), ("llama3", "rope_scaling", None),
                                 ("gemma2", "attn_softcap", 0.0), ("gemma3", "final_softcap", 0.0),
                                 ("gemma3", "rope_local_theta", 0.0), ("gemma3", "attn_scalar", 0.0)):
        model, _, _ = load_model(imported[family][2])
        cfg = GPTConfig.from_dict({**model.cfg.to_dict(), field: plain})
        other = GPT(cfg).eval()
        other.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert (model(x) - other(x)).abs().max() > 1e-3, field


# ---- what is refused --------------------------------------------------------------------------------
def hf_folder(path, **config):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


LLAMA = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=64, intermediate_size=128,
             num_hidden_layers=2, num_attention_heads=4, vocab_size=100)


@pytest.mark.parametrize("config,message", [
    ({**LLAMA, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling 'yarn'"),
    ({**LLAMA, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}}, "'dynamic'"),
    ({**LLAMA, "rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "needs low_freq_factor"),
    ({**LLAMA, "partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5"),
    ({**LLAMA, "hidden_act": "gelu"}, "activation 'gelu'"),
    ({**LLAMA, "model_type": "phi3", "architectures": ["Phi3ForCausalLM"]}, "Phi3ForCausalLM"),
    ({**LLAMA, "model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]}, "GPTNeoXForCausalLM"),
    ({**LLAMA, "model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "attn_logit_softcapping": 50.0},
     "attn_logit_softcapping"),
    ({**LLAMA, "model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"],
      "use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ({**LLAMA, "model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "sliding_window": 8,
      "layer_types": ["sliding_attention", "chunked_attention"]}, "chunked_attention"),
])
def test_import_refuses_unsupported_features(tmp_path, config, message):
    with pytest.raises(InteropError, match=message):
        import_hf(hf_folder(tmp_path / "hf", **config), tmp_path / "run")


def test_gguf_export_refuses_the_new_families(imported, tmp_path):
    """llama.cpp's llama architecture has no q/k/v biases, q/k norms or windows: refused, not written wrong."""
    from livelm.interop.gguf import GGUFExportError, export_gguf
    for family in ("qwen2", "gemma3"):
        with pytest.raises(GGUFExportError, match="qkv_bias" if family == "qwen2" else "qk_norm"):
            export_gguf(imported[family][2], tmp_path / family)


@pytest.mark.parametrize("switches,message", [
    (dict(qk_norm=True, qkv_bias=True), "both qk_norm and qkv_bias"),
    (dict(mlp="geglu"), "norm_offset"),
    (dict(post_norms=True), "LlamaForCausalLM has no equivalent of post_norms"),
    (dict(sliding_window=8, layer_types=["sliding_attention", "full_attention"]), "MistralForCausalLM .* layer_types"),
    (dict(qkv_bias=True, bias=True), "no MLP or o_proj biases"),
])
def test_export_refuses_switches_no_hf_class_has(tmp_path, tok, switches, message):
    cfg = GPTConfig(**{"vocab_size": tok.vocab_size, "block_size": 32, "n_layer": 2, "n_head": 4, "n_kv_head": 2,
                       "d_model": 32, "position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False,
                       **switches})
    save_checkpoint(tmp_path / "run", GPT(cfg), tok, {"arch": "gpt", "model": cfg.to_dict()}, step=0)
    with pytest.raises(InteropError, match=message):
        export_hf(tmp_path / "run", tmp_path / "hf")
