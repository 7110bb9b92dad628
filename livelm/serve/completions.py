"""POST /v1/chat/completions and /v1/completions: request in, sequences through the engine, response out.

A request becomes one sequence per choice (n, and for /v1/completions also
per prompt in a batch). Their chunks arrive on one Ticket queue and are either
collected into one JSON body or streamed as Server-Sent Events in OpenAI's chunk
format:

    data: {"object":"chat.completion.chunk", choices:[{delta:{role:"assistant",content:""}}]}
    data: {... choices:[{delta:{content:"Hel"}}]}          content, as the engine releases it
    data: {... choices:[{delta:{}, finish_reason:"stop"}]}  one per choice
    data: {... choices:[], usage:{...}}                     with stream_options.include_usage
    data: [DONE]

The engine's text stream already guarantees that no delta splits a UTF-8
character or contains (the start of) a stop string, so deltas go out as they come.
Where OpenAI's spec leaves room we do what vLLM does: max_tokens defaults to the
rest of the context window, a prompt + max_tokens over it is a 400, seeds for
n > 1 are seed + i, and an error after streaming began is a `data: {"error":...}`
event followed by [DONE].
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from pydantic import ValidationError

from livelm.chat.template import ChatFormatError, prompt_ids, render, validate
from livelm.sampling import SamplingParams
from livelm.serve.openai_schema import (MAX_N, SEED_MAX, SEED_MIN, ChatCompletionRequest, CompletionRequest,
                                        FeedbackRequest, unsupported)
from livelm.serve.engine_client import Chunk, NotAccepting, QueueFull, Ticket

MAX_SEQUENCES = 4 * MAX_N          # choices x prompts in one request
DISCONNECT_POLL = 0.25             # seconds between "is the client still there?" checks (non-streaming)


class ClientGone(Exception):
    """The client closed the connection before its (non-streamed) answer was ready."""


class APIError(Exception):
    """An error answer in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def parse(model_cls, body: dict):
    """Body -> request model; a type or range error is a 400 naming the field (like vLLM, not FastAPI's 422)."""
    if model_cls is not FeedbackRequest and (name := unsupported(body)):
        raise APIError(400, f"{name} is not supported by livelm serve", param=name, code="unsupported_parameter")
    try:
        return model_cls.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise APIError(400, f"{loc}: {msg}" if loc else msg, param=str(err["loc"][0]) if err["loc"] else None,
                       code="invalid_parameter") from None


# ---- request -> sampling parameters ------------------------------------------------------
def sampling_params(req, prompt_len: int, max_len: int, limit: int | None, prompt_field: str) -> SamplingParams:
    if prompt_len >= max_len:
        raise APIError(400, f"This model's maximum context length is {max_len} tokens, but the prompt has "
                            f"{prompt_len} tokens. Shorten it (nothing was truncated).",
                       param=prompt_field, code="context_length_exceeded")
    room = max_len - prompt_len
    want = req.token_limit
    if want is None:
        want = min(room, limit) if limit else room
    else:
        name = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
        if limit and want > limit:
            raise APIError(400, f"{name} is {want} but this server allows at most {limit}", param=name,
                           code="invalid_parameter")
        if want > room:
            raise APIError(400, f"This model's maximum context length is {max_len} tokens. However, you requested "
                                f"{prompt_len + want} tokens ({prompt_len} in the prompt, {want} in the completion). "
                                f"Reduce the length of the prompt or of the completion.",
                           param=name, code="context_length_exceeded")
    top_k = req.top_k if req.top_k is not None else 0
    p = SamplingParams(
        max_tokens=want,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_k=0 if top_k == -1 else top_k,           # vLLM: -1 means off
        top_p=1.0 if req.top_p is None else req.top_p,
        min_p=req.min_p or 0.0,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        stop=tuple(req.stop or ()),
        stop_token_ids=tuple(req.stop_token_ids) if req.stop_token_ids is not None else None,
        ignore_eos=req.ignore_eos,
        seed=req.seed,
        logprobs=req.logprobs_k,
    )
    try:
        p.validate()
    except ValueError as e:
        raise APIError(400, str(e), param=str(e).split()[0], code="invalid_parameter") from None
    return p


def per_choice(p: SamplingParams, n: int) -> list[SamplingParams]:
    """n copies; with a seed, choice i uses seed + i (vLLM's rule) so choices differ but reproduce."""
    out = []
    for i in range(n):
        q = p.copy()
        if p.seed is not None:
            q.seed = (p.seed + i - SEED_MIN) % (SEED_MAX - SEED_MIN + 1) + SEED_MIN
        out.append(q)
    return out


def check_stream_options(req) -> None:
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed when stream is true", param="stream_options",
                       code="invalid_parameter")


def chat_prompt(req: ChatCompletionRequest, tokenizer, tools: list[dict] | None = None) -> list[int]:
    """The request's messages (and the tools offered, if any) through the model's own chat template."""
    # "developer" is OpenAI's newer name for the system role
    msgs = [{**m, "role": "system"} if isinstance(m, dict) and m.get("role") == "developer" else m
            for m in req.messages]
    try:
        if req.continue_final_message or not req.add_generation_prompt:
            return render(validate(msgs), tokenizer, add_generation_prompt=req.add_generation_prompt and not
                          req.continue_final_message, continue_final_message=req.continue_final_message,
                          with_mask=False, tools=tools)[0]
        return prompt_ids(validate(msgs), tokenizer, tools=tools)
    except ChatFormatError as e:
        raise APIError(400, str(e), param="messages", code="invalid_parameter") from None


def completion_prompts(req: CompletionRequest, tokenizer) -> list[list[int]]:
    p = req.prompt
    if isinstance(p, str):
        items = [p]
    elif p and all(isinstance(x, int) for x in p):
        items = [p]
    else:
        items = list(p)
    if not items:
        raise APIError(400, "prompt must not be empty", param="prompt", code="invalid_parameter")
    out = []
    for item in items:
        if isinstance(item, str):
            # like `livelm generate`: an empty prompt starts from <|bos|>
            out.append(tokenizer.prompt(item))
        else:
            if not item or any(not 0 <= t < tokenizer.vocab_size for t in item):
                raise APIError(400, f"prompt token ids must be a non-empty list of ids in [0, {tokenizer.vocab_size})",
                               param="prompt", code="invalid_parameter")
            out.append(list(item))
    return out


# ---- output formats ---------------------------------------------------------------------------
class ChatFormat:
    object, chunk_object, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl-"

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def _lp(self, token_id: int, logprob: float) -> dict:
        return {"token": self.tok.decode([token_id]), "logprob": max(logprob, -9999.0),
                "bytes": list(self.tok.token_bytes(token_id))}

    def logprobs(self, index: int, entries: list[dict]) -> dict:
        return {"content": [{**self._lp(e["token_id"], e["logprob"]),
                             "top_logprobs": [self._lp(t["token_id"], t["logprob"]) for t in e["top"]]}
                            for e in entries]}

    def choice(self, index: int, text: str, logprobs, reason: str) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                "finish_reason": reason}

    def first(self, index: int) -> dict | None:
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}

    def delta(self, index: int, text: str, logprobs) -> dict | None:
        """A stream chunk's choice for new text, or None when there is nothing to send yet."""
        return {"index": index, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": None}

    def final(self, index: int, reason: str) -> list[dict]:
        """The choices of a finished choice's last stream chunks (a tool-call format sends its calls here)."""
        return [{"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}]


class CompletionFormat(ChatFormat):
    object, chunk_object, id_prefix = "text_completion", "text_completion", "cmpl-"

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.offsets: dict[int, int] = {}     # per choice: text offset of the next token

    def logprobs(self, index: int, entries: list[dict]) -> dict:
        tokens = [self.tok.decode([e["token_id"]]) for e in entries]
        offsets, at = [], self.offsets.get(index, 0)
        for t in tokens:
            offsets.append(at)
            at += len(t)
        self.offsets[index] = at
        return {"tokens": tokens, "token_logprobs": [max(e["logprob"], -9999.0) for e in entries],
                "top_logprobs": [{self.tok.decode([t["token_id"]]): max(t["logprob"], -9999.0) for t in e["top"]}
                                 for e in entries],
                "text_offset": offsets}

    def choice(self, index: int, text: str, logprobs, reason: str) -> dict:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}

    def first(self, index: int) -> dict | None:
        return None

    def delta(self, index: int, text: str, logprobs) -> dict:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": None}

    def final(self, index: int, reason: str) -> list[dict]:
        return [{"index": index, "text": "", "logprobs": None, "finish_reason": reason}]


def _chunk_error(c: Chunk) -> APIError:
    if c.error_code == "shutting_down":
        return APIError(503, c.error, type="server_error", code="shutting_down")
    return APIError(500, c.error, type="server_error", code="internal_error")


# ---- the endpoints' common path --------------------------------------------------------------
class Generation:
    """One accepted request: its sequences in the engine, and how to answer."""

    def __init__(self, engine, fmt: ChatFormat, model: str, prompts: list[list[int]],
                 params: list[SamplingParams], adapter: str | None, stream: bool, include_usage: bool,
                 want_logprobs: bool, arrived: float | None = None, internal: bool = False):
        self.engine, self.fmt, self.model = engine, fmt, model
        self.n = len(params) // len(prompts)
        self.k = len(params)
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.cached_tokens = 0   # of those, found in the engine's prefix cache (summed as choices finish)
        self.stream, self.include_usage, self.want_logprobs = stream, include_usage, want_logprobs
        self.id = fmt.id_prefix + uuid.uuid4().hex
        self.created = int(time.time())
        # choice index i*n + j: prompt i, sample j (OpenAI's order for batched prompts)
        items = [(prompts[i // self.n], params[i], adapter) for i in range(self.k)]
        try:
            self.ticket: Ticket = engine.submit(items, arrived, internal)
        except QueueFull as e:
            raise APIError(429, str(e), type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
        except NotAccepting as e:
            raise APIError(503, str(e), type="server_error", code="shutting_down")
        except ValueError as e:   # PromptTooLong and friends, should the checks above have missed one
            raise APIError(400, str(e), code="invalid_parameter")

    def _envelope(self, obj: str, choices: list, **extra) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices,
                **extra}

    def _usage(self, completion_tokens: int) -> dict:
        # prompt_tokens_details.cached_tokens as OpenAI reports its prompt caching (n > 1 choices share
        # one prompt: counted once per prompt, as prompt_tokens is)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": min(self.cached_tokens, self.prompt_tokens)}}

    def _finished(self, c) -> None:
        if c.index % self.n == 0:
            self.cached_tokens += c.cached_tokens

    async def collect(self, is_disconnected) -> dict:
        """Wait for every choice to finish; cancels the work if the client goes away meanwhile."""
        texts = [[] for _ in range(self.k)]
        lps = [[] for _ in range(self.k)]
        reasons: list[str | None] = [None] * self.k
        tokens = 0
        try:
            done = 0
            checked = time.monotonic()
            while done < self.k:
                queue = self.ticket.queue
                try:
                    c = queue.get_nowait() if not queue.empty() else await asyncio.wait_for(queue.get(), DISCONNECT_POLL)
                except TimeoutError:
                    c = None
                # chunks may arrive every few ms, so poll the connection by the clock, not on timeouts only
                if time.monotonic() - checked >= DISCONNECT_POLL:
                    checked = time.monotonic()
                    if await is_disconnected():
                        raise ClientGone()
                if c is None:
                    continue
                if c.error:
                    raise _chunk_error(c)
                texts[c.index].append(c.delta)
                lps[c.index] += c.logprobs
                if c.finish_reason:
                    reasons[c.index] = c.finish_reason
                    tokens += c.completion_tokens
                    self._finished(c)
                    done += 1
        finally:
            self.engine.cancel(self.ticket)   # no-op when all finished; frees slots otherwise
        choices = [self.fmt.choice(i, "".join(texts[i]),
                                   self.fmt.logprobs(i, lps[i]) if self.want_logprobs else None, reasons[i])
                   for i in range(self.k)]
        return self._envelope(self.fmt.object, choices, usage=self._usage(tokens))

    async def events(self):
        """Server-Sent Events. Cancelling this generator (client disconnect) cancels the sequences."""
        obj = self.fmt.chunk_object
        extra = {"usage": None} if self.include_usage else {}

        def sse(payload) -> str:
            return f"data: {dumps(payload)}\n\n"

        try:
            firsts = [self.fmt.first(i) for i in range(self.k)]
            if firsts[0] is not None:
                yield "".join(sse(self._envelope(obj, [f], **extra)) for f in firsts)
            done, tokens = 0, 0
            queue = self.ticket.queue
            while done < self.k:
                out = []
                c = await queue.get()
                while True:   # whatever else is already queued goes out in the same write
                    if c.error:
                        yield "".join(out) + sse(_chunk_error(c).body()) + "data: [DONE]\n\n"
                        return
                    if c.delta or (c.logprobs and self.want_logprobs):
                        lp = self.fmt.logprobs(c.index, c.logprobs) if self.want_logprobs else None
                        if (choice := self.fmt.delta(c.index, c.delta, lp)) is not None:
                            out.append(sse(self._envelope(obj, [choice], **extra)))
                    if c.finish_reason:
                        out += [sse(self._envelope(obj, [f], **extra)) for f in self.fmt.final(c.index, c.finish_reason)]
                        tokens += c.completion_tokens
                        self._finished(c)
                        done += 1
                    if queue.empty():
                        break
                    c = queue.get_nowait()
                if out:
                    yield "".join(out)
            tail = sse(self._envelope(obj, [], usage=self._usage(tokens))) if self.include_usage else ""
            yield tail + "data: [DONE]\n\n"
        finally:
            self.engine.cancel(self.ticket)
