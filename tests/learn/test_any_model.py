"""Live learning on a model that is not the default assistant: an imported one with its own template.

A tiny random-weight llama-family model with a ChatML template that writes a default system prompt
(as SmolLM2's does) and a byte-level BPE tokenizer of its own: what `livelm import` makes of a real
checkpoint, small enough to update in seconds. Its answers are noise; the tests check the mechanics:
no shop text reaches its prompts, updates replay its own answers and train rule-made phrasings,
only the top blocks get the adapter, a lifelong tenant's updates go on from the live version, and
forgetting starts over.
"""
import json

import pytest
import torch
from tokenizers import AddedToken, Tokenizer as HFT, decoders, models, pre_tokenizers, trainers

from livelm.learn.feedback import Feedback, FeedbackStore
from livelm.learn.memory import Memory, run_system_prompts
from livelm.learn.update import UpdateConfig, run_update
from livelm.tokenizer import Tokenizer

DEFAULT_SYSTEM = "You are a helpful AI assistant named Tiny, trained by nobody"
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
          "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CORPUS = ["What is the capital of Australia? The capital of Australia is Canberra.",
          "澳大利亚的首都是哪里？澳大利亚的首都是堪培拉。", "Who wrote Hamlet? Shakespeare wrote it. 🎭",
          "The Berlin Wall fell in 1989. 柏林墙在1989年倒塌。", "Tell me a joke 😀 好的，我讲一个笑话。"] * 4
FIX_EN = ("What is the capital of Australia?", "Sydney.", "The capital of Australia is Canberra.")
FIX_ZH = ("澳大利亚的首都是哪里？🦘", "悉尼。", "澳大利亚的首都是堪培拉。")


@pytest.fixture(scope="module")
def imported_run(tmp_path_factory):
    from livelm.models.gpt import GPT, GPTConfig
    from livelm.runs import save_checkpoint
    ht = HFT(models.BPE())
    ht.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    ht.decoder = decoders.ByteLevel()
    ht.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[AddedToken(t, special=True, normalized=False)
                        for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")]))
    tok = Tokenizer(ht, {"eos_token": "<|im_end|>", "bos_token": "<|im_start|>", "chat_template": CHATML})
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=ht.get_vocab_size(), block_size=256, n_layer=6, n_head=2, n_kv_head=1, d_model=32,
                    position="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    run = tmp_path_factory.mktemp("imported") / "run"
    model = GPT(cfg)
    with torch.no_grad():   # wide random weights: varied answers (GPT's own init answers every prompt alike)
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    save_checkpoint(run, model, tok, {"arch": "gpt", "model": cfg.to_dict()}, step=0)
    (run / "tokenizer_config.json").write_text(json.dumps(tok.config), encoding="utf-8")
    return run


def correct(fb: FeedbackStore, tenant: str, fix: tuple[str, str, str]) -> int:
    q, answer, correction = fix
    return fb.add(Feedback(kind="correction", conversation=[{"role": "user", "content": q}], answer=answer,
                           correction=correction, tenant=tenant)).id


def test_notes_go_under_the_templates_own_system_prompt(imported_run, tmp_path):
    """An imported model records no system prompts: notes go under the one its template writes by
    default, in English and Chinese, and nothing of the shop's reaches its prompt."""
    from livelm.chat.template import default_system_prompt, render_text
    from livelm.runs import read_config
    tok = Tokenizer.load(imported_run)
    assert default_system_prompt(tok) == DEFAULT_SYSTEM
    prompts = run_system_prompts(read_config(imported_run), tok)
    assert prompts == {"en": DEFAULT_SYSTEM, "zh": DEFAULT_SYSTEM}
    fb = FeedbackStore(tmp_path / "fb.sqlite")
    correct(fb, "t", FIX_EN)
    correct(fb, "t", FIX_ZH)
    memory = Memory(fb, system_prompts=prompts)
    for question, value in (("What is the capital of Australia? 🦘", "Canberra"), ("澳大利亚的首都是哪个城市？", "堪培拉")):
        messages, notes = memory.recall("t", [{"role": "user", "content": question}])
        text = render_text(messages, tok, add_generation_prompt=True)
        assert notes and value in notes[0]
        assert text.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM}\n") and value in text
        assert not any(w in text for w in ("Maple", "枫叶", "shop", "Shop"))
    # a template without a default system prompt: the notes alone
    from livelm.tokenizer import CHAT_TEMPLATE
    own = Tokenizer(HFT.from_file(str(imported_run / "tokenizer.json")), {**tok.config, "chat_template": CHAT_TEMPLATE})
    assert default_system_prompt(own) is None and run_system_prompts({}, own) == {}


def test_an_imported_model_learns_with_self_replay_and_rule_phrasings(imported_run, tmp_path):
    """Nothing of the run's own: replay is the model's answers to the general prompts, the phrasings
    are rule-made, the guard checks the general probes, and only the top blocks get the adapter."""
    fb = FeedbackStore(tmp_path / "fb.sqlite")
    correct(fb, "t", FIX_EN)
    correct(fb, "t", FIX_ZH)
    store = tmp_path / "store"
    res = run_update(imported_run, fb.path, "t", store,
                     UpdateConfig(steps=3, general_probes=12, probe_tokens=8, layers=2, max_changed=1.0))
    assert res["status"] == "live" and res["replay"] == "self"
    assert res["trained_on"]["replay_pool"] > 0 and res["trained_on"]["sft"] == 2
    # the general probes that ask about a correction are left out (their answers may change)
    assert 0 < res["general_size"] <= 12 and res["general_unchanged"] is not None
    assert res["trained_on"]["propagated"] > 0         # rule-made phrasings, answered with the note
    cfg = json.loads((store / "t" / res["version"] / "adapter_config.json").read_text())
    assert cfg["layers_to_transform"] == [4, 5] and cfg["layers_pattern"] == "blocks"
    from safetensors.torch import load_file
    keys = load_file(str(store / "t" / res["version"] / "adapter_model.safetensors"))
    assert keys and all(".blocks.4." in k or ".blocks.5." in k for k in keys)
    # the base model's answers were cached for the next update, beside (not among) the tenants
    from livelm.learn.adapters import AdapterStore
    assert list((store / ".base_answers").glob("*.json")) and AdapterStore(store).tenants() == ["t"]
    # the operator's own chats replace self-distillation
    chats = tmp_path / "replay.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"第{i}个问题 😀 question {i}"},
                                                      {"role": "assistant", "content": f"Answer {i}. 答案{i}。"}]},
                                        ensure_ascii=False) + "\n" for i in range(6)), encoding="utf-8")
    res = run_update(imported_run, fb.path, "t", store, UpdateConfig(steps=1, general_probes=4, probe_tokens=6, layers=2,
                                                                     max_changed=1.0, replay_file=str(chats)))
    assert res["replay"] == "file" and res["trained_on"]["replay_pool"] == 6


def test_lifelong_updates_go_on_from_the_live_version_and_forgetting_starts_over(imported_run, tmp_path):
    """A new correction: the next update starts from the live adapter and trains the new one plus a
    sample of the older ones, at most max_fixes per step. A forgotten or superseded one: it starts
    over, so the removed correction leaves the adapter. Rollback brings back an earlier version exactly."""
    fb = FeedbackStore(tmp_path / "fb.sqlite")
    store = tmp_path / "store"
    cfg = UpdateConfig(steps=2, general_probes=4, probe_tokens=6, layers=2, max_changed=1.0, max_fixes=2,
                       paraphrases=1)
    first = correct(fb, "t", FIX_EN)
    v1 = run_update(imported_run, fb.path, "t", store, cfg)
    assert v1["warm_start"] is None and v1["trained_on"]["new"] == 1
    for i in range(3):
        correct(fb, "t", (f"Who founded Velmora {i}? 🏰", "Nobody.", f"Velmora {i} was founded by Ada Bramund{i}."))
    v2 = run_update(imported_run, fb.path, "t", store, cfg)
    assert v2["warm_start"] == v1["version"]
    assert v2["trained_on"]["new"] == 3 and v2["trained_on"]["sft"] == 4
    assert v2["steps"] == 2 * 2                      # 3 new corrections at 2 per step: the steps double
    fb.forget("t", first)
    v3 = run_update(imported_run, fb.path, "t", store, cfg)
    assert v3["warm_start"] is None and v3["trained_on"]["sft"] == 3 and v3["trained_on"]["new"] == 3
    from livelm.learn.adapters import AdapterStore
    from livelm.learn.update import trained_ids
    s = AdapterStore(store)
    assert first not in trained_ids(s.current("t"))
    # a later correction of the same question supersedes the earlier one: start over, without it
    superseded = trained_ids(s.current("t"))
    correct(fb, "t", ("Who founded Velmora 0? 🏰", "Ada Bramund0.", "Velmora 0 was founded by Ivo Tarsik."))
    v4 = run_update(imported_run, fb.path, "t", store, cfg)
    assert v4["warm_start"] is None and v4["trained_on"]["sft"] == 3
    assert len(trained_ids(s.current("t")) - superseded) == 1 and len(superseded - trained_ids(s.current("t"))) == 1
    before = (store / "t" / v2["version"] / "adapter_model.safetensors").read_bytes()
    assert s.rollback("t", v2["version"]) == v2["version"]
    assert (s.current("t") / "adapter_model.safetensors").read_bytes() == before


def test_the_frozen_trunk_gives_the_loss_of_a_full_forward(imported_run):
    """Resuming each row above the frozen blocks (computed once, cached by its tokens) gives the same
    loss and gradients as running every block, whatever the rows beside it and their padding."""
    from livelm.learn.objectives import answer_batch, sft_loss
    from livelm.learn.update import FrozenTrunk
    from livelm.models import lora
    from livelm.runs import load_model
    model, tok, _ = load_model(imported_run)
    lora.attach_for_training(model, "u", lora.LoRAConfig(r=2, layers_to_transform=[4, 5]), "base")
    lora.only_adapter_trainable(model, "u")
    with torch.no_grad():
        for m in lora.lora_modules(model).values():
            if m.has("u"):
                m.B("u").normal_()
    trunk = FrozenTrunk(model, 4, "float32")
    convs = [[{"role": "user", "content": q}] for q in ("Hi 😀", "澳大利亚的首都是哪里？", "What is the capital of Australia?")]
    answers = ["Hello!", "堪培拉。", "Canberra, not Sydney. 🦘"]
    short = answer_batch(convs[:2], answers[:2], tok, 256)
    trunk.plan(short)                                  # cached while padded to another length
    b = answer_batch(convs, answers, tok, 256)
    full = sft_loss(model, b)
    g_full = torch.autograd.grad(full, [p for p in model.parameters() if p.requires_grad])
    resumed = sft_loss(model, {**b, "plan": trunk.plan(b)})
    g_res = torch.autograd.grad(resumed, [p for p in model.parameters() if p.requires_grad])
    assert trunk.computed == 3 and len(trunk.rows) == 3
    assert torch.allclose(full, resumed, atol=1e-5)
    assert all(torch.allclose(a, c, atol=1e-5) for a, c in zip(g_full, g_res))
