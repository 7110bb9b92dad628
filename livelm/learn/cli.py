"""Operator commands for live learning: `livelm feedback`, `livelm adapters`, `livelm learn`.

    livelm feedback list   --db RUN/feedback.sqlite [--tenant T] [--json]
    livelm feedback export --db ... --format sft|dpo|kto --out FILE.jsonl   (TRL's dataset formats)
    livelm adapters list     --store RUN/adapters [--tenant T]
    livelm adapters rollback --store RUN/adapters --tenant T [--to vNNNN|base]
    livelm learn RUN --tenant T [--store ...] [--db ...]                  one update now (same as the server's learner)
    livelm learn RUN --promote --tenant T --out NEW_RUN                   merge a tenant's live adapter into a new base run
"""
from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

from livelm import io


def _default_db(run: str | None) -> Path | None:
    return Path(run) / "feedback.sqlite" if run else None


def export_rows(items, fmt: str) -> list[dict]:
    """Feedback -> TRL dataset rows (conversational format)."""
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


def cmd_feedback(a) -> int:
    from livelm.learn.feedback import FeedbackStore
    if not Path(a.db).is_file():
        raise ValueError(f"no feedback database at {a.db}")
    store = FeedbackStore(a.db)
    items = store.list(a.tenant, limit=1_000_000)
    if a.action == "list":
        for r in items:
            if a.json:
                print(json.dumps(r.to_dict(), ensure_ascii=False))
            else:
                text = r.correction or r.answer or r.chosen or ""
                flag = " (forgotten)" if getattr(r, "forgotten", 0) else ""
                print(f"{r.id}\t{r.kind}\t{text[:60]}{flag}")
        return 0
    rows = export_rows([r for r in items if not getattr(r, "forgotten", 0)], a.format)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if a.out:
        io.write_text(a.out, text)
        print(json.dumps({"out": str(a.out), "rows": len(rows), "format": a.format}))
    else:
        sys.stdout.write(text)
    return 0


def cmd_adapters(a) -> int:
    from livelm.learn.adapters import AdapterStore
    store = AdapterStore(a.store)
    if a.action == "list":
        for tenant in ([a.tenant] if a.tenant else store.tenants()):
            for v in store.versions(tenant):
                print(json.dumps({"tenant": tenant, **{k: v.get(k) for k in
                                  ("version", "live", "status", "probe_before", "probe_after", "trained_on")}},
                                 ensure_ascii=False))
        return 0
    if not a.tenant:
        raise ValueError("rollback needs --tenant")
    current = store.rollback(a.tenant, a.to)
    print(json.dumps({"tenant": a.tenant, "current": current or "base"}))
    return 0


def cmd_learn(a) -> int:
    from livelm.learn.update import UpdateConfig, run_update
    store_root = a.store or Path(a.run) / "adapters"
    if a.promote:
        return promote(a.run, a.tenant, store_root, a.out)
    overrides = {f.name: getattr(a, f.name) for f in fields(UpdateConfig) if getattr(a, f.name, None) is not None}
    result = run_update(a.run, a.db or _default_db(a.run), a.tenant, store_root, UpdateConfig(**overrides))
    print(json.dumps(result, ensure_ascii=False))
    return 0


def promote(run, tenant: str, store_root, out) -> int:
    """Merge the tenant's live adapter into the base weights and save a new run (never done automatically)."""
    from livelm.learn.adapters import AdapterStore
    from livelm.learn.probes import copy_probes
    from livelm.models import lora
    from livelm.train.checkpoint import load_model, save_checkpoint, read_config
    if not out:
        raise ValueError("--promote needs --out NEW_RUN (the base run is never overwritten)")
    current = AdapterStore(store_root).current(tenant)
    if current is None:
        raise ValueError(f"tenant {tenant} has no live adapter to promote")
    model, tok, config = load_model(run)
    lora.load_adapter(model, current, "promote")
    lora.merge(model, "promote")
    merged = {k.replace(".base.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
    from livelm.models.gpt import GPT
    plain = GPT(model.cfg)
    plain.load_state_dict(merged)
    config = {**read_config(run), "promoted_from": {"run": str(Path(run).resolve()), "tenant": tenant,
                                                    "adapter": str(current)}}
    config.pop("step", None)
    save_checkpoint(out, plain, tok, config, step=0)
    copy_probes(run, out)   # the update guard of the new run asks the same questions
    # served, a learned adapter answers only the questions near the tenant's feedback (LearnConfig.adapter_scope);
    # merged into the weights it answers every question, for every tenant of the new run
    print(f"note: {out} answers every question with {tenant}'s update merged in; served, the adapter answered "
          f"only questions near {tenant}'s feedback", file=sys.stderr)
    print(json.dumps({"out": str(out), "merged": str(current)}))
    return 0


def register(sub) -> None:
    import argparse
    p = sub.add_parser("feedback", help="list or export collected feedback",
                       description="List a tenant's feedback, or export it as TRL-compatible JSONL "
                                   "(sft: messages; dpo: prompt/chosen/rejected; kto: prompt/completion/label).")
    p.add_argument("action", choices=["list", "export"])
    p.add_argument("--db", required=True, help="feedback SQLite file (the server's --feedback-db)")
    p.add_argument("--tenant", default="default")
    p.add_argument("--format", choices=["sft", "dpo", "kto"], default="sft")
    p.add_argument("--out", type=Path, help="output file (default stdout)")
    p.add_argument("--json", action="store_true", help="list as JSON lines")
    p.set_defaults(func=cmd_feedback)

    p = sub.add_parser("adapters", help="list or roll back a tenant's learned adapters")
    p.add_argument("action", choices=["list", "rollback"])
    p.add_argument("--store", required=True, help="adapter store directory (the server's RUN/adapters)")
    p.add_argument("--tenant")
    p.add_argument("--to", help="version to return to (vNNNN), or 'base'; default: the previous live version")
    p.set_defaults(func=cmd_adapters)

    from livelm.learn.update import UpdateConfig
    p = sub.add_parser("learn", help="run one adapter update now, or --promote a tenant's adapter into a new base",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="the served base run")
    p.add_argument("--tenant", default="default")
    p.add_argument("--db", help="feedback database (default RUN/feedback.sqlite)")
    p.add_argument("--store", help="adapter store (default RUN/adapters)")
    p.add_argument("--promote", action="store_true", help="merge the tenant's live adapter into a new base run")
    p.add_argument("--out", help="new run directory for --promote")
    for f in fields(UpdateConfig):
        kind = {"int": int, "float": float, "str": str}.get(str(f.type).split(" ")[0], str)
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None,
                       help=f"(default: {f.default!r})")
    p.set_defaults(func=cmd_learn)
