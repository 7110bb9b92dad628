"""Startup (503 while the model loads) and shutdown (in-flight work finishes, then a bounded grace)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time

import httpx
import openai
import pytest

from livelm.serve.app import create_app
from tests.serve.conftest import ServerProcess

MSG = [{"role": "user", "content": "你好"}]


@contextlib.contextmanager
def uvicorn_in_thread(app):
    """The app on a free loopback port in this process (uvicorn skips signal handlers off the main thread)."""
    import uvicorn
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def test_503_while_loading_then_ready(serve_dirs, tmp_path):
    gate = threading.Event()

    def slow_load(run, adapters, device):
        from livelm.runs import load
        gate.wait(60)
        return load(run, adapters, device)

    app = create_app(serve_dirs["run"], feedback_db=tmp_path / "fb.sqlite", load=slow_load)
    with uvicorn_in_thread(app) as url:
        r = httpx.get(url + "/health")
        assert r.status_code == 503 and r.json()["status"] == "loading" and "retry-after" in r.headers
        r = httpx.post(url + "/v1/chat/completions", json={"messages": MSG})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
        assert r.headers["retry-after"].isdigit()
        with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as sdk:
            with pytest.raises(openai.InternalServerError):
                sdk.chat.completions.create(model="chat", messages=MSG)
            assert [m.id for m in sdk.models.list()] == ["chat"]   # known before the weights are
            gate.set()
            deadline = time.time() + 60
            while httpx.get(url + "/health").status_code != 200:
                assert time.time() < deadline
                time.sleep(0.05)
            r = sdk.chat.completions.create(model="chat", messages=MSG, max_tokens=3, extra_body={"ignore_eos": True})
            assert r.usage.completion_tokens == 3


def test_load_failure_is_reported(serve_dirs, tmp_path):
    def broken(run, adapters, device):
        raise RuntimeError("disk on fire")
    app = create_app(serve_dirs["run"], feedback_db=tmp_path / "fb.sqlite", load=broken)
    with uvicorn_in_thread(app) as url:
        deadline = time.time() + 10
        while (r := httpx.get(url + "/health")).json()["status"] == "loading":
            assert time.time() < deadline
            time.sleep(0.02)
        assert r.status_code == 503 and "disk on fire" in r.json()["message"]
        r = httpx.post(url + "/v1/chat/completions", json={"messages": MSG})
        assert r.status_code == 503 and "disk on fire" in r.json()["error"]["message"]


def test_bad_run_exits_with_a_message(tmp_path):
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "livelm.cli", "serve", str(tmp_path), "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "not a livelm run" in p.stderr and p.stdout == ""


@pytest.mark.slow
def test_graceful_shutdown(slow_run, tmp_path):
    """SIGTERM: a short in-flight stream completes; a long one gets an error event after the grace period;
    new requests are refused; the process exits 0."""
    s = ServerProcess(slow_run, "--shutdown-timeout", "5", "--feedback-db", tmp_path / "fb.sqlite", log_dir=tmp_path)
    try:
        long_started, results = threading.Event(), {}

        def long_stream():
            with openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=60) as sdk:
                stream = sdk.completions.create(model="slow", prompt="go", max_tokens=1900, stream=True,
                                                extra_body={"ignore_eos": True})
                text = ""
                try:
                    for chunk in stream:
                        text += chunk.choices[0].text if chunk.choices else ""
                        long_started.set()
                except openai.APIError as e:
                    results["long"] = e
                else:
                    results["long"] = text

        t = threading.Thread(target=long_stream, daemon=True)
        t.start()
        assert long_started.wait(60)
        with httpx.Client(timeout=60) as c, c.stream("POST", s.url + "/v1/chat/completions", json={
                "messages": MSG, "max_tokens": 3, "ignore_eos": True, "stream": True}) as r:
            it = r.iter_lines()
            first = next(it)                                  # the role chunk: the request is in flight
            assert first.startswith("data: ")
            signalled = time.monotonic()
            s.kill_with(signal.SIGTERM)
            rest = [ln for ln in it if ln]
        assert rest[-1] == "data: [DONE]" and '"finish_reason":"length"' in rest[-2]   # finished normally
        assert '"error"' not in "".join(rest)
        # new work is refused while draining (503) or the listener is already closed
        try:
            r = httpx.post(s.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 1}, timeout=5)
            assert r.status_code == 503
        except httpx.TransportError:
            pass
        t.join(30)
        assert isinstance(results.get("long"), openai.APIError), results
        assert "shutting down" in str(results["long"])
        assert 4.5 < time.monotonic() - signalled < 20
        assert s.proc.wait(30) == 0, s.stderr()
    finally:
        s.stop()


def test_error_event_after_streaming_began_raw(slow_run, tmp_path):
    """The raw form of the same: `data: {"error": ...}` then `data: [DONE]`, with the grace at zero."""
    s = ServerProcess(slow_run, "--shutdown-timeout", "0", "--feedback-db", tmp_path / "fb.sqlite", log_dir=tmp_path)
    try:
        with httpx.Client(timeout=60) as c, c.stream("POST", s.url + "/v1/chat/completions", json={
                "messages": MSG, "max_tokens": 1900, "ignore_eos": True, "stream": True}) as r:
            lines = r.iter_lines()
            while '"delta":{"content"' not in next(lines):   # past the role chunk: text is flowing
                pass
            s.kill_with(signal.SIGINT)
            events = [ln[6:] if ln == "data: [DONE]" else json.loads(ln[6:]) for ln in lines if ln.startswith("data: ")]
        assert events[-1] == "[DONE]"
        err = events[-2]["error"]
        assert err["code"] == "shutting_down" and err["type"] == "server_error"
        assert s.proc.wait(30) == 0
    finally:
        s.stop()


def engine_pid(server_pid: int) -> int:
    """The engine process among the server's children (the other is multiprocessing's resource tracker)."""
    from pathlib import Path
    kids = [int(p) for t in Path(f"/proc/{server_pid}/task").iterdir()
            for p in (t / "children").read_text().split()]
    engines = [k for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]
    assert len(engines) == 1, kids
    return engines[0]


def test_engine_process_death_fails_requests_and_health(slow_run, tmp_path):
    """The model runs in its own process. If it dies (OOM killer, a crash), a stream in flight ends with an
    error event, /health says why, new requests get 503, and the server still exits cleanly."""
    s = ServerProcess(slow_run, "--feedback-db", tmp_path / "fb.sqlite", "--engine-restarts", "0",
                      log_dir=tmp_path)   # restarts off: the death is final
    try:
        assert httpx.get(s.url + "/health").json() == {"status": "ok"}
        with httpx.Client(timeout=60) as c, c.stream("POST", s.url + "/v1/chat/completions", json={
                "messages": MSG, "max_tokens": 1900, "ignore_eos": True, "stream": True}) as r:
            lines = r.iter_lines()
            while '"delta":{"content"' not in next(lines):
                pass
            os.kill(engine_pid(s.proc.pid), signal.SIGKILL)
            events = [ln[6:] if ln == "data: [DONE]" else json.loads(ln[6:]) for ln in lines if ln.startswith("data: ")]
        assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "internal_error"
        assert "engine process exited" in events[-2]["error"]["message"]
        h = httpx.get(s.url + "/health")
        assert h.status_code == 503 and "engine process exited" in h.json()["message"]
        r = httpx.post(s.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_failed"
        assert s.stop() == 0, s.stderr()
    finally:
        s.stop()


def test_cli_has_serve():
    from livelm.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert "serve" in sub.choices
    help_text = sub.choices["serve"].format_help()
    for flag in ("--adapter", "--host", "--port", "--api-key", "--api-key-file", "--max-batch", "--max-queue",
                 "--max-tokens-limit", "--feedback-db"):
        assert flag in help_text
