import json

import pytest
import torch

from livelm.learn.adapters import AdapterStore, AdapterStoreError
from livelm.learn.feedback import Feedback, FeedbackStore
from livelm.learn.memory import Memory, with_notes
from livelm.learn.objectives import distill_loss, dpo_loss, grpo_loss, kto_loss


def conv(q):
    return [{"role": "user", "content": q}]


def test_memory_retrieves_relevant_corrections_only(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    store.add(Feedback(kind="correction", conversation=conv("How much is delivery?"), answer="Delivery costs ¥8.",
                       correction="Delivery costs ¥12.", tenant="a"))
    store.add(Feedback(kind="correction", conversation=conv("运费多少钱？"), answer="运费是¥8。",
                       correction="运费是¥12。", tenant="a"))
    store.add(Feedback(kind="fact", conversation=[], correction="Delivery is free above ¥150.", tenant="a"))
    mem = Memory(store)
    assert "Delivery costs ¥12." in mem.notes("a", "what does delivery cost?")
    assert "运费是¥12。" in mem.notes("a", "请问运费是多少？")
    assert mem.notes("a", "When do you open on weekends?") == []
    assert mem.notes("b", "How much is delivery?") == []          # tenants never share memory
    # a newer correction of the same question replaces the older one
    latest = store.add(Feedback(kind="correction", conversation=conv("How much is delivery?"), answer="x",
                                correction="Delivery costs ¥15.", tenant="a"))
    notes = mem.notes("a", "How much is delivery?")
    assert "Delivery costs ¥15." in notes and "Delivery costs ¥12." not in notes
    msgs = with_notes(conv("How much is delivery?"), notes)
    assert msgs[0]["role"] == "system" and msgs[0]["content"].startswith("Notes:\n")
    assert "Delivery costs ¥15." in msgs[0]["content"]
    zh = with_notes([{"role": "system", "content": "你是枫叶小铺的客服助手。"}] + conv("运费？"), ["运费是¥12。"])
    assert zh[0]["content"].startswith("你是枫叶小铺的客服助手。\n") and "运费是¥12。" in zh[0]["content"]
    # the cached index follows a forgotten item too (the store's revision changes)
    store.forget("a", latest.id)
    notes = mem.notes("a", "How much is delivery?")
    assert "Delivery costs ¥15." not in notes and "Delivery costs ¥12." in notes   # the earlier one is back


def test_notes_go_under_the_runs_own_system_prompt_and_no_other(tmp_path):
    """A conversation without a system prompt gets the run's own for the question's language (recorded at
    fine-tune time), or the notes alone: never the demo shop's."""
    from tests.conftest import LIBRARY_PROMPTS
    question = conv("How much is delivery? 🚚")
    plain = with_notes(question, ["Delivery costs ¥12."])                 # the run recorded no prompt
    assert plain == [{"role": "system", "content": "Notes:\n- Delivery costs ¥12."}, *question]
    zh = with_notes(conv("寄快递 shipping 多少钱？"), ["运费是¥12。", "满¥150包邮。"], LIBRARY_PROMPTS)
    assert zh[0]["content"] == "你是市图书馆的助手。\n备注：\n- 运费是¥12。\n- 满¥150包邮。"
    only_zh = with_notes(question, ["Delivery costs ¥12."], {"zh": LIBRARY_PROMPTS["zh"]})
    assert only_zh[0]["content"] == "Notes:\n- Delivery costs ¥12."      # none for English: the notes alone
    assert with_notes(question, [], LIBRARY_PROMPTS) is question        # nothing to add
    store = FeedbackStore(tmp_path / "fb.sqlite")
    store.add(Feedback(kind="fact", conversation=[], correction="Delivery costs ¥12.", tenant="a"))
    msgs, notes = Memory(store, system_prompts=LIBRARY_PROMPTS).recall("a", question)
    assert notes == ["Delivery costs ¥12."]
    assert msgs[0]["content"] == "You help the readers of the city library.\nNotes:\n- Delivery costs ¥12."
    for m in (plain, zh, only_zh, msgs):
        assert "Maple" not in str(m) and "枫叶" not in str(m)


def test_the_demo_gets_exactly_the_prompts_it_always_got():
    """The demo's chats use the shop's system prompts, so fine-tuning records them, and notes read byte for
    byte as they did when memory took the shop's prompt and notes format itself."""
    from livelm.chat.data import common_system_prompts
    from livelm.data import shop
    from livelm.learn import memory
    recorded = common_system_prompts([c["messages"] for c in shop.build(0, n_chats=400, pretrain_bytes=1000).train_chats])
    assert recorded == {"en": "You are the assistant of Maple Leaf Shop.", "zh": "你是枫叶小铺的客服助手。"}
    en = with_notes(conv("How much is delivery?"), ["Delivery costs ¥12.", "Orders above ¥150 ship for free."], recorded)
    assert en[0]["content"] == ("You are the assistant of Maple Leaf Shop.\nNotes:\n- Delivery costs ¥12.\n"
                                "- Orders above ¥150 ship for free.")
    zh = with_notes(conv("寄快递要付多少？ 🚚 shipping?"), ["运费是¥12。"], recorded)
    assert zh[0]["content"] == "你是枫叶小铺的客服助手。\n备注：\n- 运费是¥12。"
    assert zh[0]["content"] == shop.system_prompt("zh", ["运费是¥12。"])   # as the shop's context chats read
    assert memory.NOTES_HEADER == shop.NOTES_HEADER
    kept = with_notes([{"role": "system", "content": "你是枫叶小铺的客服助手。 "}] + conv("运费？"), ["运费是¥12。"], recorded)
    assert kept[0]["content"] == "你是枫叶小铺的客服助手。\n备注：\n- 运费是¥12。"   # its own prompt, notes appended


def test_memory_leaves_questions_that_share_only_a_word_alone(tmp_path):
    """A note must cover a good part of the question, not just share one word with it; this holds
    the same for a tenant with one item as for one with many (no raw-score threshold)."""
    store = FeedbackStore(tmp_path / "fb.sqlite")
    store.add(Feedback(kind="correction", conversation=conv("How much is the jasmine tea?"),
                       answer="Our jasmine tea costs ¥42.", correction="Our jasmine tea costs ¥45.", tenant="one"))
    for i, (q, a) in enumerate([("How much is the jasmine tea?", "Our jasmine tea costs ¥45."),
                                ("When do you open on weekdays?", "On weekdays we are open 8am to 8pm."),
                                ("茉莉花茶多少钱？", "我们的茉莉花茶售价¥45。"),
                                ("What is your phone number?", "Call 400-820-6699."),
                                ("Do you ship abroad?", "We ship to Japan and Korea.")]):
        store.add(Feedback(kind="correction", conversation=conv(q), answer="old", correction=a, tenant="many"))
    mem = Memory(store)
    for tenant in ("one", "many"):
        assert "Our jasmine tea costs ¥45." in mem.notes(tenant, "What does your jasmine tea cost?")
        assert mem.notes(tenant, "How much does the maple mug cost? 🍵") == []    # shares "cost" only
    assert "我们的茉莉花茶售价¥45。" in mem.notes("many", "请问茉莉花茶卖多少钱？")
    assert Memory(store, min_coverage=0.0).notes("many", "How much does the maple mug cost? 🍵")


def test_a_draft_answer_finds_the_note_a_rephrased_question_misses(tmp_path):
    """Memory also looks up by the model's draft answer (HyDE-style): a rephrasing shares no word with
    the corrected question, but the draft repeats the answer that was corrected, which the note is
    indexed by. A draft that is noise does not hide a note the question finds."""
    store = FeedbackStore(tmp_path / "fb.sqlite")
    store.add(Feedback(kind="correction", conversation=conv("When do you open on weekdays?"),
                       answer="On weekdays we are open 9am to 9pm.", correction="On weekdays we are open 8am to 8pm.",
                       tenant="a"))
    store.add(Feedback(kind="correction", conversation=conv("运费多少钱？"), answer="运费是¥8。", correction="运费是¥12。",
                       tenant="a"))
    mem = Memory(store)
    assert mem.notes("a", "Monday to Friday, what are the hours?") == []
    assert mem.notes("a", "Monday to Friday, what are the hours?", draft="On weekdays we are open 9am to 9pm.") == \
        ["On weekdays we are open 8am to 8pm."]
    assert mem.notes("a", "寄快递要付多少？", draft="运费是¥8。🚚") == ["运费是¥12。"]
    assert mem.notes("a", "When do you open on weekdays?", draft="zq xv ¥ wk 🙂 jj kk ll") == \
        ["On weekdays we are open 8am to 8pm."]
    msgs, notes = mem.recall("a", conv("Monday to Friday, what are the hours?"), draft="we are open 9am to 9pm")
    assert notes == ["On weekdays we are open 8am to 8pm."] and "8am to 8pm" in msgs[0]["content"]


def test_adapter_scope_covers_every_trainable_kind_and_nothing_else(tmp_path):
    """The learned adapter answers questions near the tenant's corrections, preferences and thumbs
    (by the question or by a draft answer that repeats a judged answer); facts and forgotten items
    are not trained on, so they are not in scope."""
    store = FeedbackStore(tmp_path / "fb.sqlite")
    store.add(Feedback(kind="correction", conversation=conv("How much is delivery?"), answer="Delivery costs ¥8.",
                       correction="Delivery costs ¥12.", tenant="a"))
    store.add(Feedback(kind="preference", conversation=conv("会员有什么好处？"), chosen="会员九五折。",
                       rejected="会员没有折扣。", tenant="a"))
    store.add(Feedback(kind="down", conversation=conv("Do you sell gift cards? 🎁"), answer="No gift cards.",
                       tenant="a"))
    store.add(Feedback(kind="fact", conversation=[], correction="The shop cat is called Maple.", tenant="a"))
    gone = store.add(Feedback(kind="correction", conversation=conv("What is your phone number?"), answer="110",
                              correction="Call 400-820-6699.", tenant="a"))
    store.forget("a", gone.id)
    mem = Memory(store)
    assert mem.in_scope("a", "what does delivery cost?")
    assert mem.in_scope("a", "请问会员有什么好处")
    assert mem.in_scope("a", "Can I buy a gift card?")
    assert mem.in_scope("a", "Monday to Friday?", draft="Delivery costs ¥8.")   # found by the draft alone
    assert not mem.in_scope("a", "When do you open on weekends?")
    assert not mem.in_scope("a", "What is the shop cat called?")                # a fact: memory, not the adapter
    assert not mem.in_scope("a", "What is your phone number?")                  # forgotten
    assert not mem.in_scope("b", "How much is delivery?")                       # another tenant
    # the notes index is a different set: the fact and the correction, not the thumbs or the preference
    assert mem.notes("a", "What is the shop cat called?") == ["The shop cat is called Maple."]
    assert mem.notes("a", "Can I buy a gift card?") == []
    # a tenant's only item, asked by a question with one content word (idf 0.29 in a one-item index)
    store.add(Feedback(kind="correction", conversation=conv("How much is delivery?"), answer="x",
                       correction="运费12元。", tenant="solo"))
    assert mem.in_scope("solo", "How much is delivery?") and mem.notes("solo", "How much is delivery?") == ["运费12元。"]


def test_adapter_store_publish_and_rollback(tmp_path):
    store = AdapterStore(tmp_path)
    assert store.current("t") is None
    v1 = store.new_version_dir("t")
    (v1 / "meta.json").write_text(json.dumps({"status": "live"}))   # an update writes meta.json last
    store.publish("t", v1)
    v2 = store.new_version_dir("t")
    (v2 / "meta.json").write_text(json.dumps({"status": "rejected"}))
    v3 = store.new_version_dir("t")
    (v3 / "meta.json").write_text(json.dumps({"status": "live"}))
    store.publish("t", v3)
    store.new_version_dir("t")                     # v0004: an update killed before its meta.json
    assert store.current("t") == v3 and [v["version"] for v in store.versions("t")] == ["v0001", "v0002", "v0003"]
    assert store.rollback("t") == "v0001"          # the rejected v0002 never went live
    assert store.rollback("t") is None             # back to the base model
    with pytest.raises(AdapterStoreError, match="already on the base"):
        store.rollback("t")
    assert store.rollback("t", to="v0003") == "v0003"
    with pytest.raises(AdapterStoreError, match="no version v0004"):
        store.rollback("t", to="v0004")            # half-written: never a target
    with pytest.raises(AdapterStoreError, match="invalid tenant"):
        store.current("../etc")


class LinearLM(torch.nn.Module):
    """A bigram model: logits depend on the current token only. Enough to check objective signs."""
    def __init__(self, V=8):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(V, V))

    def forward(self, idx, targets=None):
        logits = self.table[idx]
        if targets is None:
            return logits
        return logits, torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def train_steps(model, loss_fn, steps=50):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        loss = loss_fn(model)
        opt.zero_grad(); loss.backward(); opt.step()


def test_preference_objectives_move_probability_the_right_way():
    idx = torch.tensor([[1], [1]])
    b = {"idx": idx, "targets": torch.tensor([[3], [4]]), "ref": torch.tensor([-2.0794, -2.0794])}  # chosen 3, rejected 4
    m = LinearLM()
    train_steps(m, lambda mm: dpo_loss(mm, b, beta=1.0))
    assert m.table[1, 3] > m.table[1, 4]
    k = {"idx": idx, "targets": torch.tensor([[5], [6]]), "ref": torch.tensor([-2.0794, -2.0794]), "label": torch.tensor([1, -1])}
    m = LinearLM()
    train_steps(m, lambda mm: kto_loss(mm, k, beta=1.0))
    assert m.table[1, 5] > 0 > m.table[1, 6]
    g = {"idx": torch.tensor([[1], [1], [1], [1]]), "targets": torch.tensor([[2], [2], [7], [7]]),
         "adv": torch.tensor([0.5, 0.5, -0.5, -0.5])}
    m = LinearLM()
    train_steps(m, lambda mm: grpo_loss(mm, g))
    assert m.table[1, 2] > m.table[1, 7]


def test_distill_loss_pulls_the_whole_distribution_back_to_the_reference():
    ref_table = torch.zeros(8, 8)
    ref_table[1] = torch.tensor([0.0, 0.0, 2.0, 1.0, 0.0, 0.0, 0.0, -1.0])
    b = {"idx": torch.tensor([[1]]), "targets": torch.tensor([[2]]),
         "ref_logp": torch.log_softmax(ref_table[torch.tensor([1])], -1)}     # (1 answer position, V)
    m = LinearLM()
    with torch.no_grad():
        m.table.copy_(ref_table)
    assert distill_loss(m, b).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        m.table[1] = torch.tensor([3.0, 0, 0, 0, 0, 0, 0, 0])     # drifted: prefers token 0
    assert distill_loss(m, b).item() > 0.5
    train_steps(m, lambda mm: distill_loss(mm, b), steps=300)
    # not only the target token: every token's probability returns to the reference's
    assert torch.allclose(torch.softmax(m.table[1], -1), torch.softmax(ref_table[1], -1), atol=0.02)
    masked = {**b, "targets": torch.tensor([[-1]]), "ref_logp": torch.zeros(0, 8)}
    assert distill_loss(m, masked).item() == 0.0


def test_the_adapter_scope_widens_to_training_chats_that_ask_a_corrected_question(tmp_path):
    """The update trains other phrasings of a corrected question (found in the run's training chats
    by their answer), so the learned adapter's scope takes them in too."""
    store = FeedbackStore(tmp_path / "fb.sqlite")
    store.add(Feedback(kind="correction", conversation=[{"role": "user", "content": "Do you offer free delivery?"}],
                       answer="Orders above ¥99 ship for free.", correction="Delivery is free on orders over ¥79.",
                       tenant="t"))
    examples = [[{"role": "system", "content": "You are the assistant of Maple Leaf Shop."},
                 {"role": "user", "content": "How much must I spend to not pay shipping? 🚚"},
                 {"role": "assistant", "content": "Orders above ¥99 ship for free."}],
                [{"role": "user", "content": "周末几点开门？"}, {"role": "assistant", "content": "周末早上10点开门。"}]]
    rephrased, unrelated = "How much must I spend to not pay shipping?", "周末几点开门？"
    plain, widened = Memory(store), Memory(store, examples=examples)
    assert not plain.in_scope("t", rephrased) and widened.in_scope("t", rephrased)
    assert not plain.in_scope("t", unrelated) and not widened.in_scope("t", unrelated)
    assert not widened.in_scope("other-tenant", rephrased)
