import json

from livelm.runs import load
from livelm import runs
from tests.conftest import run_cli


def val_losses(run):
    return [json.loads(l)["val_loss"] for l in (run / "metrics.jsonl").read_text().splitlines() if "val_loss" in l]


def test_sft_lowers_assistant_loss(tiny_chat_run):
    losses = val_losses(tiny_chat_run / "chat")
    recs = [json.loads(l) for l in (tiny_chat_run / "chat" / "metrics.jsonl").read_text().splitlines()]
    first_train = next(r["loss"] for r in recs if "loss" in r)
    assert losses[-1] < first_train
    assert "answer_accuracy" in recs[-1]
    cfg = runs.read_config(tiny_chat_run / "chat")
    assert cfg["chat"] is True and cfg["base_run"].endswith("base")


def test_finetune_records_the_system_prompts_it_trained_with(tiny_chat_run, library_chat_run):
    """What live learning puts notes under (livelm/learn/memory.py): the shop's prompts for a run fine-tuned
    on the shop's chats, the library's for one fine-tuned on the library's."""
    from tests.conftest import LIBRARY_PROMPTS
    shop_run = runs.read_config(tiny_chat_run / "chat")
    assert shop_run["system_prompts"] == {"en": "You are the assistant of Maple Leaf Shop.", "zh": "你是枫叶小铺的客服助手。"}
    assert runs.read_config(library_chat_run)["system_prompts"] == LIBRARY_PROMPTS
    _, _, config = runs.load_model(library_chat_run)   # what the loader hands the chat front end
    assert config["system_prompts"] == LIBRARY_PROMPTS


def test_lora_finetune_trains_only_the_adapter(tiny_chat_run, shop_paths, tmp_path):
    out = tmp_path / "adapter"
    res = run_cli("finetune", tiny_chat_run / "base", "--data", shop_paths["chat_train"], "--out", out, "--lora",
                  "--lora-rank", "4", "--max-iters", "15", "--eval-interval", "15", "--accuracy-limit", "0",
                  "--progress", "false", "--batch-size", "4")
    summary = json.loads(res.stdout)
    assert summary["lora"] is True
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "metrics.jsonl", "loss.png"} <= files
    assert "model.safetensors" not in files
    base_bytes = (tiny_chat_run / "base" / "model.safetensors").stat().st_size
    assert (out / "adapter_model.safetensors").stat().st_size < base_bytes / 2
    # the adapter directory loads on its own (its base run is found from adapter_config.json)
    model, tok, _, names = load(out)
    assert names == ["adapter"]
    base, _, _ = runs.load_model(tiny_chat_run / "base")
    n_adapter = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert summary["trainable_params"] == n_adapter < sum(p.numel() for p in base.parameters()) / 4
    # base weights untouched by LoRA training
    sd = model.state_dict()
    for k, v in base.state_dict().items():
        k2 = k.replace(".weight", ".base.weight") if k.replace(".weight", ".base.weight") in sd else k
        assert (sd[k2] - v).abs().max() == 0, k


def test_finetune_reports_bad_lines(tiny_chat_run, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                   "not json\n", encoding="utf-8")
    res = run_cli("finetune", tiny_chat_run / "base", "--data", bad, "--out", tmp_path / "o", check=False)
    assert res.returncode == 1 and "bad.jsonl:2: malformed JSON" in res.stderr and "--skip-bad" in res.stderr
