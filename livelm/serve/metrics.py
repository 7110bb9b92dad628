"""Prometheus metrics in the text exposition format, without a client library.

Three kinds are enough for a server: counters (only go up), gauges (read at
scrape time from a callback, so they are never stale) and histograms
(cumulative buckets + sum + count, so Prometheus can compute quantiles).
Names follow vLLM's (`vllm:time_to_first_token_seconds` -> `livelm_time_to_first_token_seconds`)
so dashboards carry over. Observations come from the engine reader thread and
scrapes from the event loop, hence one lock.
"""
from __future__ import annotations

import bisect
import math
import threading

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                   2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


def _fmt(v: float) -> str:
    v = float(v)
    if v == math.inf:
        return "+Inf"
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Counter:
    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help, labels
        self.values: dict[tuple[str, ...], float] = {} if labels else {(): 0.0}
        self.lock = threading.Lock()

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        with self.lock:
            self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self.lock:
            for labels, v in sorted(self.values.items()):
                out.append(f"{self.name}{_labels(self.label_names, labels)} {_fmt(v)}")
        return out


class Gauge:
    def __init__(self, name: str, help: str, read):
        self.name, self.help, self.read = name, help, read

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {_fmt(self.read())}"]


class Histogram:
    def __init__(self, name: str, help: str, buckets=LATENCY_BUCKETS):
        self.name, self.help = name, help
        self.bounds = list(buckets)
        self.counts = [0] * (len(self.bounds) + 1)   # last one is +Inf
        self.sum, self.n = 0.0, 0
        self.lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self.lock:
            self.counts[bisect.bisect_left(self.bounds, value)] += 1
            self.sum += value
            self.n += 1

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self.lock:
            running = 0
            for bound, c in zip(self.bounds + [math.inf], self.counts):
                running += c
                out.append(f'{self.name}_bucket{{le="{_fmt(bound)}"}} {running}')
            out.append(f"{self.name}_sum {_fmt(self.sum)}")
            out.append(f"{self.name}_count {self.n}")
        return out


class Metrics:
    """Everything /metrics shows. Gauges read the engine directly at scrape time."""

    def __init__(self, running=lambda: 0, waiting=lambda: 0):
        self.running = Gauge("livelm_num_requests_running", "Sequences holding a KV-cache slot.", running)
        self.waiting = Gauge("livelm_num_requests_waiting", "Sequences queued for a KV-cache slot.", waiting)
        self.prompt_tokens = Counter("livelm_prompt_tokens_total", "Prompt tokens admitted.")
        self.generation_tokens = Counter("livelm_generation_tokens_total", "Tokens sampled.")
        self.requests = Counter("livelm_http_requests_total", "HTTP requests answered.", ("path", "status"))
        self.finished = Counter("livelm_request_success_total", "Sequences finished.", ("finished_reason",))
        self.ttft = Histogram("livelm_time_to_first_token_seconds", "Request arrival to first sampled token.")
        self.itl = Histogram("livelm_inter_token_latency_seconds", "Time between consecutive sampled tokens.")
        self.e2e = Histogram("livelm_e2e_request_latency_seconds", "Request arrival to last token.")
        self.steps = Histogram("livelm_engine_step_seconds", "Duration of one engine step.")
        self.drafts = Counter("livelm_learning_drafts_total",
                              "Draft answers made for memory's lookup or the learned adapter's scope.")
        self.learned = Counter("livelm_learning_applied_total",
                               "Chat requests answered with a tenant's notes or learned adapter.", ("what",))

    def render(self) -> str:
        parts = [self.running, self.waiting, self.prompt_tokens, self.generation_tokens, self.requests,
                 self.finished, self.ttft, self.itl, self.e2e, self.steps, self.drafts, self.learned]
        return "\n".join(line for m in parts for line in m.render()) + "\n"
