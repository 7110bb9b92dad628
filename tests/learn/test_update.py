"""Adapter updates from feedback: the answer changes, the guard rejects poison, rollback restores."""
import json
from pathlib import Path

import pytest

from livelm.chat.template import prompt_ids
from livelm.infer.engine import Engine
from livelm.runs import load
from livelm.sampling import SamplingParams
from livelm.learn.adapters import AdapterStore
from livelm.learn.feedback import Feedback, FeedbackStore
from livelm.learn.update import UpdateConfig, run_update
from tests.conftest import run_cli

Q_A = [{"role": "user", "content": "How much is delivery?"}]
Q_B = [{"role": "user", "content": "周末几点开门？"}]


def answer(run, conv, adapter_dir=None):
    model, tok, _, _ = load(run, [adapter_dir] if adapter_dir else [])
    out = Engine(model, tok).generate([prompt_ids(conv, tok)], SamplingParams(max_tokens=16, temperature=0))
    return out[0].text


@pytest.fixture()
def setup(tiny_chat_run, tmp_path):
    run = tiny_chat_run / "chat"
    return run, FeedbackStore(tmp_path / "fb.sqlite"), tmp_path / "adapters"


def test_update_changes_the_answer_and_rollback_restores_it(setup, tmp_path):
    run, fb, store_root = setup
    before = answer(run, Q_A)
    fb.add(Feedback(kind="correction", conversation=Q_A, answer=before, correction="运费12元。", tenant="alice"))
    res = run_update(run, fb.path, "alice", store_root, UpdateConfig(steps=40, lr=1e-2, probe_size=8, max_drop=1.0, correction_pairs=True))
    assert res["status"] == "live" and res["trained_on"]["sft"] == 1 and res["trained_on"]["dpo"] == 1
    store = AdapterStore(store_root)
    live = store.current("alice")
    assert (live / "adapter_model.safetensors").is_file() and (live / "adapter_config.json").is_file()
    assert answer(run, Q_A, live) == "运费12元。"
    # another tenant has no adapter: its answers come from the base model, unchanged
    assert store.current("bob") is None and answer(run, Q_A) == before
    # promoting merges it into a new base run (which answers every question with it, and says so)
    promoted = tmp_path / "promoted"
    res = run_cli("learn", run, "--tenant", "alice", "--store", store_root, "--promote", "--out", promoted)
    assert json.loads(res.stdout)["merged"] == str(live) and "answers every question" in res.stderr
    assert answer(promoted, Q_A) == "运费12元。" and answer(promoted, Q_B) == answer(run, Q_B, live)
    for args, message in (([], "needs --out"), (["--tenant", "bob", "--out", tmp_path / "x"], "no live adapter")):
        bad = run_cli("learn", run, "--store", store_root, "--promote", *args, check=False)
        assert bad.returncode != 0 and message in bad.stderr and not (tmp_path / "x").exists()
    assert store.rollback("alice") is None
    assert store.current("alice") is None


def test_guard_rejects_an_update_that_breaks_the_probe_set(setup, tmp_path):
    run, fb, store_root = setup
    # the operator's regression file: answers the model gives today that must keep working
    reg = tmp_path / "regression.jsonl"
    today = answer(run, Q_B)
    reg.write_text(json.dumps({"messages": Q_B, "expect": today}, ensure_ascii=False) + "\n", encoding="utf-8")
    # poison: many "corrections" that teach it to answer the regression question with garbage
    for _ in range(4):
        fb.add(Feedback(kind="correction", conversation=Q_B, answer=today, correction="zzz zzz zzz", tenant="mallory"))
    res = run_update(run, fb.path, "mallory", store_root,
                     UpdateConfig(steps=40, lr=1e-2, probe_size=0, regression_file=str(reg), max_drop=0.05))
    assert res["status"] == "rejected" and res["probe_before"] == 1.0 and res["probe_after"] < 1.0
    store = AdapterStore(store_root)
    assert store.current("mallory") is None
    assert [v["status"] for v in store.versions("mallory")] == ["rejected"]


def test_no_trainable_feedback_is_skipped(setup):
    run, fb, store_root = setup
    fb.add(Feedback(kind="fact", conversation=[], correction="We open at 7am.", tenant="carol"))
    assert run_update(run, fb.path, "carol", store_root, UpdateConfig())["status"] == "skipped"


def test_replay_data_is_found_after_the_run_and_its_data_move(tiny_chat_run, tmp_path, capsys):
    """A run copied to another machine with its data still replays: the data is also recorded relative
    to the run. When it is gone, the update says so instead of silently training without replay."""
    import shutil

    from livelm.learn.update import replay_pool
    config = json.loads((tiny_chat_run / "chat" / "config.json").read_text())
    # finetune records the data both ways
    assert (tiny_chat_run / "chat" / config["data_relative"]).resolve() == Path(config["data"])
    # a deployment that keeps the run beside its data, copied to another machine
    site = tmp_path / "new-machine"
    shutil.copytree(tiny_chat_run / "chat", site / "runs" / "chat")
    data = site / "corpus" / "chat.jsonl"
    data.parent.mkdir()
    shutil.copy(config["data"], data)
    gone = {**config, "data": "/old-machine/corpus/chat.jsonl", "data_relative": "../../corpus/chat.jsonl"}
    pool = replay_pool(gone, site / "runs" / "chat")
    assert pool and all(c[-1]["role"] == "assistant" for c in pool)
    # Alpaca-style JSON (an array) is replayed too
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "运费多少？", "input": "", "output": "运费12元。🚚"}],
                                 ensure_ascii=False), encoding="utf-8")
    assert replay_pool({"data": str(alpaca)}, site / "runs" / "chat")[0][-1] == \
        {"role": "assistant", "content": "运费12元。🚚"}
    data.unlink()
    assert replay_pool(gone, site / "runs" / "chat") == []
    assert "training chats" in capsys.readouterr().err


def test_related_chats_are_other_phrasings_of_the_corrected_question():
    from livelm.learn.memory import related_chats
    old = "Delivery in the city costs ¥10."
    pool = [[{"role": "system", "content": "Notes:\n- 🚚"}, {"role": "user", "content": "How much is delivery?"},
             {"role": "assistant", "content": old}],
            [{"role": "user", "content": "同城 delivery fee? 🚚"}, {"role": "assistant", "content": "City delivery costs ¥10."}],
            [{"role": "user", "content": "Do you deliver?"}, {"role": "assistant", "content": "Yes."}],
            [{"role": "user", "content": "Opening hours?"}, {"role": "assistant", "content": "9am to 9pm."}],
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},    # two questions
             {"role": "user", "content": "Delivery?"}, {"role": "assistant", "content": old}]]
    fixes = [Feedback(kind="correction", conversation=pool[0][1:2], answer=old, correction="Delivery costs ¥12."),
             Feedback(kind="correction", conversation=[{"role": "user", "content": "周末几点开门？"}],
                      answer="周末早上10点开门。", correction="周末早上11点开门。")]
    got = related_chats(fixes, pool)
    # asked without the training chat's system prompt; the answer that shares no terms and the
    # two-question chat are not related
    assert got == [(pool[0][1:2], old, 0), (pool[1][:1], "City delivery costs ¥10.", 0)]
    assert related_chats([], pool) == [] and related_chats(fixes, []) == []


def test_distilled_rows_carry_the_correction_and_never_the_old_fact(tiny_chat_run):
    """The update's rows for other phrasings: the model's own answers with the correction as a note.
    Each kept answer names a term of the correction that the corrected answer lacks (the new value)."""
    from livelm.learn.memory import related_chats, terms
    from livelm.learn.update import distilled, replay_pool
    model, tok, run_config, _ = load(tiny_chat_run / "chat", [])
    pool = replay_pool(run_config, tiny_chat_run / "chat")
    # a training chat's question and answer, corrected to a new price
    chats = ([m for m in c if m["role"] != "system"] for c in pool)
    chat = next(c for c in chats if len(c) == 2 and "¥" in c[1]["content"] and c[0]["content"].isascii())
    old = chat[1]["content"]
    fix = Feedback(kind="correction", conversation=chat[:1], answer=old,
                   correction=old.replace("¥", "¥1") + " 🚚")
    related = related_chats([fix], pool)
    rows = distilled(model, tok, [(p, fix) for p, _, _ in related[:6]], seed=0)
    new = set(terms(fix.correction)) - set(terms(old))
    assert related and rows and len(rows) <= 6
    assert all(p in [r[0] for r in related] and new & set(terms(a)) for p, a in rows)


def test_an_update_that_fails_in_its_process_says_why(setup, tmp_path, caplog):
    """The server runs updates in a forked process; an error there comes back as a RuntimeError that
    names it (the learner logs it and keeps serving), a good update comes back as its result, and the
    update's warnings reach the server's log."""
    import logging
    import shutil
    from livelm.learn.live import LearnConfig, run_update_process
    run, fb, store_root = setup
    fb.add(Feedback(kind="correction", conversation=Q_A, answer="?", correction="运费12元。🚚", tenant="dave"))
    bad = LearnConfig(update=UpdateConfig(replay_loss="bogus", steps=1, probe_size=0))
    with pytest.raises(RuntimeError, match="ValueError: replay_loss must be 'kl' or 'sft'"):
        run_update_process(run, fb.path, "dave", store_root, bad)
    good = LearnConfig(update=UpdateConfig(steps=2, probe_size=2, max_drop=1.0))
    res = run_update_process(run, fb.path, "dave", store_root, good)
    assert res["status"] == "live" and AdapterStore(store_root).current("dave").name == res["version"]
    moved = tmp_path / "moved"                      # a run whose training chats are gone
    shutil.copytree(run, moved)
    config = json.loads((moved / "config.json").read_text())
    config.update(data=str(tmp_path / "gone.jsonl"), data_relative="")
    (moved / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="livelm.learn"):
        assert run_update_process(moved, fb.path, "dave", tmp_path / "store2", good)["status"] == "live"
    assert "training chats" in caplog.text and "dave" in caplog.text


def test_the_guard_leaves_out_probes_whose_answer_states_a_corrected_fact():
    """A correction legitimately changes the answers to other phrasings of its question: the guard
    must not count them as broken (it did when only the question's words were compared)."""
    from livelm.learn.update import unrelated
    fix = Feedback(kind="correction", conversation=[{"role": "user", "content": "Can I get an invoice?"}],
                   answer="We provide e-invoices for every order.", correction="Yes, we issue paper invoices by email.")
    probes = [{"messages": [{"role": "user", "content": "Do you provide invoices?"}]},     # a rephrasing
              {"messages": [{"role": "user", "content": "可以开发票吗？🧾"}]},                  # answered alike
              {"messages": [{"role": "user", "content": "Can I get an invoice, please?"}]},  # the same words
              {"messages": [{"role": "user", "content": "How much is delivery?"}]},          # unrelated
              {"messages": [{"role": "user", "content": "Can I get an invoice?"}], "expect": ["invoice"],
               "source": "operator"},
              {"messages": [{"role": "user", "content": "Can I get an invoice?"}], "expect": ["invoice"],
               "source": "run"}]
    answers = ["We provide e-invoices for every order.", "We provide e-invoices for every order. 🧾",
               "Sorry?", "Delivery costs ¥8.", "anything", "anything"]
    assert unrelated(probes, answers, [fix]) == [3, 4]     # the operator's probes always count, the run's may not
    assert unrelated(probes, answers, []) == [0, 1, 2, 3, 4, 5]


def test_a_later_correction_of_the_same_question_supersedes_the_earlier_one():
    from livelm.learn.update import latest_corrections
    q = [{"role": "user", "content": "How much is delivery? 🚚"}]
    items = [Feedback(id=1, kind="correction", conversation=q, answer="¥8", correction="Delivery costs ¥10."),
             Feedback(id=2, kind="correction", conversation=[{"role": "user", "content": "周末几点开门？"}],
                      answer="10点", correction="周末11点开门。"),
             Feedback(id=3, kind="up", conversation=q, answer="¥8"),
             Feedback(id=4, kind="correction", conversation=[{"role": "user", "content": " how much is  DELIVERY? 🚚"}],
                      answer="Delivery costs ¥10.", correction="Delivery costs ¥12.")]
    assert [r.id for r in latest_corrections(items)] == [2, 4]


def test_a_run_without_probes_is_guarded_by_general_and_operator_probes(library_chat_run, tmp_path, capsys):
    """A run fine-tuned on other chats is never probed with the demo shop's questions: it records no
    probes, so the guard grades the operator's --regression-file and checks that the project's general
    probes keep their answers, and the update says so."""
    from livelm.learn.probes import probe_set
    q = [{"role": "user", "content": "When does the library open?"}]
    fb = FeedbackStore(tmp_path / "fb.sqlite")
    fb.add(Feedback(kind="correction", conversation=q, answer="?", correction="The library opens at 9am.", tenant="t"))
    reg = tmp_path / "regression.jsonl"
    reg.write_text(json.dumps({"messages": [{"role": "user", "content": "可以在网上续借吗？📚"}],
                               "expect": ["网站", "网上"], "lang": "zh"}, ensure_ascii=False) + "\n", encoding="utf-8")
    probes = probe_set(library_chat_run, 60, 0, str(reg))
    assert [(p["source"], p["expect"], p["lang"]) for p in probes] == [("operator", ["网站", "网上"], "zh")]
    res = run_update(library_chat_run, fb.path, "t", tmp_path / "store",
                     UpdateConfig(steps=2, probe_size=60, max_drop=1.0, regression_file=str(reg), propagate=0))
    assert res["status"] == "live" and res["probe_size"] == 1
    assert probe_set(library_chat_run, 60, 0, None) == []          # without the operator's: nothing to check,
    bare = run_update(library_chat_run, fb.path, "t", tmp_path / "store",    # and no figure that JSON cannot hold
                      UpdateConfig(steps=1, probe_size=60, max_drop=0.0, propagate=0))
    assert bare["status"] == "live" and bare["probe_before"] is None and bare["probe_after"] is None
    assert bare["general_size"] > 0 and 0 <= bare["general_unchanged"] <= 1
    assert json.loads(json.dumps(bare, allow_nan=False)) == bare
    err = capsys.readouterr().err
    assert "records no probes of its own" in err and "general probes and the --regression-file" in err
    assert "Maple" not in json.dumps(res) and "枫叶" not in json.dumps(res, ensure_ascii=False)


def test_the_demo_runs_probes_are_the_questions_the_guard_always_asked(tiny_chat_run, tmp_path):
    """The demo records the shop's held-out questions as its run's probes; the guard then samples and grades
    exactly what it did when it took them from the shop itself (update.probe_set before: the held-out
    chats shuffled by the seed; graded by the shop's check_answer)."""
    import random
    import shutil

    from livelm import demo
    from livelm.data import shop
    from livelm.learn.probes import probe_accuracy, probe_set
    run = tmp_path / "chat"
    shutil.copytree(tiny_chat_run / "chat", run)
    demo.record_for_learning(run)
    held = shop.build(seed=0, n_chats=10, pretrain_bytes=1000).heldout_chats
    random.Random(3).shuffle(held)
    probes = probe_set(run, 60, 3, None)
    assert [p["messages"] for p in probes] == [c["messages"][:-1] for c in held[:60]]
    assert all(p["source"] == "run" for p in probes)
    rng = random.Random(0)
    answers = []
    for c in held[:60]:       # right answers, the other language's, other values, a longer number
        other = rng.choice(shop.FACTS)
        answers.append(rng.choice([c["messages"][-1]["content"], shop.fact_statement(other, c["lang"]),
                                   shop.fact_statement(shop.FACTS_BY_KEY[c["fact"]], "zh" if c["lang"] == "en" else "en"),
                                   c["messages"][-1]["content"].replace("¥", "¥1")]))
    old = [shop.check_answer(shop.FACTS_BY_KEY[c["fact"]], a, c["lang"]) for c, a in zip(held[:60], answers)]
    assert 0 < sum(old) < 60
    assert probe_accuracy(probes, answers) == sum(old) / 60
    for p, a, ok in zip(probes, answers, old):
        assert probe_accuracy([p], [a]) == float(ok)
