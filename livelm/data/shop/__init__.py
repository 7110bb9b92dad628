"""The demo's data set: a bilingual customer-service world for a made-up shop, generated from tables.

Maple Leaf Shop (枫叶小铺) sells tea and teaware. Everything here was written for this
project. Its tables (facts, phrasings, templates, system prompts) are the JSON files
beside this module; this module turns them into a corpus. `make demo` pretrains a tiny
GPT on `pretrain_text`, fine-tunes it on `train_chats`, then asks `heldout_chats` —
question phrasings it never saw — and it must answer with the right fact in the
question's language. Nothing generic in livelm uses the shop: the demo and the tests do.

Design choices that make this learnable by a ~1-5M parameter model in minutes:
  * every fact has one short, distinctive value string ("¥38", "9am to 9pm") that a
    correct answer must contain, so grading is a substring check (`check_answer`);
  * answers follow two fixed templates per fact, so the model learns one answer shape;
  * questions for one fact share a keyword ("weekend", "oolong", "退款") across many
    phrasings, and the last two phrasings of each fact are held out for evaluation;
  * about 30% of chats carry "notes" in the system prompt that restate a fact with a
    different value; the answer follows the notes. This teaches the model to prefer
    facts given in context over memorized ones, which live learning relies on.

Everything is deterministic for a seed: all randomness goes through one random.Random.
The corpus must stay byte-for-byte what it is (tests/data/test_shop.py pins its hash):
livelm/demo.py keys every user's built assistant on it.
"""
from __future__ import annotations

import json
import pathlib
import random
import re
from dataclasses import dataclass, field
from importlib import resources

from livelm.text import LANGS, grade


def _table(name: str) -> dict:
    """One of the JSON tables beside this module (package data, so an installed wheel has them)."""
    return json.loads(resources.files(__name__).joinpath(name).read_text(encoding="utf-8"))


_SHOP, _FACTS, _PHRASINGS = _table("shop.json"), _table("facts.json"), _table("phrasings.json")

SHOP_EN, SHOP_ZH = _SHOP["name"]["en"], _SHOP["name"]["zh"]
SYSTEM_PROMPT_EN, SYSTEM_PROMPT_ZH = _SHOP["system_prompt"]["en"], _SHOP["system_prompt"]["zh"]
NOTES_HEADER: dict[str, str] = _SHOP["notes_header"]
HELDOUT_PER_FACT = 2   # the last N phrasings of each fact, per language, are never trained on


# --- Facts ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fact:
    key: str
    topic: str
    value_en: str
    value_zh: str
    questions_en: tuple[str, ...]
    questions_zh: tuple[str, ...]
    answers_en: tuple[str, ...]      # templates with "{value}"; answers_*[0] doubles as the fact statement
    answers_zh: tuple[str, ...]
    alternatives: tuple[tuple[str, str], ...]   # counterfactual (value_en, value_zh) for context training

    def value(self, lang: str) -> str:
        return self.value_en if lang == "en" else self.value_zh

    def questions(self, lang: str) -> tuple[str, ...]:
        return self.questions_en if lang == "en" else self.questions_zh

    def answers(self, lang: str) -> tuple[str, ...]:
        return self.answers_en if lang == "en" else self.answers_zh


def _rotate_heldout(frames: list[str], index: int) -> tuple[str, ...]:
    """Order shared question frames so a different pair is held out for each item.

    Prices and stores use the same frames ("How much is the {product}?"). Rotating which two
    frames are held out per item means each held-out phrasing is new as a whole, while its
    frame was still seen with other items: the model must combine frame and keyword."""
    held = [(2 * index) % len(frames), (2 * index + 1) % len(frames)]
    return tuple(f for i, f in enumerate(frames) if i not in held) + tuple(frames[i] for i in held)


def _insert_train(questions: tuple[str, ...], extra) -> tuple[str, ...]:
    """Add training phrasings before the held-out ones (the last HELDOUT_PER_FACT stay last)."""
    return questions[:-HELDOUT_PER_FACT] + tuple(extra) + questions[-HELDOUT_PER_FACT:]


def _framed_fact(index: int, kind: str, item: dict, value: tuple[str, str], alts) -> Fact:
    """A price or store fact: its kind's shared question frames (rotated, plus frames only ever trained
    on) and answer templates, filled with the item's name ({product} / {store})."""
    def fill(texts, lang):
        return tuple(t.format(**{kind: item[lang], "value": "{value}"}) for t in texts)
    q = {lang: fill(_insert_train(_rotate_heldout(_FACTS[f"{kind}_questions"][lang], index),
                                  _FACTS[f"{kind}_train_questions"][lang]), lang) for lang in LANGS}
    a = {lang: fill(_FACTS[f"{kind}_answers"][lang], lang) for lang in LANGS}
    topic = {"product": "prices", "store": "locations"}[kind]
    return Fact(item["key"], topic, *value, q["en"], q["zh"], a["en"], a["zh"], tuple(alts))


def _price_fact(index: int, p: dict) -> Fact:
    yen = f"¥{p['price']}"
    return _framed_fact(index, "product", p, (yen, yen), ((f"¥{a}", f"¥{a}") for a in p["alternatives"]))


def _store_fact(index: int, s: dict) -> Fact:
    return _framed_fact(index, "store", s, tuple(s["address"]), (tuple(a) for a in s["alternatives"]))


def _written_fact(f: dict) -> Fact:
    """A hand-written fact, with the extra training phrasings of phrasings.json inserted before its
    held-out pair. (Five training phrasings per fact left a ~1M-parameter model mixing up facts that
    share words, return window vs exchange period; ten generalize better to the held-out phrasings.)"""
    extra = _PHRASINGS["more_train_questions"].get(f["key"], {"en": [], "zh": []})
    return Fact(f["key"], f["topic"], f["value"][0], f["value"][1],
                _insert_train(tuple(f["questions"]["en"]), extra["en"]),
                _insert_train(tuple(f["questions"]["zh"]), extra["zh"]),
                tuple(f["answers"]["en"]), tuple(f["answers"]["zh"]), tuple(tuple(a) for a in f["alternatives"]))


TOPIC_NAMES = {k: (v["en"], v["zh"]) for k, v in _SHOP["topics"].items()}   # topic -> (English, Chinese) name
TOPICS: tuple[str, ...] = tuple(TOPIC_NAMES)
FACTS: tuple[Fact, ...] = tuple(sorted(   # stable sort: grouped by topic, table order within a topic
    tuple(_price_fact(i, p) for i, p in enumerate(_FACTS["products"]))
    + tuple(_store_fact(i, s) for i, s in enumerate(_FACTS["stores"]))
    + tuple(_written_fact(f) for f in _FACTS["facts"]),
    key=lambda f: TOPICS.index(f.topic)))
FACTS_BY_KEY: dict[str, Fact] = {f.key: f for f in FACTS}

# Small talk: greetings, thanks, "what can you do", goodbyes. lang -> what -> (user turns, replies)
SMALL_TALK = {lang: {what: (tuple(d["user"]), tuple(d["assistant"])) for what, d in kinds.items()}
              for lang, kinds in _SHOP["small_talk"].items()}


# --- Grading and splitting --------------------------------------------------------------

def _check_lang(lang: str) -> None:
    if lang not in LANGS:
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")


def check_answer(fact: Fact, text: str, lang: str, value: tuple[str, str] | None = None) -> bool:
    """Is `text` a correct answer to a question about `fact` asked in `lang`?

    Correct means: states the value (the canonical one, or `value` when the fact was given
    in context), and is written in the question's language (livelm.text.grade, which the
    update guard grades the demo's probes with too)."""
    _check_lang(lang)
    return grade(text, (value or (fact.value_en, fact.value_zh))[0 if lang == "en" else 1], lang)


def split_questions(fact: Fact, lang: str) -> tuple[list[str], list[str]]:
    """(train, heldout) phrasings: the last HELDOUT_PER_FACT are held out, always."""
    _check_lang(lang)
    questions = list(fact.questions(lang))
    return questions[:-HELDOUT_PER_FACT], questions[-HELDOUT_PER_FACT:]


def probes(heldout_chats: list[dict]) -> list[dict]:
    """The held-out chats as probes for the update guard (livelm.learn.probes' format): the question
    without its answer, the values a right answer states, and the language it must be in."""
    return [{"messages": c["messages"][:-1], "expect": [FACTS_BY_KEY[c["fact"]].value(c["lang"])],
             "lang": c["lang"]} for c in heldout_chats]


# --- Facts in context ("notes") ---------------------------------------------------------

def fact_statement(fact: Fact, lang: str, value: tuple[str, str] | None = None) -> str:
    """One sentence stating the fact. It reuses the first answer template on purpose: the
    model then sees the exact answer shape in the notes and learns to copy the value."""
    _check_lang(lang)
    v = (value or (fact.value_en, fact.value_zh))[0 if lang == "en" else 1]
    return fact.answers(lang)[0].format(value=v)


def notes_block(notes: list[str], lang: str) -> str:
    """The notes section appended to the system prompt; "" when there are no notes.
    (livelm.learn.memory writes notes the same way, which is why the assistant reads them.)"""
    _check_lang(lang)
    if not notes:
        return ""
    return "\n".join([NOTES_HEADER[lang]] + [f"- {n}" for n in notes])


def system_prompt(lang: str, notes: list[str] | None = None) -> str:
    """The system message: the default prompt for the language, plus notes if any."""
    _check_lang(lang)
    base = SYSTEM_PROMPT_EN if lang == "en" else SYSTEM_PROMPT_ZH
    block = notes_block(notes or [], lang)
    return f"{base}\n{block}" if block else base


# --- Generation helpers -----------------------------------------------------------------

def _decorate(rng: random.Random, question: str, lang: str, followup: bool = False) -> str:
    """Vary how a (training) question is asked: greetings, follow-up words, thanks, no "?".
    The model learns that these wrappers do not change which fact is asked about."""
    openers = _PHRASINGS["followups" if followup else "openers"][lang]
    closers = _PHRASINGS["closers"][lang]
    q = question
    if rng.random() < 0.12 and q[-1] in "?？":
        q = q[:-1]
    if rng.random() < (0.6 if followup else 0.35):
        opener = rng.choice(openers)
        first_word = q.split(" ", 1)[0]
        if lang == "en" and first_word not in _PHRASINGS["keep_capitalized"] and not first_word[1:2].isupper():
            q = q[0].lower() + q[1:]   # "Hi, what are ..." rather than "Hi, What are ..."
        q = opener + q
    if rng.random() < 0.15:
        q += rng.choice(closers)
    return q


def _answer(rng: random.Random, fact: Fact, lang: str, value: tuple[str, str] | None = None) -> str:
    v = (value or (fact.value_en, fact.value_zh))[0 if lang == "en" else 1]
    return rng.choice(fact.answers(lang)).format(value=v)


def _train_question(rng: random.Random, fact: Fact, lang: str) -> str:
    return rng.choice(split_questions(fact, lang)[0])


def _is_plain_price(fact: Fact) -> bool:
    return fact.value_en == fact.value_zh and re.fullmatch(r"¥\d+", fact.value_en) is not None


def _random_price(rng: random.Random, fact: Fact) -> tuple[str, str]:
    """A fresh counterfactual price near the real one (same roundness), so context training
    sees many values, not only the few listed alternatives: the model must copy, not recall."""
    n = int(fact.value_en[1:])
    step = 100 if n % 100 == 0 else 10 if n % 10 == 0 and n >= 50 else 1
    while True:
        m = rng.randint(max(1, n // 2), n * 2) // step * step
        if m > 0 and m != n:
            return f"¥{m}", f"¥{m}"


def _random_digits(rng: random.Random, fact: Fact) -> tuple[str, str] | None:
    """Replace every number in the value by a fresh one, the same way in both languages
    ("9am to 9pm" / "早上9点到晚上9点" -> "7am to 4pm" / "早上7点到晚上4点"). None when the
    two values do not carry the same numbers (e.g. Chinese numerals like 九折)."""
    nums = re.findall(r"\d+", fact.value_en)
    if not nums or nums != re.findall(r"\d+", fact.value_zh):
        return None
    fresh = {}
    for n in nums:
        if n not in fresh:
            lo, hi = (1, 9) if len(n) == 1 else (10 ** (len(n) - 1), 10 ** len(n) - 1)
            m = n
            while m == n:
                m = str(rng.randint(lo, hi))
            fresh[n] = m
    sub = lambda text: re.sub(r"\d+", lambda mo: fresh[mo.group()], text)  # noqa: E731
    return sub(fact.value_en), sub(fact.value_zh)


def _counterfactual(rng: random.Random, fact: Fact) -> tuple[str, str]:
    # Mostly fresh random numbers: with only the few listed alternatives a small model learns
    # to recall them instead of copying from the notes, and memory then fails on new values.
    if _is_plain_price(fact) and rng.random() < 0.35:
        return _random_price(rng, fact)
    if rng.random() < 0.7:
        fresh = _random_digits(rng, fact)
        if fresh is not None:
            return fresh
    return rng.choice(fact.alternatives)


class _Deck:
    """Draw items in shuffled rounds so every fact is used about equally often."""

    def __init__(self, rng: random.Random, items):
        self.rng, self.items, self.pile = rng, list(items), []

    def draw(self, exclude=()):
        for _ in range(len(self.items) * 2):
            if not self.pile:
                self.pile = self.items[:]
                self.rng.shuffle(self.pile)
            item = self.pile.pop()
            if item not in exclude:
                return item
        return self.rng.choice([i for i in self.items if i not in exclude])


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


# --- Pretraining text -------------------------------------------------------------------

_DOCS = _SHOP["documents"]   # templates of the pretraining documents, per language


def _qa_lines(rng: random.Random, fact: Fact, lang: str, style: str) -> str:
    q = _train_question(rng, fact, lang)
    if rng.random() < 0.3:
        q = _decorate(rng, q, lang)
    a = _answer(rng, fact, lang)
    return _DOCS["faq_turn" if style == "faq" else "dialogue_turn"][lang].format(q=q, a=a)


def _doc_faq(rng: random.Random, lang: str) -> str:
    topic = rng.choice(TOPICS)
    facts = [f for f in FACTS if f.topic == topic]
    rng.shuffle(facts)
    title = _DOCS["faq_title"][lang].format(shop=_SHOP["name"][lang], topic=_SHOP["topics"][topic][lang])
    return "\n".join([title] + [_qa_lines(rng, f, lang, "faq") for f in facts])


def _doc_statements(rng: random.Random, lang: str) -> str:
    facts = rng.sample(FACTS, rng.randint(3, 7))
    title = _DOCS["about_title"][lang].format(shop=_SHOP["name"][lang])
    return title + "\n" + _DOCS["sentence_separator"][lang].join(_answer(rng, f, lang) for f in facts)


def _doc_dialogue(rng: random.Random, lang: str) -> str:
    parts = []
    if rng.random() < 0.3:
        user, replies = SMALL_TALK[lang]["greet"]
        parts.append(_DOCS["dialogue_turn"][lang].format(q=rng.choice(user), a=rng.choice(replies)))
    parts += [_qa_lines(rng, f, lang, "dialogue") for f in rng.sample(FACTS, rng.randint(1, 3))]
    return "\n".join(parts)


def _doc_bilingual(rng: random.Random) -> str:
    """The same fact in both languages side by side ties "¥99" in English to "¥99" in Chinese."""
    fact = rng.choice(FACTS)
    return f"{_answer(rng, fact, 'en')}\n{_answer(rng, fact, 'zh')}"


def _pretrain_text(rng: random.Random, target_bytes: int) -> str:
    docs, size = [], 0
    while size < target_bytes:
        kind = rng.random()
        lang = rng.choice(LANGS)
        if kind < 0.3:
            doc = _doc_faq(rng, lang)
        elif kind < 0.55:
            doc = _doc_statements(rng, lang)
        elif kind < 0.85:
            doc = _doc_dialogue(rng, lang)
        else:
            doc = _doc_bilingual(rng)
        docs.append(doc)
        size += len(doc.encode("utf-8")) + 2
    return "\n\n".join(docs) + "\n"


# --- Chats ------------------------------------------------------------------------------

def _chat(lang: str, kind: str, system: str, turns: list[tuple[str, str]],
          asked: list[tuple[str, tuple[str, str]]]) -> dict:
    """A chat in OpenAI form plus metadata: kind, lang, and for each fact turn the fact key
    and the value the answer uses (so tests and evals can grade without re-parsing)."""
    messages = [_msg("system", system)]
    for user, assistant in turns:
        messages += [_msg("user", user), _msg("assistant", assistant)]
    return {"messages": messages, "kind": kind, "lang": lang,
            "facts": [k for k, _ in asked], "values": [list(v) for _, v in asked]}


def _small_talk_turn(rng: random.Random, lang: str, what: str) -> tuple[str, str]:
    users, replies = SMALL_TALK[lang][what]
    return rng.choice(users), rng.choice(replies)


def _qa_chat(rng: random.Random, decks: dict, lang: str, same_topic: float = 0.5) -> dict:
    """1-3 fact questions, sometimes opened by a greeting or closed with thanks/goodbye.

    A follow-up asks about a fact of the previous one's topic with probability `same_topic`
    (return window, then exchange period): the model sees related facts side by side and must
    answer each from its own keyword. It took held-out accuracy from 80% to 89% in English."""
    n = rng.choices((1, 2, 3), weights=(0.55, 0.3, 0.15))[0]
    turns, asked = [], []
    if rng.random() < 0.1:
        turns.append(_small_talk_turn(rng, lang, "greet"))
    prev = None
    for i in range(n):
        exclude = [FACTS_BY_KEY[k] for k, _ in asked]
        related = [f for f in FACTS if prev is not None and f.topic == prev.topic and f not in exclude]
        fact = rng.choice(related) if related and rng.random() < same_topic else decks[lang].draw(exclude=exclude)
        q = _decorate(rng, _train_question(rng, fact, lang), lang, followup=i > 0)
        turns.append((q, _answer(rng, fact, lang)))
        asked.append((fact.key, (fact.value_en, fact.value_zh)))
        prev = fact
    if rng.random() < 0.1:
        turns.append(_small_talk_turn(rng, lang, rng.choice(("thanks", "bye"))))
    return _chat(lang, "qa", system_prompt(lang), turns, asked)


def _notes_chat(rng: random.Random, decks: dict, lang: str, relevant: bool) -> dict:
    """A chat whose system prompt carries notes.

    relevant=True: the notes restate the asked fact, usually with a counterfactual value,
    and the answer follows the notes. relevant=False: the notes are about other facts and
    the answer uses the canonical value. Either way the rule the model should learn is the
    same: a fact stated in the notes wins; anything else comes from memory."""
    asked_fact = decks[lang].draw()
    noted: dict[str, tuple[str, str]] = {}
    if relevant:
        noted[asked_fact.key] = ((asked_fact.value_en, asked_fact.value_zh) if rng.random() < 0.2
                                 else _counterfactual(rng, asked_fact))
    # Distractors: other facts, often from the same topic so the model must match precisely.
    n_distract = rng.randint(0 if relevant else 1, 2)
    for _ in range(n_distract):
        same_topic = [f for f in FACTS if f.topic == asked_fact.topic and f.key not in noted
                      and f is not asked_fact]
        pool = same_topic if same_topic and rng.random() < 0.5 else [
            f for f in FACTS if f.key not in noted and f is not asked_fact]
        other = rng.choice(pool)
        noted[other.key] = ((other.value_en, other.value_zh) if rng.random() < 0.5
                            else _counterfactual(rng, other))
    notes = [fact_statement(FACTS_BY_KEY[k], lang, v) for k, v in noted.items()]
    rng.shuffle(notes)

    def value_for(f: Fact) -> tuple[str, str]:
        return noted.get(f.key, (f.value_en, f.value_zh))

    asked_facts = [asked_fact]
    if rng.random() < 0.3:   # a follow-up: either another noted fact or one from memory
        asked_facts.append(rng.choice([f for f in FACTS if f is not asked_fact]))
    turns, asked = [], []
    for i, f in enumerate(asked_facts):
        q = _decorate(rng, _train_question(rng, f, lang), lang, followup=i > 0)
        turns.append((q, _answer(rng, f, lang, value_for(f))))
        asked.append((f.key, value_for(f)))
    kind = "context" if relevant else "irrelevant_notes"
    return _chat(lang, kind, system_prompt(lang, notes), turns, asked)


def _small_talk_chat(rng: random.Random, lang: str) -> dict:
    whats = rng.choice((["greet"], ["abilities"], ["greet", "abilities"], ["thanks"], ["bye"], ["greet", "bye"]))
    turns = [_small_talk_turn(rng, lang, w) for w in whats]
    return _chat(lang, "smalltalk", system_prompt(lang), turns, [])


def _heldout_chats() -> list[dict]:
    chats = []
    for fact in FACTS:
        for lang in LANGS:
            for q in split_questions(fact, lang)[1]:
                answer = fact.answers(lang)[0].format(value=fact.value(lang))
                chats.append({"messages": [_msg("system", system_prompt(lang)), _msg("user", q),
                                           _msg("assistant", answer)],
                              "fact": fact.key, "lang": lang})
    return chats


# --- Public entry points ----------------------------------------------------------------

@dataclass
class ShopCorpus:
    pretrain_text: str
    train_chats: list[dict] = field(default_factory=list)
    heldout_chats: list[dict] = field(default_factory=list)


def build(seed: int = 0, n_context: float = 0.3, *, n_chats: int = 6000, pretrain_bytes: int = 450_000,
          irrelevant_fraction: float = 0.05, smalltalk_fraction: float = 0.04) -> ShopCorpus:
    """Generate the corpus. Same seed -> identical corpus; sizes are tunable for tests/experiments.

    n_context: fraction of train chats whose notes state the asked fact (see _notes_chat);
    irrelevant_fraction: chats with notes about other facts only; smalltalk_fraction: chit-chat."""
    if not 0 <= n_context + irrelevant_fraction + smalltalk_fraction <= 1:
        raise ValueError("n_context + irrelevant_fraction + smalltalk_fraction must be within [0, 1]")
    rng = random.Random(seed)
    pretrain = _pretrain_text(rng, pretrain_bytes)

    decks = {lang: _Deck(rng, FACTS) for lang in LANGS}
    n_ctx = round(n_chats * n_context)
    n_irr = round(n_chats * irrelevant_fraction)
    n_small = round(n_chats * smalltalk_fraction)
    chats = []
    for i in range(n_chats):
        lang = LANGS[i % 2]   # exactly balanced languages
        if i < n_ctx:
            chats.append(_notes_chat(rng, decks, lang, relevant=True))
        elif i < n_ctx + n_irr:
            chats.append(_notes_chat(rng, decks, lang, relevant=False))
        elif i < n_ctx + n_irr + n_small:
            chats.append(_small_talk_chat(rng, lang))
        else:
            chats.append(_qa_chat(rng, decks, lang))
    rng.shuffle(chats)
    return ShopCorpus(pretrain_text=pretrain, train_chats=chats, heldout_chats=_heldout_chats())


def _write_atomic(path: pathlib.Path, text: str) -> None:
    """Crash-safe (livelm.io: temp file, fsync, rename), with "\n" line ends on every platform, so a
    seed gives the same bytes everywhere."""
    from livelm.io import atomic_open
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write(out_dir, seed: int = 0, **build_kwargs) -> dict[str, pathlib.Path]:
    """Build the corpus and write pretrain.txt, chat_train.jsonl and chat_heldout.jsonl."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = build(seed, **build_kwargs)
    paths = {"pretrain": out / "pretrain.txt", "chat_train": out / "chat_train.jsonl",
             "chat_heldout": out / "chat_heldout.jsonl"}
    _write_atomic(paths["pretrain"], corpus.pretrain_text)
    _write_atomic(paths["chat_train"], _jsonl(corpus.train_chats))
    _write_atomic(paths["chat_heldout"], _jsonl(corpus.heldout_chats))
    return paths
