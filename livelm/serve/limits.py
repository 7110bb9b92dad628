"""Per-key limits: how many requests one API key may have in flight, and how many it may start per minute.

One busy client must not take every engine slot from the others. Each key (its tenant: a hash of the
key, never the key itself) gets

    concurrency  at most N generation requests at once (streams included, until their last byte)
    rate         at most R requests per minute, as a token bucket: R/60 tokens a second, R at most

and a request over either limit is answered 429 with Retry-After (seconds until a slot or a token is
free, at least 1), in OpenAI's error shape, before any work is done. Both are off (None) by default.
The counters live in this process only: one `livelm serve` is one process.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from livelm.serve.completions import APIError


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class KeyLimits:
    max_concurrent: int | None = None     # requests in flight per key
    per_minute: float | None = None       # requests started per key per minute
    in_flight: dict[str, int] = field(default_factory=dict)
    buckets: dict[str, _Bucket] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("max_concurrent", "per_minute"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive (or unset for no limit)")

    def _take_token(self, tenant: str, now: float) -> None:
        if self.per_minute is None:
            return
        rate = self.per_minute / 60.0
        b = self.buckets.get(tenant) or _Bucket(tokens=self.per_minute, stamp=now)
        b.tokens = min(self.per_minute, b.tokens + (now - b.stamp) * rate)
        b.stamp = now
        self.buckets[tenant] = b
        if b.tokens < 1:
            wait = math.ceil((1 - b.tokens) / rate)
            raise APIError(429, f"rate limit: at most {self.per_minute:g} requests per minute per API key; "
                                f"retry in {wait} s", type="rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(max(1, wait))})
        b.tokens -= 1

    def acquire(self, tenant: str):
        """Count one request of `tenant` until the returned function is called (once or more: it releases
        once), or raise a 429 APIError. A streamed answer releases when its stream ends."""
        if self.max_concurrent is not None and self.in_flight.get(tenant, 0) >= self.max_concurrent:
            raise APIError(429, f"this API key already has {self.max_concurrent} requests in flight (the limit "
                                f"per key); wait for one to finish", type="rate_limit_error",
                           code="concurrency_limit_exceeded", headers={"Retry-After": "1"})
        self._take_token(tenant, time.monotonic())
        self.in_flight[tenant] = self.in_flight.get(tenant, 0) + 1
        released = False

        def release():
            nonlocal released
            if not released:
                released = True
                self.in_flight[tenant] -= 1
                if not self.in_flight[tenant]:
                    del self.in_flight[tenant]
        return release
