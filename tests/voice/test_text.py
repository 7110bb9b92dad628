"""The text side of speech: splitting mixed Chinese/English by script (espeak-ng speaks each piece with its own
voice), splitting answers into sentences (spoken while the answer streams), and the error rates the round
trips are measured with."""
import pytest

from livelm.voice import sentences, split_by_script
from livelm.voice.stt import error_rate, language_code
from livelm.voice.tts import speakable, take_sentences


@pytest.mark.parametrize("text,pieces", [
    ("你好 world 🙂", [("zh", "你好"), ("en", " world 🙂")]),
    ("Hello, 世界!", [("en", "Hello,"), ("zh", " 世界!")]),
    ("周末早上10点到晚上6点开门，price is $5.", [("zh", "周末早上10点到晚上6点开门，"), ("en", "price is $5.")]),
    ("I paid 56元", [("en", "I paid"), ("zh", " 56元")]),
    ("我用Python 3写代码。", [("zh", "我用"), ("en", "Python"), ("zh", " 3写代码。")]),
    ("你好。Hello!", [("zh", "你好。"), ("en", "Hello!")]),
    ("🙂 hi 🙂", [("en", "🙂 hi 🙂")]),
    ("🙂你好", [("zh", "🙂你好")]),
    ("123!", [("en", "123!")]),
    ("", []),
    ("The oolong tea is ¥56.", [("en", "The oolong tea is ¥56.")]),
    ("乌龙茶多少钱？", [("zh", "乌龙茶多少钱？")]),
])
def test_split_by_script(text, pieces):
    got = split_by_script(text)
    assert got == pieces
    assert "".join(p for _, p in got) == text    # nothing lost, nothing added


def test_split_by_script_alternates_and_keeps_every_character():
    text = "Welcome 欢迎光临 to our shop，我们的 oolong 茶 is ¥56 一斤 😀😀 OK?"
    got = split_by_script(text)
    assert "".join(p for _, p in got) == text
    assert [s for s, _ in got] == ["en", "zh", "en", "zh", "en", "zh", "en", "zh", "en"]
    for script, piece in got:   # Han characters only in zh pieces, Latin letters only in en ones
        assert any(c.isascii() and c.isalpha() for c in piece) == (script == "en")


def test_sentences_chinese_english_and_emoji():
    text = ("你好！今天天气很好。Is it 3.14? Yes… it is. Thanks! 🙂\n"
            "He said \"Stop.\" Then left. 价格是¥56。“真的吗？”她问。")
    assert sentences(text) == ["你好！", "今天天气很好。", "Is it 3.14?", "Yes…", "it is.", "Thanks! 🙂",
                               "He said \"Stop.\"", "Then left.", "价格是¥56。", "“真的吗？”", "她问。"]
    assert sentences("no end mark") == ["no end mark"]
    assert sentences("  \n ") == [] and sentences("🙂") == ["🙂"]
    assert sentences("Version 2.5 of livelm.voice is out") == ["Version 2.5 of livelm.voice is out"]


def test_take_sentences_while_streaming():
    done, rest = take_sentences("Hello there. The price is 3.")
    assert done == ["Hello there."] and rest == " The price is 3."     # "3." may yet become "3.14"
    done, rest = take_sentences(rest + "14 yuan. And")
    assert done == ["The price is 3.14 yuan."] and rest == " And"
    assert take_sentences("你好！今天") == (["你好！"], "今天")
    assert take_sentences("no end yet") == ([], "no end yet")
    # streamed piece by piece, the sentences come out as sentences() finds them in the whole
    text = "你好！我是客服。How can I help you today? 请问有什么可以帮您？"
    got, buf = [], ""
    for i in range(0, len(text), 3):
        done, buf = take_sentences(buf + text[i:i + 3])
        got += done
    got += sentences(buf)
    assert got == sentences(text)


def test_speakable_drops_emoji_keeps_words_and_money():
    assert speakable("Thanks 🙂👍🏽!").split() == ["Thanks", "!"]
    assert speakable("价格是¥56。") == "价格是¥56。"
    assert "\u200d" not in speakable("👨\u200d👩\u200d👧 family")


def test_error_rates():
    assert error_rate("The cat sat on the mat.", "the cat sat on the mat") == 0
    assert error_rate("the cat sat on the mat", "the cat sat on a mat") == pytest.approx(1 / 6)
    assert error_rate("the cat sat", "cat sat down here") == pytest.approx(3 / 3)
    assert error_rate("今天天气很好。", "今天天汽很好") == pytest.approx(1 / 6)   # characters for Chinese
    assert error_rate("你好", "") == 1.0 and error_rate("", "") == 0.0
    assert error_rate("abc def", "abd def", unit="char") == pytest.approx(1 / 6)


def test_language_codes():
    assert [language_code(x) for x in ("zh", "ZH", "zh-CN", "zh_TW", "cmn", "Chinese", "en-US", "english")] == \
        ["zh", "zh", "zh", "zh", "zh", "zh", "en", "en"]
    assert language_code(None) is None and language_code("") is None
    with pytest.raises(ValueError, match="unknown language 'klingon'"):
        language_code("klingon")
