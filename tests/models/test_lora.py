import torch

from livelm.models import lora
from livelm.models.gpt import GPT, GPTConfig, PRESETS


def tiny():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, d_model=16, **PRESETS["llama"]))


def test_adapter_only_training_changes_only_adapter_tensors():
    model = tiny()
    lora.add_adapter(model, "a", lora.LoRAConfig(r=4))
    lora.set_active(model, "a")
    lora.only_adapter_trainable(model, "a")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randint(0, 50, (2, 16))
    for _ in range(5):
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad(); loss.backward(); opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".lora_" in k for k in changed)
    assert any(".lora_B." in k for k in changed)


def test_merge_equals_unmerged_and_unmerge_restores():
    model = tiny().eval()
    x = torch.randint(0, 50, (2, 12))
    base_out = model(x)
    lora.add_adapter(model, "a", lora.LoRAConfig(r=4))
    for m in lora.lora_modules(model).values():
        torch.nn.init.normal_(m.B("a"), std=0.1)
    lora.set_active(model, "a")
    unmerged = model(x)
    assert (unmerged - base_out).abs().max() > 1e-3
    lora.merge(model, "a")
    merged = model(x)
    assert (merged - unmerged).abs().max() < 1e-5
    lora.unmerge(model)
    lora.set_active(model, None)
    assert (model(x) - base_out).abs().max() < 1e-5


def test_save_load_round_trip_in_peft_layout(tmp_path):
    model = tiny().eval()
    lora.add_adapter(model, "a", lora.LoRAConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for m in lora.lora_modules(model).values():
        torch.nn.init.normal_(m.B("a"), std=0.1)
    lora.set_active(model, "a")
    x = torch.randint(0, 50, (1, 10))
    want = model(x)
    lora.save_adapter(tmp_path, model, "a", lora.LoRAConfig(r=4, target_modules=["q_proj", "v_proj"]), "base")
    cfg = __import__("json").loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["target_modules"] == ["q_proj", "v_proj"]
    from safetensors.torch import load_file
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert "base_model.model.blocks.0.attn.q_proj.lora_A.weight" in keys and len(keys) == 2 * 2 * 2
    fresh = tiny().eval()
    lora.load_adapter(fresh, tmp_path, "b")
    lora.set_active(fresh, "b")
    assert (fresh(x) - want).abs().max() < 1e-6


def test_rows_use_their_own_adapters_in_one_batch():
    model = tiny().eval()
    for name in ("a", "b"):
        lora.add_adapter(model, name, lora.LoRAConfig(r=2))
        for m in lora.lora_modules(model).values():
            torch.nn.init.normal_(m.B(name), std=0.2)
    x = torch.randint(0, 50, (3, 8))
    alone = []
    for row, name in enumerate(["a", None, "b"]):
        lora.set_active(model, name)
        alone.append(model(x[row:row + 1]))
    lora.set_row_adapters(model, ["a", None, "b"])
    batched = model(x)
    for row in range(3):
        assert (batched[row] - alone[row][0]).abs().max() < 1e-5
