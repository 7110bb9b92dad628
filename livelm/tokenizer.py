"""Tokenizers for livelm: its own byte-level BPE and char tokenizers, and any model's own.

Every kind is a Hugging Face `tokenizers` object stored as one `tokenizer.json`,
so an exported model reuses the file unchanged, and an imported model keeps its
file — vocabulary and ids exactly as its authors made them. What livelm needs
beyond the ids (bos/eos/pad, the end-of-turn tokens, the chat template) lives in
`tokenizer_config.json` beside it, the file Hugging Face uses for the same facts.
livelm's own tokenizers need none: their specials are fixed (below).

Kinds, read back from the file (not stored separately):
    "bpe"   byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM, livelm's own)
    "spm"   SentencePiece-style BPE/Unigram: "▁" for spaces, <0xNN> byte fallback (Gemma, Llama 2, Mistral)
    "char"  livelm's per-character WordLevel tokenizer

Design choices worth knowing:
  * livelm's own tokenizers hold SPECIAL_TOKENS at ids 0..10, in that order.
  * `encode` never adds bos/eos and never turns special-token *text* typed by a
    user (e.g. the literal "<|end|>" or "<|im_end|>") into a special id: that
    text is encoded as ordinary characters. Special ids only enter a sequence
    through code or the chat template (prompt-injection safety; see
    `encode_template` and livelm/chat/template.py).
  * `decode` does not use HF's decoder. Every id maps to the exact bytes it
    stands for (`token_bytes`); decoding joins bytes and decodes UTF-8 once, so
    byte-level tokens that split a character are handled correctly, and
    `StreamDecoder` can emit text incrementally without broken characters.
  * Char tokenizer: characters not seen in training encode to <|unk|>, which
    decodes to U+FFFD (the replacement character) rather than "<|unk|>", with or
    without skip_special, so lost text stays visible instead of vanishing.
"""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from livelm import io

SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>",
                  "<|end|>", "<|mask|>", "<|sep|>", "<|cls|>", "<|unk|>")
FILENAME = "tokenizer.json"
CONFIG_FILENAME = "tokenizer_config.json"
TEMPLATE_FILENAME = "chat_template.jinja"
_REPLACEMENT = "\ufffd".encode("utf-8")

# Isolate each Han/Hiragana/Katakana character before GPT-2's regex runs. GPT-2's
# regex treats a run of CJK as one "word", so BPE merges would grow whole
# phrases into single tokens; one character per pre-token keeps the vocab
# spent on reusable pieces.
_CJK = r"[\p{Han}\p{Hiragana}\p{Katakana}]"
# One pre-token per code point. `[\s\S]` also matches newlines (a bare `.` would
# not, and Oniguruma rejects Python's `(?s)` flag).
_ANY_CHAR = r"[\s\S]"


# Long texts are cut into ~64K-char chunks that HF encodes in parallel. A cut is
# only made where the pre-tokenizer always puts a token boundary anyway, so the
# ids are identical to encoding the whole text at once (tested):
#   * before a space/newline that follows a non-space char: GPT-2's regex never
#     puts a non-space and a following whitespace in one pre-token, and the
#     whole whitespace run stays in the next chunk;
#   * before a common Han character: those are isolated by the _CJK split.
_CHUNK_CHARS = 1 << 16
_SAFE_CUT = re.compile(r"(?<=\S)[ \n]|[\u4e00-\u9fa5]")


def _chunks(text: str, size: int = _CHUNK_CHARS) -> list[str]:
    out, start = [], 0
    while len(text) - start > size:
        m = _SAFE_CUT.search(text, start + size)
        if m is None:
            break
        out.append(text[start:m.start()])
        start = m.start()
    out.append(text[start:])
    return out


class TokenizerError(Exception):
    """Raised for tokenizer problems a user can fix (missing/corrupt file, bad input)."""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable-char map, used by HF's ByteLevel pre-tokenizer."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _non_empty(texts: Iterable[str], seen: list[int]) -> Iterator[str]:
    """Stream texts to the trainer lazily (huge corpora never sit in memory), counting them."""
    for t in texts:
        if not isinstance(t, str):
            raise TokenizerError(f"training texts must be str, got {type(t).__name__}")
        if t:
            seen[0] += 1
            yield t


# livelm's own chat format as a Jinja chat template (the same form every imported model's
# template has, so one renderer serves both: livelm/chat/template.py):
#     <|bos|> <|system|> text <|end|> <|user|> text <|end|> <|assistant|> text <|end|> ...
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Tokens that end an assistant turn in the common chat templates (ChatML, Gemma, Llama 3,
# Phi): an imported model stops at whichever of them its vocabulary holds as special tokens,
# besides its eos and the ids its generation_config.json lists.
END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|endoftext|>")
# tokenizer_config.json keys livelm reads (Hugging Face's names; stop_tokens is livelm's, written
# at import from generation_config.json's eos_token_id list; gguf_pre is llama.cpp's name for the
# split rule of a byte-level BPE imported from GGUF, written back on GGUF export)
CONFIG_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "chat_template", "add_bos_token", "stop_tokens",
               "gguf_pre")
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _token_text(v) -> str | None:
    """tokenizer_config.json spells a token as a string or as {"content": ...}."""
    return v.get("content") if isinstance(v, dict) else v if isinstance(v, str) else None


def _template_text(v) -> str | None:
    """chat_template is a string, or a list of {"name", "template"} of which "default" is the chat one."""
    if isinstance(v, list):
        named = {t.get("name"): t.get("template") for t in v if isinstance(t, dict)}
        v = named.get("default", next(iter(named.values()), None))
    return v if isinstance(v, str) else None


class Tokenizer:
    """Thin wrapper over an HF tokenizer with lossless byte-exact decoding.

    `config` is the run's tokenizer_config.json (None for livelm's own tokenizers,
    whose specials and chat template are fixed).
    """

    def __init__(self, hf: HFTokenizer, config: dict | None = None):
        self._hf = hf
        self._hf_template: HFTokenizer | None = None  # a copy that parses special-token text (templates)
        # Not persisted by HF in tokenizer.json, so it must be re-applied on every
        # construction: special-token text in user input stays plain text.
        self._hf.encode_special_tokens = True
        self.config = {k: v for k, v in (config or {}).items() if k in CONFIG_KEYS}
        spec = json.loads(hf.to_str())
        model_type = spec["model"]["type"]
        vocab = hf.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        added = hf.get_added_tokens_decoder()                          # id -> AddedToken
        self.own = all(vocab.get(t) == i for i, t in enumerate(SPECIAL_TOKENS))
        if model_type == "WordLevel" and self.own:
            self.kind = "char"
        elif model_type == "BPE" and "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")]):
            self.kind = "bpe"
        elif model_type in ("BPE", "Unigram"):
            self.kind = "spm"
        else:
            raise TokenizerError(f"unsupported tokenizer model type {model_type!r} (livelm reads byte-level BPE, "
                                 f"SentencePiece-style BPE/Unigram and its own char tokenizers)")
        if self.own:
            (self.pad_id, self.bos_id, self.eos_id, self.system_id, self.user_id, self.assistant_id,
             self.end_id, self.mask_id, self.sep_id, self.cls_id, self.unk_id) = range(len(SPECIAL_TOKENS))
            self.special_ids = frozenset(range(len(SPECIAL_TOKENS)))
            self.chat_template = _template_text(self.config.get("chat_template")) or CHAT_TEMPLATE
            self.stop_ids = frozenset({self.eos_id, self.end_id})
            self.prefix_ids = []     # pretraining joins documents with <|eos|>; a prompt starts bare
        else:
            self._named_ids(vocab, added, spec)

        # id -> exact bytes. Specials decode to their literal text, except unk (U+FFFD).
        byte_fallback = bool(spec["model"].get("byte_fallback"))
        table: list[bytes] = [b""] * self.vocab_size
        for tok, i in vocab.items():
            if i == self.unk_id and self.own:     # livelm's char tokenizer: lost text stays visible
                table[i] = _REPLACEMENT
            elif i in self.special_ids or i in added or self.kind == "char":
                table[i] = tok.encode("utf-8")
            elif self.kind == "spm":
                m = _BYTE_PIECE.fullmatch(tok) if byte_fallback else None
                table[i] = bytes([int(m.group(1), 16)]) if m else tok.replace("\u2581", " ").encode("utf-8")
            else:
                try:
                    table[i] = bytes(_UNICODE_TO_BYTE[c] for c in tok)
                except KeyError:
                    raise TokenizerError(f"BPE token {tok!r} (id {i}) is not byte-level encoded") from None
        self._bytes = table
        # SentencePiece's "dummy prefix": the normalizer puts "▁" before the text and HF's
        # decoder strips one leading space again (Llama 2, Mistral; not Gemma)
        self.strips_leading_space = self.kind == "spm" and "Strip" in json.dumps(spec.get("decoder"))

    def _named_ids(self, vocab: dict, added: dict, spec: dict) -> None:
        """bos/eos/pad/unk, stop ids and the chat template of a model's own tokenizer."""
        cfg = self.config

        def token_id(key):
            text = _token_text(cfg.get(key))
            return vocab.get(text) if text else None

        self.special_ids = frozenset(i for i, t in added.items() if t.special)
        self.bos_id, self.eos_id, self.unk_id = token_id("bos_token"), token_id("eos_token"), token_id("unk_token")
        stops = {vocab[t] for t in cfg.get("stop_tokens") or () if t in vocab}
        stops |= {vocab[t] for t in END_OF_TURN if vocab.get(t) in self.special_ids}
        if self.eos_id is not None:
            stops.add(self.eos_id)
        if not stops:
            raise TokenizerError("the tokenizer names no eos or end-of-turn token, so generation could never stop; "
                                 "set eos_token in tokenizer_config.json")
        self.stop_ids = frozenset(stops)
        if self.eos_id is None:
            self.eos_id = min(stops)
        eot = [vocab[t] for t in END_OF_TURN if vocab.get(t) in stops]
        self.end_id = eot[0] if eot else self.eos_id                   # what closes an assistant turn
        self.pad_id = token_id("pad_token")
        if self.pad_id is None:
            self.pad_id = self.eos_id
        self.system_id = self.user_id = self.assistant_id = None       # turns are template text here
        self.mask_id = self.sep_id = self.cls_id = None                 # livelm's encoder specials
        self.chat_template = _template_text(cfg.get("chat_template"))
        # what a plain text prompt starts with: tokenizer_config's add_bos_token, else what the
        # tokenizer's own post-processor would add (Llama 3 and Gemma add bos; Qwen, SmolLM2 none)
        if "add_bos_token" in cfg:
            self.prefix_ids = [self.bos_id] if cfg["add_bos_token"] and self.bos_id is not None else []
        else:
            single = (spec.get("post_processor") or {}).get("single") or []
            first = single[0].get("SpecialToken", {}).get("id") if single and isinstance(single[0], dict) else None
            self.prefix_ids = [vocab[first]] if first in vocab else []

    # ---- training -------------------------------------------------------------------
    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2,
                  show_progress: bool = True) -> "Tokenizer":
        """Train a byte-level BPE tokenizer. `texts` may be any (lazy) iterable."""
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(SPECIAL_TOKENS) + len(alphabet):
            raise TokenizerError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least "
                                 f"{len(SPECIAL_TOKENS) + len(alphabet)} (11 specials + 256 bytes)")
        hf = HFTokenizer(models.BPE())
        # No normalizer: any normalization (NFC, lowercasing...) would break lossless round trips.
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_CJK), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
        hf.decoder = decoders.ByteLevel()  # only for HF export; livelm decodes via token_bytes
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
            special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
            initial_alphabet=alphabet,  # every byte is representable, so no <|unk|> ever needed
        )
        seen = [0]
        hf.train_from_iterator(_non_empty(texts, seen), trainer=trainer)
        if seen[0] == 0:
            raise TokenizerError("no text to train the tokenizer on")
        return cls(hf)

    @classmethod
    def train_char(cls, texts: Iterable[str]) -> "Tokenizer":
        """Vocab = specials + every distinct character seen, sorted by code point (deterministic)."""
        seen, chars = [0], set()
        for t in _non_empty(texts, seen):
            chars.update(t)
        if not chars:
            raise TokenizerError("no text to train the tokenizer on")
        vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
        for c in sorted(chars):
            vocab[c] = len(vocab)
        hf = HFTokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(_ANY_CHAR), behavior="isolated")
        hf.decoder = decoders.Fuse()
        # Mark specials as special added tokens (ids unchanged) so an HF export knows them.
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
        return cls(hf)

    # ---- persistence ----------------------------------------------------------------
    @staticmethod
    def _file(path) -> Path:
        p = Path(path)
        return p / FILENAME if p.is_dir() or p.suffix != ".json" else p

    @classmethod
    def load(cls, path) -> "Tokenizer":
        """tokenizer.json (a file or its folder), with the tokenizer_config.json beside it if any."""
        f = cls._file(path)
        if not f.is_file():
            raise TokenizerError(f"no tokenizer found at {f}; run `livelm prepare` to train one, "
                                 f"or pass the path of an existing tokenizer.json or its directory")
        try:
            text = f.read_text(encoding="utf-8")
            io.parse_json(text)  # separate check so a truncated file gets a clear message
            hf = HFTokenizer.from_str(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TokenizerError(f"tokenizer file {f} is corrupt (not valid JSON: {e}); "
                                 f"delete it and re-run `livelm prepare`") from e
        except Exception as e:  # HF raises a plain Exception for schema errors
            raise TokenizerError(f"tokenizer file {f} is corrupt or not a tokenizers file: {e}") from e
        config = read_config(f.parent / CONFIG_FILENAME)
        jinja = f.parent / TEMPLATE_FILENAME      # transformers 5 keeps the template in its own file
        if "chat_template" not in config and jinja.is_file():
            try:
                config["chat_template"] = jinja.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise TokenizerError(f"chat template {jinja} is not UTF-8 text ({e.reason} at byte {e.start}); "
                                     f"re-save it as UTF-8 or re-import the model") from None
        try:
            return cls(hf, config)
        except (ValueError, KeyError, TypeError, IndexError) as e:   # a valid `tokenizers` file livelm cannot use
            raise TokenizerError(f"tokenizer file {f} cannot be used ({type(e).__name__}: {e}); "
                                 f"re-run `livelm prepare` or re-import the model") from None

    def save(self, path) -> None:
        """Write atomically: a crash mid-save never leaves a truncated tokenizer.json."""
        f = self._file(path)
        io.write_text(f, self._hf.to_str(pretty=True))
        if self.config:
            io.write_json(f.parent / CONFIG_FILENAME, self.config)

    # ---- encode / decode ------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Plain text -> ids. Adds no bos/eos; special-token text stays ordinary text."""
        if len(text) <= _CHUNK_CHARS:
            return self._hf.encode(text, add_special_tokens=False).ids
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Like `encode` over many texts, in parallel across cores (HF's Rust thread pool)."""
        pieces, counts = [], []
        for t in texts:
            if not isinstance(t, str):
                raise TokenizerError(f"encode_batch expects str texts, got {type(t).__name__}")
            c = _chunks(t)
            pieces.extend(c)
            counts.append(len(c))
        batch = getattr(self._hf, "encode_batch_fast", self._hf.encode_batch)  # fast: skips offsets
        encs = iter(batch(pieces, add_special_tokens=False))
        out = []
        for n in counts:
            ids = next(encs).ids
            for _ in range(n - 1):
                ids.extend(next(encs).ids)
            out.append(ids)
        return out

    def encode_template(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Rendered chat-template text -> (ids, (start, end) char offsets), special-token text parsed.

        Only for text whose special-token text is trusted (livelm/chat/template.py checks
        the messages first). Adds nothing: templates write their own bos.
        """
        if self._hf_template is None:
            self._hf_template = HFTokenizer.from_str(self._hf.to_str())
            self._hf_template.encode_special_tokens = False
        enc = self._hf_template.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def prompt(self, text: str) -> list[int]:
        """A plain-text prompt's ids: what the model's own tokenizer puts first (bos for Llama 3
        and Gemma, nothing for Qwen, SmolLM2 and livelm's models), then the text. Never empty."""
        ids = self.prefix_ids + self.encode(text)
        return ids or [self.bos_id if self.bos_id is not None else self.eos_id]

    def token_id(self, text: str) -> int | None:
        """The id of a token given by its exact text (e.g. "<|im_end|>"), or None."""
        return self._hf.token_to_id(text)

    def token_bytes(self, id: int) -> bytes:
        id = int(id)
        if not 0 <= id < self.vocab_size:
            raise TokenizerError(f"token id {id} out of range [0, {self.vocab_size})")
        return self._bytes[id]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        ids = [int(i) for i in ids]  # also accepts numpy / torch scalars
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            raise TokenizerError(f"token id out of range [0, {self.vocab_size}) in decode")
        table, drop = self._bytes, (self.special_ids - {self.unk_id}) if skip_special else ()
        data = b"".join(table[i] for i in ids if i not in drop)
        if self.strips_leading_space and data.startswith(b" "):
            data = data[1:]
        return data.decode("utf-8", errors="replace")

    def stream_decoder(self, skip_special: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, skip_special)

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, own={self.own})"


def read_config(path: Path) -> dict:
    """The livelm-relevant keys of a tokenizer_config.json ({} when there is none)."""
    if not path.is_file():
        return {}
    obj = io.read_json_object(path, TokenizerError)
    return {k: obj[k] for k in CONFIG_KEYS if k in obj}


class StreamDecoder:
    """Incremental decode for streaming generation: text appears as soon as it is complete."""

    def __init__(self, tok: Tokenizer, skip_special: bool = False):
        self._tok, self._skip = tok, skip_special
        # The incremental decoder buffers a trailing incomplete UTF-8 sequence, so
        # a token holding half of "中" yields "" until the rest arrives.
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = tok.strips_leading_space   # drop the dummy-prefix space of the first piece

    def push(self, id: int) -> str:
        id = int(id)
        if self._skip and id in self._tok.special_ids and id != self._tok.unk_id:
            return ""
        data = self._tok.token_bytes(id)
        if self._first and data:
            self._first, data = False, data[1:] if data.startswith(b" ") else data
        return self._dec.decode(data)

    def flush(self) -> str:
        """End of stream: leftover incomplete bytes become U+FFFD."""
        return self._dec.decode(b"", final=True)
