"""Load test of `livelm serve`: N concurrent streaming clients, reported like `vllm bench serve`.

    python bench/serve_load.py                          # default assistant (built once into runs/assistant)
    python bench/serve_load.py --run runs/assistant/chat --concurrency 1,4,16,64 --requests 64
    python bench/serve_load.py --url http://127.0.0.1:8000   # an already running server (loopback only)
    python bench/serve_load.py --concurrency 1,16 --requests 128 --rounds 3   # levels interleaved 3 times

It starts the server itself (a subprocess on a free loopback port), then for
each concurrency level runs a bounded number of requests, each a streaming
/v1/completions call with a fixed-length random-token prompt and a fixed
output length (ignore_eos, as vLLM's random dataset does), so every level does
the same work. Measured per request on the client: time to first token (first
chunk with text), time per output token after the first ((e2e - ttft) / (out - 1)),
inter-token latency (gaps between chunks) and end-to-end latency.
Everything goes to 127.0.0.1 and stops by itself (--requests, --time-limit).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Result:
    ok: bool = False
    error: str = ""
    ttft: float = 0.0
    e2e: float = 0.0
    output_tokens: int = 0
    itl: list[float] = field(default_factory=list)

    @property
    def tpot(self) -> float | None:
        return (self.e2e - self.ttft) / (self.output_tokens - 1) if self.output_tokens > 1 else None


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: list[int], max_tokens: int,
                      extra: dict | None = None) -> Result:
    """One streamed /v1/completions request, timed. The stream is split into lines on \\n and \\r only, as
    SSE defines them: httpx's aiter_lines splits like str.splitlines, also on U+0085, U+2028 and U+2029,
    which JSON may carry unescaped inside a string (random-token outputs do), and the half line then
    failed json.loads and stopped the whole load test."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}, **(extra or {})}
    r = Result()
    t0 = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                r.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return r
            buf = ""
            async for text in resp.aiter_text():
                buf += text.replace("\r\n", "\n").replace("\r", "\n")
                *lines, buf = buf.split("\n")
                for line in lines:
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    data = json.loads(line[6:])
                    if "error" in data:
                        r.error = data["error"].get("message", "error event")
                        return r
                    now = time.perf_counter()
                    if data.get("usage"):
                        r.output_tokens = data["usage"]["completion_tokens"]
                    if data["choices"] and data["choices"][0].get("text"):
                        if last is None:
                            r.ttft = now - t0
                        else:
                            r.itl.append(now - last)
                        last = now
        r.e2e = time.perf_counter() - t0
        r.ok = r.output_tokens == max_tokens
        if not r.ok:
            r.error = f"got {r.output_tokens} of {max_tokens} tokens"
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        r.error = f"{type(e).__name__}: {e}"
    return r


async def run_level(url: str, model: str, prompts: list[list[int]], concurrency: int, max_tokens: int,
                    time_limit: float, extra: dict | None = None, keepalive: bool = True) -> tuple[list[Result], float, int]:
    """Run len(prompts) requests, at most `concurrency` at a time; stop starting new ones after time_limit.
    keepalive=False: a new connection per request (llama-server sometimes drops a kept-alive connection that
    the client reuses, "Server disconnected without sending a response"; a loopback connect costs ~0.1 ms)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency if keepalive else 0)
    sem = asyncio.Semaphore(concurrency)
    deadline = time.perf_counter() + time_limit
    skipped = 0

    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as client:
        async def worker(p):
            nonlocal skipped
            async with sem:
                if time.perf_counter() > deadline:
                    skipped += 1
                    return None
                return await one_request(client, url, model, p, max_tokens, extra)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(worker(p) for p in prompts))
        duration = time.perf_counter() - t0
    return [r for r in results if r is not None], duration, skipped


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summarize(concurrency: int, results: list[Result], duration: float, skipped: int) -> dict:
    ok = [r for r in results if r.ok]
    ms = lambda xs: [1000 * x for x in xs]   # noqa: E731
    ttft, e2e = ms([r.ttft for r in ok]), ms([r.e2e for r in ok])
    tpot = ms([r.tpot for r in ok if r.tpot is not None])
    itl = ms([x for r in ok for x in r.itl])
    out_tokens = sum(r.output_tokens for r in ok)
    row = {"concurrency": concurrency, "requests": len(results), "failed": len(results) - len(ok), "skipped": skipped,
           "duration_s": duration, "req_per_s": len(ok) / duration, "out_tok_per_s": out_tokens / duration}
    for name, xs in (("ttft_ms", ttft), ("tpot_ms", tpot), ("itl_ms", itl), ("e2e_ms", e2e)):
        row[name] = {"mean": statistics.fmean(xs) if xs else float("nan"), "p50": pct(xs, 50), "p99": pct(xs, 99)}
    row["errors"] = sorted({r.error for r in results if not r.ok})[:3]
    return row


def table(rows: list[dict]) -> str:
    head = ("| clients | requests | failed | req/s | out tok/s | TTFT mean / p50 / p99 (ms) | "
            "TPOT mean / p50 / p99 (ms) | ITL p50 / p99 (ms) | E2E mean / p50 / p99 (ms) |")
    lines = [head, "|" + "---|" * 9]
    f = lambda d: f"{d['mean']:.0f} / {d['p50']:.0f} / {d['p99']:.0f}"   # noqa: E731
    for r in rows:
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['failed']} | {r['req_per_s']:.2f} | "
                     f"{r['out_tok_per_s']:.1f} | {f(r['ttft_ms'])} | {f(r['tpot_ms'])} | "
                     f"{r['itl_ms']['p50']:.0f} / {r['itl_ms']['p99']:.0f} | {f(r['e2e_ms'])} |")
    return "\n".join(lines)


def start_server(run: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "livelm.cli", "serve", str(run), "--host", "127.0.0.1", "--port", "0",
           "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(300)
    if not line or not line[0].startswith("http://"):
        proc.kill()
        raise SystemExit(f"the server did not start: {line}")
    return proc, line[0].strip()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="run to serve (default: the default assistant, built if needed)")
    p.add_argument("--url", help="use this running server instead of starting one (loopback only)")
    p.add_argument("--concurrency", default="1,4,16,64", help="comma-separated client counts (default 1,4,16,64)")
    p.add_argument("--requests", type=int, default=0, help="requests per level (default max(8, 2 x clients))")
    p.add_argument("--prompt-tokens", type=int, default=100)
    p.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (ignore_eos)")
    p.add_argument("--max-batch", type=int, default=16, help="server --max-batch (when started here)")
    p.add_argument("--time-limit", type=float, default=180, help="stop starting requests after this many s per level")
    p.add_argument("--server-args", default="", help="extra `livelm serve` arguments")
    p.add_argument("--rounds", type=int, default=1,
                   help="run all levels this many times, interleaved; rows pool every round (default 1)")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra-body", type=json.loads, default=None,
                   help='JSON fields added to every request, e.g. \'{"guided_json": {...}}\' for constrained decoding '
                        '(a schema that cannot end before --max-tokens, so every request does the same work)')
    a = p.parse_args()
    levels = [int(c) for c in a.concurrency.split(",")]

    proc = None
    if a.url:
        if urlparse(a.url).hostname not in LOOPBACK:
            raise SystemExit("--url must be a loopback address (127.0.0.1, localhost, ::1)")
        url = a.url.rstrip("/")
    else:
        run = a.run
        if run is None:
            from livelm.demo import build
            run = build()
        proc, url = start_server(run, ["--max-batch", str(a.max_batch), *a.server_args.split()])
    try:
        models = httpx.get(url + "/v1/models", timeout=30).json()["data"]
        model, ctx = models[0]["id"], models[0]["max_model_len"]
        if a.prompt_tokens + a.max_tokens > ctx:
            raise SystemExit(f"--prompt-tokens + --max-tokens = {a.prompt_tokens + a.max_tokens} is over the "
                             f"model's {ctx}-token window")
        from livelm.tokenizer import Tokenizer
        vocab = Tokenizer.load(Path(models[0]["root"])).vocab_size if Path(models[0]["root"]).is_dir() else 256
        rng = random.Random(a.seed)
        low = 16   # skip the special tokens at the start of livelm vocabularies
        print(f"# livelm serve load test: model {model} ({ctx}-token window), {a.prompt_tokens}-token prompts, "
              f"{a.max_tokens} output tokens, server --max-batch {a.max_batch}, {os.cpu_count()} CPU cores",
              file=sys.stderr)
        asyncio.run(run_level(url, model, [[rng.randrange(low, vocab) for _ in range(a.prompt_tokens)]], 1,
                              a.max_tokens, 60, a.extra_body))   # warm-up
        # Levels run in rounds (1, 16, 1, 16, ...): on a shared VM the speed drifts by +-10% from minute to
        # minute, and interleaving spreads that drift over every level instead of loading it onto one.
        per_level: dict[int, list] = {c: [] for c in levels}   # concurrency -> [(results, duration, skipped)]
        for rnd in range(a.rounds):
            for c in levels:
                n = a.requests or max(8, 2 * c)
                prompts = [[rng.randrange(low, vocab) for _ in range(a.prompt_tokens)] for _ in range(n)]
                results, duration, skipped = asyncio.run(run_level(url, model, prompts, c, a.max_tokens,
                                                                   a.time_limit, a.extra_body))
                per_level[c].append((results, duration, skipped))
                row = summarize(c, results, duration, skipped)
                print(f"  round {rnd + 1}, {c:>3} clients: {row['req_per_s']:.2f} req/s, "
                      f"{row['out_tok_per_s']:.1f} out tok/s, p99 TTFT {row['ttft_ms']['p99']:.0f} ms, "
                      f"failed {row['failed']}" + (f" ({row['errors']})" if row["errors"] else ""), file=sys.stderr)
        # one row per level over all its rounds: every request counts, throughput = tokens / summed duration
        rows = [summarize(c, [r for res, _, _ in runs for r in res], sum(d for _, d, _ in runs),
                          sum(s for _, _, s in runs)) for c, runs in per_level.items()]
        print(table(rows))
        if len(rows) > 1 and rows[0]["concurrency"] == 1:
            for r in rows[1:]:
                c = r["concurrency"]
                rounds = [summarize(c, *per_level[c][i])["out_tok_per_s"] /
                          summarize(1, *per_level[1][i])["out_tok_per_s"] for i in range(a.rounds)]
                print(f"\nspeed-up at {c} clients: {r['out_tok_per_s'] / rows[0]['out_tok_per_s']:.1f}x "
                      f"the output tokens/s of one client"
                      + (f" (per round: {', '.join(f'{x:.1f}' for x in rounds)})" if a.rounds > 1 else ""), end="")
            print()
        if a.json:
            a.json.write_text(json.dumps(rows, indent=1))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
