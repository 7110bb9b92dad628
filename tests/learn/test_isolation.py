"""100 tenants on one store: each tenant's feedback and notes stay its own, in the store and over HTTP."""
import random

import httpx

from livelm.learn.feedback import Feedback, FeedbackStore
from livelm.learn.memory import Memory
from tests.serve.conftest import ServerProcess

QUESTIONS = {"en": "What is my locker code?", "zh": "我的储物柜密码是多少？"}


def facts(n: int = 100) -> dict[str, tuple[str, str]]:
    """tenant -> (its code, its language): codes of six digits, every one different."""
    rng = random.Random(7)
    codes = rng.sample(range(100000, 999999), n)
    return {f"tenant-{i:03d}": (str(code), "zh" if i % 2 else "en") for i, code in enumerate(codes)}


def fact_text(code: str, lang: str) -> str:
    return f"我的储物柜密码是{code}。🔐" if lang == "zh" else f"My locker code is {code}. 🔐"


def test_notes_and_feedback_of_100_tenants_never_cross(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.sqlite")
    memory = Memory(store)
    table = facts()
    for tenant, (code, lang) in table.items():
        store.add(Feedback("fact", [], correction=fact_text(code, lang), tenant=tenant))
    others = {code for code, _ in table.values()}
    for tenant, (code, lang) in table.items():
        messages, notes = memory.recall(tenant, [{"role": "user", "content": QUESTIONS[lang]}])
        prompt = messages[0]["content"]
        assert code in prompt and notes == [fact_text(code, lang)]
        assert not any(other in prompt for other in others - {code})
        listed = store.list(tenant)
        assert [(i.tenant, i.correction) for i in listed] == [(tenant, fact_text(code, lang))]
    # a tenant with no feedback gets no notes at all; forgetting one tenant's fact leaves the others
    assert memory.recall("tenant-none", [{"role": "user", "content": QUESTIONS["en"]}])[1] == []
    first = store.list("tenant-000")[0]
    assert store.forget("tenant-000", first.id) and not store.forget("tenant-001", store.list("tenant-002")[0].id)
    assert memory.recall("tenant-000", [{"role": "user", "content": QUESTIONS["en"]}])[1] == []
    assert len(memory.recall("tenant-002", [{"role": "user", "content": QUESTIONS["en"]}])[1]) == 1


def test_100_api_keys_see_only_their_own_feedback(tiny_chat_run, tmp_path):
    table = facts()
    keys = {tenant: f"sk-{tenant}-{code}" for tenant, (code, _) in table.items()}
    (tmp_path / "keys.txt").write_text("\n".join(keys.values()) + "\n")
    server = ServerProcess(tiny_chat_run / "chat", "--api-key-file", tmp_path / "keys.txt", "--learn", "memory",
                           "--feedback-db", tmp_path / "feedback.sqlite", log_dir=tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for tenant, (code, lang) in table.items():
                r = http.post("/v1/feedback", headers={"Authorization": f"Bearer {keys[tenant]}"},
                              json={"kind": "fact", "conversation": [], "correction": fact_text(code, lang)})
                assert r.status_code == 200, r.text
            for tenant, (code, lang) in table.items():
                mine = http.get("/v1/feedback", headers={"Authorization": f"Bearer {keys[tenant]}"}).json()["data"]
                assert [item["correction"] for item in mine] == [fact_text(code, lang)]
            # no key, a wrong key, another key's id: nothing readable, nothing forgotten
            assert http.get("/v1/feedback").status_code == 401
            assert http.get("/v1/feedback", headers={"Authorization": "Bearer sk-nobody"}).status_code == 401
            a, b = list(keys.values())[:2]
            theirs = http.get("/v1/feedback", headers={"Authorization": f"Bearer {b}"}).json()["data"][0]["id"]
            r = http.delete(f"/v1/feedback/{theirs}", headers={"Authorization": f"Bearer {a}"})
            assert r.status_code == 404
            assert len(http.get("/v1/feedback", headers={"Authorization": f"Bearer {b}"}).json()["data"]) == 1
    finally:
        server.stop()


def test_100_tenants_adapters_load_on_demand_with_a_bounded_number_resident(tiny_chat_run, tmp_path):
    """100 tenants each with a learned adapter; at most 8 stay loaded in a real engine. Each request gets its
    own tenant's adapter, loaded again if it was dropped, and never another tenant's."""
    import concurrent.futures
    import shutil

    from livelm.infer.engine import Engine
    from livelm.learn.adapters import AdapterStore
    from livelm.learn.live import LearnConfig, LiveLearner
    from livelm.models import lora
    from livelm.runs import load_model
    from livelm.serve import engine_process

    run = tiny_chat_run / "chat"
    model, tok, _ = load_model(run)
    lora.add_adapter(model, "made", lora.LoRAConfig(r=2))
    made = tmp_path / "made"
    lora.save_adapter(made, model, "made", lora.LoRAConfig(r=2), str(run.resolve()))
    lora.remove_adapter(model, "made")
    store = AdapterStore(tmp_path / "store")
    tenants = [f"tenant-{i:03d}" for i in range(100)]
    for tenant in tenants:
        version = store.new_version_dir(tenant)
        for f in made.iterdir():
            shutil.copy(f, version / f.name)
        (version / "meta.json").write_text('{"status": "live"}')
        store.publish(tenant, version)
    engine = Engine(model, tok, max_batch=2)

    class Inline:
        """engine_process's operations on the real engine, at once (the server runs them between two steps)."""
        def call(self, op, *args):
            done = concurrent.futures.Future()
            done.set_result(engine_process.OPS[op](engine, *args))
            return done

    learner = LiveLearner(run, tmp_path / "fb.sqlite", store.root, Inline(), FeedbackStore(tmp_path / "fb.sqlite"),
                          LearnConfig(modes=("adapter",), resident_adapters=8))
    assert len(learner.loaded) == 8          # a restart loads the 8 tenants updated last, not all 100
    for tenant in tenants + tenants[:3]:                      # the first three come back after being dropped
        assert learner.adapter_for(tenant) == f"{tenant}/v0001"
        resident = [n for n in lora.adapter_names(engine.model) if "/" in n]
        assert len(resident) <= 8 and f"{tenant}/v0001" in resident
    assert len(learner.loaded) == 8 and "tenant-000" in learner.loaded and "tenant-050" not in learner.loaded
