"""Prompt-lookup drafts for speculative decoding: guess the next tokens from the context itself.

Chat answers quote their context (names, numbers, code, the question's own words) and small models
repeat themselves, so the tokens that followed the last earlier occurrence of the context's final
n tokens are often the next ones (Saxena's prompt lookup decoding; vLLM's "ngram" speculator).
The engine feeds such a draft of k tokens with the sequence's last token in one pass, reads the
model's own choice at every position, and keeps the draft up to the first disagreement plus the
model's token there: 1 to k+1 tokens for one pass. At batch 1 a decode pass costs what reading the
weights costs, so a pass of k+1 rows takes about as long as a pass of one (see Engine).

No draft model, no training: a miss costs a slightly larger pass, a hit saves whole passes.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def propose(tokens: list[int], k: int, max_ngram: int = 3, min_ngram: int = 2) -> list[int]:
    """Up to k tokens that followed the most recent earlier occurrence of the last n tokens of `tokens`,
    trying n = max_ngram down to min_ngram; [] when none recurs."""
    if k < 1:
        return []
    arr = np.asarray(tokens, dtype=np.int64)
    for n in range(max_ngram, min_ngram - 1, -1):
        if len(arr) <= n:
            continue
        # windows over all but the last token: each starts early enough to be followed by one
        hits = np.flatnonzero((sliding_window_view(arr[:-1], n) == arr[-n:]).all(axis=1))
        if len(hits):
            start = int(hits[-1]) + n
            return tokens[start:start + k]
    return []
