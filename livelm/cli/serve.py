"""`livelm serve`: bind the socket, build the app (livelm/serve/app.py) and run it under uvicorn.

The flags of live learning come from LearnConfig and UpdateConfig by the flag generator
(livelm/cli/flags.py) as `--learn-*`, keeping the names older than it (`--learn-every`,
`--probe-size`, `--max-probe-drop`, `--regression-file`).
"""
from __future__ import annotations

import copy
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from livelm.cli.flags import add_dataclass_flags, add_inference_flags, add_kv_flags, dataclass_values, engine_options

PARSER_KW = {"serve": {"description": "Serve a run (and LoRA adapters) over an OpenAI-compatible API with continuous "
                                      "batching, plus a web chat page at /. Prints the URL on stdout when ready."}}

# fields with flags of their own (--learn, --learn-adapter-scope) or none: UpdateConfig.modes is --learn-modes
LEARN_CONFIG_SKIP = ("modes", "adapter_scope", "update")
LEARN_UPDATE_SKIP = ("scoped",)
# public flag names of the learning configs' fields, where they are not --learn-FIELD
LEARN_NAMES = {"every_n": "learn-every", "min_interval": "learn-interval", "probe_size": "probe-size",
               "max_drop": "max-probe-drop", "regression_file": "regression-file"}
LEARN_HELP = {
    "every_n": "new trainable feedback items per update", "min_interval": "minimum seconds between two updates of "
    "one tenant", "debounce": "quiet seconds after feedback before an update starts, so a burst is one update",
    "nice": "CPU priority the update process lowers itself by", "threads": "torch threads of the update process",
    "memory_draft": "memory (and the adapter's scope) look up by the question and a greedy draft answer of N "
                    "tokens, for tenants with notes or a learned adapter (0 = the question alone)",
    "resident_adapters": "learned adapters kept loaded at once; the least recently asked tenants' are "
                         "unloaded and loaded again at their next request",
    "steps": "training steps per update", "rank": "LoRA rank of learned adapters", "lr": "learning rate of updates",
    "batch": "DPO pairs, KTO items and distilled rephrasings sampled per update step",
    "beta": "DPO/KTO temperature", "modes": "objectives used by updates",
    "replay": "replayed training chats per update step, against forgetting",
    "replay_loss": "replayed chats keep the model's own next-token distribution (kl) or train on their text (sft)",
    "replay_weight": "weight of the replay loss",
    "replay_file": "chats (JSONL/JSON, as finetune reads) to replay instead of the run's own training data; "
                   "without either, updates replay the model's own answers to general prompts",
    "correction_pairs": "also a DPO pair 'correction > the answer it corrects' per correction",
    "propagate": "other phrasings of each corrected question (from the run's training chats), answered with the "
                 "correction as a note and trained on, so it reaches rephrasings (0 = off)",
    "seed": "seed of an update's sampling (replayed chats, rephrasings)",
    "paraphrases": "rule-made phrasings of each corrected question, answered with the correction as a note and "
                   "trained on (0 = off)",
    "layers": "only the top N blocks get the learned adapter (0 = all); backward stops there",
    "max_fixes": "corrections trained per update step: the new ones first, then older ones sampled",
    "max_steps": "an update's steps grow with new corrections past --learn-max-fixes, up to this",
    "warm_start": "go on from the live adapter when its feedback is all still there (else start over)",
    "general_probes": "the project's general bilingual probes answered before and after an update (0 = none)",
    "max_changed": "reject an update that changes more than this share of the general probes' answers",
    "probe_tokens": "answer budget of the probes and of self-distilled replay",
    "dtype": "update training dtype: auto | float32 | bfloat16",
    "probe_size": "the run's probes (probes.jsonl, recorded by the recipe that built it) sampled for the guard",
    "max_drop": "reject an update whose probe accuracy drops by more than this",
    "scoped": "judge the adapter as it is served: only probes in the tenant's scope count against it",
    "regression_file": "operator's JSONL probes: {\"messages\": [...], \"expect\": \"text\" or [\"alt1\", ...], "
                       "\"lang\": \"en\"|\"zh\" (optional)}"}


def serve_flags(p) -> None:
    p.add_argument("run", help="run directory (or a LoRA adapter directory)")
    p.add_argument("--adapter", action="append", default=[], metavar="DIR",
                   help="LoRA adapter to serve beside the base model; requests pick it by its directory name "
                        "as `model` (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--api-key", action="append", default=[], metavar="KEY",
                      help="require 'Authorization: Bearer KEY' on /v1 (repeatable; default: $LIVELM_API_KEY if set)")
    keys.add_argument("--api-key-file", metavar="FILE", help="file with one API key per line")
    p.add_argument("--max-concurrent-per-key", type=int, default=None, metavar="N",
                   help="generation and speech requests one API key may have in flight; more get 429 + Retry-After "
                        "(default: no limit; without keys, all clients share one)")
    p.add_argument("--rate-limit-per-key", type=float, default=None, metavar="N",
                   help="requests one API key may start per minute; more get 429 + Retry-After (default: no limit)")
    p.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (default 16)")
    add_inference_flags(p, "true: 2-3x faster single streams on the default assistant, for a longer start "
                           "(~40 s compiling); rows that use a LoRA adapter decode eagerly")
    p.add_argument("--max-queue", type=int, default=256, help="sequences allowed to wait for a slot; "
                                                              "beyond it requests get 429 (default 256)")
    p.add_argument("--max-context", type=int, default=None, metavar="N",
                   help="each sequence's context window in tokens (default: the model's, at most what the KV "
                        "pool holds)")
    add_kv_flags(p)
    p.add_argument("--max-tokens-limit", type=int, default=None, metavar="N",
                   help="largest max_tokens a request may ask for (default: the context window)")
    p.add_argument("--feedback-db", type=Path, default=None, help="SQLite file for feedback (default RUN/feedback.sqlite)")
    p.add_argument("--served-model-name", default=None, help="model id of the base run (default: its directory name)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="on SIGINT/SIGTERM, how long running requests may take to finish (default 10)")
    p.add_argument("--engine-restarts", type=int, default=5, metavar="N",
                   help="if the engine process dies (killed, out of memory), start a new one with the same model "
                        "and adapters, at most N times within --engine-restart-window, after 1, 2, 4, ... s; "
                        "then the server stays failed and /live says dead (default 5; 0 = never)")
    p.add_argument("--engine-restart-window", type=float, default=600.0, metavar="SECONDS",
                   help="the window --engine-restarts counts in (default 600)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for the model (default: cores - 1, leaving one core to the HTTP side; "
                        "$OMP_NUM_THREADS if set)")
    from livelm.learn.live import LearnConfig
    from livelm.learn.update import UpdateConfig
    g = p.add_argument_group("live learning (see livelm/learn/live.py)")
    g.add_argument("--learn", default="memory,adapter",
                   help="comma-separated: memory (facts/corrections into prompts at once), adapter (background "
                        "LoRA updates, hot-swapped); 'off' disables (default memory,adapter)")
    g.add_argument("--adapter-store", type=Path, default=None, help="where learned adapters are kept (default RUN/adapters)")
    g.add_argument("--learn-adapter-scope", choices=["feedback", "all"], default="feedback",
                   help="which of a tenant's questions its learned adapter answers: those near its trainable "
                        "feedback (the rest get the base model, so unrelated answers stay as they were) or all; "
                        "the probe guard judges the adapter the same way (default feedback)")
    add_dataclass_flags(g, LearnConfig, prefix="learn-", skip=LEARN_CONFIG_SKIP, names=LEARN_NAMES, helps=LEARN_HELP)
    add_dataclass_flags(g, UpdateConfig, prefix="learn-", skip=LEARN_UPDATE_SKIP, names=LEARN_NAMES, helps=LEARN_HELP,
                        choices={"replay_loss": ["kl", "sft"]})
    v = p.add_argument_group("voice: /v1/audio/transcriptions and /v1/audio/speech (livelm[voice]; loaded on first use)")
    v.add_argument("--stt", default="whisper-base", metavar="MODEL",
                   help="speech-to-text model: whisper-base (from PyPI) or a faster-whisper model folder; off "
                        "disables (default whisper-base)")
    v.add_argument("--tts", default="espeak", metavar="ENGINE",
                   help="text-to-speech engine: espeak (Chinese and English), piper (English); off disables "
                        "(default espeak)")
    v.add_argument("--voice-threads", type=int, default=0, metavar="N",
                   help="CPU threads for speech to text (default 0: all)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto)")


def read_api_keys(a) -> list[str]:
    if a.api_key_file:
        path = Path(a.api_key_file)
        if not path.is_file():
            raise ValueError(f"--api-key-file {path}: no such file")
        keys = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()
                if ln.strip() and not ln.strip().startswith("#")]
        if not keys:
            raise ValueError(f"--api-key-file {path} has no keys (one per line)")
        return keys
    if a.api_key:
        return a.api_key
    env = os.environ.get("LIVELM_API_KEY", "").strip()
    return [env] if env else []


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, so --port 0 reveals its real port before we print the URL."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP;
    # with proto 0 every streamed chunk would wait up to 40 ms for a delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def set_threads(n: int | None) -> None:
    """One core stays free for the event loop (HTTP, JSON, SSE). On a small machine this matters a lot:
    with every core in torch's pool, its worker threads spin while the event loop wants the CPU, and a
    decode step gets several times slower (measured on 2 cores: see bench/serve_load.py in bench/RESULTS.md)."""
    import torch
    from livelm import machine
    if n is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return
        n = max(1, machine.usable_cpus() - 1)
    if n < 1:
        raise ValueError("--threads must be at least 1")
    torch.set_num_threads(n)


def learn_config(a):
    """--learn* flags -> LearnConfig (None when learning is off)."""
    from livelm.learn.live import LearnConfig
    from livelm.learn.update import UpdateConfig
    modes = tuple(m for m in a.learn.split(",") if m and m != "off")
    unknown = set(modes) - {"memory", "adapter"}
    if unknown:
        raise ValueError(f"--learn: unknown mode(s) {', '.join(sorted(unknown))}; use memory, adapter or off")
    if not modes:
        return None
    scoped = a.learn_adapter_scope == "feedback"
    update = UpdateConfig(**dataclass_values(a, UpdateConfig, "learn-", skip=LEARN_UPDATE_SKIP),
                          scoped=scoped)   # the guard judges the adapter as it is served
    for flag, path in (("--regression-file", update.regression_file), ("--learn-replay-file", update.replay_file)):
        if path and not Path(path).is_file():   # said now, not by every update
            raise ValueError(f"{flag}: {path} is not a file")
    return LearnConfig(**dataclass_values(a, LearnConfig, "learn-", skip=LEARN_CONFIG_SKIP), modes=modes,
                       adapter_scope=scoped, update=update)


def run_serve(a) -> int:
    from livelm import extras, machine
    for module in extras.EXTRAS["serve"]:   # say what to install before anything else happens
        extras.need(module, "serve", "livelm serve")
    import uvicorn

    for name in ("max_batch", "max_queue"):
        if getattr(a, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if a.max_context is not None and a.max_context < 2:
        raise ValueError("--max-context must be at least 2")
    if a.engine_restarts < 0:
        raise ValueError("--engine-restarts must be 0 or more")
    if a.engine_restart_window <= 0:
        raise ValueError("--engine-restart-window must be more than 0")
    if a.max_tokens_limit is not None and a.max_tokens_limit < 1:
        raise ValueError("--max-tokens-limit must be at least 1")
    keys = read_api_keys(a)
    set_threads(a.threads)
    from livelm.serve.app import ServeState, create_app
    from livelm.serve.audio import Voice
    from livelm.serve.limits import KeyLimits
    app = create_app(a.run, a.adapter, api_keys=keys, max_batch=a.max_batch, max_queue=a.max_queue,
                     max_tokens_limit=a.max_tokens_limit, feedback_db=a.feedback_db, device=a.device,
                     served_model_name=a.served_model_name, learn=learn_config(a), adapter_store=a.adapter_store,
                     compile=machine.resolve_compile(a.compile, None), dtype=a.dtype, max_context=a.max_context,
                     voice=Voice.available(None if a.stt == "off" else a.stt, None if a.tts == "off" else a.tts,
                                           a.voice_threads),
                     limits=KeyLimits(a.max_concurrent_per_key, a.rate_limit_per_key),
                     kv=engine_options(a, machine.pick_device(a.device)),
                     engine_restarts=a.engine_restarts, engine_restart_window=a.engine_restart_window)
    state: ServeState = app.state.live
    sock = bind(a.host, a.port)
    port = sock.getsockname()[1]
    url = f"http://{'[' + a.host + ']' if ':' in a.host else a.host}:{port}"
    if a.host not in ("127.0.0.1", "localhost", "::1") and not keys:
        print(f"livelm serve: warning: listening on {a.host} without an API key; anyone who can reach this "
              f"machine can use the model (pass --api-key or --api-key-file)", file=sys.stderr, flush=True)

    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    for handler in log_config["handlers"].values():
        handler["stream"] = "ext://sys.stderr"   # stdout carries only the URL
    log_config["loggers"]["livelm.serve"] = {"handlers": ["default"], "level": a.log_level.upper()}
    config = uvicorn.Config(app, log_config=log_config, log_level=a.log_level,
                            timeout_graceful_shutdown=int(a.shutdown_timeout) + 5)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # First refuse new work and start the grace clock, then let uvicorn stop accepting connections
            # and wait for open requests. Unlike uvicorn's own handler we do not re-raise the signal after
            # the graceful stop, so a clean shutdown exits 0. A second Ctrl-C forces the exit.
            state.begin_shutdown(a.shutdown_timeout)
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

    server = Server(config)
    failed = []

    def announce():
        state.ready.wait()
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if state.load_error:
            print(f"livelm serve: error: {state.load_error}", file=sys.stderr, flush=True)
            failed.append(True)
            server.should_exit = True
            return
        print(f"livelm serve: {', '.join(state.models)} ready; web chat at {url}/ , API at {url}/v1",
              file=sys.stderr, flush=True)
        print(url, flush=True)

    print(f"livelm serve: loading {a.run} ...", file=sys.stderr, flush=True)
    threading.Thread(target=announce, name="livelm-announce", daemon=True).start()
    server.run(sockets=[sock])
    return 1 if failed else 0
