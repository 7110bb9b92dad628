"""The live learner inside `livelm serve`: feedback in, better answers out, per tenant, while serving.

Three ways to learn, each switchable (`--learn memory,adapter`):
  memory   facts and corrections go into the next prompts at once (livelm/learn/memory.py);
  adapter  a background update trains a LoRA adapter on the tenant's feedback in a separate,
           low-priority process (livelm/learn/update.py), checks it on the probes (the run's own
           and the operator's: livelm/learn/probes.py), and — if it passes the guard — it is
           hot-swapped into the running engine between decode steps.
  (RL runs offline: `livelm rl`.)

Hot swap: every published version is loaded into the model under its own name
("tenant/v0003"); new requests of that tenant use the newest, requests already
running keep the name they started with and finish on the old weights. Old
versions are unloaded once no sequence uses them. All model surgery happens in
the engine process between steps (Scheduler.call, serve/engine_process.py),
never during a forward pass.

Rate limiting: at most one update per tenant at a time, at most one every
`min_interval` seconds, and only once `every_n` new trainable items arrived.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from livelm import runs
from livelm.learn.adapters import AdapterStore
from livelm.learn.memory import Memory, run_system_prompts
from livelm.learn.probes import PROBES_FILE, has_run_probes
from livelm.learn.update import UpdateConfig, replay_pool

log = logging.getLogger("livelm.learn")
UPDATE_TIMEOUT = 600.0
TRAINABLE = ("correction", "preference", "up", "down")


@dataclass
class LearnConfig:
    modes: tuple[str, ...] = ("memory", "adapter")
    every_n: int = 1              # new trainable feedback items that trigger an update
    min_interval: float = 2.0     # seconds between two updates of one tenant
    debounce: float = 0.5         # quiet seconds after feedback before an update starts (0 = at once)
    nice: int = 10                # the update process runs at lower CPU priority than serving
    threads: int = 1
    # Memory looks notes up by the question plus a draft answer (greedy, this many tokens, no notes)
    # for tenants that have notes, as HyDE retrieves with a hypothetical answer: a rephrased question
    # shares few words with the corrected one, but the model's draft repeats the answer that was
    # corrected, which the note is indexed by. 0 = by the question alone. Default assistant, memory
    # mode (efficacy / rephrasings / unrelated same text / still correct): 100 / 55 / 98 / 98% ->
    # 100 / 90 / 97 / 98%; costs ~30 ms before the first token (bench/RESULTS.md).
    memory_draft: int = 32
    # The learned adapter answers only questions in the scope of the feedback it learned from (the
    # question or its draft answer covers enough of one trainable item, the same test memory uses
    # for notes); other questions get the base model. A scope test in front of the edited model is
    # SERAC's design (Mitchell et al. 2022) and GRACE's deferral radius: a LoRA update trained on 20
    # corrections also moves answers to unrelated questions, and the test keeps them as they were.
    # Default assistant, memory + adapter (efficacy / rephrasings / unrelated same text / still
    # correct): off 100 / 100 / 68 / 89% -> on 100 / 92 / 97 / 98%; adapter alone 100 / 72 / 68 / 91% ->
    # 100 / 65 / 97 / 100% (before updates learned other phrasings, UpdateConfig.propagate; with them,
    # and the scope widened by those phrasings: adapter alone 100 / 88 / 97 / 100%). False = every
    # question of the tenant gets the adapter (for feedback meant to change everything, e.g. a style).
    adapter_scope: bool = True
    # Learned adapters kept loaded in the engine at once: the tenants asked most recently keep theirs, and a
    # tenant whose adapter was dropped gets it loaded again (between two decode steps, from the store) at
    # its next request. Bounded, so 100 or 10,000 tenants cost the memory of this many adapters.
    resident_adapters: int = 32
    update: UpdateConfig = field(default_factory=UpdateConfig)


def update_context():
    """Updates run in processes forked from a forkserver that has already imported torch and livelm
    (1.4 s of imports per update otherwise, a sixth of the feedback -> live budget). The forkserver is
    a fresh single-threaded process, so forking it is safe where forking the server (threads, an event
    loop, OpenMP pools) is not. Where there is no forkserver (Windows), updates are spawned."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["livelm.learn.update"])
    return ctx


def run_update_process(run: Path, db_path: Path, tenant: str | None, store_root: Path, cfg: LearnConfig) -> dict:
    """One update (livelm/learn/update.py) in its own low-priority process; its result dict. tenant None:
    only answer the guard's probes with the base model, for the updates to come (warm_base_answers).

    A separate process, so training never holds the server's interpreter or CPU threads and a crash
    cannot take serving down; a crash or a timeout raises RuntimeError here."""
    from livelm.learn.update import update_child
    ctx = update_context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=update_child, name=f"livelm-update-{tenant or 'warm'}", daemon=True,
                       args=(send, str(run), str(db_path), tenant, str(store_root), asdict(cfg.update),
                             cfg.threads, cfg.nice))
    proc.start()
    send.close()
    try:
        if not recv.poll(UPDATE_TIMEOUT):
            proc.kill()
            raise RuntimeError(f"the update took longer than {UPDATE_TIMEOUT:.0f} s and was stopped")
        try:
            result = recv.recv()
        except EOFError:
            proc.join(5)
            raise RuntimeError(f"the update process died (exit code {proc.exitcode})") from None
    finally:
        recv.close()
        proc.join(30)
    for warning in result.pop("warnings", []):      # e.g. "the run's training chats are gone"
        log.warning("update for %s: %s", tenant, warning)
    if result.get("status") == "failed":
        raise RuntimeError(result.get("error", "update failed"))
    return result


class LiveLearner:
    def __init__(self, run: Path, db_path: Path, store_root: Path, scheduler, feedback_store, cfg: LearnConfig):
        self.run, self.db_path, self.cfg = Path(run), Path(db_path), cfg
        self.store = AdapterStore(store_root)
        self.scheduler = scheduler
        adapters = "adapter" in cfg.modes
        run_config = json.loads((self.run / "config.json").read_text())
        # notes (memory mode) and the adapter's scope (adapter mode), which the run's training chats widen;
        # notes go under the run's own system prompt when a conversation has none
        examples = replay_pool(run_config, self.run) if adapters and cfg.adapter_scope else []
        from livelm.tokenizer import Tokenizer
        self.memory = Memory(feedback_store, examples=examples,
                             system_prompts=run_system_prompts(run_config, Tokenizer.load(self.run)))
        if adapters and not has_run_probes(self.run):
            log.warning("%s records no probes of its own (%s); the update guard checks the project's general "
                        "probes%s", self.run, PROBES_FILE, " and the --regression-file" if cfg.update.regression_file
                        else " (pass --regression-file for questions whose answers must stay right)")
        self.feedback = feedback_store
        self.loaded: dict[str, str] = {}        # tenant -> adapter name live in the engine
        self._asked: dict[str, float] = {}      # tenant -> when a request last used its adapter (LRU)
        self._state_mtime: dict[str, float] = {}
        self._busy: set[str] = set()
        self._last_update: dict[str, float] = {}
        self._seen: dict[str, int] = {}         # tenant -> last feedback id an update has covered
        self._timers: dict[str, threading.Timer] = {}   # tenant -> pending (debounced) update start
        self._pending_since: dict[str, float] = {}
        self._lock = threading.Lock()
        self.history: list[dict] = []           # results of updates, newest last (for /metrics and tests)
        # a restarted server comes back with the live versions of the tenants updated last (resident_adapters
        # of them); the others are loaded at their first request
        for tenant in sorted(self.store.tenants(), key=self._state_age)[:cfg.resident_adapters]:
            self._sync(tenant)
        if adapters and update_context().get_start_method() == "forkserver":
            from multiprocessing import forkserver
            try:
                forkserver.ensure_running()    # its imports happen now, not in the first update's latency
            except OSError as e:               # serving goes on; each update will say why it cannot start
                log.warning("the update forkserver did not start (%s); updates will retry it", e)
        if adapters:   # the base model's answers to the guard's probes, before the first feedback needs them
            threading.Thread(target=self._warm, name="livelm-learn-warm", daemon=True).start()

    def _warm(self) -> None:
        try:
            result = run_update_process(self.run, self.db_path, None, self.store.root, self.cfg)
            log.info("update guard's probes answered by the base model: %s prompts in %s s", result.get("prompts"),
                     result.get("seconds"))
        except Exception as e:   # the first update answers them itself (also: the server stopped meanwhile)
            log.info("the update guard's probes were not answered ahead (%s); the first update will", e)

    def _state_age(self, tenant: str) -> float:
        try:
            return -(self.store.root / tenant / "state.json").stat().st_mtime
        except (OSError, ValueError):
            return 0.0

    # ---- per request --------------------------------------------------------------
    def recall(self, tenant: str, messages: list[dict], draft: str = "") -> tuple[list[dict], list[str]]:
        """Memory: (messages with this tenant's relevant notes, the notes); unchanged when memory is off."""
        return self.memory.recall(tenant, messages, draft) if "memory" in self.cfg.modes else (messages, [])

    def wants_draft(self, tenant: str) -> bool:
        """Should this tenant's question get a draft answer first, for memory's lookup or the adapter's scope?"""
        if not self.cfg.memory_draft:
            return False
        if "memory" in self.cfg.modes and self.memory.wants_draft(tenant):
            return True
        return bool(self.cfg.adapter_scope and self._adapter(tenant))

    def adapter_for(self, tenant: str, question: str | None = None, draft: str = "") -> str | None:
        """The engine adapter name for this tenant's question (None = the base model). With
        `adapter_scope`, only a question near the tenant's trainable feedback gets the adapter; an
        unknown question (None) always does."""
        name = self._adapter(tenant)
        if name and self.cfg.adapter_scope and question is not None \
                and not self.memory.in_scope(tenant, question, draft):
            return None
        return name

    def _adapter(self, tenant: str) -> str | None:
        if "adapter" not in self.cfg.modes:
            return None
        self._sync(tenant)
        name = self.loaded.get(tenant)
        if name:
            self._asked[tenant] = time.monotonic()
            if len(self.loaded) > self.cfg.resident_adapters:
                self._evict(keep=tenant)
        return name

    def _evict(self, keep: str) -> None:
        """Unload the least recently asked tenants' adapters down to resident_adapters (not `keep`'s; a
        request still running on one keeps it until it ends: engine_process.unload_adapters)."""
        with self._lock:
            others = sorted((t for t in self.loaded if t != keep), key=lambda t: self._asked.get(t, 0.0))
            for tenant in others[:len(self.loaded) - self.cfg.resident_adapters]:
                del self.loaded[tenant]
                self._state_mtime.pop(tenant, None)   # the next request syncs (loads) it again
            keep_names = set(self.loaded.values())
        self.scheduler.call("unload_adapters", keep_names)

    # ---- versions -----------------------------------------------------------------
    def _sync(self, tenant: str) -> None:
        """Follow the tenant's state.json (changed by an update, the API or `livelm adapters rollback`)."""
        path = self.store.root / tenant / "state.json"
        try:
            mtime = path.stat().st_mtime_ns
        except (FileNotFoundError, ValueError):
            mtime = 0
        if self._state_mtime.get(tenant) == mtime:
            return
        with self._lock:
            if self._state_mtime.get(tenant) == mtime:
                return
            current = self.store.current(tenant)
            name = f"{tenant}/{current.name}" if current else None
            if name and name != self.loaded.get(tenant):
                # in the engine process, between two decode steps (serve/engine_process.py)
                self.scheduler.call("load_adapter", name, str(current)).result(timeout=60)
            if name:
                self.loaded[tenant] = name
            else:
                self.loaded.pop(tenant, None)
            self._state_mtime[tenant] = mtime
            # learned versions nobody uses any more (requests still running on one keep it)
            self.scheduler.call("unload_adapters", set(self.loaded.values()))

    def versions(self, tenant: str) -> list[dict]:
        return self.store.versions(tenant)

    def rollback(self, tenant: str, to: str | None = None) -> str | None:
        current = self.store.rollback(tenant, to)
        self._sync(tenant)
        return current

    # ---- learning -----------------------------------------------------------------
    def on_feedback(self, tenant: str) -> bool:
        """Called after a feedback item is stored. Returns True if an update is due for this tenant.

        The update starts once the tenant's feedback has been quiet for `debounce` seconds (at most
        `4 * debounce` after the first pending item): a burst of corrections becomes one update that
        covers all of them, instead of an update for the first one that the rest must wait behind."""
        if "adapter" not in self.cfg.modes:
            return False
        items = [r for r in self.feedback.list(tenant, limit=100_000, after_id=self._seen.get(tenant, 0))
                 if r.kind in TRAINABLE]
        if len(items) < self.cfg.every_n:
            return False
        if self.cfg.debounce <= 0:
            return self._start_if_due(tenant)
        with self._lock:
            now = time.monotonic()
            first = self._pending_since.setdefault(tenant, now)
            if tenant in self._timers:
                self._timers[tenant].cancel()
            wait = 0.0 if now - first >= 4 * self.cfg.debounce else self.cfg.debounce
            timer = threading.Timer(wait, self._start_if_due, args=(tenant,))
            timer.daemon = True
            self._timers[tenant] = timer
        timer.start()
        return True

    def _start_if_due(self, tenant: str) -> bool:
        with self._lock:
            self._timers.pop(tenant, None)
            self._pending_since.pop(tenant, None)
        items = [r for r in self.feedback.list(tenant, limit=100_000, after_id=self._seen.get(tenant, 0))
                 if r.kind in TRAINABLE]
        with self._lock:
            due = (len(items) >= self.cfg.every_n and tenant not in self._busy
                   and time.monotonic() - self._last_update.get(tenant, -1e9) >= self.cfg.min_interval)
            if not due:
                return False
            self._busy.add(tenant)
        threading.Thread(target=self._update, args=(tenant,), name=f"livelm-learn-{tenant}", daemon=True).start()
        return True

    def _fits(self, tenant: str) -> str | None:
        """None when an update fits in the memory available now; else why not (livelm/footprint.py)."""
        from livelm import footprint
        from livelm.models.gpt import GPTConfig
        try:
            cfg = GPTConfig.from_dict(runs.read_config(self.run)["model"])
        except (OSError, ValueError, KeyError, TypeError):
            return None   # not a decoder the estimate knows: let the update say what is wrong
        try:
            footprint.check(footprint.live_update(cfg, self.cfg.update.batch + self.cfg.update.replay,
                                                  self.cfg.update.rank))
        except footprint.NotEnoughMemory as e:
            return str(e)
        return None

    def _update(self, tenant: str) -> None:
        t0 = time.perf_counter()
        try:
            short = self._fits(tenant)
            if short is not None:   # postponed, not OOM-killed: the timer below tries again later
                raise MemoryError(f"postponed: {short}")
            result = run_update_process(self.run, self.db_path, tenant, self.store.root, self.cfg)
            self._seen[tenant] = max(self._seen.get(tenant, 0), int(result.get("last_feedback_id") or 0))
            if result.get("status") == "live":
                self._sync(tenant)   # hot swap: load the new version between decode steps
            result["latency_s"] = round(time.perf_counter() - t0, 2)
            log.info("update for %s: %s", tenant, {k: result.get(k) for k in ("status", "version", "probe_before",
                                                                               "probe_after", "trained_on",
                                                                               "latency_s")})
        except MemoryError as e:
            result = {"tenant": tenant, "status": "postponed", "error": str(e)}
            log.warning("update for %s %s", tenant, e)
        except Exception as e:  # a failed update never takes serving down
            result = {"tenant": tenant, "status": "failed", "error": str(e)}
            log.error("update for %s failed: %s", tenant, e)
        finally:
            with self._lock:
                self._busy.discard(tenant)
                self._last_update[tenant] = time.monotonic()
        self.history.append(result)
        # feedback that arrived during the update gets its own update, once the interval has passed
        timer = threading.Timer(self.cfg.min_interval, self._start_if_due, args=(tenant,))
        timer.daemon = True
        timer.start()

    def busy(self) -> bool:
        return bool(self._busy)
