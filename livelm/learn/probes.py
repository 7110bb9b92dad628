"""The update guard's probes: questions whose answers must not get worse, from the run and the operator.

An adapter update (livelm/learn/update.py) is published only if the model still answers its probes
about as well as before. A probe is one JSON line:

    {"messages": [{"role": "user", "content": "周末几点开门？"}], "expect": ["早上10点到晚上6点"], "lang": "zh"}

`messages` is the prompt, `expect` the text a right answer states (a string or a list of acceptable
alternatives), `lang` (optional, "en" or "zh") the language the answer must be in. Grading is
livelm.text.grade: the expected text must appear, ignoring case, width and spacing, never as part of
a longer number ("¥38" is not in "¥388").

Where probes come from:
  * the run: PROBES_FILE in the run folder, questions the model was never trained on. Nothing
    generic can know which questions a model should answer, so whoever builds a run writes it
    (`make demo` writes the shop's held-out questions: livelm/demo.py). A run without it is guarded
    by the operator's probes alone, and the learner says so once.
  * the operator: `--regression-file`, the same format; every one of its probes always counts.
  * the project: GENERAL_PROMPTS, 320 bilingual questions about nothing in particular (facts,
    instructions, arithmetic, translation, chit-chat), for any model. They have no expected answer:
    the model's own answers before the update are the reference, and the guard counts how many of
    them the update changed (self-consistency: locality without labels). Every fourth one is kept
    out of the probes, for replay (livelm/learn/update.py: self-distilled replay).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from livelm import runs
from livelm.text import LANGS, grade

PROBES_FILE = "probes.jsonl"
# a quantized or pruned copy of a run is guarded by the same questions (runs.save_tensors copies it)
runs.register_side_file(PROBES_FILE)


class ProbeError(ValueError):
    pass


def read_probes(path: str | Path, source: str) -> list[dict]:
    """The probes of a JSONL file, each tagged with its `source` ("run" or "operator")."""
    probes = []
    path = Path(path)
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ProbeError(f"{path}:{n}: not JSON ({e})") from None
        expect = rec.get("expect") if isinstance(rec, dict) else None
        if isinstance(expect, str):
            expect = [expect]
        if not (isinstance(rec, dict) and isinstance(rec.get("messages"), list) and rec["messages"]
                and isinstance(expect, list) and expect and all(isinstance(e, str) for e in expect)):
            raise ProbeError(f"{path}:{n}: a probe is {{\"messages\": [...], \"expect\": \"text\" or [\"alt1\", ...]}}")
        if rec.get("lang") is not None and rec["lang"] not in LANGS:
            raise ProbeError(f"{path}:{n}: lang must be one of {', '.join(LANGS)}, not {rec['lang']!r}")
        probes.append({"messages": rec["messages"], "expect": expect, "lang": rec.get("lang"), "source": source})
    return probes


def write_probes(run_dir: str | Path, probes: list[dict]) -> Path:
    """Record the run's probes (PROBES_FILE), crash-safe: a reader sees the old file or the new one."""
    from livelm import io
    path = Path(run_dir) / PROBES_FILE
    keep = ("messages", "expect", "lang")
    lines = "".join(json.dumps({k: p[k] for k in keep if p.get(k) is not None}, ensure_ascii=False) + "\n"
                    for p in probes)
    with io.atomic_open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(lines)
    return path


def copy_probes(src_run: str | Path, dst_run: str | Path) -> None:
    """Give a run made from another (a promoted update) the other's probes, if it has any."""
    from livelm import io
    if has_run_probes(src_run):
        io.write_bytes(Path(dst_run) / PROBES_FILE, (Path(src_run) / PROBES_FILE).read_bytes())


def has_run_probes(run_dir: str | Path) -> bool:
    """Does the run record its own probes?"""
    return (Path(run_dir) / PROBES_FILE).is_file()


def probe_set(run_dir: str | Path, size: int, seed: int, regression_file: str | None) -> list[dict]:
    """A sample of `size` of the run's probes (a fixed one for a seed) plus all of the operator's."""
    probes = read_probes(Path(run_dir) / PROBES_FILE, "run") if has_run_probes(run_dir) else []
    random.Random(seed).shuffle(probes)
    probes = probes[:size]
    if regression_file:
        probes += read_probes(regression_file, "operator")
    return probes


GENERAL_PROMPTS = Path(__file__).with_name("general_prompts.jsonl")


def general_prompts(use: str) -> list[dict]:
    """The project's general prompts for `use`: "probe" (3 in 4: 240) or "replay" (the other 80), each
    {"messages", "lang", "kind", "source": "general"}."""
    rows = [json.loads(line) for line in GENERAL_PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    keep = (lambda i: i % 4 != 3) if use == "probe" else (lambda i: i % 4 == 3)
    return [{"messages": r["messages"], "lang": r.get("lang"), "kind": r.get("kind"), "source": "general"}
            for i, r in enumerate(rows) if keep(i)]


def general_probe_set(size: int, seed: int) -> list[dict]:
    """A fixed sample (for a seed) of `size` general probes, English and Chinese alike."""
    probes = general_prompts("probe")
    random.Random(seed).shuffle(probes)
    return probes[:size]


def same_answer(before: str, after: str, tokens: int = 24) -> bool:
    """Did an update leave this answer as it was? Compared on its first `tokens` content words (memory's
    `terms`: case, spacing, punctuation and function words ignored, Chinese by character): a greedy
    answer that changed somewhere past them is the same answer drifting later, and the probes are
    answered with a short budget anyway."""
    from livelm.learn.memory import terms
    return terms(before)[:tokens] == terms(after)[:tokens]


def consistency(before: list[str], after: list[str]) -> float | None:
    """The share of answers an update left unchanged (`same_answer`); None without any."""
    if not before:
        return None
    return sum(same_answer(a, b) for a, b in zip(before, after)) / len(before)


def probe_answers(model, tokenizer, probes: list[dict], max_tokens: int = 48) -> list[str]:
    """Greedy answers to the probe questions (with whichever adapter is active)."""
    from livelm.chat.template import prompt_ids
    from livelm.infer.engine import Engine
    from livelm.sampling import SamplingParams
    if not probes:
        return []
    prompts = [prompt_ids(p["messages"], tokenizer) for p in probes]
    engine = Engine(model, tokenizer, max_batch=min(64, len(probes)),   # a cache as long as the probes need
                    max_len=min(model.cfg.block_size, max(map(len, prompts)) + max_tokens))
    outs = engine.generate(prompts, SamplingParams.greedy(max_tokens))
    return [o.text for o in outs]


def probe_accuracy(probes: list[dict], answers: list[str]) -> float | None:
    """The share of answers that `grade` right; None without probes: nothing to compare. (Not NaN: the
    figure is written to the version's meta.json and served by /v1/adapters as JSON, which has no NaN.)"""
    if not probes:
        return None
    return sum(grade(text, p["expect"], p.get("lang")) for p, text in zip(probes, answers)) / len(probes)
