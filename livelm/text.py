"""Text helpers every layer shares: which language a text is in, word splits, and answer grading.

The bottom layer: imports nothing from livelm, so the data sets, training, memory, rewards and the
update guard can all use it. livelm speaks of two languages, "en" and "zh": a text is Chinese when it
holds a Han character. (livelm/tokenizer.py keeps its own character classes: they are written for the
`tokenizers` library's regex engine, and changing them would change how existing runs tokenize.)
"""
from __future__ import annotations

import re
import unicodedata

# Han ideographs: CJK Extension A, the Unified Ideographs block and the Compatibility Ideographs.
HAN_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Chinese punctuation: the CJK Symbols and Punctuation block and the full-width ，：？！； a Chinese
# sentence uses. Not Han, but an English answer has none of it.
CJK_PUNCTUATION = "\u3000-\u303f\uff0c\uff1a\uff1f\uff01\uff1b"

HAN = re.compile(f"[{HAN_CHARS}]")
CJK = re.compile(f"[{HAN_CHARS}{CJK_PUNCTUATION}]")
LATIN = re.compile(r"[A-Za-z]")
_WORD = re.compile(f"[{HAN_CHARS}]|[^\\s{HAN_CHARS}]+")
LANGS = ("en", "zh")


def has_han(text: str) -> bool:
    """True if the text holds any Han character."""
    return HAN.search(text) is not None


def contains_cjk(text: str) -> bool:
    """True if the text holds any Han character or Chinese punctuation."""
    return CJK.search(text) is not None


def language(text: str, unknown: str = "en") -> str:
    """'zh' if the text holds a Han character, 'en' if a Latin letter, else `unknown`."""
    if has_han(text):
        return "zh"
    return "en" if unknown == "en" or LATIN.search(text) else unknown


def mostly_chinese(texts: list[str]) -> bool:
    """True if more than 30% of the texts' non-space characters are Han (e.g. a Chinese reference set)."""
    text = "".join(texts)
    return bool(text) and len(HAN.findall(text)) > 0.3 * len(re.sub(r"\s", "", text))


def split_words(text: str) -> list[str]:
    """Runs of non-space characters, except that every Han character is a word of its own."""
    return _WORD.findall(text)


def written_in(text: str, lang: str) -> bool:
    """Is the text in `lang`? Chinese needs a Han character; English must have no Han or Chinese punctuation."""
    if lang not in LANGS:
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")
    return has_han(text) if lang == "zh" else not contains_cjk(text)


def normalize_answer(text: str) -> str:
    """Fold away what a grader should not care about: width (NFKC), case, whitespace, "38元" vs "¥38".

    NFKC maps full-width forms to half-width ("￥９９" -> "¥99"), casefold ignores case, and
    removing whitespace makes "9 am" equal "9am"."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"(\d+)元", r"¥\1", text)
    return re.sub(r"\s+", "", text)


def contains_value(text: str, value: str) -> bool:
    """Does the text state `value`? A match on normalized text that never splits a number ("¥38" is not in "¥388")."""
    hay, needle = normalize_answer(text), normalize_answer(value)
    if not needle:   # nothing to find (an empty expectation) is found, as `"" in text` is
        return True
    start = hay.find(needle)
    while start != -1:
        end = start + len(needle)
        cut_before = needle[0].isdigit() and start > 0 and hay[start - 1].isdigit()
        cut_after = needle[-1].isdigit() and end < len(hay) and hay[end].isdigit()
        if not (cut_before or cut_after):
            return True
        start = hay.find(needle, start + 1)
    return False


def grade(text: str, expect: str | list[str] | tuple[str, ...], lang: str | None = None) -> bool:
    """Is `text` a right answer: states one of the `expect`ed values, and (when `lang` is given) is written in it?"""
    alternatives = [expect] if isinstance(expect, str) else list(expect)
    if lang is not None and not written_in(text, lang):
        return False
    return any(contains_value(text, e) for e in alternatives)
