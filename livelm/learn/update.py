"""One adapter update for one tenant: feedback -> training data -> LoRA -> probe -> publish or reject.

Run in its own process (`update_child`, started by the server's learner at low
priority with one thread: livelm/learn/live.py), so training never holds the
serving process's interpreter or its CPU threads, and a crash here cannot take
the server down; `livelm learn` runs it in-process.

Training data, from the tenant's feedback:
    correction  -> SFT on (conversation, correction) (+ DPO correction > answer with correction_pairs),
                   and on other phrasings of the corrected question (the run's training chats that
                   ask it in other words, and rule-made ones: livelm/learn/paraphrase.py), answered
                   by the model with the correction as a note (`distilled`)
    preference  -> DPO chosen > rejected
    up / down   -> KTO desirable / undesirable
    + replay    -> against forgetting, conversations whose next-token distribution is held to the
                   model before the update (KL), or SFT: the run's own chat training data, or, for a
                   model that has none (an imported one), the model's own answers to the project's
                   general prompts (self-distillation, livelm/learn/probes.py)
Facts are not trained on: they live in memory (livelm/learn/memory.py).

Lifelong: a tenant may make 1,000 corrections. An update goes on from the live version when that
version was trained on a subset of today's feedback (`warm_start`), and each step trains at most
`max_fixes` corrections: the new ones first, then a sample of the older ones (replay of old
corrections), so an update costs the same after 10 corrections or 1,000. When feedback was forgotten
or superseded since the live version, the update starts over from a fresh adapter, so what was
removed leaves the adapter too.
"""
from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from livelm.config import resolve_config
from livelm.learn.copying import CopyFromNotes
from livelm.learn.adapters import AdapterStore
from livelm.learn.feedback import FeedbackStore
from livelm.learn.memory import (BM25, Memory, MemoryItem, correction_finder, last_question, related_chats,
                                 run_system_prompts)
from livelm.learn.objectives import answer_batch, feedback_loss, sequence_logprob
from livelm.learn.paraphrase import paraphrases
from livelm.learn.probes import (consistency, general_probe_set, general_prompts, has_run_probes, probe_accuracy,
                                 probe_answers, probe_set)
from livelm.models import lora
from livelm.runs import load_model
from livelm.training.trainer import train


# A question "asks a corrected question" when it covers this share of one's term weight (memory's bar for
# notes). A raw BM25 score bar (2.0, before) depends on how many items the index holds: with a tenant's
# single correction no question could reach it, so replay re-taught the fact just corrected.
QUESTION_COVERAGE = 0.4
MAX_DISTILLED = 256   # distilled rephrasings per update, at most (see distilled)
# Their answer budget: a fact's answer fits; one still going is dropped (64 before: SmolLM2's update spent
# 5 s generating them, its longest rows set every step's width)
DISTILLED_TOKENS = 48
REPLAY_SET = 6   # distinct replayed chats per update, in units of UpdateConfig.replay (see build_batches)


@dataclass
class UpdateConfig:
    steps: int = 30
    rank: int = 8
    lr: float = 3.5e-3          # 5e-3 broke unrelated answers of the 89%/91% assistant (the guard rejected it)
    batch: int = 8               # DPO pairs, KTO items and distilled rephrasings sampled per step
    replay: int = 8              # replayed training conversations per step (KL: 4 -> 8 kept 75% -> 78% of
                                 # unrelated answers word for word, 16 took the update past 10 s)
    beta: float = 0.1            # DPO/KTO temperature
    probe_size: int = 60         # the run's probes (livelm/learn/probes.py) sampled for the guard
    max_drop: float = 0.05       # reject if probe accuracy drops by more than this
    regression_file: str | None = None   # operator's JSONL probes: {"messages": [...], "expect": "text" or [...]}
    modes: str = "sft,dpo,kto"
    # Also a DPO pair "correction > the answer it corrects" for each correction. Off by default: measured on
    # the default assistant (20 corrections, bench/live_learning.py settings) it lowered efficacy 100% -> 85%,
    # rephrasings 82% -> 72% and kept-correct unrelated answers 93% -> 83% against SFT alone, at +15% time.
    # The two answers share all but the value, and pushing the rejected one down blurs the shared template.
    correction_pairs: bool = False
    # How replayed conversations are trained: "kl" keeps the model's own next-token distribution on them
    # (the adapter switched off is the reference), "sft" trains on their text.
    replay_loss: str = "kl"
    replay_weight: float = 1.0
    # Chats to replay instead of the run's own training data (the same formats `livelm finetune` reads).
    replay_file: str | None = None
    # Other phrasings of each corrected question (training chats, `related_chats`) answered by the model
    # with the correction as a note and trained on without it (`distilled`): up to this many per
    # correction, `batch` of them per step. A correction then reaches rephrasings the user never typed.
    # Default assistant, 20 corrections, adapter alone (bench/live_learning.py; rephrasings scoped /
    # unscoped): off (25 steps, lr 3e-3) 65 / 72%; 8, 25 steps 80 / 82%; 8, 35 steps 90 / 92%;
    # 8, 30 steps at lr 3.5e-3 (the defaults) 88 / 90%, live in 8.2-9.0 s (88-90% scoped over 3 seeds).
    propagate: int = 8
    # The guard judges the adapter as it will be served: with the server's scope on (LearnConfig.adapter_scope)
    # a probe question outside the tenant's scope keeps the base model's answer, so only probes in scope
    # can count against the update. False (--learn-adapter-scope all) = every probe gets the adapter.
    scoped: bool = True
    # Rule-made phrasings of each corrected question (livelm/learn/paraphrase.py), distilled as the
    # training chats' phrasings are: a model with no training chats (an imported one) gets only these.
    paraphrases: int = 4
    # Only the top `layers` blocks get the adapter (0 = all): backward then stops there. The default
    # assistant has 4 blocks (all of them); on SmolLM2 (30) an update of 5 corrections took 166 s with
    # 8 blocks and the other defaults, 56 s with 4 blocks, 15 steps, lr 7e-3, replay 4 (bench/RESULTS.md).
    layers: int = 4
    # Corrections trained per step: the new ones (since the live version), then older ones sampled.
    max_fixes: int = 16
    max_steps: int = 120      # steps grow with new corrections past max_fixes, up to this
    warm_start: bool = True   # go on from the live version when its feedback is still all there
    # The project's general probes (livelm/learn/probes.py): this many, answered before and after the
    # update; more than max_changed of them answered differently rejects it.
    general_probes: int = 48
    max_changed: float = 0.1
    probe_tokens: int = 32    # the probes' and self-distilled replay's answer budget
    dtype: str = "auto"   # the trainer's --dtype: auto is bf16 where the CPU computes it natively (livelm.machine)
    seed: int = 0


def replay_pool(run_config: dict, run_dir: str | Path) -> list[list[dict]]:
    """The run's own chat training data (fine-tuned runs record it as config['data'], and relative
    to the run as config['data_relative']). Missing data is said out loud: updates then train
    without replay and forget more of what the model knew."""
    recorded = run_config.get("data") or ""
    places = [Path(recorded)] if recorded else []
    if run_config.get("data_relative"):
        places.append(Path(run_dir) / run_config["data_relative"])
    path = next((p for p in places if p.suffix in (".jsonl", ".json") and p.is_file()), None)
    if path is None:
        if recorded.endswith((".jsonl", ".json")):
            print(f"livelm learn: warning: the run's training chats ({recorded}) are gone; updates train "
                  f"without replay and will change unrelated answers more", file=sys.stderr, flush=True)
        return []
    from livelm.chat.data import read_conversations
    convs, _ = read_conversations(path, skip_bad=True)
    return convs


def latest_corrections(items) -> list:
    """The tenant's corrections (oldest first), only the latest for each question, as memory keeps its
    notes: an earlier correction of the same question is superseded, and training on both would
    teach two answers to one question."""
    latest = {}
    for r in items:
        if r.kind == "correction" and r.correction:
            latest.pop(key := " ".join(last_question(r.conversation).lower().split()), None)
            latest[key] = r
    return list(latest.values())


class FrozenTrunk:
    """The output of the blocks below the adapter (`layer` of them) for each training row, computed once.

    An update's adapter sits on the top blocks only (UpdateConfig.layers), and its rows come back step
    after step (every correction in every step; distilled and replayed rows drawn from fixed sets), so
    the frozen blocks would compute the same thing 15-30 times: on SmolLM2 (26 of 30 blocks frozen)
    that was most of a step. Rows are right-padded and causal, so a row's trunk output does not depend
    on the rows beside it or on its padding: it is cached per row (by its tokens), in the dtype the
    trainer computes in, and each batch resumes from it (BatchPlan.resume)."""

    def __init__(self, model, layer: int, dtype: str):
        self.model, self.layer, self.dtype = model, layer, dtype     # dtype: the trainer's --dtype
        self.rows: dict[tuple[int, ...], torch.Tensor] = {}    # row tokens -> (n, C)
        self.computed = 0

    def plan(self, b: dict):
        """The BatchPlan that resumes batch b's rows (idx (B, S), targets (B, S)) above the trunk."""
        from livelm import machine
        from livelm.models.gpt import BatchPlan
        from livelm.runtime import autocast
        device = next(self.model.parameters()).device    # the trainer may have moved the model since
        idx, targets = b["idx"].cpu(), b["targets"].cpu()
        # a row's tokens run through its last answer position (then padding)
        S = idx.shape[1]
        lengths = [S - int(torch.argmax(row.flip(0).int())) if row.any() else S for row in targets >= 0]
        keys = [tuple(idx[r, :n].tolist()) for r, n in enumerate(lengths)]
        missing = [r for r, k in enumerate(keys) if k not in self.rows]
        if missing:
            with torch.no_grad(), autocast(device, machine.resolve_dtype(self.dtype, device, warn=False)):
                x = self.model.hidden(idx[missing].to(device), BatchPlan(stop_at=self.layer))   # (M, S, C)
            for j, r in enumerate(missing):
                self.rows[keys[r]] = x[j, :lengths[r]].clone()
            self.computed += len(missing)
        x = torch.zeros(idx.shape + (self.rows[keys[0]].shape[-1],), dtype=self.rows[keys[0]].dtype, device=device)
        for r, k in enumerate(keys):
            x[r, :len(k)] = self.rows[k]
        return BatchPlan(resume=(self.layer, x))


def build_batches(model, tokenizer, items, pool, cfg: UpdateConfig, block_size: int,
                  system_prompts: dict[str, str] | None = None, trained: frozenset[int] = frozenset(),
                  trunk: FrozenTrunk | None = None):
    """Fixed feedback parts (with reference log-probs) + a replay sampler; returns get_batch(split, i).
    `system_prompts`: the run's, for the notes of the distilled rows (`distilled`). `trained`: the
    feedback ids the adapter it goes on from learned already (warm start); the others are new."""
    modes = set(cfg.modes.split(","))
    if cfg.replay_loss not in ("kl", "sft"):
        raise ValueError(f"replay_loss must be 'kl' or 'sft', not {cfg.replay_loss!r}")
    corrections = latest_corrections(items)
    sft = [(r.conversation, r.correction) for r in corrections]
    new_rows = [k for k, r in enumerate(corrections) if r.id not in trained]
    old_rows = [k for k, r in enumerate(corrections) if r.id in trained]
    pairs = [(r.conversation, r.chosen, r.rejected) for r in items if r.kind == "preference"]
    if cfg.correction_pairs:
        pairs += [(r.conversation, r.correction, r.answer) for r in items if r.kind == "correction" and r.answer]
    marks = [(r.conversation, r.answer, 1 if r.kind == "up" else -1) for r in items if r.kind in ("up", "down")]
    fixed = {"beta": cfg.beta}
    with torch.no_grad():
        lora.set_active(model, None)  # reference = the model before this update
        if pairs and "dpo" in modes:
            convs = [p[0] for p in pairs] * 2
            answers = [p[1] for p in pairs] + [p[2] for p in pairs]
            b = answer_batch(convs, answers, tokenizer, block_size)
            b["ref"] = sequence_logprob(model, b)
            fixed["dpo"] = b
        if marks and "kto" in modes:
            b = answer_batch([m[0] for m in marks], [m[1] for m in marks], tokenizer, block_size)
            b["ref"] = sequence_logprob(model, b)
            b["label"] = torch.tensor([m[2] for m in marks])
            fixed["kto"] = b
        lora.set_active(model, "update")
    if "sft" not in modes:
        sft, new_rows, old_rows = [], [], []
    # other phrasings of the new corrections (older ones were distilled by the updates that learned them)
    fresh = [corrections[k] for k in new_rows]
    fixes = [r for r in fresh if r.answer]
    related = related_chats(fixes, pool)
    phrasings = [(prompt, fixes[i]) for prompt, _, i in related]
    spread = []
    if cfg.propagate > 0:
        rng = random.Random(cfg.seed)
        by_fix: dict[int, list] = {}
        for prompt, fix in phrasings:
            by_fix.setdefault(fix.id, []).append((prompt, fix))
        picked = [p for ps in by_fix.values() for p in rng.sample(ps, min(cfg.propagate, len(ps)))]
        picked += [([{"role": "user", "content": q}], r) for r in fresh
                   for q in paraphrases(last_question(r.conversation), cfg.paraphrases)]
        lora.set_active(model, None)          # the model before this update answers with the notes
        spread = distilled(model, tokenizer, picked, cfg.seed, system_prompts)
        lora.set_active(model, "update")
    # Replay must not re-teach what was just corrected: the run's own training chats state the old
    # facts, so conversations that ask a corrected question, or answer it in other words (`related`),
    # are left out of the pool.
    corrected = [MemoryItem(i, last_question(c), last_question(c)) for i, (c, _) in enumerate(sft)]
    if corrected and pool:
        index = BM25(corrected)
        stale = {(last_question(p), a) for p, a, _ in related}
        pool = [c for c in pool if (last_question(c), c[-1]["content"]) not in stale
                and not index.search(last_question(c), k=1, min_coverage=QUESTION_COVERAGE)]

    def rows(b: dict, pick: list[int], paired: bool) -> dict:
        """The rows `pick` of a scored batch (for DPO, chosen row i and its rejected row i + n)."""
        n = b["idx"].shape[0] // 2 if paired else 0
        sel = torch.tensor(pick + [i + n for i in pick] if paired else pick)
        return {k: (v[sel] if isinstance(v, torch.Tensor) else v) for k, v in b.items()}

    # The replayed chats' reference distributions (the model before this update) are computed once,
    # for a fixed sample of REPLAY_SET * replay chats, in batches of `replay`: each step draws its
    # replay rows from that sample instead of running the reference model on new ones.
    replay_ref: list[tuple[list[dict], torch.Tensor]] = []
    if pool and sft and cfg.replay and cfg.replay_loss == "kl":
        chosen = random.Random(cfg.seed).sample(pool, min(len(pool), REPLAY_SET * cfg.replay))
        with torch.no_grad():
            lora.set_active(model, None)
            for k in range(0, len(chosen), cfg.replay):
                part = chosen[k:k + cfg.replay]
                rb = answer_batch([c[:-1] for c in part], [c[-1]["content"] for c in part], tokenizer, block_size)
                h = model.hidden(rb["idx"], trunk.plan(rb) if trunk else None)            # (B, S, C)
                for r, c in enumerate(part):   # the head at answer positions only: (N_r, V) each
                    replay_ref.append((c, torch.log_softmax(model.head(h[r][rb["targets"][r] >= 0]).float(), -1)))
            lora.set_active(model, "update")

    def get_batch(split, i):
        # every correction in every step (they are what must be learned); preference and 👍/👎 rows are
        # sampled, at most cfg.batch of each per step, so they add a bounded cost to each step
        rng = random.Random(cfg.seed * 100003 + i)
        # at most max_fixes corrections: the new ones, then older ones (so they are not forgotten)
        taken = new_rows if len(new_rows) <= cfg.max_fixes else rng.sample(new_rows, cfg.max_fixes)
        taken = taken + rng.sample(old_rows, min(len(old_rows), cfg.max_fixes - len(taken)))
        convs = [sft[k][0] for k in taken]
        answers = [sft[k][1] for k in taken]
        for conv, answer in rng.sample(spread, min(cfg.batch, len(spread))):
            convs.append(conv)
            answers.append(answer)
        batch = {"beta": fixed["beta"]}
        if replay_ref:
            replayed = rng.sample(replay_ref, min(cfg.replay, len(replay_ref)))
            rb = answer_batch([c[:-1] for c, _ in replayed], [c[-1]["content"] for c, _ in replayed], tokenizer,
                              block_size)
            rb["ref_logp"] = torch.cat([ref for _, ref in replayed])               # (answer positions, V)
            if trunk:
                rb["plan"] = trunk.plan(rb)
            batch["replay"], batch["replay_weight"] = rb, cfg.replay_weight
        else:
            replayed = rng.sample(pool, min(cfg.replay, len(pool))) if pool and sft else []
            for conv in replayed:
                convs.append(conv[:-1])
                answers.append(conv[-1]["content"])
        for part, paired in (("dpo", True), ("kto", False)):
            if part in fixed:
                n = fixed[part]["idx"].shape[0] // (2 if paired else 1)
                batch[part] = rows(fixed[part], sorted(rng.sample(range(n), min(cfg.batch, n))), paired)
        if convs:
            batch["sft"] = answer_batch(convs, answers, tokenizer, block_size)
            if trunk:
                batch["sft"]["plan"] = trunk.plan(batch["sft"])
        batch["idx"] = batch.get("sft", batch.get("dpo", batch.get("kto")))["idx"]
        return batch

    return get_batch, {"sft": len(sft), "new": len(new_rows), "propagated": len(spread), "replay_pool": len(pool),
                       "dpo": len(pairs) if "dpo" in fixed else 0,
                       "kto": len(marks) if "kto" in fixed else 0}


def distilled(model, tokenizer, picked: list[tuple[list[dict], object]], seed: int,
              system_prompts: dict[str, str] | None = None) -> list[tuple[list[dict], str]]:
    """(prompt, answer) pairs that carry each correction to other phrasings of its question, in the
    model's own words: each (prompt, correction) of `picked` (a training chat that asks the corrected
    question in other words, or a rule-made phrasing) is answered by the model before the update
    *with the correction as a memory note*, copying from it as the server's memory does, and the
    adapter learns those answers without the note (context distillation, Snell et al. 2022). An
    answer that names none of the correction's new terms (the words it has and the answer it
    corrects has not: the new value) still states the old fact and is dropped. `system_prompts`:
    the run's (with_notes), as the server's memory uses."""
    from livelm.chat.template import prompt_ids
    from livelm.infer.engine import Engine
    from livelm.sampling import SamplingParams
    from livelm.learn.memory import terms, with_notes
    # answering them is one batched generation (~0.8 s for the default assistant's 20 corrections x 8);
    # a burst of hundreds of corrections gets a sample, so an update's cost stays bounded
    if len(picked) > MAX_DISTILLED:
        picked = random.Random(seed).sample(picked, MAX_DISTILLED)
    if not picked:
        return []
    params = [SamplingParams.greedy(DISTILLED_TOKENS, processors=CopyFromNotes.of([fix.correction.strip()], tokenizer))
              for _, fix in picked]
    outs = Engine(model, tokenizer, max_batch=64).generate(
        [prompt_ids(with_notes(p, [fix.correction.strip()], system_prompts), tokenizer) for p, fix in picked],
        params)
    kept = []
    for (prompt, fix), out in zip(picked, outs):
        new_terms = set(terms(fix.correction)) - set(terms(fix.answer or ""))
        # an answer cut by the budget would be learned with an end after its last word: it keeps its
        # whole sentences only
        text = out.text if out.finish_reason == "stop" else whole_sentences(out.text)
        if new_terms & set(terms(text)):
            kept.append((prompt, text))
    return kept


def whole_sentences(text: str) -> str:
    """`text` up to its last sentence end ("." "。" "!" "?" ...), or "" without one."""
    end = max(text.rfind(c) for c in ".。!！?？")
    return text[:end + 1] if end >= 0 else ""


def unrelated(probes: list[dict], answers: list[str], items) -> list[int]:
    """Indices of the probe questions the tenant has not corrected: those must not get worse.

    A correction legitimately changes the answers to its own question and its rephrasings; those
    probes are left out of the guard: a question like a corrected or preferred one (BM25), or one
    whose answer before the update states what a correction corrected (`correction_finder`, the test
    that picks the rephrasings an update trains on). The operator's probes always count."""
    asked = [MemoryItem(i, last_question(r.conversation), last_question(r.conversation))
             for i, r in enumerate(items) if r.kind in ("correction", "preference")]
    index = BM25(asked) if asked else None
    find = correction_finder([r for r in items if r.kind == "correction" and r.answer and r.correction])

    def changed_by_feedback(probe: dict, answer: str) -> bool:
        asks = index is not None and index.search(last_question(probe["messages"]), k=1,
                                                  min_coverage=QUESTION_COVERAGE)
        return bool(asks) or find(answer) is not None
    return [k for k, (p, a) in enumerate(zip(probes, answers))
            if p.get("source") == "operator" or not changed_by_feedback(p, a)]


def base_answers(model, tokenizer, probes: list[dict], run: Path, cache_dir: Path, tokens: int) -> list[str]:
    """The model's own greedy answers (no adapter) to these prompts, remembered across updates in
    cache_dir: the base model never changes, and answering a few dozen prompts costs a 135M model on
    one thread tens of seconds, several times an update's whole budget. Keyed by the run's weights
    (path, size, mtime) and the answer budget."""
    import hashlib
    import json
    from livelm import io
    weights = sorted(run.glob("*.safetensors")) + sorted(run.glob("*.gguf"))
    stamp = [str(run.resolve()), tokens] + [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights]
    path = cache_dir / (hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:24] + ".json")
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    key = [json.dumps(p["messages"], ensure_ascii=False, sort_keys=True) for p in probes]
    todo = sorted({k for k in key if k not in known})
    if todo:
        lora.set_active(model, None)
        by_key = {json.dumps(p["messages"], ensure_ascii=False, sort_keys=True): p for p in probes}
        answers = probe_answers(model, tokenizer, [by_key[k] for k in todo], tokens)
        known.update(zip(todo, answers))
        io.write_json(path, known)
    return [known[k] for k in key]


def chats_to_replay(run_chats: list[list[dict]], cfg: UpdateConfig) -> tuple[list[list[dict]], str]:
    """The chats an update replays, and where they come from: the operator's `replay_file` ("file"),
    else the run's own training chats (`replay_pool`, "run"); ([], "self") when there are neither, and
    the update replays the model's own answers to the general prompts instead."""
    if cfg.replay_file:
        from livelm.chat.data import read_conversations
        return read_conversations(Path(cfg.replay_file), skip_bad=True)[0], "file"
    return run_chats, "run" if run_chats else "self"


def warm_base_answers(run: str | Path, store_root: str | Path, cfg: UpdateConfig) -> dict:
    """Answer the general probes and replay prompts with the base model now, into the cache the updates
    read (base_answers), so the first feedback's update does not pay for it (the server's learner runs
    this at start, in the update process: LiveLearner)."""
    t0 = time.perf_counter()
    run = Path(run)
    model, tokenizer, run_config = load_model(run)
    prompts = general_probe_set(cfg.general_probes, cfg.seed)
    if chats_to_replay(replay_pool(run_config, run), cfg)[1] == "self":
        prompts += general_prompts("replay")
    prompts += probe_set(run, cfg.probe_size, cfg.seed, cfg.regression_file)
    base_answers(model, tokenizer, prompts, run, Path(store_root) / ".base_answers", cfg.probe_tokens)
    return {"status": "warmed", "prompts": len(prompts), "seconds": round(time.perf_counter() - t0, 2)}


def trained_ids(version: Path | None) -> frozenset[int] | None:
    """The feedback ids a published version learned (its meta.json), or None when unknown."""
    import json
    try:
        meta = json.loads((version / "meta.json").read_text(encoding="utf-8"))
        return frozenset(int(i) for i in meta["trained_ids"])
    except (TypeError, OSError, ValueError, KeyError):
        return None


def run_update(run: str | Path, db: str | Path, tenant: str, store_root: str | Path, cfg: UpdateConfig) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    run = Path(run)
    model, tokenizer, run_config = load_model(run)
    model.set_dropout(0.0)   # the update trains with dropout off, whatever the run was fine-tuned with
    feedback = FeedbackStore(db)
    items = [r for r in feedback.list(tenant, limit=100_000) if not getattr(r, "forgotten", 0)]
    last_id = max((r.id for r in items), default=0)
    if not any(r.kind in ("correction", "preference", "up", "down") for r in items):
        feedback.close()
        return {"tenant": tenant, "status": "skipped", "reason": "no trainable feedback", "last_id": last_id}
    store = AdapterStore(store_root)
    cache = Path(store_root) / ".base_answers"
    # what this update learns: the latest correction per question, preferences and thumbs
    learn_ids = frozenset(r.id for r in latest_corrections(items)) | frozenset(
        r.id for r in items if r.kind in ("preference", "up", "down"))
    # warm start: the live version's feedback is all still here (nothing forgotten or superseded since)
    live = store.current(tenant)
    before_ids = trained_ids(live) if cfg.warm_start and live is not None else None
    warm = live if before_ids is not None and before_ids <= learn_ids else None
    trained = before_ids if warm is not None else frozenset()

    run_chats = replay_pool(run_config, run)     # also what widens the adapter's scope (below)
    pool, replay_source = chats_to_replay(run_chats, cfg)
    if not pool:   # no chats of its own (an imported model): replay its own answers to general prompts
        prompts = general_prompts("replay")
        pool = [p["messages"] + [{"role": "assistant", "content": a}]
                for p, a in zip(prompts, base_answers(model, tokenizer, prompts, run, cache, cfg.probe_tokens))
                if a.strip()]
    if not has_run_probes(run):   # (in the server's update process this is not relayed: the learner says it at start)
        print(f"livelm learn: {run} records no probes of its own; the guard checks the project's general probes"
              f"{' and the --regression-file' if cfg.regression_file else ''}", file=sys.stderr, flush=True)
    probes = probe_set(run, cfg.probe_size, cfg.seed, cfg.regression_file)
    general = general_probe_set(cfg.general_probes, cfg.seed)
    answers = base_answers(model, tokenizer, probes + general, run, cache, cfg.probe_tokens)
    keep = unrelated(probes + general, answers, items)
    probes, answers = [(probes + general)[k] for k in keep], [answers[k] for k in keep]
    before = list(answers)
    # the probes the adapter will answer when served (the server's scope test, with the base model's
    # answer as the draft); the others keep their answers
    scope = Memory(feedback, examples=run_chats)
    judged = [k for k, (p, a) in enumerate(zip(probes, answers))
              if not cfg.scoped or scope.in_scope(tenant, last_question(p["messages"]), a)]
    feedback.close()

    n_layer = model.cfg.n_layer
    layers = list(range(n_layer - cfg.layers, n_layer)) if 0 < cfg.layers < n_layer else None
    lcfg = lora.LoRAConfig(r=cfg.rank, lora_alpha=2 * cfg.rank, layers_to_transform=layers)
    try:
        trainable, save_fn = lora.attach_for_training(model, "update", lcfg, str(run.resolve()), init_from=warm)
    except lora.AdapterError:     # the live version has another shape (the config changed): start over
        warm, trained = None, frozenset()
        trainable, save_fn = lora.attach_for_training(model, "update", lcfg, str(run.resolve()))
    system_prompts = run_system_prompts(run_config, tokenizer)
    trunk = FrozenTrunk(model, layers[0], cfg.dtype) if layers else None
    get_batch, counts = build_batches(model, tokenizer, items, pool, cfg, model.cfg.block_size, system_prompts,
                                      trained, trunk)
    steps = min(cfg.max_steps, cfg.steps * max(1, -(-counts["new"] // cfg.max_fixes)))
    tcfg = resolve_config(None, base={**run_config.get("train", {})}, max_iters=steps, lr=cfg.lr,
                          min_lr=cfg.lr / 10, warmup_iters=0, eval_iters=0, eval_interval=steps,
                          progress=False, dropout=0.0, compile=False, seed=cfg.seed, dtype=cfg.dtype,
                          # the trainer would estimate the run's own batch_size x block_size; an update's rows
                          # are a few short chats, and the learner checked their estimate (LiveLearner._fits)
                          memory_check=False)
    vdir = store.new_version_dir(tenant)
    train(tcfg, vdir, model, tokenizer, get_batch, feedback_loss, {"arch": "gpt"}, trainable=trainable, save_fn=save_fn)
    model.eval()
    t_trained = time.perf_counter()
    lora.set_active(model, "update")
    for k, text in zip(judged, probe_answers(model, tokenizer, [probes[k] for k in judged], cfg.probe_tokens)):
        answers[k] = text
    labelled = [k for k, p in enumerate(probes) if p.get("expect")]
    unlabelled = [k for k, p in enumerate(probes) if p.get("source") == "general"]
    acc_before = probe_accuracy([probes[k] for k in labelled], [before[k] for k in labelled])
    acc_after = probe_accuracy([probes[k] for k in labelled], [answers[k] for k in labelled])
    kept = consistency([before[k] for k in unlabelled], [answers[k] for k in unlabelled])
    accepted = (acc_before is None or not (acc_after < acc_before - cfg.max_drop)) \
        and (kept is None or kept >= 1 - cfg.max_changed)
    meta = {"tenant": tenant, "status": "live" if accepted else "rejected", "created_at": time.time(),
            "probe_before": acc_before, "probe_after": acc_after, "probe_size": len(labelled),
            "general_unchanged": kept, "general_size": len(unlabelled), "max_changed": cfg.max_changed,
            "probes_in_scope": len(judged), "max_drop": cfg.max_drop,
            "trained_on": counts, "steps": steps, "warm_start": warm.name if warm is not None else None,
            "replay": replay_source, "trained_ids": sorted(learn_ids), "last_feedback_id": last_id,
            "config": asdict(cfg), "seconds": round(time.perf_counter() - t0, 2),
            "seconds_guard": round(time.perf_counter() - t_trained, 2)}
    from livelm import io
    io.write_json(vdir / "meta.json", meta)
    if accepted:
        store.publish(tenant, vdir)
    return {"version": vdir.name, "path": str(vdir), **meta}


def update_child(conn, run: str, db: str, tenant: str, store_root: str, cfg: dict, threads: int, nice: int) -> None:
    """Entry point of the update process (livelm/learn/live.py: run_update_process): lower its CPU
    priority, train with `threads` threads, send the result dict (or the error) back on `conn`. What the
    update prints (the trainer's step line, warnings) is kept out of the server's log; its warnings
    travel back in the result, for the server to log."""
    import contextlib
    import io
    printed = io.StringIO()
    try:
        if nice and hasattr(os, "nice"):
            os.nice(nice)
        torch.set_num_threads(threads)
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            result = run_update(run, db, tenant, store_root, UpdateConfig(**cfg)) if tenant is not None \
                else warm_base_answers(run, store_root, UpdateConfig(**cfg))
    except Exception as e:   # said back to the server, which logs it and keeps serving
        result = {"tenant": tenant, "status": "failed", "error": f"{type(e).__name__}: {e}"}
    result["warnings"] = [line.split("warning:", 1)[1].strip() for line in printed.getvalue().splitlines()
                          if "warning:" in line]
    try:
        conn.send(result)
    finally:
        conn.close()
