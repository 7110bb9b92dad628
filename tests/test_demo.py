"""`make demo`'s cache key: the default assistant is rebuilt when what it is built from changes, and only then."""
import dataclasses

from livelm import demo
from livelm.data import shop


def test_recipe_hash_follows_the_corpus_not_the_generator_source(monkeypatch):
    key = demo.recipe_hash()
    assert key == demo.recipe_hash()   # deterministic: the corpus is generated from a fixed seed
    real = shop.build

    def edited(seed, **kw):   # the generator now writes one Chinese answer differently
        corpus = real(seed, **kw)
        chats = [dict(c) for c in corpus.train_chats]
        chats[0] = {"messages": chats[0]["messages"][:-1] + [{"role": "assistant", "content": "营业时间改了 🕘"}]}
        return dataclasses.replace(corpus, train_chats=chats)

    monkeypatch.setattr(shop, "build", edited)
    assert demo.recipe_hash() != key
    monkeypatch.setattr(shop, "build", real)
    monkeypatch.setattr(demo, "FINETUNE", {**demo.FINETUNE, "max_iters": 701})   # the recipe itself
    assert demo.recipe_hash() != key


def test_an_assistant_built_before_runs_recorded_their_prompts_and_probes_gets_them(tmp_path):
    """runs/assistant built by an older livelm has neither config.json "system_prompts" nor probes.jsonl;
    the demo adds both (its build is keyed on the corpus, which has not changed) and leaves a run that has
    them as it is."""
    import json

    from livelm.learn.probes import read_probes
    chat = tmp_path / "chat"
    chat.mkdir()
    old = {"arch": "gpt", "chat": True, "data": "/elsewhere/chat_train.jsonl", "step": 700}
    (chat / "config.json").write_text(json.dumps(old), encoding="utf-8")
    demo.record_for_learning(chat)
    assert json.loads((chat / "config.json").read_text(encoding="utf-8")) == {
        **old, "system_prompts": {"en": shop.SYSTEM_PROMPT_EN, "zh": shop.SYSTEM_PROMPT_ZH}}
    heldout = shop.build(demo.SEED, n_chats=10, pretrain_bytes=1000).heldout_chats
    probes = read_probes(chat / "probes.jsonl", "run")
    assert [p["messages"] for p in probes] == [c["messages"][:-1] for c in heldout]
    assert sorted(p.name for p in chat.iterdir()) == ["config.json", "probes.jsonl"]    # no temporary files
    # a run that has both is left alone (here: an operator trimmed its probes)
    (chat / "probes.jsonl").write_text((chat / "probes.jsonl").read_text(encoding="utf-8").splitlines()[0] + "\n",
                                       encoding="utf-8")
    before = {p.name: p.read_bytes() for p in chat.iterdir()}
    demo.record_for_learning(chat)
    assert {p.name: p.read_bytes() for p in chat.iterdir()} == before
