"""The server's Prometheus metrics, kept and rendered by prometheus_client (the serve extra).

Three kinds are enough for a server: counters (only go up), gauges (read at scrape time from a
callback, so they are never stale) and histograms (cumulative buckets + sum + count, so Prometheus can
compute quantiles). Names follow vLLM's (`vllm:time_to_first_token_seconds` ->
`livelm_time_to_first_token_seconds`) so dashboards carry over. Observations come from the engine
reader thread and scrapes from the event loop; prometheus_client's values lock themselves.

Each Metrics has a CollectorRegistry of its own, never the library's global one: two servers in one
process (the tests, a program embedding create_app) count apart and never clash over names, and
/metrics shows the server's series only, as it always has (no process_ or python_ collectors).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# The classic text format that generate_latest writes. (prometheus_client's CONTENT_TYPE_LATEST says
# version=1.0.0 in recent releases; the text is the same for names like ours, and 0.0.4 is what
# /metrics has always answered.)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                   2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class _WithoutCreated:
    """The registry's one collector: our metrics, less the `_created` samples prometheus_client adds to
    counters and histograms (one more series each, with a time nobody graphs, that /metrics never had).
    prometheus_client.disable_created_metrics() would do it for the whole process, other users included."""

    def __init__(self, metrics):
        self.metrics = metrics

    def collect(self):
        for m in self.metrics:
            for family in m.collect():
                family.samples = [s for s in family.samples if not s.name.endswith("_created")]
                yield family


class Metrics:
    """Everything /metrics shows. Gauges read the engine directly at scrape time.

    Counters with labels take them first: `requests.labels(path, status).inc()`."""

    def __init__(self, running=lambda: 0, waiting=lambda: 0, kv=lambda: None):
        def counter(name, help, labels=()):   # registry=None: registered once, below, through the filter
            return Counter(name, help, labels, registry=None)

        def histogram(name, help):
            return Histogram(name, help, buckets=LATENCY_BUCKETS, registry=None)

        def gauge(name, help, read):
            g = Gauge(name, help, registry=None)
            g.set_function(read)
            return g

        self.kv_usage = gauge("livelm_kv_cache_usage_perc", "Fraction of the KV pool's blocks held by sequences.",
                              lambda: (kv() or {}).get("blocks_used", 0) / max((kv() or {}).get("blocks", 1), 1))
        self.prefix_queries = counter("livelm_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.")
        self.prefix_hits = counter("livelm_prefix_cache_hits_total", "Prompt tokens found in the prefix cache.")
        self.preemptions = counter("livelm_num_preemptions_total", "Sequences preempted when the KV pool ran out.")
        self.running = gauge("livelm_num_requests_running", "Sequences holding a KV-cache slot.", running)
        self.waiting = gauge("livelm_num_requests_waiting", "Sequences queued for a KV-cache slot.", waiting)
        # a counter's name is given with its _total, as it is exposed (prometheus_client adds the suffix
        # to the family's name either way)
        self.prompt_tokens = counter("livelm_prompt_tokens_total", "Prompt tokens admitted.")
        self.generation_tokens = counter("livelm_generation_tokens_total", "Tokens sampled.")
        self.requests = counter("livelm_http_requests_total", "HTTP requests answered.", ("path", "status"))
        self.finished = counter("livelm_request_success_total", "Sequences finished.", ("finished_reason",))
        self.ttft = histogram("livelm_time_to_first_token_seconds", "Request arrival to first sampled token.")
        self.itl = histogram("livelm_inter_token_latency_seconds", "Time between consecutive sampled tokens.")
        self.e2e = histogram("livelm_e2e_request_latency_seconds", "Request arrival to last token.")
        self.steps = histogram("livelm_engine_step_seconds", "Duration of one engine step.")
        self.drafts = counter("livelm_learning_drafts_total",
                              "Draft answers made for memory's lookup or the learned adapter's scope.")
        self.learned = counter("livelm_learning_applied_total",
                               "Chat requests answered with a tenant's notes or learned adapter.", ("what",))
        self.engine_restarts = counter("livelm_engine_restarts_total",
                                       "Engine processes started to replace one that died.")
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_WithoutCreated(
            [self.running, self.waiting, self.kv_usage, self.prefix_queries, self.prefix_hits, self.preemptions,
             self.prompt_tokens, self.generation_tokens, self.requests, self.finished,
             self.ttft, self.itl, self.e2e, self.steps, self.drafts, self.learned, self.engine_restarts]))

    def kv_moved(self, before: dict, after: dict) -> None:
        """Count what one engine step did to the KV pool (Engine.kv_stats before and after it)."""
        for counter, key in ((self.prefix_queries, "prefix_query_tokens"), (self.prefix_hits, "prefix_hit_tokens"),
                             (self.preemptions, "preemptions")):
            if after[key] > before[key]:
                counter.inc(after[key] - before[key])

    def render(self) -> bytes:
        """The text exposition format (UTF-8), as /metrics answers it."""
        return generate_latest(self.registry)
