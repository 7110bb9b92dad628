"""Example reward functions for `livelm rl` (any `f(messages, answer) -> float` works)."""
from __future__ import annotations

from livelm.text import contains_value, language


def same_language(messages: list[dict], answer: str) -> float:
    """1 if the answer is in the language of the last user message, else 0 — checkable by anyone.

    Chinese means a Han character; English means Latin letters and no Han. A text with neither
    (digits, emoji) has no language: such a question earns no reward, nor does such an answer."""
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    want = language(question, unknown="")
    if not want or not answer.strip():
        return 0.0
    return 1.0 if language(answer, unknown="") == want else 0.0


def states_reference(messages: list[dict], answer: str, reference: str, **_) -> float:
    """1 if the answer states `reference` (a column of the prompts file) in the question's language.

    A verifiable reward: e.g. the fact a shop question asks for, "¥38" or "上午9点到晚上9点".
    Numbers must match whole ("¥38" is not in "¥388"); case, width and spacing are ignored."""
    return same_language(messages, answer) * float(contains_value(answer, reference))
