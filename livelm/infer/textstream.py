"""Incremental detokenisation with stop strings.

Two promises to whoever reads the stream (a terminal, an SSE client):
  * a delta never ends inside a UTF-8 character (the tokenizer's StreamDecoder
    holds back incomplete bytes), and
  * a delta never contains text that later turns out to be the start of a
    stop string: while the tail of the text could still grow into a stop
    string, that tail is held back. When a stop string completes, the text
    before it is released and the stop string itself is dropped (vLLM's default).
"""
from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stops: tuple[str, ...] | list[str] = ()):
        self.decoder = tokenizer.stream_decoder()
        self.stops = tuple(s for s in stops if s)
        self.text = ""
        self.emitted = 0          # text[:emitted] has been handed out
        self.stopped = False

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one token; return (text safe to emit now, whether a stop string completed)."""
        self.text += self.decoder.push(token_id)
        return self._release(final=False)

    def finish(self) -> str:
        """End of generation: release everything still held back (minus a stop string)."""
        if self.stopped:
            return ""
        self.text += self.decoder.flush()
        delta, _ = self._release(final=True)
        return delta

    def _release(self, final: bool) -> tuple[str, bool]:
        # a stop string can only start at or after `emitted`: anything that could have begun one was held back
        hit = min((i for i in (self.text.find(s, self.emitted) for s in self.stops) if i >= 0), default=-1)
        if hit >= 0:
            delta = self.text[self.emitted:hit]
            self.text = self.text[:hit]
            self.emitted = hit
            self.stopped = True
            return delta, True
        safe = len(self.text) if final else len(self.text) - self._held_back()
        delta = self.text[self.emitted:safe]
        self.emitted = max(self.emitted, safe)
        return delta, False

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of some stop string."""
        longest = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text) - self.emitted), longest, -1):
                if self.text.endswith(s[:k]):
                    longest = k
                    break
        return longest
