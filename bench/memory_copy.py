"""Offline check of the default assistant's "memory" skill: does it copy a fact from the notes?

    python bench/memory_copy.py [RUN ...] [--seed 0] [--json out.json]

RUN is a build directory (runs/assistant, with chat/ inside) or a chat run directory;
default runs/assistant. Nothing is written to the run. Greedy decoding throughout.

For every fact whose value has digits, a counterfactual value is drawn (fresh numbers, or a
fresh price; never the canonical value or one of the fact's listed alternatives), and its
statement (`shop.fact_statement`) is put into the system prompt exactly as live
learning does it (`memory.with_notes`), and passed as a copy source (`livelm.learn.copying.CopyFromNotes`)
as the server does (`--no-copy`: the model alone). Then the question is asked, once in its held-out
phrasings and once in two of its training phrasings; a hit is an answer that contains the
note's value in the question's language (`shop.check_answer`). Rows:

  note            the correction is the only note
  note+2          the correction plus two notes correcting other facts (as BM25 retrieval
                  with k=3 gives when a tenant has several corrections), in random order
  non-digit alt   facts without digits: one of their listed alternatives (seen in training)
  listed alt      every fact, its first listed alternative, as bench/live_learning.py corrects
                  (values the training chats use over and over: recall can score here, copy is
                  not needed)
  locality        two notes about OTHER facts; the held-out question must still get the
                  canonical value ("kept" = among questions answered right without notes)
  no notes        plain held-out accuracy (what `make demo` reports)

The cases depend only on --seed, so every run is asked the same questions with the same
values. Training also draws random counterfactual values, so some eval values occur in a
run's training chats for that fact (a single chat among thousands); "note held, unseen"
restricts the first row to values that never occur in the run's corpus/chat_train.jsonl.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from livelm.chat.template import prompt_ids  # noqa: E402
from livelm.data import shop  # noqa: E402
from livelm.infer.engine import Engine  # noqa: E402
from livelm.sampling import SamplingParams  # noqa: E402
from livelm.learn.memory import with_notes  # noqa: E402
from livelm.learn.copying import CopyFromNotes  # noqa: E402
from livelm.runs import load_model  # noqa: E402

LANGS = shop.LANGS


def chat_dir(run: Path) -> Path:
    return run if (run / "model.safetensors").is_file() else run / "chat"


def table_values() -> dict[str, set[str]]:
    """fact key -> the canonical and listed alternative values (en and zh)."""
    return {f.key: {f.value_en, f.value_zh} | {v for a in f.alternatives for v in a} for f in shop.FACTS}


def seen_values(run: Path) -> dict[str, set[str]]:
    """fact key -> every value (en and zh) the run's training chats used for it (table values included)."""
    seen = table_values()
    path = run / "corpus" / "chat_train.jsonl"
    if not path.is_file():
        print(f"note: {path} not found; fresh values are checked against the table only", file=sys.stderr)
        return seen
    for line in path.read_text(encoding="utf-8").splitlines():
        c = json.loads(line)
        for k, v in zip(c["facts"], c["values"]):
            seen[k].update(v)
        # the notes also state values (distractors): collect them through the statements
    for line in path.read_text(encoding="utf-8").splitlines():
        c = json.loads(line)
        system = c["messages"][0]["content"]
        if "\n" not in system:
            continue
        for f in shop.FACTS:
            for lang in LANGS:
                pre, _, post = f.answers(lang)[0].partition("{value}")
                for note in system.split("\n")[1:]:
                    note = note[2:]
                    if note.startswith(pre) and note.endswith(post) and len(note) > len(pre) + len(post):
                        v = note[len(pre):len(note) - len(post)]
                        seen[f.key].add(v)
    return seen


def fresh_value(rng: random.Random, fact: shop.Fact, seen: set[str]) -> tuple[str, str] | None:
    """A counterfactual value with digits that training never used for this fact (None: no digits)."""
    for _ in range(1000):
        if shop._is_plain_price(fact) and rng.random() < 0.5:
            v = shop._random_price(rng, fact)
        else:
            v = shop._random_digits(rng, fact)
        if v is None:
            return None
        if v[0] not in seen and v[1] not in seen:
            return v
    return None


def other_notes(rng: random.Random, fact: shop.Fact, lang: str, n: int, seen: dict) -> list[str]:
    """n notes correcting facts other than `fact` (half the time from the same topic)."""
    notes, used = [], {fact.key}
    for _ in range(n):
        same = [f for f in shop.FACTS if f.topic == fact.topic and f.key not in used]
        pool = same if same and rng.random() < 0.5 else [f for f in shop.FACTS if f.key not in used]
        other = rng.choice(pool)
        used.add(other.key)
        v = fresh_value(rng, other, seen[other.key]) or rng.choice(other.alternatives)
        notes.append(shop.fact_statement(other, lang, v))
    return notes


def make_cases(seed: int, seen: dict, n_train_q: int = 2, n_nondigit: int = 99) -> list[dict]:
    rng = random.Random(seed)
    cases = []

    def add(row, fact, lang, phr, q, notes, value):
        # the default system prompt, as `make demo` evaluates; with_notes appends the notes to it
        msgs = with_notes([{"role": "system", "content": shop.system_prompt(lang)},
                           {"role": "user", "content": q}], notes)
        cases.append({"row": row, "fact": fact.key, "lang": lang, "phrasing": phr, "q": q,
                      "messages": msgs, "notes": notes, "value": value})

    nondigit = [f for f in shop.FACTS if shop._random_digits(random.Random(0), f) is None]
    nondigit = rng.sample(nondigit, min(n_nondigit, len(nondigit)))
    for fact in shop.FACTS:
        for lang in LANGS:
            train_q, held_q = shop.split_questions(fact, lang)
            phrasings = [("held", q) for q in held_q] + [("train", q) for q in rng.sample(train_q, n_train_q)]
            value = fresh_value(rng, fact, seen[fact.key])
            if value is not None:
                note = shop.fact_statement(fact, lang, value)
                for phr, q in phrasings:
                    add("note", fact, lang, phr, q, [note], value)
                    notes = other_notes(rng, fact, lang, 2, seen) + [note]
                    rng.shuffle(notes)
                    add("note+2", fact, lang, phr, q, notes, value)
            elif fact in nondigit:
                alt = rng.choice(fact.alternatives)
                for phr, q in phrasings:
                    add("non-digit alt", fact, lang, phr, q, [shop.fact_statement(fact, lang, alt)], alt)
            alt = fact.alternatives[0]
            for phr, q in phrasings:
                add("listed alt", fact, lang, phr, q, [shop.fact_statement(fact, lang, alt)], alt)
            for q in held_q:
                add("no notes", fact, lang, "held", q, [], None)
                add("locality", fact, lang, "held", q, other_notes(rng, fact, lang, 2, seen), None)
    return cases


def rate(hits: list[bool]) -> tuple[float, int]:
    """(share of True, how many) for one table cell."""
    return sum(hits) / max(1, len(hits)), len(hits)


def evaluate(run: Path, seed: int = 0, max_batch: int = 32, copy: bool = True) -> dict:
    model, tokenizer, _ = load_model(chat_dir(run))
    model.eval()
    cases = make_cases(seed, table_values())
    seen = seen_values(run)
    engine = Engine(model, tokenizer, max_batch=max_batch)
    t0 = time.perf_counter()
    # as the server decodes memory answers: the notes are also copy sources (livelm.learn.copying.CopyFromNotes)
    params = [SamplingParams(max_tokens=48, temperature=0,
                             processors=CopyFromNotes.of(c["notes"], tokenizer) if copy else ())
              for c in cases]
    outs = engine.generate([prompt_ids(c["messages"], tokenizer) for c in cases], params)
    secs = time.perf_counter() - t0
    for c, o in zip(cases, outs):
        f = shop.FACTS_BY_KEY[c["fact"]]
        c["answer"] = o.text
        c["ok"] = shop.check_answer(f, o.text, c["lang"], tuple(c["value"]) if c["value"] else None)
    # locality "kept": among held-out questions answered right without notes
    for c in cases:
        c["seen"] = bool(c["value"]) and (c["value"][0] in seen[c["fact"]] or c["value"][1] in seen[c["fact"]])
    base_ok = {(c["fact"], c["lang"], c["q"]): c["ok"] for c in cases if c["row"] == "no notes"}
    table = {}
    for row in ("note", "note+2", "non-digit alt", "listed alt"):
        for phr in ("held", "train"):
            for lang in LANGS:
                sel = [c["ok"] for c in cases if c["row"] == row and c["phrasing"] == phr and c["lang"] == lang]
                table[f"{row}|{phr}|{lang}"] = rate(sel)
    for lang in LANGS:
        sel = [c["ok"] for c in cases if c["row"] == "note" and c["phrasing"] == "held" and c["lang"] == lang
               and not c["seen"]]
        table[f"note|held, unseen|{lang}"] = rate(sel)
        sel = [c["ok"] for c in cases if c["row"] == "no notes" and c["lang"] == lang]
        table[f"no notes|held|{lang}"] = rate(sel)
        sel = [c["ok"] for c in cases if c["row"] == "locality" and c["lang"] == lang]
        table[f"locality|held|{lang}"] = rate(sel)
        sel = [c["ok"] for c in cases if c["row"] == "locality" and c["lang"] == lang
               and base_ok[(c["fact"], c["lang"], c["q"])]]
        table[f"locality kept|held|{lang}"] = rate(sel)
    failures = [(c["row"], c["q"], c["value"], c["answer"]) for c in cases
                if not c["ok"] and c["row"] in ("note", "locality")]
    return {"run": str(run), "copy": copy, "seconds": round(secs, 1), "table": table, "failures": failures}


def print_table(res: dict) -> None:
    t = res["table"]
    print(f"\n{res['run']}, {'with' if res['copy'] else 'without'} copying from the notes  "
          f"({res['seconds']}s generation)")
    print("| row | phrasing | en | zh | n (en+zh) |")
    print("|---|---|---|---|---|")
    rows = [(r, p) for r in ("note", "note+2", "non-digit alt", "listed alt") for p in ("held", "train")]
    rows.insert(1, ("note", "held, unseen"))
    rows += [("locality", "held"), ("locality kept", "held"), ("no notes", "held")]
    for r, p in rows:
        en, zh = t[f"{r}|{p}|en"], t[f"{r}|{p}|zh"]
        print(f"| {r} | {p} | {en[0]:.0%} | {zh[0]:.0%} | {en[1] + zh[1]} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path, default=[Path("runs/assistant")])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the results (with failures) here")
    p.add_argument("--failures", type=int, default=0, help="print this many failing answers")
    p.add_argument("--no-copy", dest="copy", action="store_false",
                   help="the model alone: notes in the prompt only, not also copy sources as the server uses them")
    a = p.parse_args(argv)
    results = []
    for run in a.runs:
        res = evaluate(run, a.seed, copy=a.copy)
        print_table(res)
        for row, q, v, ans in res["failures"][:a.failures]:
            print(f"  [{row}] {q} | note value {v} | -> {ans}")
        results.append(res)
    if a.json:
        a.json.write_text(json.dumps(results, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
