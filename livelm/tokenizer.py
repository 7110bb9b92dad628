"""Tokenizers for livelm: byte-level BPE (default) and a per-character tokenizer.

Both kinds are Hugging Face `tokenizers` objects stored as a single
`tokenizer.json`, so an exported model can reuse the file unchanged. The kind is
not stored separately: it is read back from the model type (BPE -> "bpe",
WordLevel -> "char").

Design choices worth knowing:
  * The special tokens in SPECIAL_TOKENS always have ids 0..10, in that order.
  * `encode` never adds bos/eos and never turns special-token *text* typed by a
    user (e.g. the literal "<|end|>") into a special id: that text is encoded
    as ordinary characters. Special ids only enter a sequence when code puts
    them there explicitly (prompt-injection safety).
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


class Tokenizer:
    """Thin wrapper over an HF tokenizer with lossless byte-exact decoding."""

    def __init__(self, hf: HFTokenizer):
        self._hf = hf
        # Not persisted by HF in tokenizer.json, so it must be re-applied on every
        # construction: special-token text in user input stays plain text.
        self._hf.encode_special_tokens = True
        model_type = type(hf.model).__name__
        kinds = {"BPE": "bpe", "WordLevel": "char"}
        if model_type not in kinds:
            raise TokenizerError(f"unsupported tokenizer model type {model_type!r} (expected BPE or WordLevel)")
        self.kind = kinds[model_type]

        vocab = hf.get_vocab(with_added_tokens=True)
        self.vocab_size = len(vocab)
        for i, tok in enumerate(SPECIAL_TOKENS):
            if vocab.get(tok) != i:
                raise TokenizerError(f"tokenizer is not a livelm tokenizer: special token {tok!r} "
                                     f"has id {vocab.get(tok)}, expected {i}")
        if sorted(vocab.values()) != list(range(self.vocab_size)):
            raise TokenizerError("tokenizer vocabulary ids are not contiguous 0..vocab_size-1")
        (self.pad_id, self.bos_id, self.eos_id, self.system_id, self.user_id, self.assistant_id,
         self.end_id, self.mask_id, self.sep_id, self.cls_id, self.unk_id) = range(len(SPECIAL_TOKENS))
        self.special_ids = frozenset(range(len(SPECIAL_TOKENS)))

        # id -> exact bytes. Specials decode to their literal text, except unk (U+FFFD).
        table: list[bytes] = [b""] * self.vocab_size
        for tok, i in vocab.items():
            if i in self.special_ids:
                table[i] = _REPLACEMENT if i == self.unk_id else tok.encode("utf-8")
            elif self.kind == "char":
                table[i] = tok.encode("utf-8")
            else:
                try:
                    table[i] = bytes(_UNICODE_TO_BYTE[c] for c in tok)
                except KeyError:
                    raise TokenizerError(f"BPE token {tok!r} (id {i}) is not byte-level encoded") from None
        self._bytes = table

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
        f = cls._file(path)
        if not f.is_file():
            raise TokenizerError(f"no tokenizer found at {f}; run `livelm prepare` to train one, "
                                 f"or pass the path of an existing tokenizer.json or its directory")
        try:
            text = f.read_text(encoding="utf-8")
            json.loads(text)  # separate check so a truncated file gets a clear message
            hf = HFTokenizer.from_str(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TokenizerError(f"tokenizer file {f} is corrupt (not valid JSON: {e}); "
                                 f"delete it and re-run `livelm prepare`") from e
        except Exception as e:  # HF raises a plain Exception for schema errors
            raise TokenizerError(f"tokenizer file {f} is corrupt or not a tokenizers file: {e}") from e
        return cls(hf)

    def save(self, path) -> None:
        """Write atomically: a crash mid-save never leaves a truncated tokenizer.json."""
        io.write_text(self._file(path), self._hf.to_str(pretty=True))

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
        return data.decode("utf-8", errors="replace")

    def stream_decoder(self, skip_special: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, skip_special)

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


class StreamDecoder:
    """Incremental decode for streaming generation: text appears as soon as it is complete."""

    def __init__(self, tok: Tokenizer, skip_special: bool = False):
        self._tok, self._skip = tok, skip_special
        # The incremental decoder buffers a trailing incomplete UTF-8 sequence, so
        # a token holding half of "中" yields "" until the rest arrives.
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, id: int) -> str:
        id = int(id)
        if self._skip and id in self._tok.special_ids and id != self._tok.unk_id:
            return ""
        return self._dec.decode(self._tok.token_bytes(id))

    def flush(self) -> str:
        """End of stream: leftover incomplete bytes become U+FFFD."""
        return self._dec.decode(b"", final=True)
