"""Copying from memory notes: live learning's logits processor (SamplingParams.processors).

The decoding-time version of an induction head (as pointer-generator networks copy from their
source): the notes memory put into the prompt (livelm/learn/memory.py) become copy sources for the
answer. The engine knows nothing of it; it applies the processor a request carries.
"""
from __future__ import annotations

import torch

# Copying, the decoding-time version of an induction head (as pointer-generator networks copy from
# their source). The default assistant answers from memory notes only when it happens to copy the
# value, which its 1.26M parameters rarely learned (0-3% of fresh values). Three rules, for rows
# with copy sources (the notes memory put into the prompt, best-ranked first):
#   - the answer's first token leans towards the best note's first token (+COPY_FIRST_BIAS logits);
#   - an answer that begins the way a note begins goes on with that note;
#   - once an answer repeats MIN_COPY_MATCH tokens of a note anywhere, the note's next token follows.
# Measured on the default assistant, bench/live_learning.py memory mode (efficacy / rephrasings /
# unrelated same text / still correct): no copying 15 / 8 / 67 / 75%; the last rule alone 75 / 65 /
# 65 / 74%; all three, with memory's min_coverage 0.4, 100 / 55 / 98 / 98% (first-token bias 1: 90%
# efficacy; 1.5-4: 100%; 8: unrelated answers 87%). The match length, bench/memory_copy.py (fresh
# values; copied en / zh, then unrelated questions with two other notes still right):
#   match >= 3 tokens: 38% / 72%, 64% / 53%   (a Chinese character is a token: short matches misfire)
#   match >= 4 tokens: 33% / 58%, 67% / 58%
#   match >= 5 tokens: 31% / 29%, 67% / 60%   (no copying: 0% / 3%, 67% / 61%)
MIN_COPY_MATCH = 4
MAX_COPY_MATCH = 8
COPY_FIRST_BIAS = 2.0


def copy_next(out_ids: list[int], sources: tuple[tuple[int, ...], ...]) -> int | None:
    """The token a copy rule (above) puts next, or None: the next token of the source the answer so far
    begins; else the token that follows, in a source, the longest (MIN..MAX_COPY_MATCH) suffix of
    out_ids found there (its first occurrence). Each occurrence of the last token is extended
    backwards: a few hundred comparisons per token."""
    n = len(out_ids)
    if n < MIN_COPY_MATCH:
        prefix = tuple(out_ids)
        return next((src[n] for src in sources if n and len(src) > n and src[:n] == prefix), None)
    last = out_ids[-1]
    best, best_len = None, MIN_COPY_MATCH - 1
    for src in sources:
        for j in range(len(src) - 1):          # src[j + 1] is what would be copied
            if src[j] != last:
                continue
            k = 1
            while k < MAX_COPY_MATCH and k < n and k <= j and src[j - k] == out_ids[-1 - k]:
                k += 1
            if k > best_len:
                best, best_len = src[j + 1], k
    return best


def lean_to_first_source(logits: torch.Tensor, sources: tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """logits (V,) for an answer's first token, with the best-ranked source's first token favoured."""
    if not sources or not sources[0]:
        return logits
    logits = logits.clone()
    logits[sources[0][0]] += COPY_FIRST_BIAS
    return logits


class CopyFromNotes:
    """The copy rules above as a logits processor: `sources` are the notes' token ids, best-ranked first."""

    def __init__(self, sources: tuple[tuple[int, ...], ...]):
        self.sources = tuple(tuple(s) for s in sources)

    @classmethod
    def of(cls, notes: list[str], tokenizer) -> "tuple[CopyFromNotes, ...]":
        """The processors a request with these notes carries: one, or none without notes."""
        return (cls(tuple(tuple(tokenizer.encode(n)) for n in notes)),) if notes else ()

    def __call__(self, prompt_ids: list[int], out_ids: list[int], logits: torch.Tensor) -> torch.Tensor | int:
        token = copy_next(out_ids, self.sources)
        if token is not None:
            return token
        return lean_to_first_source(logits, self.sources) if not out_ids else logits
