"""Constrained decoding: a grammar decides which tokens may come next, row by row.

A request that must answer in JSON (OpenAI's `response_format`), match a regex, pick
one of a few strings or call a tool carries a grammar in its SamplingParams. The
engine keeps one matcher per such row; before each sampling step the matcher's
allowed tokens become a mask over the row's logits (-inf elsewhere), and after it
the sampled token advances the matcher. A row whose grammar is complete can only
end, so the output always parses.

The matching is llguidance's (Microsoft's Rust library, also behind llama.cpp's and
vLLM's guided decoding). Measured on this project's CPUs against xgrammar and
outlines-core (bench/structured.py, figures in bench/RESULTS.md): all three mask a
batch of 16 rows in well under a millisecond, against tens of milliseconds for the
forward pass, so speed did not decide. llguidance depends on nothing (xgrammar pulls
in transformers and triton), accepts JSON schema, regex and Lark grammars with a
JSON schema inside (which tool calls need), and reports a bad schema as a message
instead of failing later.

Grammars are llguidance's serialized form, built here from what the API receives:

    json_schema(schema) | json_object() | regex(text) | choice(options) | lark(text)

They are plain strings, so they travel to the engine process inside SamplingParams.
A grammar may also wait for a trigger (SamplingParams.grammar_trigger): the row
is free until its output ends with that text, then the grammar constrains what
follows (a tool call opened by "<tool_call>" in tool_choice "auto").

A grammar says what may come next, not when to stop: a weak model inside an
unbounded string or number can go on until max_tokens, and a cut JSON text does
not parse. So a constrained row that nears the end of its token budget closes:
among the tokens the grammar allows, those that end things (a quote, a closing
bracket, the end token; then a comma, colon or quote, the way on to a key that is
still required) are preferred, and the answer ends as valid JSON; its
finish_reason is "length" when the closing changed what the model would have
said (it was cut to fit), "stop" when the model closed by itself. How near is "near": the
length of the grammar's shortest answer found the same way from its start (a dry
run with no model, once per grammar), plus a margin.
"""
from __future__ import annotations

import json
import re
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from livelm.chat.tools import JSON_STYLE
from livelm.extras import need

MAX_GRAMMAR_CHARS = 100_000     # a schema or grammar text larger than this is refused (400), not compiled
_PROTOTYPES = 64                # compiled grammars kept per engine (LRU), copied for each new row
MAX_RESERVE = 64                # a grammar whose shortest answer is longer is not closed early


class GrammarError(ValueError):
    """A schema or grammar that cannot be used: the message says what is wrong."""


def _llg():
    return need("llguidance", "serve", "constrained decoding (response_format, tools, guided_*)")


def _sized(text: str, what: str) -> str:
    if len(text) > MAX_GRAMMAR_CHARS:
        raise GrammarError(f"the {what} is {len(text):,} characters; at most {MAX_GRAMMAR_CHARS:,} are accepted")
    return text


# ---- building grammars ---------------------------------------------------------------------
def json_schema(schema, strict: bool = True) -> str:
    """Output that is one JSON value valid under `schema` (a dict or its JSON text).

    strict=False follows OpenAI's non-strict mode: keywords llguidance cannot enforce are ignored
    rather than refused."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise GrammarError(f"the JSON schema is not valid JSON: {e.msg} at character {e.pos}") from None
    if not isinstance(schema, (dict, bool)):
        raise GrammarError("a JSON schema must be an object")
    _sized(json.dumps(schema), "JSON schema")
    options = dict(JSON_STYLE, lenient=not strict)
    try:
        return check(_llg().LLMatcher.grammar_from_json_schema(schema, overrides=options))
    except ValueError as e:
        raise GrammarError(f"invalid JSON schema: {e}") from None


def json_object() -> str:
    """Any JSON object (OpenAI's response_format {"type": "json_object"})."""
    return json_schema({"type": "object"})


def regex(pattern: str) -> str:
    return check(_llg().LLMatcher.grammar_from_regex(_sized(pattern, "regex")))


def choice(options: list[str]) -> str:
    """Exactly one of the given strings."""
    if not options or not all(isinstance(o, str) and o for o in options):
        raise GrammarError("a choice needs a non-empty list of non-empty strings")
    return regex("|".join(re.escape(o) for o in options))


def lark(text: str) -> str:
    """A Lark grammar in llguidance's dialect (which also takes GBNF-like rules and %json {schema})."""
    return check(_llg().LLMatcher.grammar_from_lark(_sized(text, "grammar")))


def check(grammar: str) -> str:
    """The grammar, or GrammarError with llguidance's reason (an unknown type, an unsupported keyword, a bad regex)."""
    error = _llg().LLMatcher.validate_grammar(grammar)
    if error:
        raise GrammarError(error.strip().splitlines()[0] if len(error) > 300 else error.strip())
    return grammar


# ---- the engine's side -----------------------------------------------------------------------
_TOKENIZERS: dict[int, object] = {}


class _TokenTable:
    """A tokenizer as llguidance's TokenizerWrapper reads one: every token's bytes (special tokens behind
    a 0xFF byte, so no text can ever match them) and an encode function."""

    def __init__(self, tokenizer):
        self.eos_token_id, self.bos_token_id = tokenizer.eos_id, tokenizer.bos_id
        self.special_token_ids = sorted(tokenizer.special_ids)
        self.tokens = [(b"\xff" if i in tokenizer.special_ids else b"") + tokenizer.token_bytes(i)
                       for i in range(tokenizer.vocab_size)]
        self._encode = tokenizer.encode

    def __call__(self, text):
        return self._encode(text.decode("utf-8", "replace") if isinstance(text, bytes) else text)


def ll_tokenizer(tokenizer):
    """llguidance's view of a livelm tokenizer (~0.2 s for a 49k vocabulary, so kept per tokenizer): from its
    tokenizer.json where llguidance reads the format, else from its token table (livelm's character
    tokenizer). The tokenizer's stop ids are the end of sequence: the grammar allows them exactly where
    the output may end."""
    key = id(tokenizer)
    if key not in _TOKENIZERS:
        llg, eos = _llg(), sorted(tokenizer.stop_ids)
        try:
            made = llg.LLTokenizer(tokenizer._hf.to_str(), n_vocab=tokenizer.vocab_size, eos_token=eos)
        except ValueError:    # "can't determine decoder type": not a byte-level or SentencePiece vocabulary
            made = llg.LLTokenizer(llg.TokenizerWrapper(_TokenTable(tokenizer)), n_vocab=tokenizer.vocab_size,
                                   eos_token=eos)
        _TOKENIZERS[key] = made
    return _TOKENIZERS[key]


def _in_string(text: str) -> bool:
    """Whether JSON text ends inside a string (an odd number of unescaped quotes so far)."""
    inside = escaped = False
    for c in text:
        if escaped:
            escaped = False
        elif c == "\\" and inside:
            escaped = True
        elif c == '"':
            inside = not inside
    return inside



class Constraints:
    """The matchers of one engine's constrained rows, and the masks they give.

    A mask is computed for the rows that carry a grammar only, in a background thread while
    the forward pass runs (llguidance releases the interpreter lock), then applied to those
    rows' logits before sampling."""

    def __init__(self, tokenizer, vocab: int):
        self.llg = _llg()
        self.tok = ll_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.vocab = vocab                            # logit rows the engine samples from
        self.words = (tokenizer.vocab_size + 31) // 32
        self.prototypes: OrderedDict[str, object] = OrderedDict()
        self.executor = self.llg.LLExecutor(num_threads=1)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="livelm-grammar")
        self.shifts = torch.arange(32, dtype=torch.int32)
        self._closers = None
        self.reserves: dict[str, int] = {}            # grammar -> tokens kept for closing it

    def closers(self, in_string: bool) -> torch.Tensor:
        """(V,) a bonus per token for a closing row, added to its logits (x1e4: it outranks the model's
        preferences but keeps their order within a tier). Inside a JSON string the tokens that start
        with a quote end it; outside one, the end tokens, then closing brackets, then a comma, colon
        or quote (the way on to a key that is still required)."""
        if self._closers is None:
            inside, outside = torch.zeros(self.vocab), torch.zeros(self.vocab)
            for i in range(self.vocab):
                text = self.tokenizer.token_bytes(i).decode("utf-8", "replace").strip()
                if text.startswith('"'):   # '"' or '"}' first; '",' would open one more key
                    inside[i] = 2 if set(text) <= set('"}]') else 1
                if text and set(text) <= set("}]"):
                    outside[i] = 2
                elif text in (",", ":", '"'):
                    outside[i] = 1
            outside[[i for i in self.tokenizer.stop_ids if i < self.vocab]] = 3
            self._closers = (inside * 1e4, outside * 1e4)
        return self._closers[0 if in_string else 1]

    def reserve(self, grammar: str) -> int:
        """How many of a row's last tokens go to closing its grammar: the dry run's length + a margin."""
        if grammar not in self.reserves:
            m, text, mask = self.matcher(grammar), "", torch.zeros(1, self.words, dtype=torch.int32)
            shortest = -torch.tensor([len(self.tokenizer.token_bytes(i)) for i in range(self.vocab)], dtype=torch.float32)
            steps = 0
            while not m.is_accepting() and steps < MAX_RESERVE:
                m.unsafe_compute_mask_ptr(mask.data_ptr(), self.words * 4)
                ok = ((mask[0].unsqueeze(-1) >> self.shifts) & 1).view(-1)[:self.vocab].bool()
                if not ok.any():
                    break
                # closing tokens first; among equals the shortest text (no "{\"" that opens one more key):
                # spelling a required key byte by byte overestimates the reserve, which is the safe side
                token = int((self.closers(_in_string(text)) + shortest).masked_fill(~ok, float("-inf")).argmax())
                if not m.consume_token(token):
                    break
                text += self.tokenizer.token_bytes(token).decode("utf-8", "replace")
                steps += 1
            # a grammar the heuristic cannot close (no JSON in it: a regex, a choice) is not closed at all
            self.reserves[grammar] = steps + 6 if m.is_accepting() else 0
        return self.reserves[grammar]

    def matcher(self, grammar: str):
        """A fresh matcher for `grammar`, copied from a cached compiled one."""
        proto = self.prototypes.get(grammar)
        if proto is None:
            proto = self.llg.LLMatcher(self.tok, grammar)
            if proto.is_error():
                raise GrammarError(proto.get_error())
            self.prototypes[grammar] = proto
            if len(self.prototypes) > _PROTOTYPES:
                self.prototypes.popitem(last=False)
        self.prototypes.move_to_end(grammar)
        return proto.deep_copy()

    def after_trigger(self, seq):
        """A matcher for a row whose newest token completed its trigger, already past whatever that token
        wrote after the trigger (one BPE token may hold ">[" of "<tool_call>[..."); None otherwise."""
        trigger = seq.params.grammar_trigger
        window = seq.out_ids[-(len(trigger) + 8):]
        text, before = self.tokenizer.decode(window), self.tokenizer.decode(window[:-1])
        at = text.rfind(trigger)
        if at < 0 or at + len(trigger) <= len(before):   # no trigger, or one an earlier token completed
            return None
        matcher, rest = self.matcher(seq.params.grammar), text[at + len(trigger):]
        if rest and not matcher.consume_tokens(self.tokenizer.encode(rest)):
            return None    # what followed the trigger already breaks the grammar: the row stays free
        return matcher

    def start(self, seqs) -> Future | None:
        """Begin computing the masks of `seqs` (rows with an active matcher) -> a future of (B, words) int32."""
        if not seqs:
            return None
        mask = torch.zeros(len(seqs), self.words, dtype=torch.int32)
        rows = [(s.matcher, i) for i, s in enumerate(seqs)]

        def fill():
            self.executor.unsafe_compute_mask_ptr(rows, mask.data_ptr(), self.words * 4, len(seqs))
            return mask
        return self.pool.submit(fill)

    def apply(self, seqs, future: Future, remaining: list[int]) -> None:
        """Set every disallowed token's logit to -inf, for the rows of `seqs` that have logits now;
        rows with no more tokens `remaining` than their grammar's reserve lean to closing tokens."""
        mask = future.result()
        allowed = ((mask.unsqueeze(-1) >> self.shifts) & 1).view(len(seqs), -1)[:, :self.vocab].bool()  # (B, V)
        for s, ok, left in zip(seqs, allowed, remaining):
            if s.next_logits is not None:
                if s.params.logprobs is not None:
                    s.raw_logits = s.next_logits      # logprobs report the model's own distribution
                ok = ok.to(s.next_logits.device)
                own = s.next_logits.masked_fill(~ok, float("-inf"))
                if left <= self.reserve(s.params.grammar):
                    closing = (s.next_logits.float() + self.closers(_in_string(s.stream.text)).to(ok.device))
                    closing = closing.masked_fill(~ok, float("-inf"))
                    # the answer was cut short if closing changed the most likely token at least once
                    s.closed_early = s.closed_early or int(closing.argmax()) != int(own.argmax())
                    own = closing
                s.next_logits = own

    def advance(self, seq, token: int) -> bool:
        """Feed the sampled token to the row's matcher; True when the grammar is complete (only the end may follow)."""
        if not seq.matcher.consume_token(token):
            # the mask made this impossible; should a processor have forced it, end the row rather than emit junk
            raise GrammarError(f"token {token} broke the grammar: {seq.matcher.get_error()}")
        return seq.matcher.is_stopped()
