"""GET /ready (send traffic?) and GET /live (restart?): loading, ready, draining, a dead engine, a failed load."""
from __future__ import annotations

import threading
import time

import httpx

from livelm.serve.app import create_app
from tests.serve.test_lifecycle import uvicorn_in_thread


def statuses(url: str) -> dict:
    return {p: (r.status_code, r.json()["status"]) for p in ("/health", "/ready", "/live")
            for r in [httpx.get(url + p, timeout=10)]}


def wait_for(check, seconds: float = 60):
    deadline = time.time() + seconds
    while not check():
        assert time.time() < deadline
        time.sleep(0.05)


def test_ready_and_live_through_a_servers_life(serve_dirs, tmp_path):
    gate = threading.Event()

    def slow_load(run, adapters, device):
        from livelm.runs import load
        gate.wait(60)
        return load(run, adapters, device)

    app = create_app(serve_dirs["run"], feedback_db=tmp_path / "fb.sqlite", load=slow_load,
                     engine_restarts=0)   # restarts off: a killed engine is final (see test_engine_restart.py)
    state = app.state.live
    with uvicorn_in_thread(app) as url:
        # loading: not ready, but alive (a restart would only start the loading over)
        assert statuses(url) == {"/health": (503, "loading"), "/ready": (503, "loading"), "/live": (200, "alive")}
        assert httpx.get(url + "/ready").headers["retry-after"].isdigit()
        assert httpx.get(url + "/v1/models").status_code == 200    # answers while loading: poll /ready instead
        gate.set()
        wait_for(lambda: httpx.get(url + "/ready").status_code == 200)
        assert statuses(url) == {"/health": (200, "ok"), "/ready": (200, "ready"), "/live": (200, "alive")}

        state.draining = True     # what SIGTERM sets: no new traffic, but the in-flight work goes on
        assert statuses(url)["/ready"] == (503, "shutting_down") and statuses(url)["/live"] == (200, "alive")
        state.draining = False

        state.engine.process.kill()   # the OOM killer: only a restart brings the server back
        wait_for(lambda: httpx.get(url + "/live").status_code == 503, 30)
        r = httpx.get(url + "/live").json()
        assert r["status"] == "dead" and "engine process" in r["message"]
        assert statuses(url)["/ready"] == (503, "error")
        text = httpx.get(url + "/metrics").text
        assert 'livelm_http_requests_total{path="/live",status="503"}' in text
        assert 'livelm_http_requests_total{path="/ready",status="200"}' in text


def test_failed_load_is_not_alive(serve_dirs, tmp_path):
    def broken(run, adapters, device):
        raise RuntimeError("disk on fire")
    app = create_app(serve_dirs["run"], feedback_db=tmp_path / "fb.sqlite", load=broken)
    with uvicorn_in_thread(app) as url:
        wait_for(lambda: httpx.get(url + "/live").status_code == 503, 10)
        assert statuses(url) == {"/health": (503, "error"), "/ready": (503, "error"), "/live": (503, "dead")}
        assert "disk on fire" in httpx.get(url + "/live").json()["message"]
