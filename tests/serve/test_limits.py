"""Per-key limits (livelm/serve/limits.py): one busy key cannot take the server from the others."""
from __future__ import annotations

import threading

import httpx
import pytest

from livelm.serve.completions import APIError
from livelm.serve.limits import KeyLimits
from tests.serve.conftest import ServerProcess
from tests.serve.test_http_errors import assert_error

MSG = [{"role": "user", "content": "你好 🙂 tell me a long story"}]


def test_concurrency_and_rate_buckets():
    limits = KeyLimits(max_concurrent=2, per_minute=3)
    a1, a2 = limits.acquire("a"), limits.acquire("a")
    with pytest.raises(APIError) as e:
        limits.acquire("a")
    assert e.value.status == 429 and e.value.code == "concurrency_limit_exceeded"
    b = limits.acquire("b")                       # another key is not affected
    a1(), a1()                                     # releasing twice releases once
    assert limits.in_flight == {"a": 1, "b": 1}
    limits.acquire("a")()                          # the third request of "a" this minute
    with pytest.raises(APIError) as e:             # "a" has used its 3 requests of this minute
        limits.acquire("a")
    assert e.value.code == "rate_limit_exceeded" and int(e.value.headers["Retry-After"]) >= 1
    limits.buckets["a"].stamp -= 20                # 20 s later: one token back (3 per minute)
    limits.acquire("a")()
    a2(), b()
    assert limits.in_flight == {}
    with pytest.raises(ValueError, match="positive"):
        KeyLimits(max_concurrent=0)


@pytest.fixture(scope="module")
def limited(slow_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("limited")
    s = ServerProcess(slow_run, "--api-key", "key-a", "--api-key", "key-b", "--max-concurrent-per-key", "1",
                      "--rate-limit-per-key", "30", "--learn", "off", "--max-batch", "4", log_dir=d)
    yield s
    s.stop()


def _post(server, key, **body):
    return httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"messages": MSG, **body}, timeout=120)


def test_a_busy_key_gets_429_and_the_other_key_is_served(limited):
    # key-a streams a long answer; while it runs, key-a's second request is refused and key-b is served
    started = threading.Event()

    def long_stream():
        with httpx.stream("POST", limited.url + "/v1/chat/completions", timeout=120,
                          headers={"Authorization": "Bearer key-a"},
                          json={"messages": MSG, "stream": True, "max_tokens": 400, "ignore_eos": True}) as r:
            for _ in r.iter_lines():
                started.set()
    t = threading.Thread(target=long_stream)
    t.start()
    assert started.wait(60)
    err = assert_error(_post(limited, "key-a", max_tokens=2), 429, code="concurrency_limit_exceeded")
    assert "in flight" in err["message"]
    assert _post(limited, "key-b", max_tokens=2).status_code == 200
    t.join(120)
    # the stream ended: key-a's slot is free again
    assert _post(limited, "key-a", max_tokens=2).status_code == 200


def test_rate_limit_per_key_with_retry_after(limited):
    codes = [_post(limited, "key-b", max_tokens=1).status_code for _ in range(40)]
    assert 200 in codes and codes.count(429) >= 5           # 30 per minute: the bucket ran dry
    r = _post(limited, "key-b", max_tokens=1)
    assert_error(r, 429, code="rate_limit_exceeded")
    assert int(r.headers["Retry-After"]) >= 1
