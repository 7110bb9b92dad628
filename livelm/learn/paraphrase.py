"""Other phrasings of a corrected question, made by rules, for models too small to paraphrase.

An update teaches a correction to phrasings the user never typed (livelm/learn/update.py: distilled):
the model answers each phrasing with the correction as a memory note, and the adapter learns those
answers without the note. A fine-tuned run finds such phrasings among its own training chats; an
imported model has none, and a 135M model asked to "rephrase this question" mostly repeats it or
answers it. So the phrasings come from rules: the question wrapped the ways people ask
("Do you know ...", "请问……"), contracted or expanded ("what's" / "what is"), or turned into a request
("Tell me ..."). They keep the question's content words, which is what the answer must key on.

    >>> paraphrases("What is the capital of Australia?")[:3]
    ["What's the capital of Australia?", 'Do you know what the capital of Australia is?', ...]
"""
from __future__ import annotations

import re

from livelm.text import language

# "What is X?" -> "X" and the verb, for the rules that move the verb ("what X is")
_WH_BE = re.compile(r"^(what|who|where|when|which|how \w+)\s+(is|are|was|were)\s+(.+)$", re.I)
_WH = re.compile(r"^(what|who|where|when|which|why|how)\b", re.I)
_CONTRACT = {"what is": "what's", "who is": "who's", "where is": "where's", "what's": "what is",
             "who's": "who is", "where's": "where is"}


def _english(question: str) -> list[str]:
    q = question.strip().rstrip("?？.! ").strip()
    if not q:
        return []
    low = q[0].lower() + q[1:]
    out = []
    head = next((k for k in _CONTRACT if low.lower().startswith(k + " ") or low.lower().startswith(k + "'")), None)
    if head:
        swapped = _CONTRACT[head] + low[len(head):]
        out.append(swapped[0].upper() + swapped[1:] + "?")
    m = _WH_BE.match(low)
    if m:   # the embedded question: "what the capital of Australia is"
        wh, be, rest = m.groups()
        out += [f"Do you know {wh.lower()} {rest} {be}?", f"Can you tell me {wh.lower()} {rest} {be}?"]
    elif _WH.match(low):
        out.append(f"Can you tell me: {low}?")
    else:   # a yes/no or imperative question: wrap it
        out.append(f"Tell me: {low}?")
    out += [f"Quick question: {low}?", f"I'd like to know, {low}?", f"{q}? Please answer briefly."]
    return out


def _chinese(question: str) -> list[str]:
    q = question.strip().rstrip("?？。！!. ").strip()
    if not q:
        return []
    bare = re.sub(r"(吗|呢)$", "", q)
    return [f"请问，{q}？", f"你知道{bare}吗？", f"我想知道{bare}。", f"问一下：{q}？", f"{bare}，你清楚吗？"]


def paraphrases(question: str, limit: int = 6) -> list[str]:
    """Up to `limit` other phrasings of `question` (in its language), none equal to it."""
    made = _chinese(question) if language(question) == "zh" else _english(question)
    seen, out = {" ".join(question.lower().split())}, []
    for p in made:
        key = " ".join(p.lower().split())
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out[:limit]
