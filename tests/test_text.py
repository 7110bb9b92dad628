"""livelm.text: language detection, word splits and answer grading, on Chinese, English, emoji and mixed text."""
import pytest

from livelm import text


def test_language_of_chinese_english_emoji_and_mixed_text():
    assert text.language("周末几点开门？") == "zh"
    assert text.language("When do you open on weekends?") == "en"
    assert text.language("Mixed 中英 text 🙂") == "zh"          # one Han character makes it Chinese
    assert text.language("🙂🍵") == "en"                        # no letters at all: the default
    assert text.language("🙂🍵", unknown="") == ""
    assert text.language("¥38!", unknown="") == ""
    assert text.language("ok 🙂", unknown="") == "en"
    assert text.language("，。？") == "en"                        # punctuation alone is not Han
    assert text.language("\u3400\u4dbf") == "zh" and text.language("\uf900") == "zh"   # Ext A, compatibility
    assert text.language("\u4dc0") == "en"                     # a Yijing hexagram symbol is not Han
    assert text.language("ひらがな カタカナ") == "en"             # kana without kanji: not Chinese


def test_han_and_cjk_classes():
    assert text.has_han("价格 price") and not text.has_han("price。")
    assert text.contains_cjk("price。") and text.contains_cjk("好") and text.contains_cjk("Yes，thanks")
    assert not text.contains_cjk("Hello 🙂 ¥38 (9am-9pm)")


def test_written_in_the_answers_language():
    assert text.written_in("绿茶的价格是¥38。", "zh") and not text.written_in("¥38", "zh")
    assert text.written_in("The green tea is ¥38. 🍵", "en")
    assert not text.written_in("The green tea is ¥38。", "en")    # Chinese punctuation in an English answer
    assert not text.written_in("绿茶 green tea", "en")
    with pytest.raises(ValueError):
        text.written_in("bonjour", "fr")


def test_split_words_isolates_each_han_character():
    assert text.split_words("我爱 NLP 🙂!") == ["我", "爱", "NLP", "🙂!"]
    assert text.split_words("  Hello,  world ") == ["Hello,", "world"]
    assert text.split_words("价格¥38元") == ["价", "格", "¥38", "元"]
    assert text.split_words("") == []


def test_mostly_chinese():
    assert text.mostly_chinese(["我们去公园。", "今天天气很好"])
    assert not text.mostly_chinese(["We went to the park (公园).", "Nice weather 🙂"])
    assert not text.mostly_chinese([]) and not text.mostly_chinese(["   "])


def test_normalize_answer_folds_width_case_space_and_yuan():
    assert text.normalize_answer("￥９９ Free  Shipping") == "¥99freeshipping"
    assert text.normalize_answer("满99元包邮 🙂") == "满¥99包邮🙂"


def test_contains_value_never_splits_a_number():
    assert text.contains_value("The green tea is ¥38.", "¥38")
    assert not text.contains_value("The green tea is ¥388.", "¥38")
    assert not text.contains_value("The green tea is ¥138.", "38")
    assert text.contains_value("¥388 or ¥38 🙂", "¥38")             # a later whole match counts
    assert text.contains_value("We open 9 AM to 9 PM", "9am to 9pm")
    assert text.contains_value("满38元", "¥38")
    assert text.contains_value("anything", "")                       # nothing expected: found


def test_grade_takes_alternatives_and_an_optional_language():
    assert text.grade("周末早上10点开门。", ["早上10点", "上午10点"], "zh")
    assert text.grade("周末上午10点开门。", ["早上10点", "上午10点"], "zh")
    assert not text.grade("周末上午11点开门。", ["早上10点", "上午10点"], "zh")
    assert not text.grade("We open at 10am 🙂", "10am", "zh")        # right value, wrong language
    assert text.grade("We open at 10am 🙂", "10am") and text.grade("We open at 10am 🙂", "10am", "en")
    assert not text.grade("anything", [])
