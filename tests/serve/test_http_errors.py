"""Raw HTTP: every error status, in OpenAI's error shape, for the bodies real clients send by mistake."""
from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.serve.conftest import ServerProcess, sse_events

MSG = [{"role": "user", "content": "你好 🙂"}]


def post(server, path, body=None, content=None, headers=None, timeout=60):
    return httpx.post(server.url + path, json=body, content=content, headers=headers, timeout=timeout)


def assert_error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code, err
    if param:
        assert err["param"] == param, err
    return err


@pytest.mark.parametrize("body, param", [
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages"),
    ({"messages": MSG, "temperature": -0.5}, "temperature"),
    ({"messages": MSG, "temperature": "hot"}, "temperature"),
    ({"messages": MSG, "top_p": 0}, "top_p"),
    ({"messages": MSG, "max_tokens": 0}, "max_tokens"),
    ({"messages": MSG, "n": 0}, "n"),
    ({"messages": MSG, "stop": [""]}, "stop"),
    ({"messages": MSG, "stop": ["a"] * 50}, "stop"),
    ({"messages": MSG, "presence_penalty": 3}, "presence_penalty"),
    ({"messages": MSG, "seed": "abc"}, "seed"),
    ({"messages": MSG, "top_logprobs": 99, "logprobs": True}, "top_logprobs"),
    ({"messages": MSG, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": MSG, "max_tokens": 500}, "max_tokens"),            # prompt + 500 > 128-token window
    ({"messages": [{"role": "user", "content": "长城 " * 300}]}, "messages"),   # prompt alone too long
    ({"messages": MSG, "logit_bias": {"5": 100}}, "logit_bias"),      # would change the answer: never ignored
    ({"messages": MSG, "functions": [{"name": "f"}]}, "functions"),    # the deprecated form: use tools
    ({"messages": MSG, "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
    ({"messages": MSG, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "strin"}}}},
     "response_format"),
])
def test_400_invalid_parameters(server, body, param):
    assert_error(post(server, "/v1/chat/completions", body), 400, param=param)


def test_400_context_window_is_never_truncated(server):
    err = assert_error(post(server, "/v1/completions", {"prompt": "abc " * 200}), 400, code="context_length_exceeded")
    assert "128" in err["message"]
    assert_error(post(server, "/v1/completions", {"prompt": [99999]}), 400, param="prompt")
    assert_error(post(server, "/v1/completions", {"prompt": []}), 400, param="prompt")
    assert_error(post(server, "/v1/completions", {"prompt": "x", "echo": True}), 400, param="echo")
    ok = {"prompt": "x", "max_tokens": 1, "user": "someone", "logit_bias": None, "response_format": {"type": "text"}}
    assert post(server, "/v1/completions", ok).status_code == 200


def test_400_not_an_object_and_lone_surrogate(server):
    assert_error(post(server, "/v1/chat/completions", content=b"[1, 2]"), 400)
    lone = b'{"messages":[{"role":"user","content":"\\ud800 x"}]}'
    assert_error(post(server, "/v1/chat/completions", content=lone), 400)
    # a correctly paired surrogate escape is an ordinary emoji
    pair = b'{"messages":[{"role":"user","content":"\\ud83d\\ude00"}],"max_tokens":2}'
    assert post(server, "/v1/chat/completions", content=pair).status_code == 200


def test_404_unknown_model_and_route(server):
    assert_error(post(server, "/v1/chat/completions", {"model": "nope", "messages": MSG}), 404,
                 code="model_not_found", param="model")
    assert_error(httpx.get(server.url + "/v1/models/nope"), 404)
    assert_error(httpx.get(server.url + "/v1/nothing-here"), 404)
    assert_error(httpx.get(server.url + "/v1/chat/completions"), 405)


def test_413_huge_bodies(server):
    huge = json.dumps({"messages": [{"role": "user", "content": "x" * (5 << 20)}]}).encode()
    assert_error(post(server, "/v1/chat/completions", content=huge), 413, code="request_too_large")

    def chunked():   # no Content-Length: the limit applies while reading
        for _ in range(64):
            yield b" " * (128 << 10)
    assert_error(post(server, "/v1/chat/completions", content=chunked()), 413)
    assert httpx.get(server.url + "/health").status_code == 200


@pytest.mark.parametrize("raw", [
    b'{"messages": [{"role": "user", "content": "hi"}',          # truncated
    b"{'messages': []}",                                           # not JSON
    b"",                                                           # empty
    b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
    b'{"messages": [{"role": "user", "content": "\xff\xfe bad"}]}',   # invalid UTF-8
    '{"messages": [{"role": "user", "content": "你好"}]}'.encode("gbk"),
])
def test_422_malformed_json_and_bad_utf8(server, raw):
    assert_error(post(server, "/v1/chat/completions", content=raw), 422, code="invalid_json")


def test_metrics_and_health(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    text = httpx.get(server.url + "/metrics").text
    for name in ("livelm_num_requests_running", "livelm_num_requests_waiting", "livelm_generation_tokens_total",
                 "livelm_time_to_first_token_seconds_bucket", "livelm_inter_token_latency_seconds_bucket",
                 "livelm_e2e_request_latency_seconds_count"):
        assert name in text
    assert 'livelm_http_requests_total{path="/v1/chat/completions",status="400"}' in text


# ---- a server with API keys and a tiny queue, on the slow model ----------------------------
@pytest.fixture(scope="module")
def guarded(slow_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("guarded")
    (d / "keys").write_text("# one per line\nkey-alice\nkey-bob\n")
    s = ServerProcess(slow_run, "--api-key-file", d / "keys", "--max-batch", "1", "--max-queue", "1",
                      "--feedback-db", d / "fb.sqlite", log_dir=d)
    yield s
    s.stop()


ALICE = {"Authorization": "Bearer key-alice"}
BOB = {"Authorization": "Bearer key-bob"}


def test_401_missing_or_wrong_key(guarded):
    body = {"messages": MSG, "max_tokens": 2}
    err = assert_error(post(guarded, "/v1/chat/completions", body), 401, code="invalid_api_key")
    assert err["type"] == "authentication_error"
    assert_error(post(guarded, "/v1/chat/completions", body, headers={"Authorization": "Bearer key-eve"}), 401)
    assert_error(post(guarded, "/v1/chat/completions", body, headers={"Authorization": "key-alice"}), 401)
    assert_error(httpx.get(guarded.url + "/v1/models"), 401)
    assert post(guarded, "/v1/chat/completions", body, headers=ALICE).status_code == 200
    assert httpx.get(guarded.url + "/health").status_code == 200      # open, like vLLM's
    assert httpx.get(guarded.url + "/").status_code == 200            # the page asks for the key itself


def open_stream(url, body, headers, first_chunk: threading.Event, holder: dict):
    """Stream in a thread; set `first_chunk` once content flows; stop when holder['stop'] is set."""
    with httpx.Client(timeout=60) as c, c.stream("POST", url + "/v1/completions", json=body, headers=headers) as r:
        holder["status"] = r.status_code
        for line in r.iter_lines():
            if line.startswith("data: {"):
                first_chunk.set()
            if holder.get("stop"):
                return


def test_429_when_the_queue_is_full(guarded):
    """max-batch 1, max-queue 1: one running, one waiting, the third is refused with Retry-After."""
    long = {"prompt": "tell me everything", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    holders, threads = [], []
    for i in range(2):
        started, holder = threading.Event(), {}
        t = threading.Thread(target=open_stream, args=(guarded.url, long, ALICE, started, holder), daemon=True)
        t.start()
        holders.append(holder)
        threads.append(t)
        if i == 0:
            assert started.wait(60), "the first stream never produced output"
    deadline = time.time() + 30
    while guarded.metric("livelm_num_requests_waiting") < 1 and time.time() < deadline:
        time.sleep(0.05)
    r = post(guarded, "/v1/completions", {"prompt": "x", "max_tokens": 1}, headers=ALICE)
    err = assert_error(r, 429, code="queue_full")
    assert err["type"] == "rate_limit_error" and r.headers["retry-after"].isdigit()
    import openai
    with openai.OpenAI(base_url=guarded.url + "/v1", api_key="key-bob", max_retries=0) as sdk:
        with pytest.raises(openai.RateLimitError):
            sdk.completions.create(model="slow", prompt="x", max_tokens=1)
    for h in holders:
        h["stop"] = True
    for t in threads:
        t.join(30)
    # both streams were cancelled by their disconnects; the server is idle again
    deadline = time.time() + 10
    while guarded.metric("livelm_num_requests_running") + guarded.metric("livelm_num_requests_waiting") > 0:
        assert time.time() < deadline, "cancelled streams still hold the engine"
        time.sleep(0.05)


def test_feedback_belongs_to_the_key_that_sent_it(guarded):
    item = {"kind": "correction", "conversation": MSG, "answer": "wrong", "correction": "对的答案 ✅"}
    r = post(guarded, "/v1/feedback", item, headers=ALICE)
    assert r.status_code == 200 and r.json()["id"] >= 1 and "tenant" not in r.json()
    post(guarded, "/v1/feedback", {"kind": "up", "conversation": MSG, "answer": "good"}, headers=BOB)
    mine = httpx.get(guarded.url + "/v1/feedback", headers=ALICE).json()["data"]
    theirs = httpx.get(guarded.url + "/v1/feedback", headers=BOB).json()["data"]
    assert [i["kind"] for i in mine] == ["correction"] and mine[0]["correction"] == "对的答案 ✅"
    assert [i["kind"] for i in theirs] == ["up"]
    assert_error(httpx.get(guarded.url + "/v1/feedback"), 401)
    assert_error(post(guarded, "/v1/feedback", {"kind": "correction", "conversation": MSG}, headers=ALICE), 400)
    assert_error(post(guarded, "/v1/feedback", {"kind": "meh", "conversation": MSG}, headers=ALICE), 400)
    assert_error(post(guarded, "/v1/feedback", {"kind": "up", "conversation": MSG, "answer": "a",
                                                "model": "nope"}, headers=ALICE), 404)


def test_disconnected_stream_frees_its_slot_within_a_second(guarded):
    body = {"prompt": "go on", "max_tokens": 1800, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", guarded.url + "/v1/completions", json=body, headers=BOB) as r:
            lines = r.iter_lines()   # (breaking out of a for loop over it would already close the connection)
            for _ in range(3):
                while not next(lines).startswith('data: {"id"'):
                    pass
            assert guarded.metric("livelm_num_requests_running") == 1
            closed = time.perf_counter()
        # leaving the block closes the connection mid-stream
    while guarded.metric("livelm_num_requests_running") > 0:
        assert time.perf_counter() - closed < 1.0, "the slot was not freed within a second"
        time.sleep(0.02)
    assert guarded.metric('livelm_request_success_total{finished_reason="cancelled"}') >= 1
    # its KV blocks went back to the pool (a prefix kept cached is not held by anyone)
    while guarded.metric("livelm_kv_cache_usage_perc") > 0:
        assert time.perf_counter() - closed < 2.0, "the cancelled stream's KV blocks were not given back"
        time.sleep(0.02)
    # and the freed slot serves the next request at once
    r = post(guarded, "/v1/completions", {"prompt": "x", "max_tokens": 3, "ignore_eos": True}, headers=BOB)
    assert r.json()["usage"]["completion_tokens"] == 3


def test_disconnected_non_streaming_request_is_cancelled(guarded):
    body = {"prompt": "go on", "max_tokens": 1800, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        post(guarded, "/v1/completions", body, headers=BOB, timeout=httpx.Timeout(60, read=1.5))
    gone = time.perf_counter()
    while guarded.metric("livelm_num_requests_running") > 0:
        assert time.perf_counter() - gone < 1.0, "the abandoned request still holds its slot"
        time.sleep(0.02)


def test_sse_format_raw(server):
    body = {"messages": MSG, "max_tokens": 6, "seed": 4, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 6
    assert events[-3]["choices"][0]["finish_reason"] == "length"
