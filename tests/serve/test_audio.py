"""OpenAI's audio endpoints on livelm serve, through the official client: speak, transcribe, and bad audio.

The server is the tiny assistant's (tests/serve/conftest.py) with its default voice: Whisper base from
PyPI for speech to text, espeak-ng for text to speech (`make test` installs both).
"""
from __future__ import annotations

import io
import time
import wave
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from livelm.voice.stt import error_rate
from tests.serve.test_http_errors import assert_error


def test_speech_and_transcription_models_are_listed(sdk):
    models = {m.id: m for m in sdk.models.list()}
    assert {"chat", "sharp", "whisper-base", "espeak"} <= set(models)
    assert models["whisper-base"].model_extra["task"] == "transcription"
    assert models["espeak"].model_extra["task"] == "speech"
    assert sdk.models.retrieve("whisper-base").id == "whisper-base"


@pytest.mark.parametrize("text, language, bound", [
    ("Hello, how are you today? I would like to order a cup of coffee.", "en", 0.2),
    ("我想买一杯咖啡。", "zh", 0.25),
])
def test_speak_then_transcribe_round_trip(sdk, text, language, bound):
    """TTS -> ASR through the endpoints: the words come back (WER for English, CER for Chinese)."""
    audio = sdk.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="wav").content
    with wave.open(io.BytesIO(audio)) as w:
        assert w.getnchannels() == 1 and w.getnframes() / w.getframerate() > 1.5
    got = sdk.audio.transcriptions.create(model="whisper-1", file=("q.wav", audio, "audio/wav"), language=language)
    assert error_rate(text, got.text) <= bound, got.text


def test_mp3_streams_sentence_by_sentence_and_verbose_json_has_segments(sdk, server):
    text = "Hello there. 你好！This is the third sentence, and it is a little longer than the others."
    with httpx.stream("POST", server.url + "/v1/audio/speech", timeout=60,
                      json={"model": "espeak", "input": text, "response_format": "mp3"}) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "audio/mpeg"
        parts = [b for b in r.iter_raw() if b]
    assert len(parts) >= 2, "the speech did not arrive in pieces"   # one per sentence, then the tail
    mp3 = b"".join(parts)
    verbose = sdk.audio.transcriptions.create(model="whisper-1", file=("a.mp3", mp3, "audio/mpeg"),
                                              response_format="verbose_json")
    assert verbose.language in ("english", "chinese") and verbose.duration > 2 and verbose.segments
    assert all(s.end >= s.start for s in verbose.segments)
    text_only = sdk.audio.transcriptions.create(model="whisper-1", file=("a.mp3", mp3, "audio/mpeg"),
                                                response_format="text")
    assert isinstance(text_only, str) and "hello" in text_only.lower()


@pytest.mark.parametrize("fmt, magic", [("opus", b"OggS"), ("flac", b"fLaC"), ("aac", b"\xff"), ("pcm", None)])
def test_every_speech_format_is_real_audio(sdk, fmt, magic):
    data = sdk.audio.speech.create(model="tts-1", voice="nova", input="One, two, three. 一二三。",
                                   response_format=fmt, speed=1.5).content
    assert len(data) > 1000 and (magic is None or data.startswith(magic))


def test_bad_audio_and_bad_requests_are_400s(server):
    url = server.url + "/v1/audio/transcriptions"
    for name, data in [("empty.wav", b""), ("noise.wav", bytes(range(256)) * 40), ("notes.txt", "你好 🙂".encode()),
                       ("cut.wav", b"RIFF\x24\x00\x00\x00WAVEfmt ")]:
        r = httpx.post(url, files={"file": (name, data)}, data={"model": "whisper-1"}, timeout=60)
        err = assert_error(r, 400, param="file")
        assert err["code"] == "invalid_audio", err
    assert_error(httpx.post(url, data={"model": "whisper-1"}, timeout=60), 400, param="file")       # no file
    assert_error(httpx.post(url, json={"file": "x"}, timeout=60), 400, param="file")               # not multipart
    tts = server.url + "/v1/audio/speech"
    for body, param in [({"input": ""}, "input"), ({"input": "x" * 5000}, "input"),
                        ({"input": "hi", "speed": 9}, "speed"), ({"input": "hi", "response_format": "midi"},
                                                                  "response_format")]:
        assert_error(httpx.post(tts, json={"model": "tts-1", **body}, timeout=60), 400, param=param)
    r = httpx.post(tts, json={"model": "tts-9000", "input": "hi"}, timeout=60)
    assert_error(r, 404, code="model_not_found")
    r = httpx.post(url, files={"file": ("a.wav", b"x")}, data={"model": "gpt-9"}, timeout=60)
    assert_error(r, 404, code="model_not_found")


def test_a_long_transcription_does_not_stall_text_generation(sdk, server):
    """Speech runs in the server's worker threads, not the engine's process: chat answers keep flowing."""
    speech = sdk.audio.speech.create(model="tts-1", voice="alloy", response_format="wav",
                                     input="This is a longer recording for the speech model to work on. " * 6).content

    def chat():
        t = time.perf_counter()
        sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "你好 🙂"}], max_tokens=8,
                                    extra_body={"ignore_eos": True})
        return time.perf_counter() - t

    alone = min(chat() for _ in range(3))
    with ThreadPoolExecutor(2) as pool:
        asr = pool.submit(lambda: sdk.audio.transcriptions.create(model="whisper-1", file=("l.wav", speech)))
        time.sleep(0.3)
        during = [chat() for _ in range(3)]
        text = asr.result().text
    assert "recording" in text.lower()
    # sharing 2 cores costs some speed, but a chat request never waits for the whole transcription
    assert max(during) < max(10 * alone, 2.0), (alone, during)


def test_speech_off_is_a_clear_404(tmp_path, serve_dirs):
    from tests.serve.conftest import ServerProcess
    s = ServerProcess(serve_dirs["run"], "--stt", "off", "--tts", "off", "--learn", "off", log_dir=tmp_path)
    try:
        r = httpx.post(s.url + "/v1/audio/speech", json={"input": "hi"}, timeout=30)
        assert_error(r, 404, code="speech_off")
        assert [m["id"] for m in httpx.get(s.url + "/v1/models", timeout=30).json()["data"]] == ["chat"]
    finally:
        s.stop()
