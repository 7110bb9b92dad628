"""The one thread that owns the model.

HTTP handlers run on the asyncio event loop; the model runs here. The split:

    event loop                              scheduler thread
    ----------                              ----------------
    submit(): engine.add() under the lock   loop: engine.step() while there is work,
      -> Ticket with an asyncio.Queue             sleep on a Condition when idle
    await ticket.queue.get()           <--  each Event becomes a Chunk, handed to the
    cancel(): engine.cancel(), wake up        request's loop with call_soon_threadsafe

Only this thread calls `engine.step()`, so the model never runs twice at once
and the event loop never blocks on a forward pass (GET /health answers while
a batch is decoding). A cancelled sequence is retired by the next step — a step
takes milliseconds, so a disconnected client's slot is free well within a second.

`call_between_steps(fn)` runs `fn` on this thread between two steps, when no
forward pass is in flight: the place to swap adapters or weights live.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field

from livelm.infer.engine import Engine, Event, Sequence
from livelm.infer.sampling import SamplingParams

log = logging.getLogger("livelm.serve")


class QueueFull(Exception):
    """More sequences are waiting than --max-queue allows; the client should retry later."""


class NotAccepting(Exception):
    """The server is shutting down."""


@dataclass
class Chunk:
    """What one choice of a request got from one engine step."""
    index: int                       # which choice (n > 1, or several prompts)
    delta: str = ""                  # new text: never splits a UTF-8 char, never holds part of a stop string
    logprobs: list[dict] = field(default_factory=list)   # entries for the tokens sampled since the last chunk
    finish_reason: str | None = None  # set on the last chunk of a choice: stop | length | cancelled
    completion_tokens: int = 0        # on the last chunk
    error: str | None = None          # generation failed or the server gave up on it; no more chunks follow
    error_code: str | None = None     # "shutting_down" | "internal_error"


class Ticket:
    """One HTTP request's sequences and the queue their chunks arrive on (owned by the event loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, arrived: float | None = None, internal: bool = False):
        self.loop = loop
        self.queue: asyncio.Queue[Chunk] = asyncio.Queue()
        self.seqs: list[Sequence] = []
        self.arrived = time.perf_counter() if arrived is None else arrived   # when the HTTP request came in
        self.internal = internal   # the server's own pass (a draft answer): tokens count, request latencies do not

    @property
    def prompt_tokens(self) -> int:
        return sum(len(s.prompt_ids) for s in self.seqs)


@dataclass
class _Track:
    """Scheduler-side bookkeeping for one sequence."""
    ticket: Ticket
    index: int
    logprobs_sent: int = 0
    last_token_at: float | None = None


def _deliver(items: list[tuple[asyncio.Queue, Chunk]]) -> None:
    for queue, chunk in items:
        queue.put_nowait(chunk)


class Scheduler:
    def __init__(self, engine: Engine, max_queue: int = 256, metrics=None):
        self.engine = engine
        self.max_queue = max_queue
        self.metrics = metrics
        self.cond = threading.Condition()
        self.tracks: dict[int, _Track] = {}
        self.calls: list[tuple] = []
        self.accepting = True
        self.deadline: float | None = None   # shutdown: give up on unfinished work after this
        self.stopped = False
        self.outbox: dict[asyncio.AbstractEventLoop, list] = {}   # chunks of the current step, per event loop
        self.thread = threading.Thread(target=self._run, name="livelm-scheduler", daemon=True)

    def start(self) -> "Scheduler":
        self.thread.start()
        return self

    # ---- called from the event loop ------------------------------------------------
    def submit(self, requests: list[tuple[list[int], SamplingParams, str | None]], arrived: float | None = None,
               internal: bool = False) -> Ticket:
        """Queue sequences (prompt ids, params, adapter) as one ticket, all or none. `arrived`: when the
        request came in (time.perf_counter), if earlier than now; `internal`: see Ticket."""
        if not self.accepting:
            raise NotAccepting("the server is shutting down")
        ticket = Ticket(asyncio.get_running_loop(), arrived, internal)
        # engine.lock: the scheduler cannot admit (and so emit events for) a sequence before it is tracked
        with self.engine.lock:
            if len(self.engine.waiting) + len(requests) > self.max_queue:
                raise QueueFull(f"{len(self.engine.waiting)} sequences are already waiting "
                                f"(--max-queue {self.max_queue}); retry shortly")
            try:
                for i, (ids, params, adapter) in enumerate(requests):
                    seq = self.engine.add(ids, params, adapter=adapter)
                    ticket.seqs.append(seq)
                    self.tracks[seq.id] = _Track(ticket, i)
            except Exception:
                self._drop(ticket)
                raise
        if self.metrics:
            self.metrics.prompt_tokens.inc(ticket.prompt_tokens)
        self._wake()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Stop generating for a ticket (client gone). Safe to call on a finished ticket."""
        with self.engine.lock:
            for seq in ticket.seqs:
                if not seq.finished:
                    self.engine.cancel(seq)
        self._wake()

    def call_between_steps(self, fn) -> concurrent.futures.Future:
        """Run fn() on the scheduler thread while no forward pass is running; returns its future."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.cond:
            self.calls.append((fn, fut))
            self.cond.notify()
        return fut

    def begin_shutdown(self, grace: float) -> None:
        """Refuse new work; let running work finish for `grace` seconds, then fail what is left."""
        self.accepting = False
        with self.cond:
            self.deadline = time.perf_counter() + grace
            self.cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)

    @property
    def idle(self) -> bool:
        return not self.engine.has_work

    def _wake(self) -> None:
        with self.cond:
            self.cond.notify()

    def _drop(self, ticket: Ticket) -> None:
        with self.engine.lock:
            for seq in ticket.seqs:
                self.tracks.pop(seq.id, None)
                if seq in self.engine.waiting:
                    self.engine.waiting.remove(seq)
                    seq.finish_reason = "cancelled"

    # ---- the scheduler thread ------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.cond:
                while not (self.engine.has_work or self.calls or self.stopped):
                    self.cond.wait()
                calls, self.calls = self.calls, []
                if self.stopped:
                    self._abort_all("the server stopped", "shutting_down")
                    for _, fut in calls:
                        fut.cancel()
                    return
            for fn, fut in calls:
                try:
                    fut.set_result(fn())
                except BaseException as e:  # the caller sees it through the future
                    fut.set_exception(e)
            if self.deadline is not None and time.perf_counter() > self.deadline and self.engine.has_work:
                self._abort_all("the server is shutting down and this request did not finish in time",
                                "shutting_down")
            if not self.engine.has_work:
                continue
            t0 = time.perf_counter()
            try:
                events = self.engine.step()
            except Exception as e:
                # never let one bad step kill the thread: fail what is in flight, keep serving
                log.exception("engine step failed")
                self._abort_all(f"generation failed: {type(e).__name__}: {e}", "internal_error")
                continue
            now = time.perf_counter()
            if self.metrics:
                self.metrics.steps.observe(now - t0)
            for ev in events:
                self._route(ev, now)
            self._flush()

    def _route(self, ev: Event, now: float) -> None:
        seq = ev.seq
        track = self.tracks.get(seq.id)
        if track is None:
            return
        sampled = seq.finish_reason != "cancelled"   # cancellation events carry no token
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
        new_lp: list[dict] = []
        if seq.params.logprobs is not None:
            # the end-of-turn token gets a logprob entry but no text: keep entries aligned with out_ids
            upto = len(seq.out_ids)
            new_lp = seq.logprobs[track.logprobs_sent:upto]
            track.logprobs_sent = max(track.logprobs_sent, upto)
        if not (ev.delta or new_lp or ev.finished):
            return
        chunk = Chunk(track.index, ev.delta, new_lp)
        if ev.finished:
            chunk.finish_reason = seq.finish_reason
            chunk.completion_tokens = len(seq.out_ids)
            del self.tracks[seq.id]
            if timed:
                self.metrics.finished.inc(1, seq.finish_reason)
                if seq.finish_reason != "cancelled":
                    self.metrics.e2e.observe(now - track.ticket.arrived)
        self._post(track.ticket, chunk)

    def _post(self, ticket: Ticket, chunk: Chunk) -> None:
        self.outbox.setdefault(ticket.loop, []).append((ticket.queue, chunk))

    def _flush(self) -> None:
        """Hand this step's chunks over: one wake-up of each event loop per step, not one per sequence."""
        outbox, self.outbox = self.outbox, {}
        for loop, items in outbox.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:   # the event loop is closed: nobody is listening any more
                pass

    def _abort_all(self, message: str, code: str) -> None:
        """Retire every sequence and tell each waiting client why."""
        with self.engine.lock:
            for seq in list(self.engine.waiting) + list(self.engine.running):
                self.engine.abort(seq)
            tracks, self.tracks = self.tracks, {}
        for track in tracks.values():
            self._post(track.ticket, Chunk(track.index, error=message, error_code=code))
        self._flush()
