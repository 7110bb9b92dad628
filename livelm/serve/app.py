"""An OpenAI-compatible HTTP API and a web chat page over one model.

    livelm serve runs/assistant/chat                      # http://127.0.0.1:8000/
    curl http://127.0.0.1:8000/v1/chat/completions -d '{"messages":[{"role":"user","content":"你好"}]}'

Layout of the package:
    app.py            this file: the FastAPI app, auth, errors, small routes
    (livelm/cli/serve.py: the `livelm serve` command that binds the socket and runs uvicorn)
    completions.py    the two generation endpoints (JSON and Server-Sent Events)
    engine_client.py  requests to the engine process and chunks back
    engine_process.py the process that owns the model and runs the Engine
    openai_schema.py  request bodies
    metrics.py        what /metrics shows (prometheus_client)
    static/           the chat page (plain HTML/JS/CSS, no build step)

The model loads on a background thread after the socket is bound, so the
server answers from the first moment: /health and generation say 503 until the
model is ready, then the URL is printed on stdout. SIGINT/SIGTERM stop taking
requests, let running ones finish for --shutdown-timeout seconds, then fail the
rest (streams get an error event) and exit.

If the engine process dies while serving (kill -9, the OOM killer), its requests fail and a new
one starts with the same model and adapters (engine_client.RestartPolicy: --engine-restarts
within --engine-restart-window, with a doubling backoff); meanwhile /ready and generation say
503 with Retry-After and /live stays 200. Once the budget is spent /live says dead.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import math
import re
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from livelm.learn.copying import CopyFromNotes
from livelm.learn.feedback import Feedback, FeedbackError, FeedbackStore
from livelm.learn.recall import recall_async
from livelm.serve import audio, completions, structured
from livelm.serve.completions import APIError, Generation, parse
from livelm.serve.metrics import CONTENT_TYPE, Metrics
from livelm.serve.openai_schema import (ChatCompletionRequest, CompletionRequest, ErrorResponse, FeedbackRequest,
                                        RollbackRequest, SpeechRequest, TranscriptionRequest)
from livelm.serve.engine_client import EngineClient, RestartPolicy
from livelm.serve.limits import KeyLimits

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_BODY = 4 * 1024 * 1024
RESTART_RETRY_AFTER = 2   # seconds a client is told to wait while a dead engine process is replaced
ROUTES = ("/", "/health", "/ready", "/live", "/metrics", "/openapi.json", "/v1/models", "/v1/chat/completions",
          "/v1/completions", "/v1/feedback", "/v1/adapters", "/v1/adapters/rollback", *audio.ROUTES)
log = logging.getLogger("livelm.serve")


def tenant_of(key: str | None) -> str:
    """Who is calling, for feedback ownership: a short hash of the API key (the key itself is never stored)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12] if key else "default"


def fingerprint(path: Path) -> str | None:
    """Version of a weights file: the first 12 hex digits of its sha256."""
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


class ServeState:
    """What every route shares: the model (once loaded), the engine client, the feedback store, the keys."""

    def __init__(self, run, adapters=(), *, api_keys=(), max_batch: int = 16, max_queue: int = 256,
                 max_tokens_limit: int | None = None, feedback_db=None, device: str = "auto",
                 served_model_name: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY, load=None,
                 learn=None, adapter_store=None, compile: bool = False, dtype: str = "auto",
                 max_context: int | None = None, voice: "audio.Voice | None" = None,
                 limits: KeyLimits | None = None, kv: dict | None = None, engine_restarts: int = 5,
                 engine_restart_window: float = 600.0):
        from livelm.runs import adapter_base as resolve_base
        self.run = Path(run)
        self.adapter_dirs = [Path(a) for a in adapters]
        # keys are kept as their sha256 only: a memory dump or a debugger shows no usable key
        self.api_keys = {hashlib.sha256(k.encode()).digest(): tenant_of(k) for k in api_keys}
        self.limits = limits or KeyLimits()   # per-key concurrency and rate (serve/limits.py); off by default
        self.max_batch, self.max_queue, self.max_tokens_limit = max_batch, max_queue, max_tokens_limit
        self.device, self.max_body, self.compile, self.dtype = device, max_body_bytes, compile, dtype
        self.max_context = max_context   # each sequence's window (None: the model's, within the KV pool)
        self.kv = kv or {}               # Engine options: kv_cache_memory, kv_block_size, prefix_caching, speculate
        self.voice = voice               # speech to text and text to speech (serve/audio.py), or None
        self._load = load   # injectable loader (tests): fn(run, adapters, device) -> (model, tok, config, names)
        # a dead engine process is replaced this often (engine_client.RestartPolicy); checked now, not at load
        self.restart_policy = RestartPolicy(engine_restarts, engine_restart_window)

        # Model ids are known before loading: the base run and each adapter (by directory name, as the loader names them).
        run_is_adapter = (self.run / "adapter_config.json").is_file() and not (self.run / "model.safetensors").is_file()
        base_dir = resolve_base(self.run) if run_is_adapter else self.run
        if not (base_dir / "config.json").is_file():
            raise ValueError(f"{base_dir} is not a livelm run (no config.json); pass a run directory")
        all_adapters = ([self.run] if run_is_adapter else []) + self.adapter_dirs
        self.base_id = served_model_name or base_dir.resolve().name
        self.models: dict[str, str | None] = {self.base_id: None}   # model id -> adapter name (None = base)
        self.weights: dict[str, Path] = {self.base_id: base_dir / "model.safetensors"}
        for a in all_adapters:
            name = a.resolve().name
            if name in self.models:
                raise ValueError(f"two models would be called {name!r}; rename an adapter directory "
                                 f"or pass --served-model-name")
            self.models[name] = name
            self.weights[name] = a / "adapter_model.safetensors"
        self.default_model = all_adapters[0].resolve().name if run_is_adapter else self.base_id
        self.versions: dict[str, str | None] = {}
        self.created = int(time.time())

        self.feedback_path = Path(feedback_db or self.run / "feedback.sqlite")
        self.feedback = FeedbackStore(self.feedback_path)
        # live learning (livelm/learn/live.py): a LearnConfig, or None for off
        self.base_dir = base_dir
        self.learn_config = learn
        self.adapter_store = Path(adapter_store or base_dir / "adapters")
        self.learner = None
        self.tokenizer = None
        self.max_len: int | None = None      # the engine's context window, once loaded
        self.engine: EngineClient | None = None
        self.metrics = Metrics(running=lambda: self.engine.running if self.engine else 0,
                               waiting=lambda: self.engine.waiting if self.engine else 0,
                               kv=lambda: self.engine.kv if self.engine else None)
        self.ready = threading.Event()       # set when loading ended, well or not
        self.load_error: str | None = None
        self.draining = False

    # ---- lifecycle ----------------------------------------------------------------
    def start_loading(self) -> None:
        threading.Thread(target=self._load_model, name="livelm-loader", daemon=True).start()

    def _load_model(self) -> None:
        try:
            from livelm.models import lora
            load = self._load
            if load is None:   # weights in the inference dtype for batches of max_batch (livelm.machine)
                from livelm import runs
                load = functools.partial(runs.load, dtype=self.dtype, batch=self.max_batch)
            model, tokenizer, _, names = load(self.run, self.adapter_dirs, self.device)
            log.info("serving in %s", str(next(model.parameters()).dtype).removeprefix("torch."))
            if names:
                lora.set_active(model, None)   # the adapter is chosen per request (per batch row), never globally
            self.versions = {mid: fingerprint(p) for mid, p in self.weights.items()}
            learn = self.learn_config
            if learn is not None and "adapter" in learn.modes and hasattr(model.cfg, "mlp_hidden"):
                # live updates run in processes of their own beside the engine: the KV pool must leave
                # them room (an update that still does not fit when it is due is postponed: learn/live.py)
                from livelm import footprint
                self.kv = {**self.kv, "memory_reserve": footprint.live_update(
                    model.cfg, learn.update.batch + learn.update.replay, learn.update.rank).total}
            # the engine process takes the model (in shared memory); compiled decode compiles there first
            self.engine = EngineClient(model, tokenizer, max_batch=self.max_batch, max_queue=self.max_queue,
                                       metrics=self.metrics, compile=self.compile, row_adapters=bool(names),
                                       max_len=self.max_context, kv=self.kv, restart=self.restart_policy)
            self.tokenizer, self.max_len = tokenizer, self.engine.max_len
            kv = self.engine.kv
            log.info("KV cache: %.0f MiB, %d blocks of %d tokens (%d tokens in all), context window %d, "
                     "prefix caching %s", kv["kv_cache_bytes"] / 2**20, kv["blocks"], kv["block_size"],
                     kv["blocks"] * kv["block_size"], self.max_len, "on" if self.kv.get("prefix_caching", True) else "off")
            if self.learn_config is not None and self.learn_config.modes:
                from livelm.learn.live import LiveLearner
                self.learner = LiveLearner(self.base_dir, self.feedback_path, self.adapter_store, self.engine,
                                           self.feedback, self.learn_config)
        except Exception as e:
            log.exception("loading the model failed")
            self.load_error = f"{type(e).__name__}: {e}"
        finally:
            self.ready.set()

    def begin_shutdown(self, grace: float) -> None:
        self.draining = True
        if self.engine:
            self.engine.begin_shutdown(grace)

    def close(self) -> None:
        if self.engine:
            self.engine.stop()
        self.feedback.close()

    # ---- per request --------------------------------------------------------------
    def authenticate(self, request: Request) -> str:
        if not self.api_keys:
            return "default"
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise APIError(401, "missing API key: send the header 'Authorization: Bearer KEY'",
                           type="authentication_error", code="invalid_api_key")
        digest = hashlib.sha256(key.strip().encode()).digest()
        for known, tenant in self.api_keys.items():
            if hmac.compare_digest(known, digest):
                return tenant
        raise APIError(401, "incorrect API key", type="authentication_error", code="invalid_api_key")

    def require_ready(self) -> None:
        if self.draining:
            raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
        if not self.ready.is_set():
            raise APIError(503, "the model is still loading; retry shortly", type="server_error",
                           code="model_loading", headers={"Retry-After": "2"})
        if self.load_error:
            raise APIError(503, f"the model failed to load: {self.load_error}", type="server_error",
                           code="model_load_failed")
        if self.engine.failure:
            raise APIError(503, f"{self.engine.failure}; restart the server (the logs say why)",
                           type="server_error", code="engine_failed")
        if self.engine.restarting:
            raise self.restarting_error()

    def restarting_error(self, why: str | None = None) -> APIError:
        # a new engine process is on its way (seconds): worth a retry, unlike a failed one
        why = why or f"{self.engine.restarting or 'the engine process is gone'}; retry shortly"
        return APIError(503, why, type="server_error", code="engine_restarting",
                        headers={"Retry-After": str(RESTART_RETRY_AFTER)})

    def resolve(self, model: str | None) -> tuple[str, str | None]:
        if model is None or model == "":
            return self.default_model, self.models[self.default_model]
        if model not in self.models:
            raise APIError(404, f"The model `{model}` does not exist. Available: {', '.join(self.models)}",
                           param="model", code="model_not_found")
        return model, self.models[model]

    def model_card(self, mid: str) -> dict:
        adapter = self.models[mid]
        return {"id": mid, "object": "model", "created": self.created, "owned_by": "livelm",
                "root": str(self.weights[mid].parent), "parent": self.base_id if adapter else None,
                "max_model_len": self.max_len,
                "version": self.versions.get(mid)}


async def read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object: 413 if too large, 422 if not UTF-8 JSON, 400 if not an object."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise APIError(413, f"the request body is {int(length)} bytes; the limit is {limit}", code="request_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise APIError(413, f"the request body is over the {limit}-byte limit", code="request_too_large")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(422, f"the request body is not valid UTF-8 (bad byte at offset {e.start})",
                       code="invalid_json") from None

    def no_constants(name):   # NaN and Infinity are not JSON
        raise ValueError(f"{name} is not valid JSON")

    def finite(literal: str) -> float:   # 1e999 is valid JSON but parses as inf: as unusable as Infinity
        if not math.isfinite(value := float(literal)):
            raise ValueError(f"the number {literal[:40]} is out of range")
        return value
    try:
        data = json.loads(text, parse_constant=no_constants, parse_float=finite)
    except json.JSONDecodeError as e:
        raise APIError(422, f"the request body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})",
                       code="invalid_json") from None
    except ValueError as e:
        raise APIError(422, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_parameter")
    try:   # "\ud800" alone parses as a lone surrogate, which no tokenizer can encode
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "the request contains an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)",
                       code="invalid_parameter") from None
    return data


class CountRequests:
    """ASGI middleware counting answered requests by route and status (plain ASGI: streams pass through untouched)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            path = scope.get("path", "")
            path = path if path in ROUTES or path.startswith("/v1/models/") else "other"
            self.metrics.requests.labels("/v1/models" if path.startswith("/v1/models/") else path,
                                         str(status[0])).inc()


async def released_after(body, release):
    """A stream's body that calls `release` when it ends, however it ends (done, error, client gone)."""
    try:
        async for part in body:
            yield part
    finally:
        release()


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


# ---- /openapi.json ---------------------------------------------------------------------------------
# The POST routes read their bodies by hand (read_json + parse), so that every error is a 400/413/422 in
# OpenAI's shape and never FastAPI's 422 with its own layout; the schema still declares each body, from
# the same pydantic models, through openapi_extra.
SCHEMAS = "#/components/schemas/"
BODY_MODELS = (ChatCompletionRequest, CompletionRequest, FeedbackRequest, SpeechRequest, TranscriptionRequest,
               RollbackRequest, ErrorResponse)


def request_body(model, content_type: str = "application/json", required: bool = True) -> dict:
    """openapi_extra for a route whose body is `model` (read by hand, not by FastAPI)."""
    return {"requestBody": {"required": required,
                            "content": {content_type: {"schema": {"$ref": SCHEMAS + model.__name__}}}}}


def openapi_document(app: FastAPI) -> dict:
    """FastAPI's document plus the body models (their nested models hoisted into components, so every
    $ref resolves), OpenAI's error shape for the 4xx/5xx answers, and the bearer key of the /v1 routes."""
    from importlib import metadata
    from fastapi.openapi.utils import get_openapi
    try:   # (as livelm.__version__, without importing the package's top, which the layers forbid here)
        version = metadata.version("livelm")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    doc = get_openapi(title="livelm", version=version, routes=app.routes,
                      description="An OpenAI-compatible API over one livelm model (README: Serving).")
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in BODY_MODELS:
        s = model.model_json_schema(ref_template=SCHEMAS + "{model}")
        schemas.update(s.pop("$defs", {}))
        schemas[model.__name__] = s
    for name in ("HTTPValidationError", "ValidationError"):   # FastAPI's 422 layout: never sent here
        schemas.pop(name, None)
    doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    error = {"description": "an error in OpenAI's shape",
             "content": {"application/json": {"schema": {"$ref": SCHEMAS + "ErrorResponse"}}}}
    for path, ops in doc["paths"].items():
        for op in ops.values():
            op["responses"].pop("422", None)
            op["responses"]["4XX"] = error
            if path.startswith("/v1/"):
                op["security"] = [{}, {"bearer": []}]   # a key only when the server was started with keys
    return doc


def create_app(run, adapters=(), **options) -> FastAPI:
    """The app for one deployment. Options: see ServeState. The model loads when the app starts (lifespan)."""
    state = ServeState(run, adapters, **options)

    @asynccontextmanager
    async def lifespan(app):
        state.start_loading()
        yield
        state.close()

    # /openapi.json describes every route (schema-driven clients, tests/serve/test_fuzz_api.py); no docs pages
    app = FastAPI(title="livelm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json")

    def openapi():   # built on first request, after every route below is added
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app)
        return app.openapi_schema
    app.openapi = openapi
    app.state.live = state
    app.add_middleware(CountRequests, metrics=state.metrics)

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return error_response(APIError(e.status_code, str(e.detail), code=code))

    @app.exception_handler(RequestValidationError)
    async def _bad_query(request, e: RequestValidationError):
        err = e.errors()[0]
        return error_response(APIError(400, f"{'.'.join(map(str, err['loc']))}: {err['msg']}",
                                       param=str(err["loc"][-1]), code="invalid_parameter"))

    @app.exception_handler(Exception)
    async def _crash(request, e: Exception):
        log.exception("unhandled error")
        return error_response(APIError(500, f"internal error: {type(e).__name__}", type="server_error",
                                       code="internal_error"))

    # ---- open routes: page, health, metrics ---------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # Readiness and liveness, answered on the event loop, never waiting for the engine process.
    # /health and /ready: 200 when requests can be served now (load balancers: send traffic or not);
    # /live: 200 unless this server can never serve again (orchestrators: restart it or not).
    def not_ready() -> JSONResponse | None:
        if state.draining:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        if not state.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
        if state.load_error:
            return JSONResponse({"status": "error", "message": state.load_error}, status_code=503)
        if state.engine.failure:
            return JSONResponse({"status": "error", "message": state.engine.failure}, status_code=503)
        if state.engine.restarting:   # not ready for seconds, but alive: /live stays 200
            return JSONResponse({"status": "restarting", "message": state.engine.restarting}, status_code=503,
                                headers={"Retry-After": str(RESTART_RETRY_AFTER)})
        return None

    @app.get("/health")
    async def health():
        return not_ready() or {"status": "ok"}

    @app.get("/ready")
    async def ready():
        return not_ready() or {"status": "ready"}

    @app.get("/live")
    async def live():
        # loading, draining and replacing a dead engine process are alive (restarting would only start
        # over); a failed load or an engine that died more often than --engine-restarts allows is not:
        # nothing but a restart brings this server back
        failure = state.load_error or (state.engine.failure if state.engine else None)
        if failure:
            return JSONResponse({"status": "dead", "message": failure}, status_code=503)
        return {"status": "alive"}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)

    # ---- /v1: API key required when keys are configured -----------------------------------
    @app.get("/v1/models")
    async def list_models(request: Request):
        state.authenticate(request)
        speech = state.voice.cards(state.created) if state.voice else []
        return {"object": "list", "data": [state.model_card(m) for m in state.models] + speech}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request):
        state.authenticate(request)
        if state.voice and state.voice.has(model_id):
            return next(c for c in state.voice.cards(state.created) if c["id"] == model_id)
        mid, _ = state.resolve(model_id)
        return state.model_card(mid)

    # ---- speech: off the event loop and off the engine's process (serve/audio.py) -----------------
    def voice() -> audio.Voice:
        if state.voice is None:
            raise APIError(404, "speech is off on this server (start it without --stt off / --tts off, "
                                "and install livelm[voice])", code="speech_off")
        return state.voice

    @app.post("/v1/audio/transcriptions", openapi_extra=request_body(TranscriptionRequest, "multipart/form-data"))
    async def audio_transcriptions(request: Request):
        tenant = state.authenticate(request)
        return await within_limits(tenant, audio.transcribe(voice(), request))

    @app.post("/v1/audio/speech", openapi_extra=request_body(SpeechRequest))
    async def audio_speech(request: Request):
        tenant = state.authenticate(request)
        body = await read_json(request, state.max_body)
        return await within_limits(tenant, audio.speech(voice(), body))

    async def draft_answer(request: Request, ids: list[int], params) -> str:
        """What the base model answers without notes (greedy, short): memory's lookup key besides the
        question (livelm/learn/recall.py). It runs through the engine like any request, before the real
        answer starts; its tokens count in /metrics, its latencies do not (they are part of the real
        request's)."""
        gen = Generation(state.engine, completions.ChatFormat(state.tokenizer), "draft", [ids], [params], None,
                         stream=False, include_usage=False, want_logprobs=False, internal=True)
        try:
            return (await gen.collect(request.is_disconnected))["choices"][0]["message"]["content"]
        except completions.ClientGone:
            return ""   # the real request finds the client gone and stops there

    async def generate(request: Request, chat: bool):
        arrived = time.perf_counter()   # time to first token counts from here, a draft answer included
        tenant = state.authenticate(request)
        state.require_ready()
        deaths = state.engine.deaths
        try:
            return await within_limits(tenant, _generate(request, chat, tenant, arrived))
        except APIError as e:
            # An engine process died under this request, before its answer began (a stream that began
            # ends with an error event instead): a 503 that says so and when to come back, not a 500.
            # Either its sequences were lost with it (internal_error, and the death count moved), or the
            # engine client refused them with "shutting down", as it does whenever it has no engine to
            # send to (while not draining: one that died after require_ready, perhaps not yet noticed).
            lost = e.code == "internal_error" and state.engine.deaths != deaths
            if not state.draining and (lost or e.code == "shutting_down"):
                if state.engine.failure:
                    state.require_ready()   # the engine_failed answer: no restart is coming
                raise state.restarting_error(e.message if lost else None) from None
            raise

    async def within_limits(tenant: str, answer):
        """Await `answer` (a coroutine giving a response) counted against the key's limits: 429 when over
        them; a streamed response holds the key's slot until its stream ends."""
        try:
            release = state.limits.acquire(tenant)
        except APIError:
            answer.close()    # never started: no "coroutine was never awaited"
            raise
        try:
            response = await answer
        except BaseException:
            release()
            raise
        if isinstance(response, StreamingResponse):
            response.body_iterator = released_after(response.body_iterator, release)
        else:
            release()
        return response

    async def _generate(request: Request, chat: bool, tenant: str, arrived: float):
        body = await read_json(request, state.max_body)
        req = parse(ChatCompletionRequest if chat else CompletionRequest, body)
        completions.check_stream_options(req)
        model, adapter = state.resolve(req.model)
        # response_format, guided_* and tools -> a grammar (compiling a schema may take milliseconds: off the loop)
        plan = (await run_in_threadpool(structured.plan, req, state.tokenizer, chat) if structured.asks(req)
                else structured.Plan())
        learner = state.learner
        notes: list[str] = []
        if learner is not None and chat and adapter is None:
            # live learning: this tenant's remembered facts go into the prompt (and the answer may copy
            # from them), its learned adapter (if any) answers questions in the scope of its feedback;
            # other tenants are untouched. Loading a new version may wait for one decode step.
            question, draft = None, ""
            # only well-formed messages are looked up (a message without a role is refused when rendered)
            if all(isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str)
                   for m in req.messages):
                question = next((m["content"] for m in reversed(req.messages) if m.get("role") == "user"), "")
                recalled = await recall_async(
                    learner, tenant, req.messages, prompt=lambda: completions.chat_prompt(req, state.tokenizer),
                    max_len=state.max_len, draft_tokens=learner.cfg.memory_draft,
                    generate=functools.partial(draft_answer, request), in_thread=run_in_threadpool)
                if recalled.wanted_draft:
                    state.metrics.drafts.inc()
                req.messages, notes, draft = recalled.messages, recalled.notes, recalled.draft
            adapter = await run_in_threadpool(learner.adapter_for, tenant, question, draft)
            for what, used in (("notes", notes), ("adapter", adapter)):
                if used:
                    state.metrics.learned.labels(what).inc()
        tok = state.tokenizer
        if chat:
            prompts, field = [completions.chat_prompt(req, tok, plan.tools)], "messages"
            fmt = (structured.ToolChatFormat(tok, plan.tool_format, plan.tool_names) if plan.tools
                   else completions.ChatFormat(tok))
        else:
            prompts, fmt, field = completions.completion_prompts(req, tok), completions.CompletionFormat(tok), "prompt"
        if len(prompts) * req.n > completions.MAX_SEQUENCES:
            raise APIError(400, f"{len(prompts)} prompts x n={req.n} is more than {completions.MAX_SEQUENCES} "
                                f"sequences in one request", param="n", code="invalid_parameter")
        params = []
        for ids in prompts:
            p = completions.sampling_params(req, len(ids), state.max_len, state.max_tokens_limit, field)
            p.processors = CopyFromNotes.of(notes, tok)   # the answer may copy the notes' values
            p.grammar, p.grammar_trigger = plan.grammar, plan.trigger
            params += completions.per_choice(p, req.n)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        gen = Generation(state.engine, fmt, model, prompts, params, adapter, req.stream, include_usage,
                         want_logprobs=req.logprobs_k is not None, arrived=arrived)
        if req.stream:
            return StreamingResponse(gen.events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            return JSONResponse(await gen.collect(request.is_disconnected))
        except completions.ClientGone:
            return Response(status_code=499)   # nginx's "client closed request": nobody reads it, metrics do

    @app.post("/v1/chat/completions", openapi_extra=request_body(ChatCompletionRequest))
    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    @app.post("/v1/completions", openapi_extra=request_body(CompletionRequest))
    async def text_completions(request: Request):
        return await generate(request, chat=False)

    @app.post("/v1/feedback", openapi_extra=request_body(FeedbackRequest))
    async def post_feedback(request: Request):
        tenant = state.authenticate(request)
        req = parse(FeedbackRequest, await read_json(request, state.max_body))
        if req.model is not None:
            state.resolve(req.model)   # 404 for a model this server does not have
        item = Feedback(kind=req.kind, conversation=req.conversation, answer=req.answer, correction=req.correction,
                        chosen=req.chosen, rejected=req.rejected, model=req.model,
                        model_version=state.versions.get(req.model or state.default_model), tenant=tenant)
        try:
            item = await run_in_threadpool(state.feedback.add, item)   # an fsync: keep it off the event loop
        except FeedbackError as e:
            raise APIError(400, str(e), code="invalid_parameter") from None
        learning = False
        if state.learner is not None:
            learning = await run_in_threadpool(state.learner.on_feedback, tenant)
        return {"object": "feedback", "learning_started": learning, **feedback_json(item)}

    @app.get("/v1/adapters")
    async def list_adapters(request: Request):
        """This tenant's learned adapter versions (live, previous, rejected) with their probe figures."""
        tenant = state.authenticate(request)
        state.require_ready()
        if state.learner is None:
            return {"object": "list", "data": [], "current": None, "learning": False}
        versions = await run_in_threadpool(state.learner.versions, tenant)
        current = next((v["version"] for v in versions if v.get("live")), None)
        return {"object": "list", "data": versions, "current": current or "base",
                "learning": state.learner.busy()}

    @app.post("/v1/adapters/rollback", openapi_extra=request_body(RollbackRequest, required=False))
    async def rollback_adapter(request: Request):
        """Return this tenant to its previous live version (or {"to": "vNNNN" | "base"})."""
        tenant = state.authenticate(request)
        state.require_ready()
        if state.learner is None:
            raise APIError(400, "live learning is off on this server (--learn off)", code="learning_off")
        body = await read_json(request, state.max_body) if request.headers.get("content-length", "0") != "0" else {}
        to = body.get("to")
        # only a version name (no path: "../<other tenant>/v0001" once rolled this key onto another's adapter)
        if to is not None and not (isinstance(to, str) and re.fullmatch(r"v[0-9]{1,9}|base|none", to)):
            raise APIError(400, "`to` must be a version name like v0003, or 'base'", param="to", code="invalid_parameter")
        from livelm.learn.adapters import AdapterStoreError
        try:
            current = await run_in_threadpool(state.learner.rollback, tenant, to)
        except AdapterStoreError as e:
            raise APIError(400, str(e), param="to", code="invalid_parameter") from None
        return {"object": "adapter.rollback", "current": current or "base"}

    @app.get("/v1/feedback")
    async def list_feedback(request: Request, limit: int = 100, after: int = 0):
        tenant = state.authenticate(request)
        if not 1 <= limit <= 1000:
            raise APIError(400, "limit must be between 1 and 1000", param="limit", code="invalid_parameter")
        if not 0 <= after < 2 ** 63:   # SQLite's integers are 64-bit: a larger `after` was an OverflowError (500)
            raise APIError(400, "after must be a feedback id (0 or more)", param="after", code="invalid_parameter")
        items = await run_in_threadpool(state.feedback.list, tenant, limit, after)
        return {"object": "list", "data": [{"object": "feedback", **feedback_json(i)} for i in items]}

    return app


def feedback_json(item: Feedback) -> dict:
    d = item.to_dict()
    d.pop("tenant", None)   # callers only ever see their own items
    return d
