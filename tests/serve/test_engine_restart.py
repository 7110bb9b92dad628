"""A dead engine process is replaced: its requests fail, a new one starts with the same model and
adapters, and after --engine-restarts deaths within the window the server says it is dead."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time

import httpx
import pytest

from livelm.serve.app import create_app
from livelm.serve.engine_client import RestartPolicy
from tests.serve.conftest import ServerProcess
from tests.serve.test_lifecycle import engine_pid, uvicorn_in_thread

MSG = [{"role": "user", "content": "你好"}]


def wait_for(check, seconds: float):
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.1)


def test_restart_policy_backs_off_and_is_bounded():
    p = RestartPolicy(max_restarts=3, window=100.0, backoff=1.0, max_backoff=3.0)
    assert [p.next_delay(now=t) for t in (0, 1, 2)] == [1.0, 2.0, 3.0]   # doubling, capped
    assert p.next_delay(now=50) is None                                  # the budget is spent within the window
    assert p.next_delay(now=100.5) == 3.0   # the first restart left the window; two remain in it
    q = RestartPolicy(max_restarts=2, window=10.0)
    assert q.next_delay(now=0) == 1.0 and q.next_delay(now=1) == 2.0 and q.next_delay(now=5) is None
    assert q.next_delay(now=10.5) == 2.0    # one restart (at 1) is still in the window: the second delay
    assert RestartPolicy(max_restarts=0).next_delay() is None            # restarts off
    with pytest.raises(ValueError):
        RestartPolicy(max_restarts=-1)


def stream_until_killed(url: str, kill) -> list:
    """Start a long stream, call kill() once text flows, and return its events (the read times out, never hangs)."""
    with httpx.Client(timeout=60) as c, c.stream("POST", url + "/v1/chat/completions", json={
            "messages": MSG, "max_tokens": 1900, "ignore_eos": True, "stream": True}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        while '"delta":{"content"' not in next(lines):
            pass
        kill()
        return [ln[6:] if ln == "data: [DONE]" else json.loads(ln[6:]) for ln in lines if ln.startswith("data: ")]


def test_killed_engine_is_restarted_then_the_budget_runs_out(slow_run, tmp_path):
    s = ServerProcess(slow_run, "--feedback-db", tmp_path / "fb.sqlite", "--learn", "off",
                      "--engine-restarts", "1", log_dir=tmp_path)
    try:
        assert s.metric("livelm_engine_restarts_total") == 0
        first = engine_pid(s.proc.pid)
        plain = {}   # a request in flight that has not begun answering (not streamed)
        t = threading.Thread(target=lambda: plain.setdefault("r", httpx.post(
            s.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 1900, "ignore_eos": True},
            timeout=60)), daemon=True)
        t.start()
        wait_for(lambda: s.metric("livelm_num_requests_running") >= 1, 30)
        events = stream_until_killed(s.url, lambda: os.kill(first, signal.SIGKILL))
        # the stream in flight ends with an error event that says what happened
        assert events[-1] == "[DONE]" and events[-2]["error"]["type"] == "server_error"
        assert "engine process exited (exit code -9)" in events[-2]["error"]["message"]
        # the other gets a 503 that says its request was lost and when to retry, not a 500
        t.join(60)
        r = plain["r"]
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_restarting", r.text
        assert "exit code -9" in r.json()["error"]["message"] and r.headers["retry-after"].isdigit()
        # while the new engine starts (1 s backoff, then its start): not ready, but alive
        ready = httpx.get(s.url + "/ready")
        if ready.status_code == 503:   # (a fast machine may be back already)
            assert ready.json()["status"] == "restarting" and ready.headers["retry-after"].isdigit()
            assert httpx.get(s.url + "/live").status_code == 200
            r = httpx.post(s.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 2})
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "engine_restarting" and r.headers["retry-after"].isdigit()
        wait_for(lambda: httpx.get(s.url + "/ready").status_code == 200, 90)
        assert httpx.get(s.url + "/live").json() == {"status": "alive"}
        r = httpx.post(s.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 3, "ignore_eos": True},
                       timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        assert s.metric("livelm_engine_restarts_total") == 1
        second = engine_pid(s.proc.pid)
        assert second != first
        assert "restarting it in 1 s" in s.stderr() and "exit code -9" in s.stderr()   # the warning, with the code

        # the budget (1 within 10 minutes) is spent: the next death is final, and /live says so
        os.kill(second, signal.SIGKILL)
        wait_for(lambda: httpx.get(s.url + "/live").status_code == 503, 30)
        live = httpx.get(s.url + "/live").json()
        assert live["status"] == "dead" and "gave up restarting" in live["message"]
        assert httpx.get(s.url + "/ready").json()["status"] == "error"
        r = httpx.post(s.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_failed"
        assert s.metric("livelm_engine_restarts_total") == 1
        assert s.stop() == 0, s.stderr()
    finally:
        s.stop()


def test_restarted_engine_has_the_adapters_loaded_before(serve_dirs, tmp_path):
    """An adapter loaded live (as the learner does: call("load_adapter", ...)) is loaded into the replacement
    before it takes requests: the same greedy answer before and after the restart."""
    from livelm.sampling import SamplingParams
    app = create_app(serve_dirs["run"], feedback_db=tmp_path / "fb.sqlite", learn=None)
    state = app.state.live

    async def answer(adapter):
        ids = state.tokenizer.encode("hello")
        ticket = state.engine.submit([(ids, SamplingParams.greedy(8, ignore_eos=True), adapter)])
        text = ""
        while True:
            c = await asyncio.wait_for(ticket.queue.get(), 60)
            assert c.error is None, c.error
            text += c.delta
            if c.finish_reason:
                return text

    with uvicorn_in_thread(app) as url:
        wait_for(lambda: httpx.get(url + "/ready").status_code == 200, 60)
        engine = state.engine
        engine.call("load_adapter", "t/v0001", str(serve_dirs["adapter"])).result(60)
        engine.call("load_adapter", "t/v0000", str(serve_dirs["adapter"])).result(60)
        engine.call("unload_adapters", {"t/v0001"}).result(60)   # as the learner does after a newer version
        assert engine.adapters == {"t/v0001": str(serve_dirs["adapter"])}
        before = asyncio.run(answer("t/v0001")), asyncio.run(answer(None))
        assert before[0] != before[1]   # the adapter changes the answer, so the check below means something
        old = engine.process
        old.kill()
        wait_for(lambda: engine.restarting is not None, 10)   # (then a 1 s backoff before the new one starts)
        assert httpx.get(url + "/ready").json()["status"] == "restarting"
        # a version published while no engine runs is only recorded, and the replacement loads it too
        assert engine.call("load_adapter", "t/v0002", str(serve_dirs["adapter"])).result(5) is None
        wait_for(lambda: httpx.get(url + "/ready").status_code == 200, 90)
        assert state.engine is engine and engine.process is not old and engine.restarts == 1
        assert (asyncio.run(answer("t/v0001")), asyncio.run(answer(None))) == before
        assert asyncio.run(answer("t/v0002")) == before[0]   # the same weights under the new name
