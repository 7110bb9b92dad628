"""The server's client of the engine process: requests in, chunks out; the model runs in its own process.
(The scheduling itself, which sequences share a step, is Engine.step in livelm/infer/engine.py.)

    event loop                      reader thread                 engine process (engine_process.py)
    ----------                      -------------                 --------------
    submit(): check, send "add" --------------------------------> engine.add()
      -> Ticket with an asyncio.Queue                             loop: engine.step() while there is work
    await ticket.queue.get()   <--  "step": each sequence's  <--  one message per step
                                    text becomes a Chunk, handed to the request's loop
                                    with call_soon_threadsafe (once per step per loop)
    cancel(): send "cancel" ------------------------------------> retired by the next step

Only the engine process runs the model, so the event loop never blocks on a forward pass
(GET /health answers while a batch is decoding), and the engine never waits for the event
loop's interpreter lock (see engine_process.py for why that matters). A cancelled sequence
is retired by the next step, milliseconds later.

Requests are checked here (prompt length, sampling parameters, queue room) before they are
sent, so a bad one fails its own HTTP request and never reaches the engine. Latency metrics
are taken here, when a step's message arrives: what a client sees, pipe included.

`call(op, *args)` runs one of engine_process.OPS between two steps, when no forward pass is
in flight: the place to swap adapters live.

When the engine process dies while the server is not shutting down (the OOM killer, a crash in
native code, kill -9), the reader thread fails the dead engine's requests, and a RestartPolicy
decides whether to start a new one: with the same model (still in shared memory, as the server
loaded it) and the same options, and with the adapters the dead one had loaded through
call("load_adapter", ...) loaded again before it takes requests. While it starts, `restarting`
says why and requests are refused (503 + Retry-After in app.py); once the policy's budget is
spent, `failure` says so and the server stays failed, so /live tells an orchestrator to restart
the whole server.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import multiprocessing
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from livelm.infer.engine import check_request
from livelm.sampling import SamplingParams
from livelm.serve import engine_process

log = logging.getLogger("livelm.serve")


class QueueFull(Exception):
    """More sequences are waiting than --max-queue allows; the client should retry later."""


class NotAccepting(Exception):
    """The server is shutting down (or its engine process is gone)."""


@dataclass
class Chunk:
    """What one choice of a request got from one engine step."""
    index: int                       # which choice (n > 1, or several prompts)
    delta: str = ""                  # new text: never splits a UTF-8 char, never holds part of a stop string
    logprobs: list[dict] = field(default_factory=list)   # entries for the tokens sampled since the last chunk
    finish_reason: str | None = None  # set on the last chunk of a choice: stop | length | cancelled
    completion_tokens: int = 0        # on the last chunk
    cached_tokens: int = 0            # on the last chunk: prompt tokens the prefix cache held
    error: str | None = None          # generation failed or the server gave up on it; no more chunks follow
    error_code: str | None = None     # "shutting_down" | "internal_error"


class Ticket:
    """One HTTP request's sequences and the queue their chunks arrive on (owned by the event loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, arrived: float | None = None, internal: bool = False):
        self.loop = loop
        self.queue: asyncio.Queue[Chunk] = asyncio.Queue()
        self.sids: list[int] = []
        self.prompt_tokens = 0
        self.arrived = time.perf_counter() if arrived is None else arrived   # when the HTTP request came in
        self.internal = internal   # the server's own pass (a draft answer): tokens count, request latencies do not


@dataclass
class _Track:
    """Server-side bookkeeping for one sequence in the engine."""
    ticket: Ticket
    index: int
    last_token_at: float | None = None


def _deliver(items: list[tuple[asyncio.Queue, Chunk]]) -> None:
    for queue, chunk in items:
        queue.put_nowait(chunk)


class RestartPolicy:
    """How often a dead engine process is replaced: at most `max_restarts` within `window` seconds,
    the n-th of them (counted within the window) after `backoff * 2**(n-1)` seconds, at most
    `max_backoff`.

    Bounded, because an engine that dies again right after each start (a poisoned adapter, a
    machine out of memory) would otherwise restart forever, failing every request that reaches it,
    while /live kept saying "alive"; after the budget the server says it is dead, and restarting
    the whole server (fresh memory, a fresh load) is the orchestrator's call. The backoff gives a
    transient cause (memory pressure) time to pass. max_restarts=0: never restart."""

    def __init__(self, max_restarts: int = 5, window: float = 600.0, backoff: float = 1.0, max_backoff: float = 30.0):
        if max_restarts < 0 or window <= 0 or backoff < 0:
            raise ValueError("max_restarts >= 0, window > 0 and backoff >= 0 are required")
        self.max_restarts, self.window, self.backoff, self.max_backoff = max_restarts, window, backoff, max_backoff
        self.times: deque[float] = deque()   # when each restart within the window was granted (time.monotonic)

    def next_delay(self, now: float | None = None) -> float | None:
        """Seconds to wait before the next restart (and count it), or None: the budget is spent."""
        now = time.monotonic() if now is None else now
        while self.times and now - self.times[0] >= self.window:
            self.times.popleft()
        if len(self.times) >= self.max_restarts:
            return None
        delay = min(self.backoff * 2 ** len(self.times), self.max_backoff)
        self.times.append(now)
        return delay

    def describe(self) -> str:
        if not self.max_restarts:
            return "restarts are off: --engine-restarts 0"
        return (f"at most {self.max_restarts} within {self.window:.0f} s: --engine-restarts, "
                f"--engine-restart-window")


class EngineClient:
    def __init__(self, model, tokenizer, *, max_batch: int, max_queue: int = 256, metrics=None,
                 compile: bool = False, row_adapters: bool = False, max_len: int | None = None,
                 kv: dict | None = None, restart: RestartPolicy | None = None):
        """Start the engine process with `model` (its tensors move to shared memory, so the model is
        not copied) and wait until it is ready: compiled decode compiles first (tens of seconds).
        `kv`: the engine's KV pool options (Engine's kv_cache_memory, kv_block_size, prefix_caching).
        `restart`: when to replace an engine process that died (default RestartPolicy()).
        Raises RuntimeError when the engine could not start."""
        self.max_batch, self.max_queue, self.metrics = max_batch, max_queue, metrics
        self.tracks: dict[int, _Track] = {}       # sid -> its request; gone once the sequence finished
        self.calls: dict[int, concurrent.futures.Future] = {}
        self._sids, self._cids = itertools.count(), itertools.count()
        self.lock = threading.Lock()               # tracks and calls
        self.send_lock = threading.Lock()          # writing to the pipe (see _send)
        self.accepting = False
        self.failure: str | None = None           # why the engine process is gone for good, if it is
        self.restarting: str | None = None        # why a new engine process is starting, while it is
        self.closing = False                      # shutting down: a dying engine is not replaced
        self.restart = restart or RestartPolicy()
        self.restarts = 0                         # engine processes started to replace a dead one
        self.deaths = 0                           # engine processes that died unexpectedly (see app.generate)
        self._stopped = threading.Event()         # stop() was called: a pending restart gives up
        # adapters loaded through call("load_adapter", name, path), as the engine should have them now:
        # a replacement engine loads them again before it takes requests (name -> path; `_adapters_epoch`
        # changes with every edit, so a restart can tell that a call came in while it replayed them)
        self.adapters: dict[str, str] = {}
        self._adapters_epoch = 0
        self.outbox: dict[asyncio.AbstractEventLoop, list] = {}   # chunks of the current step, per event loop
        # shared, not copied: CPU tensors now live in shared memory, and CUDA tensors must stay alive in
        # the process that shared them for as long as the engine uses them. A replacement engine starts
        # from the same model object: the engine's own changes to it (adapters loaded by call) live in
        # its process's copy of the modules, so the parent's model is still as it was loaded.
        self.model = model
        self._engine_args = (tokenizer, max_batch, compile, torch.get_num_threads(), row_adapters, max_len, kv or {})
        self.conn, self.process, ready = self._spawn()
        self.max_len: int = ready["max_len"]
        self.kv: dict = ready["kv"]   # the KV pool (Engine.kv_stats), as of the last step
        self.accepting = True
        self.reader = self._start_reader()

    def _spawn(self):
        """Start an engine process and wait until it is ready: (conn, process, its "ready" dict)."""
        ctx = multiprocessing.get_context("spawn")   # never fork a process that has threads running
        conn, child = ctx.Pipe()
        process = ctx.Process(target=engine_process.main, name="livelm-engine", daemon=True,
                              args=(child, self.model, *self._engine_args))
        process.start()
        child.close()
        try:
            kind, value = conn.recv()
        except EOFError:
            process.join(5)
            conn.close()
            raise RuntimeError(f"the engine process exited while starting (exit code {process.exitcode})")
        if kind != "ready":
            process.join(5)
            conn.close()
            raise RuntimeError(value)
        return conn, process, value

    def _start_reader(self) -> threading.Thread:
        # each engine process has its own reader, bound to its own pipe: a dead engine's reader winds up
        # that engine's requests only, whatever the replacement is doing meanwhile
        reader = threading.Thread(target=self._read, args=(self.conn, self.process),
                                  name="livelm-engine-reader", daemon=True)
        reader.start()
        return reader

    # ---- called from the event loop ------------------------------------------------
    def submit(self, requests: list[tuple[list[int], SamplingParams, str | None]], arrived: float | None = None,
               internal: bool = False) -> Ticket:
        """Queue sequences (prompt ids, params, adapter) as one ticket, all or none. `arrived`: when the
        request came in (time.perf_counter), if earlier than now; `internal`: see Ticket."""
        if not self.accepting:
            raise NotAccepting(self._not_accepting())
        for ids, params, _ in requests:
            check_request(ids, params, self.max_len)
        ticket = Ticket(asyncio.get_running_loop(), arrived, internal)
        items = []
        with self.lock:
            # checked again under the lock: the reader thread of a dying engine takes the lock to stop
            # accepting and collect the tracks it must fail, so a ticket is either among those or refused
            # here, never left waiting on an engine that is gone; and it goes to the pipe of the engine
            # it was accepted for, never to a replacement that does not know it
            if not self.accepting:
                raise NotAccepting(self._not_accepting())
            conn = self.conn
            if self.waiting + len(requests) > self.max_queue:
                raise QueueFull(f"{self.waiting} sequences are already waiting "
                                f"(--max-queue {self.max_queue}); retry shortly")
            for i, (ids, params, adapter) in enumerate(requests):
                sid = next(self._sids)
                ticket.sids.append(sid)
                ticket.prompt_tokens += len(ids)
                self.tracks[sid] = _Track(ticket, i)
                items.append((sid, list(ids), params, adapter))
        if not self._send(("add", items), conn):
            with self.lock:
                for sid in ticket.sids:
                    self.tracks.pop(sid, None)
            raise NotAccepting(self._not_accepting() if not self.accepting else "the engine process is gone")
        if self.metrics:
            self.metrics.prompt_tokens.inc(ticket.prompt_tokens)
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Stop generating for a ticket (client gone). Safe to call on a finished ticket."""
        with self.lock:
            live = [sid for sid in ticket.sids if sid in self.tracks]
        if live:
            self._send(("cancel", live))   # a dead engine's sequences are failed by the reader thread

    def _not_accepting(self) -> str:
        if self.failure:
            return f"the engine stopped: {self.failure}"
        if self.restarting:
            return f"{self.restarting}; retry shortly"
        return "the server is shutting down"

    @property
    def running(self) -> int:
        """Sequences holding a cache slot (the engine admits waiting ones as soon as a slot frees)."""
        return min(len(self.tracks), self.max_batch)

    @property
    def waiting(self) -> int:
        return max(0, len(self.tracks) - self.max_batch)

    # ---- called from any thread ------------------------------------------------------
    def call(self, op: str, *args) -> concurrent.futures.Future:
        """Run engine_process.OPS[op](engine, *args) in the engine between two steps; returns its future."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:
            self._track_adapters(op, args)
            if self.restarting and not self.failure:
                # no engine to run it now: the replacement gets the adapters as tracked above before
                # it takes requests (see _restart_after), which is all these calls ask for
                fut.set_result(None)
                return fut
            cid = next(self._cids)
            self.calls[cid] = fut
            conn = self.conn
        if not self._send(("call", cid, op, args), conn):
            with self.lock:
                mine = self.calls.pop(cid, None)   # else the reader thread failed it already
            if mine is not None:
                fut.set_exception(RuntimeError(f"the engine stopped: {self.failure or 'its process is gone'}"))
        return fut

    def _track_adapters(self, op: str, args: tuple) -> None:
        """Keep `self.adapters` as the engine will have them after this call (under self.lock)."""
        if op == "load_adapter":
            name, path = args
            self.adapters[name] = path
        elif op == "unload_adapters":
            # as engine_process.unload_adapters: learned names ("tenant/vNNNN") outside `keep` go; ones
            # a running sequence still uses stay in that engine, but a replacement has no such sequence
            keep = args[0]
            for name in [n for n in self.adapters if "/" in n and n not in keep]:
                del self.adapters[name]
        else:
            return
        self._adapters_epoch += 1

    def begin_shutdown(self, grace: float) -> None:
        """Refuse new work; let running work finish for `grace` seconds, then fail what is left."""
        self.closing = True   # an engine that dies from now on is not replaced
        self.accepting = False
        self._send(("shutdown", grace))

    def _send(self, msg: tuple, conn=None) -> bool:
        """One message to the engine process (`conn`: the pipe of a given one; default the current);
        False if it is gone. Its own lock, never held with self.lock: a send can wait for the engine to
        read (a long prompt fills the pipe), and the reader thread must keep draining the other
        direction meanwhile."""
        with self.send_lock:
            try:
                (conn or self.conn).send(msg)
                return True
            except (OSError, ValueError):   # ValueError: a pipe closed on our side (a dead engine's)
                return False

    def stop(self, timeout: float = 5.0) -> None:
        self.closing = True
        self.accepting = False
        self._stopped.set()   # a restart waiting out its backoff gives up; one starting stops its engine
        with self.lock:
            reader, process = self.reader, self.process
        self._send(("stop",))
        reader.join(timeout)
        process.join(timeout)
        if process.is_alive():
            process.terminate()
            process.join(timeout)

    # ---- the reader thread -----------------------------------------------------------
    def _read(self, conn, process) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            kind = msg[0]
            if kind == "step":
                now = time.perf_counter()
                if self.metrics:
                    self.metrics.steps.observe(msg[1])
                if self.metrics:
                    self.metrics.kv_moved(self.kv, msg[3])
                self.kv = msg[3]
                for event in msg[2]:
                    self._route(now, *event)
            elif kind == "fail":
                _, sids, message, code = msg
                for sid in sids:
                    self._fail(sid, message, code)
            elif kind == "result":
                _, cid, ok, value = msg
                with self.lock:
                    fut = self.calls.pop(cid)
                fut.set_result(value) if ok else fut.set_exception(RuntimeError(value))
            self._flush()
        # the pipe closed: a clean stop, or the engine process died
        process.join(1)
        conn.close()
        died = f"the engine process exited (exit code {process.exitcode})"
        delay = None   # seconds until a replacement starts, if one does
        with self.lock:
            lost = bool(self.tracks or self.calls)
            unexpected = not self.closing
            self.accepting = False
            sids, calls = list(self.tracks), list(self.calls.values())
            self.calls.clear()
            if unexpected:
                self.deaths += 1
                # replace it, if the policy allows; set under the lock, so that no request slips in
                # between "not accepting" and "restarting" and is told the server shuts down
                delay = self.restart.next_delay()
                if delay is None:
                    self.failure = (f"{died}; gave up restarting it after {len(self.restart.times)} restarts "
                                    f"({self.restart.describe()})")
                else:
                    self.restarting = f"{died}; restarting it"
            elif lost:   # died while draining: what is left fails, and nothing restarts
                self.failure = died
        if delay is not None:
            log.warning("%s (pid %s); failing %d unfinished sequences, restarting it in %.0f s (%s)",
                        died, process.pid, len(sids), delay, self.restart.describe())
            threading.Thread(target=self._restart_after, args=(delay,), name="livelm-engine-restart",
                             daemon=True).start()
        elif self.failure:
            log.error("%s; failing %d unfinished sequences", self.failure, len(sids))
        # the dead engine's requests fail now, whatever comes next: they are lost with its KV cache
        message = (f"{died}; this request was lost (the server is restarting its engine: retry shortly)"
                   if self.restarting else self.failure or "the server stopped")
        code = "shutting_down" if not (unexpected or lost) else "internal_error"
        for sid in sids:
            self._fail(sid, message, code)
        for fut in calls:
            fut.set_exception(RuntimeError(f"the engine stopped: {message}"))
        self._flush()

    # ---- restarting (its own thread) ------------------------------------------------------
    def _restart_after(self, delay: float) -> None:
        """Wait out the backoff, start a new engine process, give it the adapters, and take requests again."""
        if self._stopped.wait(delay):
            return
        self.restarts += 1
        if self.metrics:
            self.metrics.engine_restarts.inc()
        try:
            conn, process, ready = self._spawn()
        except Exception as e:   # e.g. out of memory again: counts against the budget like a death
            self._restart_failed(f"the restarted engine process did not start: {e}")
            return
        # The adapters the dead engine had: loaded while no request can reach the new engine, and the
        # last check that none came in meanwhile is made under the same lock as the swap, so a call
        # that edits them (LiveLearner publishing a version) is either replayed here or sent to the new
        # engine by call() itself, never lost in between.
        epoch = None
        try:
            while True:
                with self.lock:
                    if epoch == self._adapters_epoch or self.closing:
                        if not self.closing:
                            self.conn, self.process = conn, process
                            self.kv = ready["kv"]   # a new KV pool: /metrics counts its steps from its own zero
                            self.restarting = None
                            self.accepting = True
                            self.reader = self._start_reader()
                        break
                    epoch, adapters = self._adapters_epoch, dict(self.adapters)
                self._load_adapters(conn, adapters)
        except (EOFError, OSError) as e:
            process.kill()
            process.join(5)
            conn.close()
            self._restart_failed(f"the restarted engine process died while loading adapters ({e!r}, "
                                 f"exit code {process.exitcode})")
            return
        if self._stopped.is_set() or self.closing:   # the server began stopping meanwhile
            if self.process is not process:
                self._stop_process(conn, process)
            return
        log.warning("the engine process was restarted (pid %s, restart %d; %d adapters loaded again)",
                    process.pid, self.restarts, len(adapters))

    def _load_adapters(self, conn, adapters: dict[str, str]) -> None:
        """Give a new engine exactly `adapters`, talking to it directly: its reader does not run yet, and
        it runs no requests, so nothing else is on its pipe. Idempotent (a name already loaded is
        skipped; unload_adapters removes what the set no longer holds), so a second pass is harmless."""
        calls = [("load_adapter", (name, path)) for name, path in adapters.items()]
        calls.append(("unload_adapters", (set(adapters),)))
        for i, (op, args) in enumerate(calls):
            conn.send(("call", -1 - i, op, args))
            _, _, ok, value = conn.recv()
            if not ok:   # e.g. its directory was deleted since: serve without it rather than not at all
                log.warning("the restarted engine could not load %s again: %s", args[0], value)

    def _restart_failed(self, why: str) -> None:
        with self.lock:
            delay = None if self.closing else self.restart.next_delay()
            if delay is None:
                self.failure = (f"{why}; gave up restarting it ({self.restart.describe()})"
                                if not self.closing else why)
                self.restarting = None
        if delay is None:
            log.error("%s", self.failure)
            return
        log.warning("%s; trying again in %.0f s", why, delay)
        self._restart_after(delay)

    def _stop_process(self, conn, process) -> None:
        try:
            conn.send(("stop",))
        except (OSError, ValueError):
            pass
        process.join(5)
        if process.is_alive():
            process.kill()
        conn.close()

    def _route(self, now: float, sid: int, delta: str, logprobs: list[dict], finish_reason: str | None,
               n_out: int, cached: int) -> None:
        track = self.tracks.get(sid)
        if track is None:
            return
        sampled = finish_reason != "cancelled"   # cancellation events carry no token
        timed = self.metrics and not track.ticket.internal
        if sampled and self.metrics:
            self.metrics.generation_tokens.inc()
        if sampled and timed:
            if track.last_token_at is None:
                self.metrics.ttft.observe(now - track.ticket.arrived)
            else:
                self.metrics.itl.observe(now - track.last_token_at)
        if sampled:
            track.last_token_at = now
        if not (delta or logprobs or finish_reason):
            return
        chunk = Chunk(track.index, delta, logprobs)
        if finish_reason:
            chunk.finish_reason = finish_reason
            chunk.completion_tokens = n_out
            chunk.cached_tokens = cached
            with self.lock:
                del self.tracks[sid]
            if timed:
                self.metrics.finished.labels(finish_reason).inc()
                if finish_reason != "cancelled":
                    self.metrics.e2e.observe(now - track.ticket.arrived)
        self._post(track.ticket, chunk)

    def _fail(self, sid: int, message: str, code: str) -> None:
        with self.lock:
            track = self.tracks.pop(sid, None)
        if track is not None:
            self._post(track.ticket, Chunk(track.index, error=message, error_code=code))

    def _post(self, ticket: Ticket, chunk: Chunk) -> None:
        self.outbox.setdefault(ticket.loop, []).append((ticket.queue, chunk))

    def _flush(self) -> None:
        """Hand this message's chunks over: one wake-up of each event loop per step, not one per sequence."""
        outbox, self.outbox = self.outbox, {}
        for loop, items in outbox.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:   # the event loop is closed: nobody is listening any more
                pass
