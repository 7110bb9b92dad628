"""A compressed run is an ordinary run: besides its weights, it keeps what the source run recorded."""
import json

import torch

import livelm.learn.probes  # noqa: F401  (live learning declares its probes.jsonl a run side file)
from livelm.runs import SIDE_FILES, save_tensors as save_run


def test_save_run_keeps_the_tokenizer_and_the_update_guards_probes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "tokenizer.json").write_text('{"kind": "char"}', encoding="utf-8")
    probe = json.dumps({"messages": [{"role": "user", "content": "周末几点开门？"}], "expect": ["10点"]}, ensure_ascii=False)
    (src / "probes.jsonl").write_text(probe + "\n", encoding="utf-8")
    config = {"arch": "gpt", "system_prompts": {"en": "You help readers."}, "quantization": {"method": "int8"}}
    out = save_run(tmp_path / "out", src, {"w": torch.zeros(2)}, config)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "probes.jsonl", "tokenizer.json"]
    assert (out / "probes.jsonl").read_bytes() == (src / "probes.jsonl").read_bytes()
    assert json.loads((out / "config.json").read_text())["system_prompts"] == {"en": "You help readers."}
    # an imported model's tokenizer_config.json (its chat template, stop tokens) goes along
    (src / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}", "eos_token": "<|im_end|>"}')
    out = save_run(tmp_path / "out3", src, {"w": torch.zeros(2)}, config)
    assert (out / "tokenizer_config.json").read_bytes() == (src / "tokenizer_config.json").read_bytes()
    (src / "tokenizer_config.json").unlink()
    (src / "probes.jsonl").unlink()                       # a run without probes: none appear
    assert "probes.jsonl" not in {p.name for p in save_run(tmp_path / "out2", src, {"w": torch.zeros(2)}, config).iterdir()}


def test_only_declared_side_files_are_copied(tmp_path):
    """The run layer names no side file itself: it copies what the layers above declared (or the caller passes)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "tokenizer.json").write_text('{"kind": "char"}', encoding="utf-8")
    (src / "notes.txt").write_text("mine", encoding="utf-8")
    (src / "probes.jsonl").write_text("{}\n", encoding="utf-8")
    assert "probes.jsonl" in SIDE_FILES and "notes.txt" not in SIDE_FILES
    out = save_run(tmp_path / "out", src, {"w": torch.zeros(2)}, {"arch": "gpt"})
    assert not (out / "notes.txt").exists() and (out / "probes.jsonl").is_file()
    out = save_run(tmp_path / "out2", src, {"w": torch.zeros(2)}, {"arch": "gpt"}, side_files=["notes.txt"])
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine" and not (out / "probes.jsonl").exists()
