"""/metrics's text, without a server: the names, kinds and labels dashboards rely on, per-app registries."""
import pytest

from livelm.serve.metrics import Metrics

KINDS = {"livelm_num_requests_running": "gauge", "livelm_num_requests_waiting": "gauge",
         "livelm_prompt_tokens_total": "counter", "livelm_generation_tokens_total": "counter",
         "livelm_http_requests_total": "counter", "livelm_request_success_total": "counter",
         "livelm_time_to_first_token_seconds": "histogram", "livelm_inter_token_latency_seconds": "histogram",
         "livelm_e2e_request_latency_seconds": "histogram", "livelm_engine_step_seconds": "histogram",
         "livelm_learning_drafts_total": "counter", "livelm_learning_applied_total": "counter",
         "livelm_kv_cache_usage_perc": "gauge", "livelm_prefix_cache_queries_total": "counter",
         "livelm_prefix_cache_hits_total": "counter", "livelm_num_preemptions_total": "counter",
         "livelm_engine_restarts_total": "counter"}


def samples(m: Metrics) -> dict[str, float]:
    return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1])
            for ln in m.render().decode().splitlines() if ln and not ln.startswith("#")}


def test_names_kinds_and_values():
    m = Metrics(running=lambda: 3, waiting=lambda: 1, kv=lambda: {"blocks": 8, "blocks_used": 2})
    zero = dict(prefix_query_tokens=0, prefix_hit_tokens=0, preemptions=0)
    m.kv_moved(zero, dict(prefix_query_tokens=40, prefix_hit_tokens=32, preemptions=1))
    m.prompt_tokens.inc(7)
    m.generation_tokens.inc()
    m.requests.labels("/v1/chat/completions", "400").inc()
    m.requests.labels("/v1/chat/completions", "400").inc()
    m.finished.labels("stop").inc()
    for seconds in (0.003, 0.5, 100.0):
        m.ttft.observe(seconds)
    m.learned.labels("notes").inc()
    text = m.render().decode()
    assert {ln.split()[2]: ln.split()[3] for ln in text.splitlines() if ln.startswith("# TYPE")} == KINDS
    assert "_created" not in text   # prometheus_client's creation-time series: /metrics never had them
    s = samples(m)
    assert s["livelm_num_requests_running"] == 3 and s["livelm_num_requests_waiting"] == 1
    assert s["livelm_prompt_tokens_total"] == 7 and s["livelm_generation_tokens_total"] == 1
    assert s["livelm_kv_cache_usage_perc"] == 0.25 and s["livelm_num_preemptions_total"] == 1
    assert s["livelm_prefix_cache_queries_total"] == 40 and s["livelm_prefix_cache_hits_total"] == 32
    assert s['livelm_http_requests_total{path="/v1/chat/completions",status="400"}'] == 2
    assert s['livelm_request_success_total{finished_reason="stop"}'] == 1
    assert s['livelm_learning_applied_total{what="notes"}'] == 1 and s["livelm_learning_drafts_total"] == 0
    # cumulative buckets, upper bounds inclusive, +Inf, sum and count
    ttft = "livelm_time_to_first_token_seconds"
    assert s[f'{ttft}_bucket{{le="0.0025"}}'] == 0 and s[f'{ttft}_bucket{{le="0.005"}}'] == 1
    assert s[f'{ttft}_bucket{{le="0.5"}}'] == 2 and s[f'{ttft}_bucket{{le="80.0"}}'] == 2
    assert s[f'{ttft}_bucket{{le="+Inf"}}'] == 3 and s[f"{ttft}_count"] == 3 and s[f"{ttft}_sum"] == pytest.approx(100.503)
    # labelled counters show no series until one is counted
    assert not any(k.startswith("livelm_request_success_total") and "length" in k for k in s)


def test_two_apps_count_apart():
    a, b = Metrics(), Metrics()
    a.generation_tokens.inc(5)
    assert samples(a)["livelm_generation_tokens_total"] == 5
    assert samples(b)["livelm_generation_tokens_total"] == 0
