"""The engine's own process: the server's model runs here, its HTTP side in the parent.

Why a process and not a thread: a decode step is hundreds of small PyTorch calls,
and each one gives up and takes back Python's interpreter lock. With the HTTP event
loop in the same interpreter, every one of those hand-overs can wait for the loop,
so on a 2-core machine the engine thread ran at ~70% of its speed under 16 streaming
clients while the second core mostly idled (bench/RESULTS.md, Serving). In its own
process the engine has an interpreter to itself, as vLLM's V1 engine core does.

The protocol is a pipe of small tuples (pickled by multiprocessing):

    server -> engine                               engine -> server
    ("add", [(sid, prompt_ids, params, adapter)])  ("ready", {max_len, kv}) | ("failed", message)   once, at start
    ("cancel", [sid, ...])                         ("step", seconds, [(sid, delta, logprobs, finish_reason, n_out,
                                                                       cached_tokens)], kv)
    ("call", cid, op, args)                        ("result", cid, ok, value or message)
    ("shutdown", grace_seconds)                    ("fail", [sid, ...], message, code)
    ("stop",)

`sid` is the server's name for a sequence. A step message holds one entry per sequence
the step touched, even when it produced no text, so the server can count tokens and
time them; `kv` is Engine.kv_stats() after the step (for /metrics). The loop blocks on
the pipe while idle and only polls it between steps while busy; a closed pipe (the
server died) ends the process.
"""
from __future__ import annotations

import logging
import signal
import time
import traceback

import torch

from livelm.infer.engine import Engine
from livelm.models import lora

log = logging.getLogger("livelm.engine")


# ---- operations the server may run between two steps ("call") ------------------------------
def load_adapter(engine: Engine, name: str, path: str) -> None:
    """Make a LoRA adapter (a directory) available to requests under `name`; rows choose it per step."""
    if name not in lora.adapter_names(engine.model):
        lora.load_adapter(engine.model, path, name)
        lora.set_active(engine.model, None)
        engine.adapter_changed(name)   # new weights under this name: prefixes cached with older ones are stale
    engine.use_row_adapters()


def unload_adapters(engine: Engine, keep: set[str]) -> None:
    """Free learned adapters (names with a '/': tenant/version) that are neither in `keep` nor in use."""
    in_use = {s.adapter for s in list(engine.running) + list(engine.waiting)}
    for name in lora.adapter_names(engine.model):
        if "/" in name and name not in keep | in_use:
            lora.remove_adapter(engine.model, name)


OPS = {"load_adapter": load_adapter, "unload_adapters": unload_adapters}


class EngineLoop:
    def __init__(self, conn, engine: Engine):
        self.conn, self.engine = conn, engine
        self.seqs: dict[int, object] = {}        # sid -> engine Sequence
        self.sid: dict[int, int] = {}            # engine sequence id -> sid
        self.logprobs_sent: dict[int, int] = {}  # sid -> logprob entries already sent
        self.deadline: float | None = None       # shutting down: fail what is unfinished after this

    def run(self) -> None:
        while True:
            busy = self.engine.has_work
            # idle: sleep until a command arrives; busy: take only what has already arrived
            while self.conn.poll(0 if busy else None):
                if not self.handle(self.conn.recv()):
                    return
                busy = self.engine.has_work
            if self.deadline is not None and time.perf_counter() > self.deadline and self.engine.has_work:
                self.abort_all("the server is shutting down and this request did not finish in time",
                               "shutting_down")
            if self.engine.has_work:
                self.step()

    def handle(self, msg: tuple) -> bool:
        kind = msg[0]
        if kind == "add":
            for sid, ids, params, adapter in msg[1]:
                try:
                    seq = self.engine.add(ids, params, adapter=adapter)
                except Exception as e:   # the server checks first; this is a bug, but one request's only
                    self.conn.send(("fail", [sid], f"{type(e).__name__}: {e}", "internal_error"))
                    continue
                self.seqs[sid], self.sid[seq.id], self.logprobs_sent[sid] = seq, sid, 0
        elif kind == "cancel":
            for sid in msg[1]:
                if sid in self.seqs:
                    self.engine.cancel(self.seqs[sid])
        elif kind == "call":
            _, cid, op, args = msg
            try:
                self.conn.send(("result", cid, True, OPS[op](self.engine, *args)))
            except Exception as e:
                self.conn.send(("result", cid, False, f"{type(e).__name__}: {e}"))
        elif kind == "shutdown":
            self.deadline = time.perf_counter() + msg[1]
        elif kind == "stop":
            self.abort_all("the server stopped", "shutting_down")
            return False
        return True

    def step(self) -> None:
        t0 = time.perf_counter()
        try:
            events = self.engine.step()
        except Exception as e:
            # never let one bad step end the process: fail what is in flight, keep serving
            log.error("engine step failed\n%s", traceback.format_exc())
            self.abort_all(f"generation failed: {type(e).__name__}: {e}", "internal_error")
            return
        seconds = time.perf_counter() - t0
        out = []
        for ev in events:
            seq = ev.seq
            sid = self.sid.get(seq.id)
            if sid is None:
                continue
            logprobs = []
            if seq.params.logprobs is not None:
                # the end-of-turn token gets a logprob entry but no text: keep entries aligned with out_ids
                upto = len(seq.out_ids)
                logprobs = seq.logprobs[self.logprobs_sent[sid]:upto]
                self.logprobs_sent[sid] = max(self.logprobs_sent[sid], upto)
            out.append((sid, ev.delta, logprobs, seq.finish_reason if ev.finished else None, len(seq.out_ids),
                        seq.cached_tokens))
            if ev.finished:
                self.forget(sid)
        self.conn.send(("step", seconds, out, self.engine.kv_stats()))

    def forget(self, sid: int) -> None:
        seq = self.seqs.pop(sid)
        self.sid.pop(seq.id, None)
        self.logprobs_sent.pop(sid, None)

    def abort_all(self, message: str, code: str) -> None:
        """Retire every sequence and tell the server which, and why."""
        for seq in list(self.engine.waiting) + list(self.engine.running):
            self.engine.abort(seq)
        sids = list(self.seqs)
        for sid in sids:
            self.forget(sid)
        if sids:
            self.conn.send(("fail", sids, message, code))


def main(conn, model, tokenizer, max_batch: int, compile: bool, threads: int, row_adapters: bool,
         max_len: int | None = None, kv: dict | None = None) -> None:
    """The engine process's entry point (multiprocessing, spawn). `model` arrives in shared memory."""
    # Ctrl-C in a terminal reaches the whole process group: the server decides when the engine stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(threads)
    from livelm import machine
    machine.tame_malloc()    # a spawned process: the server's setting does not carry over
    try:
        # the adapter is chosen per request, never globally
        engine = Engine(model, tokenizer, max_batch=max_batch, max_len=max_len, compile=compile,
                        row_adapters=row_adapters, **(kv or {}))
        engine.warm_up()   # compiled decode: compile now, while the server still answers "loading"
    except Exception as e:
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", {"max_len": engine.max_len, "kv": engine.kv_stats()}))
    try:
        EngineLoop(conn, engine).run()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass   # the server is gone: nobody is listening any more
