"""Chaos under load: `livelm serve` with live learning on, while its processes are killed.

    python bench/chaos.py                                  # the default assistant (runs/assistant/chat), 120 s
    python bench/chaos.py --run /tmp/smol/run --duration 60 --clients 16
    python bench/chaos.py --duration 60 --interval 8 --json /tmp/chaos.json

It starts `livelm serve RUN` itself on a free loopback port (learning on: --learn memory,adapter;
the feedback database and the adapter store in a fresh temporary folder, so the run's own files
are never touched), then for --duration seconds runs, all at once:

  load       --clients concurrent streaming chat clients; a --disconnect fraction of the streams
             are closed by the client part-way through (the server must cancel them);
  feedback   a writer posting /v1/feedback corrections one after another (which start adapter
             updates); every acknowledged id and its text are recorded;
  chaos      every --interval seconds one of, in turn:
               engine   kill -9 the engine process (the server should replace it: --engine-restarts);
               learner  kill -9 the adapter-update process while an update runs (a child of the
                        server's multiprocessing forkserver; skipped when none starts in time);
               server   kill -9 the whole server tree while a feedback write is in flight, then
                        start it again on the same port and the same files.

Afterwards it checks: every acknowledged feedback record is in the SQLite file with the text it was
acknowledged with (lost: target 0), PRAGMA integrity_check is "ok", every adapter version directory
is complete (adapter_config.json parses, adapter_model.safetensors loads, meta.json present) and
/v1/adapters lists no incomplete one, rollback works (when a tenant has a version to roll back
from), and the server still answers. Streams are classified: ok, closed by the client, failed by a
kill (an error event, a cut connection while a kill was being recovered from, or a 5xx naming the
dead engine: expected), other errors, and hung (no event for --hang seconds: target 0). 5xx answers are split into 503 with
Retry-After (loading or restarting: expected) and any other 5xx (target 0). Resident memory of the
server's process tree (RSS summed, and PSS, which counts shared pages once) is taken at the start
and at the end. Everything is printed as a markdown table (and --json writes the numbers).

Loopback only; it stops by itself: the load ends after --duration, each request is bounded by
--hang, every wait for the server is bounded, and the server is stopped at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.proctree import children, cmdline, pss_kib, rss_kib, tree  # noqa: E402
from bench.serve_load import pct  # noqa: E402  (the load client's percentile)

DEFAULT_RUN = ROOT / "runs" / "assistant" / "chat"
QUESTIONS = ["What do you sell?", "When do you open?", "How much is the tea?", "Do you deliver?",
             "你们几点开门？", "Tell me about your shop.", "What is the return policy?", "Hello!"]


# ---- the server's process tree (/proc) ---------------------------------------------------------------
def engine_pid(server: int) -> int | None:
    """The engine: the server's one child started by multiprocessing's spawn (engine_client.py)."""
    return next((c for c in children(server) if b"spawn_main" in cmdline(c)), None)


def update_pids(server: int) -> list[int]:
    """Adapter updates: children of the server's forkserver (livelm/learn/live.py: update_context)."""
    return [u for f in children(server) if b"forkserver" in cmdline(f) for u in children(f)]


def memory_kib(server: int) -> dict[str, tuple[int, int]]:
    """(RSS, PSS) in KiB, summed over the whole tree ("all") and per part: "serving" (the HTTP process and
    the engine) and "learning" (the forkserver and any update running in it)."""
    def total(pids) -> tuple[int, int]:
        return rss_kib(pids), pss_kib(pids)
    engine = engine_pid(server)
    learning = [p for f in children(server) if b"forkserver" in cmdline(f) for p in tree(f)]
    return {"all": total(tree(server)), "serving": total([server] + ([engine] if engine else [])),
            "learning": total(learning)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the server ------------------------------------------------------------------------------------------
class Server:
    """`livelm serve` on a fixed loopback port, restartable on the same files."""

    def __init__(self, run: Path, work: Path, extra: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db, self.store, self.log = work / "feedback.sqlite", work / "adapters", work / "server.log"
        self.cmd = [sys.executable, "-m", "livelm.cli", "serve", str(run), "--host", "127.0.0.1",
                    "--port", str(self.port), "--log-level", "warning", "--feedback-db", str(self.db),
                    "--adapter-store", str(self.store), "--learn", "memory,adapter", *extra]
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 180) -> float:
        """Start it and wait until /ready; returns the seconds that took."""
        t0 = time.monotonic()
        with open(self.log, "a") as log:
            log.write(f"\n---- start {self.starts + 1} ----\n")
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.starts += 1
        self.wait_ready(timeout)
        return time.monotonic() - t0

    def wait_ready(self, timeout: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited ({self.proc.returncode}); see {self.log}:\n"
                                 + self.log.read_text(errors="replace")[-3000:])
            try:
                if httpx.get(self.url + "/ready", timeout=5).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the server was not ready within {timeout:.0f} s; see {self.log}")

    def kill_tree(self) -> None:
        """kill -9 the server and everything under it (a machine losing power, as far as files go)."""
        pids = tree(self.proc.pid)
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.kill_tree()
            return -9


# ---- what happened ---------------------------------------------------------------------------------------
@dataclass
class Tally:
    streams: dict[str, int] = field(default_factory=lambda: {k: 0 for k in (
        "ok", "closed by client", "failed by kill", "error (other)", "cut (other)", "hung")})
    status: dict[int, int] = field(default_factory=dict)     # HTTP status -> count (non-200 answers)
    retry_503: int = 0            # 503 with Retry-After: loading or restarting (expected)
    other_5xx: int = 0
    killed_5xx: int = 0           # of "failed by kill": a 5xx answer (its stream had not begun)
    refused: int = 0              # could not connect (the server was down)
    errors: dict[str, int] = field(default_factory=dict)     # examples of unexpected failures
    ttft: list[float] = field(default_factory=list)
    windows: list[list[float]] = field(default_factory=list)  # [start, end] of each kill until ready again
    acked: dict[int, str] = field(default_factory=dict)      # feedback id -> correction text, as acknowledged
    feedback_unacked: int = 0     # posts with no answer (the server died under them): outcome unknown
    feedback_failed: dict[str, int] = field(default_factory=dict)
    feedback_in_flight: bool = False
    actions: list[dict] = field(default_factory=list)

    def note(self, what: str, detail: str) -> None:
        key = f"{what}: {detail[:120]}"
        self.errors[key] = self.errors.get(key, 0) + 1

    def during_kill(self, t0: float, t1: float) -> bool:
        """Did [t0, t1] overlap a kill's recovery (with a second of slack either side)?"""
        now = time.monotonic()
        return any(a - 1 <= t1 and t0 <= (b if b is not None else now) + 1 for a, b in self.windows)


async def stream_once(client: httpx.AsyncClient, server: Server, tally: Tally, rng: random.Random, a) -> None:
    body = {"messages": [{"role": "user", "content": rng.choice(QUESTIONS)}], "stream": True,
            "max_tokens": rng.randint(8, a.max_tokens), "temperature": 0.8}
    close_after = rng.randint(1, 6) if rng.random() < a.disconnect else None
    t0 = time.monotonic()
    events, first = 0, None
    try:
        async with client.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                tally.status[r.status_code] = tally.status.get(r.status_code, 0) + 1
                if r.status_code >= 500:
                    text = (await r.aread()).decode(errors="replace")
                    if r.status_code == 503 and "retry-after" in r.headers:
                        tally.retry_503 += 1
                    elif "engine process exited" in text:   # lost in a dead engine before its stream began
                        tally.streams["failed by kill"] += 1   # (e.g. the draft answer memory asks for)
                        tally.killed_5xx += 1
                    else:
                        tally.other_5xx += 1
                        tally.note(f"HTTP {r.status_code}", text)
                await asyncio.sleep(min(float(r.headers.get("retry-after", 1)), 2))
                return
            done = False
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                events += 1
                if line == "data: [DONE]":
                    done = True
                    break
                data = json.loads(line[6:])
                if "error" in data:
                    msg = data["error"].get("message", "")
                    if "engine process exited" in msg or tally.during_kill(t0, time.monotonic()):
                        tally.streams["failed by kill"] += 1
                    else:
                        tally.streams["error (other)"] += 1
                        tally.note("error event", msg)
                    return
                if first is None and data["choices"] and data["choices"][0]["delta"].get("content"):
                    first = time.monotonic() - t0
                    tally.ttft.append(first)
                if close_after is not None and events >= close_after:
                    tally.streams["closed by client"] += 1
                    return   # leaving the block closes the connection mid-stream
            if done:
                tally.streams["ok"] += 1
            elif tally.during_kill(t0, time.monotonic()):
                tally.streams["failed by kill"] += 1
            else:
                tally.streams["cut (other)"] += 1
                tally.note("cut", "the stream ended without [DONE]")
    except httpx.ReadTimeout:
        tally.streams["hung"] += 1
        tally.note("hung", f"no event for {a.hang:.0f} s after {events} events")
    except httpx.ConnectError:
        tally.refused += 1
        await asyncio.sleep(0.5)
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
        if tally.during_kill(t0, time.monotonic()):
            if events:
                tally.streams["failed by kill"] += 1
            else:
                tally.refused += 1
        else:
            tally.streams["cut (other)"] += 1
            tally.note("cut", f"{type(e).__name__}: {e}")
        await asyncio.sleep(0.2)


async def client_loop(client, server, tally, seed, stop_at, a):
    rng = random.Random(seed)
    while time.monotonic() < stop_at:
        await stream_once(client, server, tally, rng, a)
        await asyncio.sleep(rng.random() * 0.1)


async def feedback_loop(client, server, tally, stop_at, a):
    """Corrections one after another; an id counts as acknowledged only once its 200 answer arrived."""
    n = 0
    while time.monotonic() < stop_at:
        n += 1
        text = f"Item {n} costs {random.randint(1, 999)} yuan (chaos {os.getpid()}-{n})."
        body = {"kind": "correction", "conversation": [{"role": "user", "content": f"How much is item {n}?"}],
                "answer": "I do not know.", "correction": text}
        tally.feedback_in_flight = True
        try:
            r = await client.post(server.url + "/v1/feedback", json=body)
            if r.status_code == 200:
                item = r.json()
                tally.acked[int(item["id"])] = text
            else:
                key = f"HTTP {r.status_code}"
                tally.feedback_failed[key] = tally.feedback_failed.get(key, 0) + 1
        except httpx.ConnectError:
            tally.feedback_failed["refused"] = tally.feedback_failed.get("refused", 0) + 1
            await asyncio.sleep(0.3)
        except httpx.HTTPError:
            tally.feedback_unacked += 1   # sent, never answered: it may or may not be stored
            await asyncio.sleep(0.3)
        finally:
            tally.feedback_in_flight = False
        await asyncio.sleep(a.feedback_every)


def chaos_loop(server: Server, tally: Tally, stop_at: float, a, stop: threading.Event) -> None:
    """Every --interval seconds, the next of engine / learner / server (in turn), in its own thread."""
    kinds = [k for k in ("engine", "learner", "server") if k in a.chaos.split(",")]
    i = 0
    while not stop.wait(a.interval) and time.monotonic() < stop_at - 5 and kinds:
        kind = kinds[i % len(kinds)]
        i += 1
        act = {"kind": kind, "at_s": round(time.monotonic() - a.t0, 1)}
        window = None
        if kind == "engine":
            pid = engine_pid(server.proc.pid)
            if pid is None:
                act["result"] = "no engine process found"
            else:
                window = [time.monotonic(), None]
                tally.windows.append(window)
                os.kill(pid, signal.SIGKILL)
                act["result"] = f"killed pid {pid}"
                # /ready says 200 until the server notices (milliseconds): wait for the replacement's pid
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and engine_pid(server.proc.pid) in (None, pid):
                    time.sleep(0.05)
        elif kind == "learner":
            deadline = time.monotonic() + max(2.0, a.interval - 1)
            pids = []
            while time.monotonic() < deadline and not (pids := update_pids(server.proc.pid)):
                time.sleep(0.05)
            if not pids:
                act["result"] = "no update running in time (skipped)"
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                    act["result"] = f"killed update pid {p}"
                except ProcessLookupError:
                    act["result"] = "the update ended first (skipped)"
        elif kind == "server":
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not tally.feedback_in_flight:
                time.sleep(0.001)
            mid_write = tally.feedback_in_flight
            window = [time.monotonic(), None]
            tally.windows.append(window)
            server.kill_tree()
            act["result"] = "killed the tree" + (" with a feedback write in flight" if mid_write else "")
            server.start()
        if window is not None:
            try:
                server.wait_ready(120)
                window[1] = time.monotonic()
                act["back_in_s"] = round(window[1] - window[0], 1)
            except SystemExit as e:
                act["result"] += f"; not back: {e}"
                window[1] = time.monotonic()
                tally.actions.append(act)
                print(f"  chaos: {act}", file=sys.stderr, flush=True)
                return
        tally.actions.append(act)
        print(f"  chaos: {act}", file=sys.stderr, flush=True)


async def load(server: Server, tally: Tally, a) -> None:
    stop_at = time.monotonic() + a.duration
    stop = threading.Event()
    chaos = threading.Thread(target=chaos_loop, args=(server, tally, stop_at, a, stop), daemon=True)
    timeout = httpx.Timeout(connect=5.0, read=a.hang, write=10.0, pool=a.hang)
    limits = httpx.Limits(max_connections=a.clients + 4, max_keepalive_connections=a.clients + 4)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client, \
            httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as fb_client:
        chaos.start()
        tasks = [asyncio.create_task(client_loop(client, server, tally, a.seed + k, stop_at, a))
                 for k in range(a.clients)]
        tasks.append(asyncio.create_task(feedback_loop(fb_client, server, tally, stop_at, a)))
        # each request is bounded by --hang; this bounds the wind-down whatever happens
        done, pending = await asyncio.wait(tasks, timeout=a.duration + 2 * a.hang + 30)
        for t in pending:
            t.cancel()
        for t in done:
            if t.exception():
                tally.note("client crashed", repr(t.exception()))
        stop.set()
    chaos.join(150)   # a server restart in progress finishes (bounded by its own waits)


# ---- after the run -----------------------------------------------------------------------------------------
def check_adapters(server: Server) -> dict:
    """Every version directory on disk complete? Anything incomplete listed by /v1/adapters? Rollback?"""
    from safetensors.torch import load_file
    out = {"versions": 0, "complete": 0, "incomplete": [], "listed_incomplete": [], "rollback": "not tried"}
    root = server.store
    for tenant in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for v in sorted(p for p in tenant.iterdir() if p.is_dir() and p.name.startswith("v")):
            out["versions"] += 1
            try:
                json.loads((v / "adapter_config.json").read_text())
                load_file(str(v / "adapter_model.safetensors"))
                json.loads((v / "meta.json").read_text())
                out["complete"] += 1
            except Exception as e:   # noqa: BLE001 - any way of being broken counts
                out["incomplete"].append(f"{tenant.name}/{v.name} ({type(e).__name__})")
        state = tenant / "state.json"
        if state.is_file():
            try:
                cur = json.loads(state.read_text())["current"]
                if cur and f"{tenant.name}/{cur}" in " ".join(out["incomplete"]):
                    out["incomplete"].append(f"{tenant.name}: state.json points at incomplete {cur}")
            except (json.JSONDecodeError, KeyError) as e:
                out["incomplete"].append(f"{tenant.name}/state.json ({type(e).__name__})")
    listed = httpx.get(server.url + "/v1/adapters", timeout=30).json()
    broken = {s.split(" ")[0] for s in out["incomplete"]}
    for v in listed.get("data", []):
        if any(b.endswith("/" + v["version"]) for b in broken):
            out["listed_incomplete"].append(v["version"])
    out["current"] = listed.get("current")
    history_ok = len([v for v in listed.get("data", []) if v.get("status") == "live"]) >= 1
    if listed.get("current") not in (None, "base") and history_ok:
        r = httpx.post(server.url + "/v1/adapters/rollback", timeout=60)
        if r.status_code == 200:
            after = httpx.get(server.url + "/v1/adapters", timeout=30).json().get("current")
            ok = after == r.json()["current"] and after != listed["current"]
            out["rollback"] = f"{'ok' if ok else 'MISMATCH'}: {listed['current']} -> {after}"
        else:
            out["rollback"] = f"HTTP {r.status_code}: {r.text[:100]}"
    else:
        out["rollback"] = "not tried (no live version)"
    return out


def settle(server: Server, seconds: float) -> float | None:
    """Without load, give the learner up to `seconds` to publish a version (under load on a small machine
    every update may have been killed or outrun), so that the store and rollback have something to check.
    Returns the seconds it took, or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        try:
            listed = httpx.get(server.url + "/v1/adapters", timeout=10).json()
            # live, and no update still writing its version directory (which would look incomplete)
            if listed.get("current") not in (None, "base") and not listed.get("learning"):
                return time.monotonic() - t0
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(1)
    return None


def serving(server: Server) -> str:
    try:
        r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8})
        return "yes" if r.status_code == 200 and r.json()["choices"] else f"no (HTTP {r.status_code})"
    except httpx.HTTPError as e:
        return f"no ({type(e).__name__})"


def check_feedback(db: Path, acked: dict[int, str]) -> dict:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        rows = dict(con.execute("SELECT id, correction FROM feedback").fetchall())
    finally:
        con.close()
    lost = [i for i in acked if i not in rows]
    changed = [i for i in acked if i in rows and rows[i] != acked[i]]
    return {"integrity": integrity, "rows": len(rows), "lost": len(lost), "changed": len(changed),
            "lost_ids": lost[:10]}


def table(r: dict) -> str:
    s, fb, ad = r["streams"], r["feedback"], r["adapters"]
    acts = r["actions"]
    count = lambda kind: sum(1 for x in acts if x["kind"] == kind and "killed" in x.get("result", ""))  # noqa: E731
    back = [x["back_in_s"] for x in acts if "back_in_s" in x]
    def mem(m, part):
        (r0, p0), (r1, p1) = m["start"][part], m["end"][part]
        return f"{r0 / 1024:.0f} / {p0 / 1024:.0f} -> {r1 / 1024:.0f} / {p1 / 1024:.0f}"
    settled = r.get("settle_s")
    rows = [
        ("run", f"{r['run']} for {r['duration_s']:.0f} s, {r['clients']} clients, "
                f"{r['disconnect']:.0%} closed mid-stream", ""),
        ("chaos actions", f"engine kill x{count('engine')}, update kill x{count('learner')} "
                          f"({sum(1 for x in acts if x['kind'] == 'learner') - count('learner')} skipped: none "
                          f"running), server kill x{count('server')}", ""),
        ("back to /ready after a kill (s)", ", ".join(f"{x:.1f}" for x in back) or "-", "bounded"),
        ("feedback acknowledged", str(len(r["acked"])), ""),
        ("acknowledged feedback lost", str(fb["lost"]), "0"),
        ("acknowledged feedback changed", str(fb["changed"]), "0"),
        ("feedback posts unanswered (server killed under them)", str(r["feedback_unacked"]), "(unknown outcome)"),
        ("PRAGMA integrity_check", fb["integrity"], "ok"),
        ("adapter versions on disk / complete", f"{ad['versions']} / {ad['complete']}", "all complete"),
        ("incomplete versions", ", ".join(ad["incomplete"]) or "none", "none"),
        ("incomplete versions listed by /v1/adapters", ", ".join(ad["listed_incomplete"]) or "none", "none"),
        ("an update went live after the load (s)", "no" if settled is None else f"{settled:.0f}", ""),
        ("rollback", ad["rollback"], "ok"),
        ("serving after the run", r["serving"], "yes"),
        ("streams ok / closed by client", f"{s['ok']} / {s['closed by client']}", ""),
        ("streams failed by a kill (error event, cut while recovering, or a 5xx naming the dead engine)",
         f"{s['failed by kill']} (of them 5xx: {r['killed_5xx']})", "(expected)"),
        ("streams with other errors / cut otherwise", f"{s['error (other)']} / {s['cut (other)']}", "0 / 0"),
        ("hung streams (no event for %.0f s)" % r["hang_s"], str(s["hung"]), "0"),
        ("503 with Retry-After (loading / restarting)", str(r["retry_503"]), "(expected)"),
        ("other 5xx", str(r["other_5xx"]), "0"),
        ("connections refused (server down)", str(r["refused"]), "(expected)"),
        ("TTFT p50 / p99 (ms)", f"{1000 * pct(r['ttft'], 50):.0f} / {1000 * pct(r['ttft'], 99):.0f}", ""),
        *[(f"RSS / PSS start -> end (MiB): {part}", mem(r["memory_kib"], part), "")
          for part in ("all", "serving", "learning")],
        ("server exit on SIGTERM at the end", str(r["exit_code"]), "0"),
    ]
    lines = ["| check | result | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=None,
                   help=f"run to serve (default: {DEFAULT_RUN.relative_to(ROOT)}, built if missing)")
    p.add_argument("--duration", type=float, default=120, help="seconds of load and chaos (default 120)")
    p.add_argument("--clients", type=int, default=64, help="concurrent streaming clients (default 64)")
    p.add_argument("--disconnect", type=float, default=0.2,
                   help="fraction of streams the client closes mid-stream (default 0.2)")
    p.add_argument("--max-tokens", type=int, default=48, help="largest max_tokens of a request (default 48)")
    p.add_argument("--interval", type=float, default=15, help="seconds between chaos actions (default 15)")
    p.add_argument("--chaos", default="engine,learner,server",
                   help="which actions, taken in turn (default engine,learner,server)")
    p.add_argument("--feedback-every", type=float, default=0.3,
                   help="seconds between two feedback posts (default 0.3)")
    p.add_argument("--hang", type=float, default=30, help="a stream with no event for this long is hung (default 30)")
    p.add_argument("--settle", type=float, default=60,
                   help="after the load, wait up to this long for an adapter update to go live, for the store "
                        "and rollback checks (default 60)")
    p.add_argument("--server-args", default="", help="extra `livelm serve` arguments")
    p.add_argument("--keep", type=Path, default=None,
                   help="keep the server's files (feedback DB, adapters, log) in this folder (default: a "
                        "temporary one, removed at the end)")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.clients < 1 or a.duration <= 0 or a.interval <= 0 or not 0 <= a.disconnect <= 1:
        raise SystemExit("--clients >= 1, --duration > 0, --interval > 0 and 0 <= --disconnect <= 1")
    run = a.run
    if run is None:
        run = DEFAULT_RUN
        if not (run / "config.json").is_file():
            from livelm.demo import build
            run = build()
    work = a.keep or Path(tempfile.mkdtemp(prefix="livelm-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    random.seed(a.seed)
    server = Server(run, work, a.server_args.split())
    tally = Tally()
    result: dict = {}
    try:
        print(f"# chaos: serving {run} on {server.url}; files in {work}", file=sys.stderr, flush=True)
        print(f"  server ready in {server.start():.1f} s", file=sys.stderr, flush=True)
        serving(server)   # one request first: the memory figure at the start is a warm server's
        rss0 = memory_kib(server.proc.pid)
        a.t0 = time.monotonic()
        asyncio.run(load(server, tally, a))
        server.wait_ready(120)
        result = {"run": str(run), "duration_s": time.monotonic() - a.t0, "clients": a.clients,
                  "disconnect": a.disconnect, "hang_s": a.hang, "streams": tally.streams,
                  "status": tally.status, "retry_503": tally.retry_503, "other_5xx": tally.other_5xx,
                  "refused": tally.refused, "killed_5xx": tally.killed_5xx, "errors": tally.errors,
                  "ttft": tally.ttft, "actions": tally.actions,
                  "acked": tally.acked, "feedback_unacked": tally.feedback_unacked,
                  "feedback_failed": tally.feedback_failed}
        result["settle_s"] = settle(server, a.settle)
        result["serving"] = serving(server)
        result["adapters"] = check_adapters(server)
        result["memory_kib"] = {"start": rss0, "end": memory_kib(server.proc.pid)}
        result["exit_code"] = server.stop()
        result["feedback"] = check_feedback(server.db, tally.acked)
        print(table(result))
        if tally.errors:
            print("\nunexpected failures (first kinds):", file=sys.stderr)
            for k, v in list(tally.errors.items())[:10]:
                print(f"  {v} x {k}", file=sys.stderr)
        if tally.feedback_failed:
            print(f"feedback posts refused or failed: {tally.feedback_failed}", file=sys.stderr)
        if a.json:
            out = {**result, "acked": len(tally.acked), "ttft": None}
            a.json.write_text(json.dumps(out, indent=1, default=str))
    finally:
        server.stop()
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"files kept in {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
