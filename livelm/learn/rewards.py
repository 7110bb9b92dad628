"""Example reward functions for `livelm rl` (any `f(messages, answer) -> float` works)."""
from __future__ import annotations

import re

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def language_of(text: str) -> str:
    """'zh' if the text has Chinese characters, 'en' if it has only Latin letters, '' if neither."""
    if _CJK.search(text):
        return "zh"
    return "en" if _LATIN.search(text) else ""


def same_language(messages: list[dict], answer: str) -> float:
    """1 if the answer is in the language of the last user message, else 0 — checkable by anyone."""
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    want = language_of(question)
    if not want or not answer.strip():
        return 0.0
    if want == "zh":
        return 1.0 if _CJK.search(answer) else 0.0
    return 1.0 if not _CJK.search(answer) and _LATIN.search(answer) else 0.0


def states_reference(messages: list[dict], answer: str, reference: str, **_) -> float:
    """1 if the answer states `reference` (a column of the prompts file) in the question's language.

    A verifiable reward: e.g. the fact a shop question asks for, "¥38" or "上午9点到晚上9点".
    Numbers must match whole ("¥38" is not in "¥388"); case, width and spacing are ignored."""
    from livelm.data.builtin import _contains_value
    return same_language(messages, answer) * float(_contains_value(answer, reference))
