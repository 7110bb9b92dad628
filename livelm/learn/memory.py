"""Memory: facts and corrections put back into the prompt (instant, per tenant, reversible).

A tenant's `fact` items ("remember: delivery is free above ¥99") and
`correction` items (the answer it should have given) are indexed with BM25.
For each new question the most relevant ones — those that cover enough of the
question, so unrelated questions are left alone — go into the system prompt as
notes, the format the default assistant was trained to prefer over what it
memorized, and become copy sources for the answer (livelm/learn/copying.py, a logits processor):

    You are a helpful AI assistant named SmolLM    <- the conversation's system prompt, or else the
    Notes:                                            run's own for the question's language (recorded
    - The capital of Australia is Canberra.           at fine-tune time, or its template's default:
                                                      run_system_prompts)

BM25 rather than embeddings: the items are a handful of short sentences per
tenant, so a lexical index is instant to rebuild, needs no model call, and is
easy to reason about. Chinese is indexed by character unigrams and bigrams
(no word segmenter needed), English by lower-cased words.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from livelm.text import HAN, HAN_CHARS, language

_WORD = re.compile(f"[a-z0-9¥$€£%.]+|[{HAN_CHARS}]")
# The notes section's header per language. Nothing in it is the shop's, but it is the format the default
# assistant was trained to read (the shop corpus writes its notes the same way, livelm/data/shop/shop.json;
# tests/learn/test_memory_and_store.py keeps the two equal).
NOTES_HEADER = {"en": "Notes:", "zh": "备注："}
# very common words carry no signal about which fact is asked
STOP = set("""a an the is are was were do does did you your we our i my me to of in on at for and or with
what how when where which who can could would will please tell about much many there this that it be""".split())


def stem(word: str) -> str:
    """Crude English suffix stripping (costs -> cost, opening -> open): enough for short shop questions."""
    for suffix in ("ing", "es", "ed", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix) and word.isalpha():
            return word[: -len(suffix)]
    return word


# Chinese function characters and question words, which say nothing of which fact is asked. A character
# no note has weighs as much as the rarest term, so "谁写了《水浒传》？" found no note of "《水浒传》的作者是谁？",
# while 了 and the bigrams across it (写了, 了水) counted: with them left out, the Chinese rephrasings of
# bench/live_facts.json found by the question alone went from 109 to 137 of 180, and top-1 for 1,000
# fictional facts from 501 to 536 of 600 rephrasings, with no more notes for unrelated questions.
ZH_STOP = set("的了是吗呢吧啊么呀哦请问你我们这那哪谁什个在和与也都就还得地着过多少几怎样")


def terms(text: str) -> list[str]:
    # (a sentence's final period is not part of its last word: "9pm." is "9pm", "¥12.5" stays whole)
    words = [w.rstrip(".") for w in _WORD.findall(text.lower())]
    out = [stem(w) for w in words if w and w not in STOP and w not in ZH_STOP]
    # adjacent-character bigrams of the text's runs of Chinese, none with a function character
    out += [a + b for a, b in zip(words, words[1:])
            if HAN.match(a) and HAN.match(b) and a not in ZH_STOP and b not in ZH_STOP]
    return out


@dataclass
class MemoryItem:
    id: int
    text: str        # the note put into the prompt
    key: str         # what it is indexed by (for a correction: the question + the corrected answer)


class BM25:
    """Okapi BM25 over the items' keys, looked up through an inverted index so that a lookup costs the same
    among 10 notes or 1,000 lifelong ones (`visited` counts the postings and candidates a search read).

    Only the query's rarer terms are walked: with min_coverage, an item must hold terms worth that share
    of the query's idf weight, so the common terms (the template words every note shares: "price",
    "open") that together weigh less cannot qualify an item on their own, and their long postings are
    skipped; the candidates the rare terms find are then scored on every query term (the max-score idea
    of search engines). The results are those of a full scan."""

    def __init__(self, items: list[MemoryItem], k1: float = 1.2, b: float = 0.75):
        self.items, self.k1, self.b = items, k1, b
        self.docs = [Counter(terms(it.key)) for it in items]
        self.lens = [sum(d.values()) for d in self.docs]
        self.avg = sum(self.lens) / max(1, len(self.lens))
        self.postings: dict[str, list[int]] = {}      # term -> the items that hold it
        for i, d in enumerate(self.docs):
            for t in d:
                self.postings.setdefault(t, []).append(i)
        n = len(items)
        self.idf = {t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self.postings.items()}
        self.visited = 0

    def search(self, query: str, k: int = 3, min_score: float = 0.0,
               min_coverage: float = 0.0) -> list[tuple[float, MemoryItem]]:
        """The k best items sharing a term with the query, scoring >= min_score, whose terms also
        cover >= min_coverage of the query's idf weight (a term no item has weighs what a term in no
        document would). Ties go to the older item."""
        q = set(terms(query))
        unseen = math.log(1 + (len(self.items) + 0.5) / 0.5)
        weight = sum(self.idf.get(t, unseen) for t in q) or 1.0
        known = sorted((t for t in q if t in self.idf), key=lambda t: (-self.idf[t], t))
        rest = sum(self.idf[t] for t in known)     # idf of the terms not walked yet
        candidates: set[int] = set()
        self.visited = 0
        for t in known:
            if min_coverage > 0 and rest < min_coverage * weight:
                break                              # the terms left cannot qualify an item by themselves
            candidates.update(self.postings[t])
            self.visited += len(self.postings[t])
            rest -= self.idf[t]
        hits = []
        for i in candidates:
            d, length = self.docs[i], self.lens[i]
            common = [t for t in known if t in d]
            self.visited += len(known)
            s = sum(self.idf[t] * d[t] * (self.k1 + 1) / (d[t] + self.k1 * (1 - self.b + self.b * length / self.avg))
                    for t in common)
            if s >= min_score and sum(self.idf[t] for t in common) / weight >= min_coverage:
                hits.append((-s, i))
        hits.sort()
        return [(-s, self.items[i]) for s, i in hits[:k]]


def last_question(conversation: list[dict]) -> str:
    return next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")


def items_from_feedback(rows) -> list[MemoryItem]:
    """Feedback rows (with kind/conversation/correction, oldest first) -> memory items.

    A later correction of the same question replaces the earlier one, so notes never contradict each other."""
    by_question: dict[str, MemoryItem] = {}
    facts = []
    for r in rows:
        if r.kind == "fact" and r.correction:
            facts.append(MemoryItem(r.id, r.correction.strip(), r.correction))
        elif r.kind == "correction" and r.correction:
            question = last_question(r.conversation)
            # indexed by the question, the corrected answer and the answer it replaces: a rephrased
            # question rarely shares words with the original, but the answers share many
            key = " ".join([question, r.correction, r.answer or ""])
            by_question[" ".join(question.lower().split())] = MemoryItem(r.id, r.correction.strip(), key)
    return facts + list(by_question.values())


def scope_items(rows, examples: list[list[dict]] = ()) -> list[MemoryItem]:
    """Trainable feedback rows (corrections, preferences, thumbs) -> what each one is about: its
    question and every answer it names, and the training chats that ask a corrected question in
    other words (`related_chats`: the update trains those phrasings too). The learned adapter
    answers only questions near one of them (LiveLearner.adapter_for)."""
    out = []
    for r in rows:
        key = " ".join(x for x in (last_question(r.conversation), r.answer, r.correction, r.chosen, r.rejected) if x)
        out.append(MemoryItem(r.id, "", key))
    fixes = [r for r in rows if r.kind == "correction" and r.answer and r.correction]
    for prompt, answer, i in related_chats(fixes, examples):
        out.append(MemoryItem(fixes[i].id, "", last_question(prompt) + " " + answer))
    return out


def correction_finder(fixes, coverage: float = 0.5):
    """answer -> the index in `fixes` (corrections) of the one whose question and corrected answer the
    answer covers `coverage` of by term weight (as memory's lookup by a draft answer), or None: does
    this answer state what a correction corrected? On the default assistant's 20 bench corrections,
    0.5 finds 16-36 training chats per correction, 92% of them about the corrected fact (0.4: 77%,
    0.6: 95% but half as many)."""
    index = BM25([MemoryItem(i, "", last_question(r.conversation) + " " + (r.answer or ""))
                  for i, r in enumerate(fixes)])

    def find(answer: str) -> int | None:
        hit = index.search(answer, k=1, min_coverage=coverage) if fixes else []
        return hit[0][1].id if hit else None
    return find


def related_chats(fixes, pool: list[list[dict]]) -> list[tuple[list[dict], str, int]]:
    """(prompt, answer, i) for every single-question training chat whose answer states what fixes[i]
    corrected (`correction_finder`). These chats ask the corrected question in other words, and their
    answers use other templates ("Our member levels are ..." besides "We have three membership
    tiers: ...")."""
    if not fixes or not pool:
        return []
    find = correction_finder(fixes)
    out = []
    for conv in pool:
        # asked as users ask, without the training chat's system prompt: its notes would make the
        # update's rows several times longer (its cost grows with the longest row)
        turns = [m for m in conv if m["role"] != "system"]
        if len(turns) == 2 and turns[0]["role"] == "user" and turns[1]["role"] == "assistant":
            i = find(turns[1]["content"])
            if i is not None:
                out.append((turns[:1], turns[1]["content"], i))
    return out


def notes_block(notes: list[str], lang: str) -> str:
    """The notes section of a system prompt ("Notes:" and one "- note" line each); "" without notes."""
    return "\n".join([NOTES_HEADER[lang]] + [f"- {n}" for n in notes]) if notes else ""


def run_system_prompts(run_config: dict, tokenizer) -> dict[str, str]:
    """The system prompt notes go under when a conversation has none, per language: the ones a
    fine-tuned run recorded (config.json "system_prompts"), else the one the model's chat template
    writes by default (an imported SmolLM2 or Qwen), else none: notes alone. Never another model's."""
    if run_config.get("system_prompts"):
        return dict(run_config["system_prompts"])
    from livelm.chat.template import default_system_prompt
    default = default_system_prompt(tokenizer)
    return {"en": default, "zh": default} if default else {}


def with_notes(messages: list[dict], notes: list[str], system_prompts: dict[str, str] | None = None) -> list[dict]:
    """Return messages whose system prompt carries `notes`, in the language of the last question.

    Without a system prompt in the conversation, one is added: the run's own for that language
    (`system_prompts`, what it was fine-tuned with: config.json "system_prompts"), followed by the
    notes, or the notes alone when the run recorded none (a model does best under the prompt it was
    trained with, and no other run's prompt belongs in it)."""
    if not notes:
        return messages
    lang = language(last_question(messages))
    block = notes_block(notes, lang)
    msgs = [dict(m) for m in messages]
    if msgs and msgs[0]["role"] == "system":
        msgs[0]["content"] = msgs[0]["content"].rstrip() + "\n" + block
    else:
        base = (system_prompts or {}).get(lang)
        msgs.insert(0, {"role": "system", "content": f"{base}\n{block}" if base else block})
    return msgs


class Memory:
    """Per-tenant BM25 indexes over a FeedbackStore, rebuilt when the tenant's items change."""

    # min_coverage: a note must cover 40% of the question's term weight. Without it every question
    # got up to 3 notes (BM25 >= 0.3 is easy to reach), and notes about other facts changed the answers
    # to unrelated questions. On the default assistant with 20 corrections and copying (memory mode,
    # efficacy / rephrasings / unrelated same text / still correct): none (and only the 4-token copy
    # rule) 75 / 65 / 65 / 74%; 0.3 -> 100 / 72 / 93 / 94%, 0.35 -> 100 / 62 / 95 / 94%,
    # 0.4 -> 100 / 55 / 98 / 98%. Unlike a raw BM25 score it does not depend on how many items the
    # tenant has, so it is the only bar: a score bar of 0.3 (as before) hid a tenant's only note from
    # "How much is delivery?", whose one content word has idf log(1 + 0.5/1.5) = 0.29 in a one-item index.
    # draft_coverage: the bar for a lookup by the draft answer, which should repeat a corrected answer
    # nearly word for word (default assistant with a 32-token draft, memory mode, efficacy /
    # rephrasings / same text / still correct: 0.4 -> 100 / 92 / 95 / 96%, 0.6 -> 100 / 90 / 97 / 98%,
    # 0.7 -> 100 / 88 / 97 / 98%).
    def __init__(self, store, k: int = 3, min_coverage: float = 0.4, draft_coverage: float = 0.6,
                 examples: list[list[dict]] = (), system_prompts: dict[str, str] | None = None):
        self.store, self.k, self.min_coverage = store, k, min_coverage
        self.examples = examples   # the run's training chats: they widen the adapter's scope (scope_items)
        self.system_prompts = system_prompts or {}   # the run's, per language (with_notes)
        self.draft_coverage = draft_coverage
        self._cache: dict[tuple[str, bool], tuple[tuple[int, int, int], BM25]] = {}

    def index(self, tenant: str, scope: bool = False) -> BM25:
        """The tenant's notes (facts and corrections), or with scope=True its trainable feedback."""
        # every request asks (up to three times: draft, notes, scope); the items are read only when
        # they changed, which one small query tells
        revision = self.store.revision(tenant)
        cached = self._cache.get((tenant, scope))
        if cached is None or cached[0] != revision:
            kinds = ("correction", "preference", "up", "down") if scope else ("fact", "correction")
            rows = [r for r in self.store.list(tenant, limit=100_000) if not getattr(r, "forgotten", 0)
                    and r.kind in kinds]
            cached = (revision, BM25(scope_items(rows, self.examples) if scope else items_from_feedback(rows)))
            self._cache[(tenant, scope)] = cached
        return cached[1]

    def find(self, index: BM25, question: str, draft: str = "") -> list[MemoryItem]:
        """The k best items for the question or for a draft answer to it, best first: an item is found
        when either covers enough of it. (A draft that repeats a corrected answer matches that
        correction; a draft is not mixed into the question, where a noisy one would dilute its words.)"""
        if not index.items:
            return []
        found: dict[int, tuple[float, MemoryItem]] = {}
        lookups = [(question, self.min_coverage)] + ([(draft, self.draft_coverage)] if draft.strip() else [])
        for query, coverage in lookups:
            for score, item in index.search(query, self.k, min_coverage=coverage):
                if item.id not in found or score > found[item.id][0]:
                    found[item.id] = (score, item)
        return [item for _, item in sorted(found.values(), key=lambda x: -x[0])[:self.k]]

    def notes(self, tenant: str, question: str, draft: str = "") -> list[str]:
        """The k best notes for the question (or for a draft answer to it)."""
        return [item.text for item in self.find(self.index(tenant), question, draft)]

    def wants_draft(self, tenant: str) -> bool:
        """Does a question of this tenant get a draft answer first, to look notes up by (it has notes)?
        The server (LiveLearner.wants_draft) and the chat REPL ask the same (livelm/learn/recall.py)."""
        return bool(self.index(tenant).items)

    def in_scope(self, tenant: str, question: str, draft: str = "") -> bool:
        """Is the question (or a draft answer to it) about something the tenant gave trainable feedback on?"""
        return bool(self.find(self.index(tenant, scope=True), question, draft))

    def recall(self, tenant: str, messages: list[dict], draft: str = "") -> tuple[list[dict], list[str]]:
        """(messages with the relevant notes in the system prompt, those notes), looked up by the last
        question and, if given, a draft answer to it (LearnConfig.memory_draft; livelm/learn/recall.py runs
        the draft). The caller passes the notes on as copy sources (CopyFromNotes), so the answer can
        copy their values."""
        question = last_question(messages)
        notes = self.notes(tenant, question, draft)
        return with_notes(messages, notes, self.system_prompts), notes
