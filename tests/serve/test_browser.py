"""The web chat page in headless Chromium: Chinese in, streamed answer out, 👎 and a correction stored."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("LIVELM_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"!!! BROWSER TEST SKIPPED: {CHROMIUM} is missing. Install Debian's chromium "
                    f"(`make browser`, or `apt-get install chromium`) to test the web page. !!!")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def test_chat_page_streams_chinese_and_stores_a_correction(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 390, "height": 800})   # a phone-sized window
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length == 2")
    assert page.locator("#model option").all_inner_texts() == ["chat", "sharp (adapter)"]

    # streaming: record every text the answer bubble shows, as it grows
    page.evaluate("""() => {
        window.seen = [];
        new MutationObserver(() => {
            const t = document.querySelector('.msg.assistant .text');
            if (t) window.seen.push(t.textContent);
        }).observe(document.querySelector('#log'), {subtree: true, childList: true, characterData: true});
    }""")
    page.click("#settings-toggle")
    page.fill("#system", "你是一个乐于助人的助手。")
    page.click("#settings-toggle")
    page.fill("#input", "你好！长城有多长？🙂")
    page.keyboard.press("Enter")
    page.wait_for_selector(".msg.assistant .tools", timeout=60_000)
    assert page.locator(".msg.user .text").inner_text() == "你好！长城有多长？🙂"
    answer = page.evaluate("document.querySelector('.msg.assistant .text').textContent")
    seen = [s for s in page.evaluate("window.seen") if s]
    assert answer and len(set(seen)) >= 2, "the answer did not arrive in pieces"
    assert all(answer.startswith(s) for s in seen)

    page.click(".msg.assistant .down")
    page.wait_for_selector(".msg.assistant .correction:not([hidden])")
    page.fill(".msg.assistant .correction textarea", "长城全长约两万一千公里。")
    page.click(".msg.assistant .submit-correction")
    page.wait_for_selector("text=correction saved")
    assert not errors, errors

    db = sqlite3.connect(server.feedback_db)
    rows = db.execute("SELECT kind, conversation, answer, correction, model FROM feedback ORDER BY id").fetchall()
    kinds = [r[0] for r in rows[-2:]]
    assert kinds == ["down", "correction"]
    kind, conversation, stored_answer, correction, model = rows[-1]
    assert correction == "长城全长约两万一千公里。" and model == "chat"
    assert "你好！长城有多长？🙂" in conversation and "乐于助人" in conversation
    assert stored_answer == answer


def test_stop_and_regenerate(browser, server):
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length == 2")
    page.select_option("#model", "sharp")
    page.fill("#input", "Tell me a long story, 讲一个长故事。")
    page.click("#send")
    for attempt in range(5):
        page.wait_for_selector(".msg.assistant .text:not(:empty)")
        # click Stop in the same JS turn that checks the answer is still streaming
        stopped_mid_answer = page.evaluate("""() => {
            const busy = !document.querySelector('#stop').hidden;
            if (busy) document.querySelector('#stop').click();
            return busy; }""")
        page.wait_for_selector(".msg.assistant .tools")
        if stopped_mid_answer:
            break
        page.click(".msg.assistant .regenerate")   # it finished first: ask again and be quicker
    assert stopped_mid_answer, "every answer finished before Stop could be clicked"
    assert page.locator(".msg.assistant .meta").inner_text() == "stopped"
    assert page.locator("#send").is_visible()
    # the server cancelled the generation when the page dropped the stream
    import time
    deadline = time.time() + 5
    while server.metric("livelm_num_requests_running") > 0:
        assert time.time() < deadline
        time.sleep(0.05)
    page.click(".msg.assistant .regenerate")
    page.wait_for_selector(".msg.assistant .tools", timeout=60_000)
    assert page.locator(".msg.assistant").count() == 1 and page.locator(".msg.user").count() == 1
    page.click(".msg.assistant .up")
    page.wait_for_selector("text=✓ thanks")
