"""Pruning: sparse storage, structured removal of heads / MLP channels, recovery fine-tune, CLI errors."""
import json

import pytest
import torch

from livelm.cli import main
from livelm.compress.prune import head_layout, magnitude_prune, prune_heads, prune_mlp
from livelm.runs import densify, sparsify
from livelm.models.gpt import GPT, GPTConfig, PRESETS
from livelm.runs import load_model
from tests.conftest import run_cli


def tiny(preset: str, **kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, n_layer=2, n_head=4, d_model=64, block_size=32, **PRESETS[preset])
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def test_sparse_storage_round_trip():
    w = torch.randn(37, 29)
    w[w.abs() < 0.7] = 0
    stored = sparsify({"w": w, "b": torch.ones(3)}, ["w"])
    assert set(stored) == {"w.mask", "w.values", "b"}
    assert stored["w.mask"].dtype == torch.uint8 and stored["w.mask"].numel() == (37 * 29 + 7) // 8
    assert stored["w.values"].numel() == int((w != 0).sum())
    assert torch.equal(densify(stored, ["w"], {"w": w.shape})["w"], w)


@pytest.mark.parametrize("heads, kv, amount, expected", [
    (4, 2, 0.5, (2, 1)),     # drop one whole K/V group
    (4, 1, 0.5, (2, 1)),     # one group: drop query heads inside it
    (8, 4, 0.25, (6, 3)),
    (4, 4, 0.5, (2, 2)),     # plain multi-head attention
    (8, 2, 0.25, (6, 2)),    # 6 heads: 3 per group is closer than dropping a group (4)
])
def test_head_layout_keeps_gqa_consistent(heads, kv, amount, expected):
    cfg = GPTConfig(vocab_size=10, n_head=heads, n_kv_head=kv, d_model=64)
    assert head_layout(cfg, amount) == expected


def zero_heads(model: GPT, kept: list[list[int]]) -> None:
    """The reference: removing a head is the same as zeroing what it writes (its o_proj columns)."""
    D = model.cfg.head_dim
    with torch.no_grad():
        for block, heads in zip(model.blocks, kept):
            for h in range(model.cfg.n_head):
                if h not in heads:
                    block.attn.o_proj.weight[:, h * D:(h + 1) * D] = 0


@pytest.mark.parametrize("preset, kv", [("llama", 2), ("llama", 1), ("gpt2", 4)])
def test_pruned_heads_equal_zeroed_heads(preset, kv):
    model = tiny(preset, n_kv_head=kv)
    pruned, record = prune_heads(model, 0.5)
    assert pruned.cfg.n_head == 2 and pruned.cfg.head_dim == model.cfg.head_dim
    assert pruned.num_params() < model.num_params()
    zero_heads(model, record["kept_heads"])
    x = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x), atol=1e-5)


@pytest.mark.parametrize("preset", ["llama", "gpt2"])
def test_pruned_mlp_equals_zeroed_channels(preset):
    model = tiny(preset, n_kv_head=2 if preset == "llama" else 0, d_model=96)
    pruned, record = prune_mlp(model, 0.5)
    before, after = record["mlp_hidden"]
    assert pruned.cfg.mlp_hidden == after and after <= before // 2 + 32
    with torch.no_grad():   # which channels survived: match the pruned up_proj rows back to the original's
        for b_old, b_new in zip(model.blocks, pruned.blocks):
            up_old, up_new = b_old.mlp.up_proj.weight, b_new.mlp.up_proj.weight
            kept = [int((up_old == row).all(1).nonzero()) for row in up_new]
            drop = [j for j in range(before) if j not in kept]
            b_old.mlp.down_proj.weight[:, drop] = 0
    x = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x), atol=1e-5)


@pytest.mark.parametrize("method", ["heads", "mlp"])
def test_structured_pruned_run_is_smaller_and_generates(tiny_llama_run, tmp_path, capsys, method):
    out = tmp_path / method
    assert main(["prune", str(tiny_llama_run), "--out", str(out), "--method", method, "--amount", "0.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"] < report["source_params"]
    assert report["size_mb"] < 0.95 * report["source_size_mb"]
    model, _, config = load_model(out)
    assert config["pruning"]["method"] == method
    if method == "heads":
        assert (model.cfg.n_head, model.cfg.n_kv_head) == (2, 1) and model.blocks[0].attn.q_proj.out_features == 32
    else:
        assert model.cfg.mlp_hidden == 96
    assert main(["generate", str(out), "--prompt", "First", "--max-tokens", "20", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip()


def test_magnitude_pruned_run_is_stored_sparsely(tiny_llama_run, tmp_path, capsys):
    out = tmp_path / "mag"
    assert main(["prune", str(tiny_llama_run), "--out", str(out), "--method", "magnitude", "--amount", "0.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sparsity"] >= 0.5
    # the block matrices are ~93% of this model: 0.125 + 0.5 * 4 bytes per weight instead of 4
    assert report["size_mb"] < 0.65 * report["source_size_mb"]
    model, _, config = load_model(out)
    w = model.blocks[0].mlp.up_proj.weight
    assert 0.5 <= (w == 0).float().mean() < 0.52 and "blocks.0.mlp.up_proj.weight" in config["sparse"]
    ref, _, _ = load_model(tiny_llama_run)
    magnitude_prune(ref, 0.5)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    # and generates in a real subprocess
    assert run_cli("generate", out, "--prompt", "First", "--max-tokens", "20", "--temperature", "0").stdout.strip()


@pytest.mark.parametrize("method", ["magnitude", "heads"])
def test_recovery_finetune(tiny_llama_run, char_data, tmp_path, capsys, method):
    out = tmp_path / method
    assert main(["prune", str(tiny_llama_run), "--out", str(out), "--method", method, "--amount", "0.5",
                 "--finetune-data", str(char_data), "--finetune-iters", "20"]) == 0
    report = json.loads(capsys.readouterr().out)
    print(method, {k: report[k] for k in ("source_perplexity", "pruned_perplexity", "finetuned_perplexity")})
    assert report["pruned_perplexity"] > report["source_perplexity"]      # pruning costs something ...
    assert report["finetuned_perplexity"] < report["pruned_perplexity"]   # ... the fine-tune wins some back
    model, _, config = load_model(out)
    assert config["step"] == 20 and config["pruning"]["method"] == method
    if method == "magnitude":   # pruned weights stayed zero through the fine-tune
        assert (model.blocks[1].attn.o_proj.weight == 0).float().mean() >= 0.5


def test_prune_cli_errors(tiny_llama_run, tmp_path, capsys):
    def fails(*args, code=1):
        if code == 2:
            with pytest.raises(SystemExit) as e:
                main(["prune", *map(str, args)])
            assert e.value.code == 2
        else:
            assert main(["prune", *map(str, args)]) == 1
        return capsys.readouterr().err

    out = tmp_path / "x"
    assert "invalid choice" in fails(tiny_llama_run, "--out", out, "--method", "random", code=2)
    assert "--amount must be between 0 and 1" in fails(tiny_llama_run, "--out", out, "--method", "mlp", "--amount", "1.5")
    assert "--amount must be between 0 and 1" in fails(tiny_llama_run, "--out", out, "--method", "heads", "--amount", "0")
    assert "run directory not found" in fails(tmp_path / "nope", "--out", out, "--method", "mlp")
    assert "needs --finetune-data" in fails(tiny_llama_run, "--out", out, "--method", "mlp", "--finetune-iters", "5")
    assert "removes no head" in fails(tiny_llama_run, "--out", out, "--method", "heads", "--amount", "0.1")
    assert main(["quantize", str(tiny_llama_run), "--out", str(tmp_path / "q"), "--method", "int8"]) == 0
    assert "is quantized" in fails(tmp_path / "q", "--out", out, "--method", "mlp")
