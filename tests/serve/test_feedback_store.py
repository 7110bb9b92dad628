"""The SQLite feedback store: durable, versioned, per tenant."""
from __future__ import annotations

import sqlite3
import threading

import pytest

from livelm.learn import feedback as fb
from livelm.learn.feedback import Feedback, FeedbackError, FeedbackStore

CONV = [{"role": "system", "content": "简洁"}, {"role": "user", "content": "长城有多长？🧱"}]


def test_add_list_and_reopen(tmp_path):
    path = tmp_path / "fb.sqlite"
    store = FeedbackStore(path)
    a = store.add(Feedback("down", CONV, answer="不知道", tenant="t1", model="chat", model_version="abc"))
    b = store.add(Feedback("correction", CONV, answer="不知道", correction="约两万一千公里。", tenant="t1"))
    store.add(Feedback("up", CONV, answer="ok", tenant="t2"))
    assert (a.id, b.id) == (1, 2) and a.created_at <= b.created_at
    store.close()
    # a second process (here: connection) sees everything committed
    again = FeedbackStore(path)
    items = again.list("t1")
    assert [i.kind for i in items] == ["down", "correction"]
    assert items[1].conversation == CONV and items[1].correction == "约两万一千公里。"
    assert items[0].model == "chat" and items[0].model_version == "abc"
    assert [i.kind for i in again.list("t2")] == ["up"] and again.list("nobody") == []
    assert [i.id for i in again.list("t1", after_id=1)] == [2]
    assert again.count() == 3 and again.count("t1") == 2


def test_wal_and_schema_version(tmp_path):
    path = tmp_path / "fb.sqlite"
    FeedbackStore(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(fb.MIGRATIONS)
    cols = {r[1] for r in db.execute("PRAGMA table_info(feedback)")}
    assert {"id", "created_at", "tenant", "kind", "conversation", "answer", "correction", "chosen", "rejected",
            "model", "model_version"} <= cols


def test_migrations_apply_in_order_and_refuse_the_future(tmp_path, monkeypatch):
    path = tmp_path / "fb.sqlite"
    FeedbackStore(path).close()
    monkeypatch.setattr(fb, "MIGRATIONS", fb.MIGRATIONS + ["ALTER TABLE feedback ADD COLUMN note TEXT;"])
    store = FeedbackStore(path)          # an existing file is upgraded, data kept
    assert store.version == len(fb.MIGRATIONS)
    store.close()
    db = sqlite3.connect(path)
    assert "note" in {r[1] for r in db.execute("PRAGMA table_info(feedback)")}
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(FeedbackError, match="newer"):
        FeedbackStore(path)


def test_failed_migration_leaves_the_old_version(tmp_path, monkeypatch):
    path = tmp_path / "fb.sqlite"
    FeedbackStore(path).close()
    monkeypatch.setattr(fb, "MIGRATIONS", fb.MIGRATIONS + ["ALTER TABLE feedback ADD COLUMN x TEXT; SELECT nope FROM;"])
    with pytest.raises(sqlite3.Error):
        FeedbackStore(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(fb.MIGRATIONS) - 1
    assert "x" not in {r[1] for r in db.execute("PRAGMA table_info(feedback)")}


@pytest.mark.parametrize("item", [
    Feedback("meh", CONV, answer="a"),
    Feedback("up", CONV),                                   # no answer
    Feedback("up", [], answer="a"),                          # no conversation
    Feedback("correction", CONV, answer="a"),               # no correction
    Feedback("preference", CONV, chosen="a"),               # no rejected
    Feedback("fact", []),                                    # no fact text
    Feedback("up", [{"role": "user"}], answer="a"),          # malformed message
])
def test_invalid_items_are_refused(tmp_path, item):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    with pytest.raises(FeedbackError):
        store.add(item)
    assert store.count() == 0


def test_fact_and_preference(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    store.add(Feedback("fact", [], correction="livelm 的默认助手会说中文和英文。"))
    store.add(Feedback("preference", CONV, chosen="约两万公里", rejected="很短"))
    kinds = [(i.kind, i.tenant) for i in store.list("default")]
    assert kinds == [("fact", "default"), ("preference", "default")]


def test_forget_is_per_tenant(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    item = store.add(Feedback("fact", [], correction="x", tenant="a"))
    assert not store.forget("b", item.id) and not store.forget("a", 999)
    assert store.forget("a", item.id)
    assert store.list("a")[0].forgotten == 1


def test_version_1_file_is_upgraded(tmp_path):
    """A file written by the first schema (no `forgotten` column) keeps its items."""
    path = tmp_path / "fb.sqlite"
    db = sqlite3.connect(path)
    db.executescript(fb.MIGRATIONS[0] + ";PRAGMA user_version = 1;")
    db.execute("INSERT INTO feedback (created_at, tenant, kind, conversation, answer) VALUES (1, 't', 'up', '[]', 'a')")
    db.commit()
    db.close()
    store = FeedbackStore(path)
    assert store.version == len(fb.MIGRATIONS)
    (item,) = store.list("t")
    assert item.answer == "a" and item.forgotten == 0


def test_concurrent_writers(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite")

    def write(t):
        for i in range(20):
            store.add(Feedback("up", CONV, answer=f"{t}-{i}", tenant=f"t{t}"))
    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count() == 80 and len(store.list("t3")) == 20
