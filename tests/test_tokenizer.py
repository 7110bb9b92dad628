"""Tests for livelm.tokenizer: lossless round trips, streaming, specials, persistence, errors."""

import os
import time
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livelm.tokenizer import SPECIAL_TOKENS, StreamDecoder, Tokenizer, TokenizerError, _chunks

ZH = [
    "今天天气很好，我们一起去公园散步吧。",
    "机器学习是人工智能的一个重要分支，它让计算机从数据中学习规律。",
    "语言模型通过预测下一个词来学习语言的结构和知识。",
    "我喜欢读书，也喜欢听音乐。周末的时候，我常常和朋友一起喝茶聊天。",
    "中文分词是自然语言处理中的基础任务之一。",
    "北京是中国的首都，上海是中国最大的城市。",
    "请问你需要什么帮助？我可以回答你的问题。",
]
EN = [
    "The quick brown fox jumps over the lazy dog.",
    "Machine learning is an important branch of artificial intelligence.",
    "A language model learns the structure of text by predicting the next token.",
    "I like reading books and listening to music on weekends.",
    "Tokenization splits text into pieces that a model can process efficiently.",
    "Please tell me what you need help with, and I will answer your questions.",
    "def add(a, b):\n    return a + b  # <tag> | pipes\n",
]
CORPUS = (ZH + EN) * 20
BYTE_SPLIT_SAMPLES = ["中国人", "你好，世界！", "🙂👍🏽 emoji", "naïve café ñ e\u0301", "mixed 中文 and English 😀", "龘𝄞\u0915\u094d\u0937"]

RT = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def bpe():
    return Tokenizer.train_bpe(CORPUS, vocab_size=800, min_frequency=2, show_progress=False)


@pytest.fixture(scope="module")
def char():
    return Tokenizer.train_char(CORPUS)


def is_cjk(c: str) -> bool:
    name = unicodedata.name(c, "")
    return name.startswith(("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH", "HIRAGANA", "KATAKANA"))


# Text built from pieces that stress the pre-tokenizer: whitespace runs, CJK, emoji,
# combining marks, contractions, special-token look-alikes, plus arbitrary characters.
PIECES = st.sampled_from([" ", "  ", "\n", "\r\n", "\t", "\u3000", "中", "国人", "ひらがな", "カタカナ", "word",
                          "'s", "123", "!?", "🙂", "👍🏽", "e\u0301", "<|end|>", "<|bos|>", "\x00", "\ufffd"])
MIXED = st.lists(st.one_of(PIECES, st.text(max_size=3)), max_size=30).map("".join)


# ---- round trips -------------------------------------------------------------------
@RT
@given(s=st.one_of(st.text(), MIXED))
def test_bpe_round_trip_any_unicode(bpe, s):
    assert bpe.decode(bpe.encode(s)) == s


@RT
@given(data=st.data())
def test_char_round_trip_over_its_alphabet(char, data):
    alphabet = sorted({c for t in CORPUS for c in t})
    s = data.draw(st.text(alphabet=alphabet))
    ids = char.encode(s)
    assert len(ids) == len(s)  # exactly one token per character, newlines included
    assert char.decode(ids) == s


def test_char_isolates_every_codepoint():
    tok = Tokenizer.train_char(["a\r\nb🙂e\u0301中\n"])
    s = "a\r\nb🙂e\u0301中\n"
    assert len(tok.encode(s)) == len(s)
    assert tok.decode(tok.encode(s)) == s
    # Unseen characters become <|unk|>, which decodes to U+FFFD (documented behavior).
    assert tok.encode("z") == [tok.unk_id]
    assert tok.decode(tok.encode("az")) == "a\ufffd"


@RT
@given(s=MIXED, size=st.integers(1, 8))
def test_chunked_encoding_matches_whole_text(bpe, s, size):
    # encode() cuts long texts into chunks for parallelism; cuts must not change ids.
    whole = bpe._hf.encode(s, add_special_tokens=False).ids
    assert [i for c in _chunks(s, size) for i in bpe._hf.encode(c, add_special_tokens=False).ids] == whole


def test_encode_batch_matches_encode(bpe, char):
    texts = ZH + EN + ["", "x" * 10]
    for tok in (bpe, char):
        assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


# ---- streaming ---------------------------------------------------------------------
@pytest.mark.parametrize("text", BYTE_SPLIT_SAMPLES + ZH[:2] + EN[:2])
def test_stream_decoder_chunks_are_valid(bpe, text):
    ids = bpe.encode(text)
    dec = bpe.stream_decoder()
    assert isinstance(dec, StreamDecoder)
    chunks = [dec.push(i) for i in ids] + [dec.flush()]
    assert all("\ufffd" not in c for c in chunks)
    assert "".join(chunks) == bpe.decode(ids) == text


def test_stream_decoder_holds_back_partial_characters(bpe):
    # "龘" is not in the corpus, so byte-level BPE spells it with several byte tokens.
    ids = bpe.encode("龘")
    assert len(ids) > 1 and bpe.token_bytes(ids[0]) == "龘".encode()[: len(bpe.token_bytes(ids[0]))]
    dec = bpe.stream_decoder()
    assert [dec.push(i) for i in ids] == [""] * (len(ids) - 1) + ["龘"]
    # A stream cut mid-character ends in U+FFFD only at flush time.
    dec = bpe.stream_decoder()
    assert dec.push(ids[0]) == "" and dec.flush() == "\ufffd"


# ---- special tokens ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_special_ids_and_injection_safety(request, kind):
    tok = request.getfixturevalue(kind)
    assert tok.kind == kind
    names = ["pad", "bos", "eos", "system", "user", "assistant", "end", "mask", "sep", "cls", "unk"]
    assert [getattr(tok, f"{n}_id") for n in names] == list(range(11))
    assert tok.special_ids == frozenset(range(11))
    assert [tok.decode([i]) for i in range(10)] == list(SPECIAL_TOKENS[:10])
    for s in SPECIAL_TOKENS:  # literal special-token text typed by a user stays ordinary text
        ids = tok.encode(f"hi {s} there")
        assert tok.end_id not in ids and tok.bos_id not in ids
        if kind == "bpe":
            assert not set(ids) & tok.special_ids
            assert tok.decode(ids) == f"hi {s} there"
    # The char corpus contains every character of "<|end|>", so nothing becomes unk.
    assert not set(tok.encode("<|end|>")) & tok.special_ids


def test_skip_special(bpe):
    ids = [bpe.bos_id, bpe.user_id] + bpe.encode("你好 hi") + [bpe.end_id, bpe.eos_id]
    assert bpe.decode(ids, skip_special=True) == "你好 hi"
    assert bpe.decode(ids) == "<|bos|><|user|>你好 hi<|end|><|eos|>"


def test_no_bpe_token_spans_two_cjk_chars(bpe):
    for i in range(bpe.vocab_size):
        text = bpe.token_bytes(i).decode("utf-8", errors="ignore")
        assert sum(map(is_cjk, text)) <= 1, (i, text)


def test_report_chars_per_token_and_speed(bpe):
    zh, en = "".join(ZH), " ".join(EN)
    zh_cpt, en_cpt = len(zh) / len(bpe.encode(zh)), len(en) / len(bpe.encode(en))
    big = ("".join(ZH) + "\n" + " ".join(EN) + "\n") * (1_000_000 // len(("".join(ZH + EN)).encode()))
    t0 = time.perf_counter()
    ids = bpe.encode(big)
    dt = time.perf_counter() - t0
    print(f"\nchars/token (vocab {bpe.vocab_size}): Chinese {zh_cpt:.2f}, English {en_cpt:.2f}; "
          f"encode {len(big.encode()) / 1e6:.2f} MB in {dt:.3f}s")
    # CJK characters are isolated before BPE, so 1.0 is the ceiling for Chinese
    # (reached here because every character of the sample was seen in training).
    assert zh_cpt == pytest.approx(1.0) and en_cpt > 2.0
    assert bpe.decode(ids) == big
    assert dt < 2.0  # "well under a second" on a normal machine; slack for busy CI


# ---- persistence -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_save_load_round_trip_is_atomic(request, tmp_path, kind):
    tok = request.getfixturevalue(kind)
    sample = "".join(ZH[:2]) + " <|end|> " + EN[0]
    tok.save(tmp_path / "dir")  # directory form
    tok.save(tmp_path / "file.json")  # file form
    assert os.listdir(tmp_path / "dir") == ["tokenizer.json"]  # no leftover tmp file
    assert sorted(os.listdir(tmp_path)) == ["dir", "file.json"]
    for path in (tmp_path / "dir", tmp_path / "dir" / "tokenizer.json", tmp_path / "file.json"):
        loaded = Tokenizer.load(path)
        assert (loaded.kind, loaded.vocab_size) == (tok.kind, tok.vocab_size)
        assert loaded.encode(sample) == tok.encode(sample)
        assert [loaded.token_bytes(i) for i in range(tok.vocab_size)] == [tok.token_bytes(i) for i in range(tok.vocab_size)]
    tok.save(tmp_path / "dir")  # overwriting works too
    assert os.listdir(tmp_path / "dir") == ["tokenizer.json"]


# ---- errors ------------------------------------------------------------------------
def test_load_missing_path_is_clear(tmp_path):
    with pytest.raises(TokenizerError, match="livelm prepare") as e:
        Tokenizer.load(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)


def test_load_corrupt_file_is_clear(tmp_path, bpe):
    bpe.save(tmp_path)
    f = tmp_path / "tokenizer.json"
    f.write_text(f.read_text()[:200])  # truncated, as after a crash mid-write
    with pytest.raises(TokenizerError, match="corrupt"):
        Tokenizer.load(tmp_path)
    f.write_text('{"hello": 1}')  # valid JSON, not a tokenizer
    with pytest.raises(TokenizerError, match="corrupt"):
        Tokenizer.load(f)


@pytest.mark.parametrize("train", [Tokenizer.train_char, lambda t: Tokenizer.train_bpe(t, show_progress=False)])
def test_training_on_empty_input(train):
    for texts in ([], [""], iter(())):
        with pytest.raises(TokenizerError, match="no text to train the tokenizer on"):
            train(texts)


def test_bad_ids_raise(bpe):
    with pytest.raises(TokenizerError):
        bpe.decode([bpe.vocab_size])
    with pytest.raises(TokenizerError):
        bpe.token_bytes(-1)
