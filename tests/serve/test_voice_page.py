"""The web page by voice, in headless Chromium with a fake microphone: a spoken question is transcribed,
answered and read aloud, and a spoken correction is stored as a correction."""
from __future__ import annotations

import sqlite3

import pytest

from livelm.voice.stt import error_rate
from tests.serve.test_browser import ARGS, CHROMIUM

QUESTION = "What time do you open?"
CORRECTION = "We open at nine in the morning."


def _wav(tmp_path, text: str):
    from livelm.voice import encode, load_tts
    tts = load_tts("espeak")
    path = tmp_path / f"{abs(hash(text))}.wav"
    path.write_bytes(encode(tts.synthesize(text), tts.rate, "wav"))
    return path


@pytest.fixture
def voice_browser(tmp_path_factory):
    """A browser whose microphone plays a file; the test says which (a new browser per file)."""
    if not CHROMIUM.exists():
        pytest.skip(f"!!! BROWSER TEST SKIPPED: {CHROMIUM} is missing (`make browser`) !!!")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        def launch(wav):
            return p.chromium.launch(executable_path=str(CHROMIUM), args=[
                *ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}%noloop", "--autoplay-policy=no-user-gesture-required"])
        browsers = []
        yield lambda wav: browsers.append(launch(wav)) or browsers[-1]
        for b in browsers:
            b.close()


def _speak_into(page, button: str, seconds: float) -> None:
    """Press the microphone, let the fake capture play the file, press again."""
    page.click(button)
    page.wait_for_selector(f"{button}.recording")
    page.wait_for_timeout(int(seconds * 1000))
    page.click(button)


def test_ask_by_voice_hear_the_answer_and_correct_it_by_voice(voice_browser, server, tmp_path):
    browser = voice_browser(_wav(tmp_path, QUESTION))
    page = browser.new_page(viewport={"width": 390, "height": 800})
    errors, speech_requests = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: r.url.endswith("/v1/audio/speech") and speech_requests.append(r.post_data_json))
    page.goto(server.url + "/")
    page.wait_for_selector("#mic:not([hidden])")
    # speech models are buttons, not entries of the chat-model picker
    assert page.locator("#model option").all_inner_texts() == ["chat", "sharp (adapter)"]
    page.click("#speak-toggle")
    assert page.get_attribute("#speak-toggle", "aria-pressed") == "true"

    _speak_into(page, "#mic", 2.5)
    page.wait_for_selector(".msg.user", timeout=60_000)          # transcribed and sent at once
    heard = page.inner_text(".msg.user .text")
    assert error_rate(QUESTION, heard) <= 0.5, heard
    page.wait_for_selector(".msg.assistant .tools", timeout=60_000)
    answer = page.inner_text(".msg.assistant .text")
    page.wait_for_function("Number(document.body.dataset.spoken || 0) >= 1", timeout=60_000)
    spoken = "".join(r["input"] for r in speech_requests)
    assert answer and spoken.strip() == answer.strip(), (spoken, answer)   # every sentence, in order
    assert not errors, errors

    # a spoken correction fills the correction box; submitted, it is stored like a typed one
    page2 = voice_browser(_wav(tmp_path, CORRECTION)).new_page()
    page2.goto(server.url + "/")
    page2.wait_for_selector("#mic:not([hidden])")
    page2.fill("#input", QUESTION)
    page2.keyboard.press("Enter")
    page2.wait_for_selector(".msg.assistant .tools", timeout=60_000)
    page2.click(".msg.assistant .correct")
    mic = ".msg.assistant .correction .mic"
    page2.wait_for_selector(f"{mic}:not([hidden])")
    page2.fill(".msg.assistant .correction textarea", "")
    _speak_into(page2, mic, 3.0)
    page2.wait_for_function("document.querySelector('.msg.assistant .correction textarea').value.length > 5",
                            timeout=60_000)
    said = page2.input_value(".msg.assistant .correction textarea")
    assert error_rate(CORRECTION, said) <= 0.5, said
    page2.click(".msg.assistant .submit-correction")
    page2.wait_for_selector("text=correction saved")
    db = sqlite3.connect(server.feedback_db)
    kind, correction = db.execute("SELECT kind, correction FROM feedback ORDER BY id DESC LIMIT 1").fetchone()
    assert kind == "correction" and correction == said
