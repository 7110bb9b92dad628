"""What the paged KV cache and prefix caching buy when serving a real model (SmolLM2-135M-Instruct).

    python bench/paged_kv.py                       # the SmolLM2 run from `livelm pull smollm2` (made if missing)
    python bench/paged_kv.py --run DIR --rounds 3

Two measurements against `livelm serve` on a free 127.0.0.1 port (started and stopped here):

1. Resident memory while 16 streaming clients run (--max-batch 16), each with a ~1,000-token prompt
   and 64 new tokens: the server's process tree (HTTP process + engine process), sampled every
   0.2 s from /proc: the sum of RSS (shared pages counted in each process that maps them: the
   model's weights are shared between the two) and of PSS (shared pages split between them: what
   the tree really holds). Before paging, the engine allocated 16 x the whole 8,192-position window
   up front (7.6 GB resident, the issue's figure).
2. A multi-turn chat: turn 1 is a ~1,000-token conversation; turn 2 adds the answer and a new
   question. Time to first token of each, streamed through /v1/chat/completions, with prefix caching
   on and off (`--no-prefix-caching`), interleaved per round. Turn 2 with the cache prefills only
   what is new (usage.prompt_tokens_details.cached_tokens says how much came from the cache).

3. The cost of reading through block tables: one decode step of the model (fp32, eager, in this
   process) with every row's keys in a contiguous KVCache (the engine's old layout: views, no
   copy) and in a PagedKVCache whose blocks are scattered through the pool (a gather per layer),
   at 1 and 16 rows of 256 and 1,024 positions.

Everything stays on loopback and stops by itself.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import proctree  # noqa: E402
from serve_load import run_level, summarize  # noqa: E402

SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def tree_memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB, summed over `pid` and its descendants (bench/proctree.py)."""
    pids = proctree.tree(pid)
    return proctree.rss_kib(pids) / 1024, proctree.pss_kib(pids) / 1024


def start(run: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "livelm.cli", "serve", str(run), "--host", "127.0.0.1", "--port", "0",
           "--learn", "off", "--log-level", "warning", *flags]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1"):
        proc.kill()
        raise SystemExit(f"the server did not start: {url!r}")
    for _ in range(600):   # loading: /health answers 200 once the engine is ready
        if httpx.get(url + "/health", timeout=5).status_code == 200:
            return proc, url
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not become ready")


def model_id(url: str) -> str:
    return httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def memory_under_load(run: Path, tok, text: str, clients: int, flags: list[str]) -> dict:
    proc, url = start(run, "--max-batch", str(clients), *flags)
    try:
        idle = tree_memory(proc.pid)
        ids = tok.encode(text)
        prompts = [ids[i * 700:i * 700 + 1000] for i in range(2 * clients)]   # different texts: no shared prefix
        peak = [0.0, 0.0]
        done = threading.Event()

        def sample():
            while not done.is_set():
                rss, pss = tree_memory(proc.pid)
                peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results, duration, skipped = asyncio.run(run_level(url, model_id(url), prompts, clients, 64, 600.0))
        done.set()
        sampler.join()
        kv = {ln.split()[0]: float(ln.split()[1]) for ln in httpx.get(url + "/metrics").text.splitlines()
              if ln.startswith("livelm_num_preemptions_total")}
        row = summarize(clients, results, duration, skipped)
        return {"idle_rss": idle[0], "idle_pss": idle[1], "peak_rss": peak[0], "peak_pss": peak[1],
                "out_tok_s": row["out_tok_per_s"], "failed": row["failed"],
                "preemptions": kv.get("livelm_num_preemptions_total", 0)}
    finally:
        stop(proc)


async def ttft(client: httpx.AsyncClient, url: str, messages: list[dict], max_tokens: int) -> tuple[float, str, int]:
    """Seconds to the first streamed text, the whole answer, and the prompt tokens found in the cache."""
    body = {"model": model_id(url), "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0, first, text, cached = time.perf_counter(), None, [], 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                cached = (data["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            for c in data["choices"]:
                if c["delta"].get("content"):
                    first = first or time.perf_counter() - t0
                    text.append(c["delta"]["content"])
    return first, "".join(text), cached


def conversation(text: str, tok, n_tokens: int, round_: int) -> list[dict]:
    """A conversation whose rendered prompt is about n_tokens long (a different one each round)."""
    words = text.split()[round_ * 3000:]
    turns, used = [], 0
    while used < n_tokens - 60:
        q, a = " ".join(words[:20]), " ".join(words[20:70])
        words = words[70:]
        turns += [{"role": "user", "content": f"What comes after: {q}"}, {"role": "assistant", "content": a}]
        used += len(tok.encode(q + a)) + 12
    return [{"role": "system", "content": "You are a helpful assistant who knows Shakespeare."}, *turns,
            {"role": "user", "content": "Summarise the passage above in one sentence."}]


async def multi_turn(url: str, text: str, tok, rounds: int, offset: int) -> list[dict]:
    rows = []
    async with httpx.AsyncClient(timeout=300) as client:
        for r in range(rounds):
            msgs = conversation(text, tok, 1000, offset + r)
            t1, answer, _ = await ttft(client, url, msgs, 32)
            msgs2 = msgs + [{"role": "assistant", "content": answer}, {"role": "user", "content": "Why?"}]
            t2, _, cached = await ttft(client, url, msgs2, 8)
            rows.append({"turn1": t1, "turn2": t2, "cached": cached})
    return rows


def step_cost(run: Path, rounds: int) -> list[tuple]:
    """Median ms of one decode step, contiguous vs paged, per (rows, positions)."""
    import torch
    from livelm.models.gpt import BatchPlan
    from livelm.models.kv_cache import KVCache, PagedKVCache
    from livelm.runs import load_model
    model, _, _ = load_model(run)
    model.eval()
    cfg, P, out = model.cfg, 16, []
    for rows, T in ((1, 256), (1, 1024), (16, 256), (16, 1024)):
        flat = KVCache(cfg, rows, T + 8)
        paged = PagedKVCache(cfg, rows, T + 8, num_blocks=rows * (T // P + 1) + 1, block_size=P)
        order = torch.randperm(paged.num_blocks - 1).add(1).tolist()    # scattered, as after hours of serving
        for r in range(rows):
            blocks = [order.pop() for _ in range(T // P + 1)]
            paged.clear(blocks)
            paged.assign(r, blocks, T)
        flat.lengths.fill_(T)
        idx = torch.randint(0, cfg.vocab_size, (rows, 1))
        times = {"contiguous": [], "paged": []}
        with torch.inference_mode():
            for _ in range(rounds * 5):
                for name, cache in (("contiguous", flat), ("paged", paged)):
                    cache.lengths.fill_(T)
                    t = time.perf_counter()
                    model(idx, plan=BatchPlan(cache=cache, slots=torch.arange(rows), last_only=True, kv_len=T + 1))
                    times[name].append(time.perf_counter() - t)
        c, p = (statistics.median(times[k][2:]) * 1000 for k in ("contiguous", "paged"))
        out.append((rows, T, c, p))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path.home() / ".cache" / "livelm" / "bench-smollm2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-serve", action="store_true", help="only the in-process step cost (section 3)")
    ap.add_argument("--dtypes", default="auto,float32",
                    help="one memory row per --dtype of the server (default auto,float32; auto is bf16 on a CPU "
                         "with native bf16)")
    a = ap.parse_args()
    if not (a.run / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "livelm.cli", "pull", "smollm2", "--out", str(a.run)], cwd=ROOT,
                       check=True)
    from livelm import machine
    from livelm.tokenizer import Tokenizer
    tok = Tokenizer.load(a.run)
    text = SHAKESPEARE.read_text()
    print(f"# paged KV cache and prefix caching, {a.run.name}; CPU: {machine.cpu_info()[0]} "
          f"(ATen {machine.cpu_capability()}), {os.cpu_count()} cores\n")
    print("## One decode step: contiguous rows vs paged blocks (fp32, eager, median ms)\n")
    print("| rows | positions | contiguous (ms) | paged (ms) | paged ÷ contiguous |")
    print("|---|---|---|---|---|")
    for rows, T, c, p in step_cost(a.run, a.rounds):
        print(f"| {rows} | {T} | {c:.1f} | {p:.1f} | {p / c:.2f} |", flush=True)
    print()
    if a.skip_serve:
        return 0
    if not a.skip_memory:
        print(f"## Resident memory, {a.clients} streaming clients, ~1,000-token prompts + 64 tokens\n")
        print("| livelm serve --max-batch 16, default KV pool | idle RSS / PSS (MB) | peak RSS / PSS under load (MB) "
              "| out tok/s | failed | preemptions |")
        print("|---|---|---|---|---|---|")
        for dtype in a.dtypes.split(","):
            m = memory_under_load(a.run, tok, text, a.clients, ["--dtype", dtype])
            print(f"| --dtype {dtype} | {m['idle_rss']:.0f} / {m['idle_pss']:.0f} | {m['peak_rss']:.0f} / "
                  f"{m['peak_pss']:.0f} | {m['out_tok_s']:.1f} | {m['failed']} | {m['preemptions']:.0f} |", flush=True)
        print()
    servers = {"prefix caching on": start(a.run), "off": start(a.run, "--no-prefix-caching")}
    try:
        rows = {name: [] for name in servers}
        for r in range(a.rounds):   # interleaved: each round runs both servers on a fresh conversation
            for name, (_, url) in servers.items():
                rows[name] += asyncio.run(multi_turn(url, text, tok, 1, r))
    finally:
        for proc, _ in servers.values():
            stop(proc)
    print("## Multi-turn chat: time to first token, ~1,000-token history (median of rounds)\n")
    print("| server | turn 1 TTFT (s) | turn 2 TTFT (s) | turn 2 ÷ turn 1 | turn 2 cached tokens |")
    print("|---|---|---|---|---|")
    for name, rs in rows.items():
        t1, t2 = statistics.median(x["turn1"] for x in rs), statistics.median(x["turn2"] for x in rs)
        print(f"| {name} | {t1:.3f} | {t2:.3f} | {t2 / t1:.0%} | {statistics.median(x['cached'] for x in rs):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
