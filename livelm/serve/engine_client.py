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
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import multiprocessing
import threading
import time
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


class EngineClient:
    def __init__(self, model, tokenizer, *, max_batch: int, max_queue: int = 256, metrics=None,
                 compile: bool = False, row_adapters: bool = False, max_len: int | None = None,
                 kv: dict | None = None):
        """Start the engine process with `model` (its tensors move to shared memory, so the model is
        not copied) and wait until it is ready: compiled decode compiles first (tens of seconds).
        `kv`: the engine's KV pool options (Engine's kv_cache_memory, kv_block_size, prefix_caching).
        Raises RuntimeError when the engine could not start."""
        self.max_batch, self.max_queue, self.metrics = max_batch, max_queue, metrics
        self.tracks: dict[int, _Track] = {}       # sid -> its request; gone once the sequence finished
        self.calls: dict[int, concurrent.futures.Future] = {}
        self._sids, self._cids = itertools.count(), itertools.count()
        self.lock = threading.Lock()               # tracks and calls
        self.send_lock = threading.Lock()          # writing to the pipe (see _send)
        self.accepting = False
        self.failure: str | None = None           # why the engine process is gone, if it died
        self.outbox: dict[asyncio.AbstractEventLoop, list] = {}   # chunks of the current step, per event loop
        ctx = multiprocessing.get_context("spawn")   # never fork a process that has threads running
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=engine_process.main, name="livelm-engine", daemon=True,
                                   args=(child, model, tokenizer, max_batch, compile, torch.get_num_threads(),
                                         row_adapters, max_len, kv or {}))
        self.process.start()
        child.close()
        # shared, not copied: CPU tensors now live in shared memory, and CUDA tensors must stay alive in
        # the process that shared them for as long as the engine uses them
        self.model = model
        try:
            kind, value = self.conn.recv()
        except EOFError:
            self.process.join(5)
            raise RuntimeError(f"the engine process exited while starting (exit code {self.process.exitcode})")
        if kind != "ready":
            self.process.join(5)
            raise RuntimeError(value)
        self.max_len: int = value["max_len"]
        self.kv: dict = value["kv"]   # the KV pool (Engine.kv_stats), as of the last step
        self.accepting = True
        self.reader = threading.Thread(target=self._read, name="livelm-engine-reader", daemon=True)
        self.reader.start()

    # ---- called from the event loop ------------------------------------------------
    def submit(self, requests: list[tuple[list[int], SamplingParams, str | None]], arrived: float | None = None,
               internal: bool = False) -> Ticket:
        """Queue sequences (prompt ids, params, adapter) as one ticket, all or none. `arrived`: when the
        request came in (time.perf_counter), if earlier than now; `internal`: see Ticket."""
        if not self.accepting:
            raise NotAccepting(f"the engine stopped: {self.failure}" if self.failure
                               else "the server is shutting down")
        for ids, params, _ in requests:
            check_request(ids, params, self.max_len)
        ticket = Ticket(asyncio.get_running_loop(), arrived, internal)
        items = []
        with self.lock:
            if self.waiting + len(requests) > self.max_queue:
                raise QueueFull(f"{self.waiting} sequences are already waiting "
                                f"(--max-queue {self.max_queue}); retry shortly")
            for i, (ids, params, adapter) in enumerate(requests):
                sid = next(self._sids)
                ticket.sids.append(sid)
                ticket.prompt_tokens += len(ids)
                self.tracks[sid] = _Track(ticket, i)
                items.append((sid, list(ids), params, adapter))
        if not self._send(("add", items)):
            with self.lock:
                for sid in ticket.sids:
                    self.tracks.pop(sid, None)
            raise NotAccepting("the engine process is gone")
        if self.metrics:
            self.metrics.prompt_tokens.inc(ticket.prompt_tokens)
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Stop generating for a ticket (client gone). Safe to call on a finished ticket."""
        with self.lock:
            live = [sid for sid in ticket.sids if sid in self.tracks]
        if live:
            self._send(("cancel", live))   # a dead engine's sequences are failed by the reader thread

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
            cid = next(self._cids)
            self.calls[cid] = fut
        if not self._send(("call", cid, op, args)):
            with self.lock:
                mine = self.calls.pop(cid, None)   # else the reader thread failed it already
            if mine is not None:
                fut.set_exception(RuntimeError(f"the engine stopped: {self.failure or 'its process is gone'}"))
        return fut

    def begin_shutdown(self, grace: float) -> None:
        """Refuse new work; let running work finish for `grace` seconds, then fail what is left."""
        self.accepting = False
        self._send(("shutdown", grace))

    def _send(self, msg: tuple) -> bool:
        """One message to the engine process; False if it is gone. Its own lock, never held with
        self.lock: a send can wait for the engine to read (a long prompt fills the pipe), and the
        reader thread must keep draining the other direction meanwhile."""
        with self.send_lock:
            try:
                self.conn.send(msg)
                return True
            except OSError:
                return False

    def stop(self, timeout: float = 5.0) -> None:
        self.accepting = False
        self._send(("stop",))
        self.reader.join(timeout)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout)

    # ---- the reader thread -----------------------------------------------------------
    def _read(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
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
        self.process.join(1)
        with self.lock:
            if self.accepting or self.tracks:
                self.failure = f"the engine process exited (exit code {self.process.exitcode})"
                log.error("%s; failing %d unfinished sequences", self.failure, len(self.tracks))
            self.accepting = False
            sids, calls = list(self.tracks), list(self.calls.values())
            self.calls.clear()
        for sid in sids:
            self._fail(sid, self.failure or "the server stopped", "internal_error" if self.failure else "shutting_down")
        for fut in calls:
            fut.set_exception(RuntimeError(f"the engine stopped: {self.failure}"))
        self._flush()

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
