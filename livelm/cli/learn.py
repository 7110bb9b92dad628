"""Operator commands for live learning: `livelm feedback`, `livelm adapters`, `livelm learn`.

    livelm feedback list   --db RUN/feedback.sqlite [--tenant T] [--json]
    livelm feedback export --db ... --format sft|dpo|kto --out FILE.jsonl   (TRL's dataset formats)
    livelm adapters list     --store RUN/adapters [--tenant T]
    livelm adapters rollback --store RUN/adapters --tenant T [--to vNNNN|base]
    livelm learn RUN --tenant T [--store ...] [--db ...]                  one update now (same as the server's learner)
    livelm learn RUN --promote --tenant T --out NEW_RUN                   merge a tenant's live adapter into a new base run
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from livelm.cli import CLIError, emit, log
from livelm.cli.flags import add_dataclass_flags, dataclass_values

PARSER_KW = {
    "feedback": {"description": "List a tenant's feedback, or export it as TRL-compatible JSONL "
                                "(sft: messages; dpo: prompt/chosen/rejected; kto: prompt/completion/label)."},
    "learn": {"description": __doc__, "formatter_class": argparse.RawDescriptionHelpFormatter},
}


def feedback_flags(p) -> None:
    p.add_argument("action", choices=["list", "export"])
    p.add_argument("--db", required=True, help="feedback SQLite file (the server's --feedback-db)")
    p.add_argument("--tenant", default="default")
    p.add_argument("--format", choices=["sft", "dpo", "kto"], default="sft")
    p.add_argument("--out", type=Path, help="output file (default stdout)")
    p.add_argument("--json", action="store_true", help="list as JSON lines")


def run_feedback(a) -> int:
    from livelm import io
    from livelm.learn.feedback import FeedbackStore, export_rows
    if not Path(a.db).is_file():
        raise CLIError(f"no feedback database at {a.db}")
    items = FeedbackStore(a.db).list(a.tenant, limit=1_000_000)
    if a.action == "list":
        for r in items:
            if a.json:
                emit(r.to_dict())
            else:
                text = r.correction or r.answer or r.chosen or ""
                flag = " (forgotten)" if getattr(r, "forgotten", 0) else ""
                print(f"{r.id}\t{r.kind}\t{text[:60]}{flag}")
        return 0
    rows = export_rows([r for r in items if not getattr(r, "forgotten", 0)], a.format)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if a.out:
        io.write_text(a.out, text)
        emit({"out": str(a.out), "rows": len(rows), "format": a.format})
    else:
        sys.stdout.write(text)
    return 0


def adapters_flags(p) -> None:
    p.add_argument("action", choices=["list", "rollback"])
    p.add_argument("--store", required=True, help="adapter store directory (the server's RUN/adapters)")
    p.add_argument("--tenant")
    p.add_argument("--to", help="version to return to (vNNNN), or 'base'; default: the previous live version")


def run_adapters(a) -> int:
    from livelm.learn.adapters import AdapterStore
    store = AdapterStore(a.store)
    if a.action == "list":
        for tenant in ([a.tenant] if a.tenant else store.tenants()):
            for v in store.versions(tenant):
                emit({"tenant": tenant, **{k: v.get(k) for k in
                                           ("version", "live", "status", "probe_before", "probe_after", "trained_on")}})
        return 0
    if not a.tenant:
        raise CLIError("rollback needs --tenant")
    emit({"tenant": a.tenant, "current": store.rollback(a.tenant, a.to) or "base"})
    return 0


def learn_flags(p) -> None:
    from livelm.learn.update import UpdateConfig
    p.add_argument("run", help="the served base run")
    p.add_argument("--tenant", default="default")
    p.add_argument("--db", help="feedback database (default RUN/feedback.sqlite)")
    p.add_argument("--store", help="adapter store (default RUN/adapters)")
    p.add_argument("--promote", action="store_true", help="merge the tenant's live adapter into a new base run")
    p.add_argument("--out", help="new run directory for --promote")
    from livelm.cli.serve import LEARN_HELP   # the same fields as `livelm serve --learn-*`, the same words
    add_dataclass_flags(p, UpdateConfig, title="the update (livelm/learn/update.py UpdateConfig)", helps=LEARN_HELP,
                        choices={"replay_loss": ["kl", "sft"]})


def run_learn(a) -> int:
    store_root = a.store or Path(a.run) / "adapters"
    if a.promote:
        from livelm.learn.adapters import promote
        result = promote(a.run, a.tenant, store_root, a.out)
        log(f"note: {a.out} answers every question with {a.tenant}'s update merged in; served, the adapter "
            f"answered only questions near {a.tenant}'s feedback")
        emit(result)
        return 0
    from livelm.learn.update import UpdateConfig, run_update
    emit(run_update(a.run, a.db or Path(a.run) / "feedback.sqlite", a.tenant, store_root,
                    UpdateConfig(**dataclass_values(a, UpdateConfig))))
    return 0
