"""Hugging Face interop (livelm/interop/hf.py), checked against real transformers and peft.

Tiny random models (2 layers x 64 wide) whose norm weights and biases are
perturbed away from their 1/0 initial values, so a mix-up of LayerNorm weight
and bias, or of q/k/v, shows in the logits.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from livelm.chat.template import render
from livelm.cli import main as cli_main
from livelm.interop.hf import InteropError, export_hf
from livelm.interop.hf_import import import_hf
from livelm.models import lora
from livelm.models.gpt import GPT, GPTConfig, PRESETS
from livelm.tokenizer import Tokenizer
from livelm.runs import load_model, save_checkpoint
from tests.conftest import TEXT, run_cli

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TOL = 1e-4
SAMPLES = ["你好，世界！今天天气很好。", "emoji 🙂👍🏽🇨🇳 end", "Mixed 中英 text, 123 and tabs\t\n\n  spaces",
           "First Citizen: Before we proceed any further"]
VARIANTS = {
    "gpt2": PRESETS["gpt2"],
    "gpt2-nobias-untied": {**PRESETS["gpt2"], "bias": False, "tie_embeddings": False},
    "llama-gqa": {**PRESETS["llama"], "n_kv_head": 2},          # 4 query heads share 2 K/V heads
    "llama-head-size": {**PRESETS["llama"], "n_head": 2, "n_kv_head": 1, "head_size": 16},   # n_head x 16 != 64
}


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train_bpe([TEXT], vocab_size=400, show_progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, preset in VARIANTS.items():
        torch.manual_seed(0)
        cfg = GPTConfig(**{"vocab_size": tok.vocab_size, "block_size": 64, "n_layer": 2, "n_head": 4, "d_model": 64,
                           **preset})
        model = GPT(cfg)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("bias") or "ln" in n:
                    p.add_(torch.randn_like(p) * 0.2)
        save_checkpoint(root / name, model, tok, {"arch": "gpt", "model": cfg.to_dict()}, step=3)
        out[name] = root / name
    return out


def ids_batch(tok, n=40):
    rows = [tok.encode(s * 4)[:n] for s in SAMPLES[:2]]
    return torch.tensor(rows)


def hf_load(folder):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exported_logits_equal_ours(runs, tok, tmp_path, variant):
    res = export_hf(runs[variant], tmp_path / "hf")
    want_arch = "LlamaForCausalLM" if variant.startswith("llama") else "GPT2LMHeadModel"
    assert res["architecture"] == want_arch
    hf = hf_load(tmp_path / "hf")
    assert type(hf).__name__ == want_arch
    ours, _, _ = load_model(runs[variant])
    x = ids_batch(tok)
    with torch.no_grad():
        diff = (ours(x) - hf(x).logits).abs().max().item()
    assert diff <= TOL, f"{variant}: max |logit diff| {diff}"
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.eos_id, tok.end_id] and gen["pad_token_id"] == tok.pad_id


@pytest.mark.parametrize("variant,targets", [("gpt2", None), ("gpt2", ["q_proj", "v_proj", "down_proj"]),
                                             ("llama-gqa", None)])
def test_adapter_loads_with_peft(runs, tok, tmp_path, variant, targets):
    model, _, _ = load_model(runs[variant])
    lcfg = lora.LoRAConfig(r=4, lora_alpha=8.0, target_modules=targets or list(lora.DEFAULT_TARGETS))
    lora.add_adapter(model, "a", lcfg)
    torch.manual_seed(1)
    for m in lora.lora_modules(model).values():
        if m.has("a"):
            torch.nn.init.normal_(m.B("a"), std=0.2)              # B = 0 would make any mapping "pass"
    lora.save_adapter(tmp_path / "adapter", model, "a", lcfg, str(runs[variant]))
    export_hf(runs[variant], tmp_path / "hf", adapter_dir=tmp_path / "adapter")
    lora.set_active(model, "a")
    x = ids_batch(tok)
    hf = peft.PeftModel.from_pretrained(hf_load(tmp_path / "hf"), tmp_path / "hf" / "adapter").eval()
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
        lora.set_active(model, None)
        base = model(x)
    assert (ours - base).abs().max() > 1e-2, "the adapter should change the logits"
    assert (ours - theirs).abs().max().item() <= TOL


def test_tokenizer_and_chat_template_ids_equal(runs, tok, tmp_path, tmp_path_factory):
    # a char tokenizer too: its HF form is a WordLevel model with a per-character split
    char_tok = Tokenizer.train_char([TEXT + "".join(SAMPLES)])
    cfg = GPTConfig(vocab_size=char_tok.vocab_size, block_size=32, n_layer=1, n_head=2, d_model=16)
    save_checkpoint(tmp_path / "char", GPT(cfg), char_tok, {"arch": "gpt", "model": cfg.to_dict()}, step=0)
    conv = [{"role": "system", "content": "Be brief. 简短回答。"}, {"role": "user", "content": "你好 🙂 how much is tea?"},
            {"role": "assistant", "content": "¥56."}, {"role": "user", "content": "And 乌龙茶?"}]
    for run, t in ((runs["gpt2"], tok), (tmp_path / "char", char_tok)):
        out = tmp_path / f"hf-{run.name}"
        export_hf(run, out)
        at = transformers.AutoTokenizer.from_pretrained(out)
        for s in SAMPLES:
            assert at.encode(s, add_special_tokens=False) == t.encode(s), s
            assert at.encode(s) == t.encode(s), "HF must not add bos/eos on its own"
        for gen_prompt in (True, False):
            got = at.apply_chat_template(conv, add_generation_prompt=gen_prompt, tokenize=True)
            got = got["input_ids"] if hasattr(got, "keys") else got
            assert list(got) == render(conv, t, add_generation_prompt=gen_prompt)[0]
        assert at.eos_token == "<|eos|>" and at.pad_token_id == t.pad_id


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_import_round_trip_is_lossless(runs, tmp_path, variant):
    export_hf(runs[variant], tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "run")
    assert_same_tensors(load_file(runs[variant] / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors"))
    before, after = (json.loads((d / "config.json").read_text()) for d in (runs[variant], tmp_path / "run"))
    assert after["model"] == before["model"]
    assert (tmp_path / "run" / "tokenizer.json").read_bytes() == (runs[variant] / "tokenizer.json").read_bytes()
    export_hf(tmp_path / "run", tmp_path / "hf2")
    assert_same_tensors(load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "hf2" / "model.safetensors"))


def gpt2_style_tokenizer():
    """A GPT-2-like byte-level BPE: no livelm specials, <|endoftext|> as the last id."""
    from tokenizers import Tokenizer as HT, decoders, models, pre_tokenizers, trainers
    ht = HT(models.BPE())
    ht.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    ht.decoder = decoders.ByteLevel()
    ht.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    ht.add_special_tokens(["<|endoftext|>"])
    return ht


def test_import_foreign_gpt2_keeps_its_vocabulary_and_logits(tmp_path):
    ht = gpt2_style_tokenizer()
    V, eos = ht.get_vocab_size(), ht.token_to_id("<|endoftext|>")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=192, bos_token_id=eos,
        eos_token_id=eos)).eval()
    hf.save_pretrained(tmp_path / "hf")
    ht.save(str(tmp_path / "hf" / "tokenizer.json"))
    res = import_hf(tmp_path / "hf", tmp_path / "run")
    assert res["vocab_size"] == V and not res["chat_template"]           # a base model: nothing renumbered
    assert (tmp_path / "run" / "tokenizer.json").read_bytes() == (tmp_path / "hf" / "tokenizer.json").read_bytes()
    ours, tok, _ = load_model(tmp_path / "run")
    assert ours.cfg.mlp_hidden == 192
    assert tok.eos_id == eos and tok.stop_ids == {eos} and not tok.own   # generation_config's eos stops it
    for s in SAMPLES:
        assert tok.encode(s) == ht.encode(s).ids
        assert tok.decode(tok.encode(s)) == s
    x = torch.tensor([ht.encode(TEXT[:200]).ids[:40] + [eos]])
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() <= TOL
    # and the imported run exports/imports losslessly from here on
    export_hf(tmp_path / "run", tmp_path / "hf2")
    import_hf(tmp_path / "hf2", tmp_path / "run2")
    assert_same_tensors(load_file(tmp_path / "run" / "model.safetensors"), load_file(tmp_path / "run2" / "model.safetensors"))
    assert (tmp_path / "run2" / "tokenizer.json").read_bytes() == (tmp_path / "hf" / "tokenizer.json").read_bytes()


def test_import_sharded_llama_saved_by_transformers_is_lossless(tmp_path, tok):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=128, rope_theta=500000.0)).eval()
    hf.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    tok.save(tmp_path / "hf" / "tokenizer.json")
    import_hf(tmp_path / "hf", tmp_path / "run", block_size=64)
    ours, _, _ = load_model(tmp_path / "run")
    assert (ours.cfg.n_kv_head, ours.cfg.rope_theta, ours.cfg.mlp_hidden, ours.cfg.block_size) == (1, 500000.0, 160, 64)
    x = ids_batch(tok)
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() <= TOL
    export_hf(tmp_path / "run", tmp_path / "hf2")
    original = {}
    for f in sorted((tmp_path / "hf").glob("model-*.safetensors")):
        original.update(load_file(f))
    assert_same_tensors(original, load_file(tmp_path / "hf2" / "model.safetensors"))


# ---- errors ------------------------------------------------------------------------------------
def fake_hf_folder(path, **config):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_cli_export_import_and_errors(runs, tmp_path, capsys):
    proc = run_cli("export", runs["llama-gqa"], "--out", tmp_path / "hf")
    assert json.loads(proc.stdout)["architecture"] == "LlamaForCausalLM"
    assert cli_main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0   # in-process: faster
    assert json.loads(capsys.readouterr().out)["preset"] == "llama"

    pickled = fake_hf_folder(tmp_path / "pickled", model_type="gpt2", architectures=["GPT2LMHeadModel"], n_embd=64,
                             n_head=4, n_layer=2, vocab_size=100)
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    proc = run_cli("import", pickled, "--out", tmp_path / "x", check=False)
    assert proc.returncode == 1 and "pickled weights are not loaded" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x" / "config.json").exists()

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"arch": "bert", "model": {}}))
    assert cli_main(["export", str(bert), "--out", str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err
    assert "BertForMaskedLM" in err and "pre-norm" in err and "post-norm" in err


@pytest.mark.parametrize("case,message", [
    ("missing", "not found"),
    ("no_config", "no config.json"),
    ("bert_folder", "BertForMaskedLM model"),
    ("rope_scaling", "rope scaling"),
    ("no_weights", "no model.safetensors"),
    ("out_not_empty", "not an empty folder"),
])
def test_import_errors(tmp_path, capsys, runs, case, message):
    src, out = tmp_path / "src", tmp_path / "out"
    llama = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=64, intermediate_size=160,
                 num_hidden_layers=2, num_attention_heads=4, vocab_size=100)
    if case == "no_config":
        src.mkdir()
    elif case == "bert_folder":
        fake_hf_folder(src, model_type="bert", architectures=["BertForMaskedLM"])
    elif case == "rope_scaling":
        fake_hf_folder(src, **llama, rope_scaling={"rope_type": "llama3", "factor": 8.0})
    elif case == "no_weights":
        fake_hf_folder(src, **llama)
    elif case == "out_not_empty":
        export_hf(runs["gpt2"], src)
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    assert cli_main(["import", str(src), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err and err.startswith("livelm import: error:"), err
    if case == "out_not_empty":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_export_refuses_what_has_no_faithful_mapping(runs, tmp_path, tok):
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=4, n_kv_head=2, d_model=32,
                    **{k: v for k, v in PRESETS["gpt2"].items()})
    save_checkpoint(tmp_path / "gqa", GPT(cfg), tok, {"arch": "gpt", "model": cfg.to_dict()}, step=0)
    with pytest.raises(InteropError, match="grouped-query"):
        export_hf(tmp_path / "gqa", tmp_path / "o1")
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, d_model=32, position="rope")
    save_checkpoint(tmp_path / "mixed", GPT(cfg), tok, {"arch": "gpt", "model": cfg.to_dict()}, step=0)
    with pytest.raises(InteropError, match="no Hugging Face counterpart"):
        export_hf(tmp_path / "mixed", tmp_path / "o2")
    for arch in ("seq2seq", "lstm"):
        (tmp_path / arch).mkdir()
        (tmp_path / arch / "config.json").write_text(json.dumps({"arch": arch, "model": {}}))
        with pytest.raises(InteropError, match="does not export"):
            export_hf(tmp_path / arch, tmp_path / f"o-{arch}")
    # an adapter trained on another base is refused before anything is written
    other = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, d_model=32, **PRESETS["gpt2"]))
    lora.add_adapter(other, "a", lora.LoRAConfig(r=2))
    lora.save_adapter(tmp_path / "ad", other, "a", lora.LoRAConfig(r=2), "elsewhere")
    with pytest.raises(InteropError, match="different base model"):
        export_hf(runs["gpt2"], tmp_path / "o3", adapter_dir=tmp_path / "ad")
    assert not (tmp_path / "o3").exists()
