"""Durable store of what users tell the model about its answers.

One SQLite file per deployment (default RUN/feedback.sqlite). Each item is one
judgement on one answer, kept with the conversation that produced it so a later
step (live learning) can turn it into training data:

    up / down    a thumbs-up or thumbs-down on `answer`
    correction   `correction` is what `answer` should have been
    preference   `chosen` is better than `rejected` for this conversation
    fact         `correction` holds a statement the model should know
                 (the conversation may be empty)

An item can later be marked `forgotten` by its tenant: kept for audit, not learned from.

Why SQLite: one file, no server, atomic commits, and readers never block the
writer in WAL mode. Every `add()` is committed (and, with synchronous=FULL,
on disk) before it returns, so an acknowledged item survives a crash.

The schema is versioned with `PRAGMA user_version`: MIGRATIONS[i] takes the
file from version i to i+1. Append to the list, never edit an applied entry.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, asdict
from pathlib import Path

KINDS = ("up", "down", "correction", "preference", "fact")

MIGRATIONS: list[str] = [
    # 0 -> 1: the feedback table
    """
    CREATE TABLE feedback (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at    REAL    NOT NULL,              -- unix seconds
        tenant        TEXT    NOT NULL,              -- who said it (derived from the API key)
        kind          TEXT    NOT NULL,              -- one of KINDS (checked in Python: SQLite cannot ALTER a CHECK)
        conversation  TEXT    NOT NULL,              -- JSON list of {role, content} before the answer
        answer        TEXT,                          -- the model's answer being judged
        correction    TEXT,                          -- corrected answer, or the fact for kind='fact'
        chosen        TEXT,
        rejected      TEXT,
        model         TEXT,                          -- model id that answered (base run or adapter name)
        model_version TEXT                           -- fingerprint of those weights
    );
    CREATE INDEX feedback_tenant_id ON feedback (tenant, id);
    """,
    # 1 -> 2: a user can take an item back (`/forget N` in the REPL); it stays for audit but is not learned from
    """
    ALTER TABLE feedback ADD COLUMN forgotten INTEGER NOT NULL DEFAULT 0;
    """,
]


class FeedbackError(ValueError):
    pass


@dataclass
class Feedback:
    kind: str
    conversation: list[dict]
    answer: str | None = None
    correction: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    model: str | None = None
    model_version: str | None = None
    tenant: str = "default"
    id: int | None = None
    created_at: float | None = None
    forgotten: int = 0

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise FeedbackError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if not isinstance(self.conversation, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in self.conversation):
            raise FeedbackError("conversation must be a list of {role, content} messages")
        need = {"up": ["answer"], "down": ["answer"], "correction": ["correction"],
                "preference": ["chosen", "rejected"], "fact": ["correction"]}[self.kind]
        for name in need:
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise FeedbackError(f"feedback of kind {self.kind!r} needs a non-empty {name!r}")
        if self.kind != "fact" and not self.conversation:
            raise FeedbackError(f"feedback of kind {self.kind!r} needs the conversation it is about")

    def to_dict(self) -> dict:
        return asdict(self)


class FeedbackStore:
    """Thread-safe: one connection, one lock (writes are short and SQLite serialises them anyway)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so "committed before returning" is explicit
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise FeedbackError(f"{self.path} has schema version {version}, newer than this livelm "
                                f"understands ({len(MIGRATIONS)}); upgrade livelm")
        for v in range(version, len(MIGRATIONS)):
            # one transaction per step: a crash mid-migration leaves the previous version intact
            try:
                self._db.executescript(f"BEGIN IMMEDIATE;\n{MIGRATIONS[v]}\n;PRAGMA user_version = {v + 1};\nCOMMIT;")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    @property
    def version(self) -> int:
        with self._lock:
            return self._db.execute("PRAGMA user_version").fetchone()[0]

    def add(self, item: Feedback) -> Feedback:
        """Validate, insert and commit; returns the item with its id and created_at set."""
        item.validate()
        item.created_at = time.time()
        row = (item.created_at, item.tenant, item.kind, json.dumps(item.conversation, ensure_ascii=False),
               item.answer, item.correction, item.chosen, item.rejected, item.model, item.model_version)
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO feedback (created_at, tenant, kind, conversation, answer, correction, chosen, "
                "rejected, model, model_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            item.id = cur.lastrowid   # autocommit mode: the INSERT is committed here
        return item

    def list(self, tenant: str, limit: int = 100, after_id: int = 0, kind: str | None = None) -> list[Feedback]:
        """A tenant's items, oldest first, after `after_id` (for paging)."""
        sql = "SELECT * FROM feedback WHERE tenant = ? AND id > ?"
        args: list = [tenant, after_id]
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        with self._lock:
            cur = self._db.execute(sql, args)
            cols = [c[0] for c in cur.description]
            rows = cur.fetchall()
        known = set(Feedback.__dataclass_fields__)   # columns a later migration adds are ignored here
        out = []
        for r in rows:
            d = {k: v for k, v in zip(cols, r) if k in known}
            d["conversation"] = json.loads(d["conversation"])
            out.append(Feedback(**d))
        return out

    def revision(self, tenant: str) -> tuple[int, int, int]:
        """(items, last id, forgotten items) of a tenant: changes whenever its items do, since items are
        only ever added or forgotten. Cheap next to list(), so readers rebuild their indexes only then."""
        with self._lock:
            n, last, gone = self._db.execute("SELECT COUNT(*), MAX(id), SUM(forgotten) FROM feedback WHERE tenant = ?",
                                             (tenant,)).fetchone()
        return n, last or 0, gone or 0

    def forget(self, tenant: str, item_id: int) -> bool:
        """Mark one of a tenant's items forgotten; False if the tenant has no such item."""
        with self._lock:
            cur = self._db.execute("UPDATE feedback SET forgotten = 1 WHERE tenant = ? AND id = ?", (tenant, item_id))
        return cur.rowcount == 1

    def count(self, tenant: str | None = None) -> int:
        with self._lock:
            if tenant is None:
                return self._db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM feedback WHERE tenant = ?", (tenant,)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def export_rows(items, fmt: str) -> list[dict]:
    """Feedback -> TRL dataset rows (conversational format): sft {messages}, dpo {prompt, chosen, rejected},
    kto {prompt, completion, label} (`livelm feedback export`)."""
    rows = []
    for r in items:
        prompt = [m for m in r.conversation]
        if fmt == "sft":
            if r.kind == "correction":
                rows.append({"messages": prompt + [{"role": "assistant", "content": r.correction}]})
            elif r.kind == "up":
                rows.append({"messages": prompt + [{"role": "assistant", "content": r.answer}]})
            elif r.kind == "preference":
                rows.append({"messages": prompt + [{"role": "assistant", "content": r.chosen}]})
        elif fmt == "dpo":
            pair = (r.correction, r.answer) if r.kind == "correction" and r.answer else \
                (r.chosen, r.rejected) if r.kind == "preference" else None
            if pair:
                rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": pair[0]}],
                             "rejected": [{"role": "assistant", "content": pair[1]}]})
        elif fmt == "kto":
            if r.kind in ("up", "down"):
                rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": r.answer}],
                             "label": r.kind == "up"})
            elif r.kind == "correction":
                rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": r.correction}], "label": True})
                if r.answer:
                    rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": r.answer}], "label": False})
    return rows
