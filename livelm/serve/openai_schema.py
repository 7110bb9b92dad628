"""Request bodies of the OpenAI-compatible API, as pydantic models.

Only what livelm acts on is declared; unknown fields are ignored (as vLLM and
OpenAI's own server do), so newer SDKs that send extra fields keep working.
Range checks that SamplingParams.validate() also makes are left to it, so
there is one source of truth for them; here we check types and the
API-specific rules (n, top_logprobs, stream_options).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_N = 8               # choices per request: each is a sequence in the batch
MAX_STOP = 16           # stop strings per request
MAX_LOGPROBS = 20
SEED_MIN, SEED_MAX = -(2 ** 63), 2 ** 63 - 1


# Fields that change what the answer means: silently ignoring them would mislead, so they are a 400.
# (Fields that only describe the caller, like `user`, are accepted and ignored.)
UNSUPPORTED = ("logit_bias", "functions", "function_call", "suffix", "best_of", "prompt_logprobs")


def unsupported(body: dict) -> str | None:
    """The first unsupported field the request actually uses, if any."""
    for name in UNSUPPORTED:
        value = body.get(name)
        if value not in (None, [], {}, "none") and not (name == "best_of" and value == body.get("n", 1)):
            return name
    if body.get("echo") is True:
        return "echo"
    return None


# ---- structured output and tools (livelm/serve/structured.py turns them into grammars) ----------
TOOL_NAME = r"^[A-Za-z0-9_-]{1,64}$"     # OpenAI's rule for function names
MAX_TOOLS = 128


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by both endpoints (OpenAI's names, plus vLLM's extras)."""
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None          # vLLM extra; -1 and 0 both mean off
    min_p: float | None = None        # vLLM extra
    repetition_penalty: float | None = None   # vLLM extra
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None   # vLLM extra
    ignore_eos: bool = False                  # vLLM extra
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | str | None = None     # vLLM's extras: one constraint per request
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if v is None:
            return []
        v = [v] if isinstance(v, str) else v
        if len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        if any(not s for s in v):
            raise ValueError("stop strings must be non-empty")
        return v


# What /openapi.json says a message is (validation itself is livelm/chat/template.py's validate(), which
# also takes content parts, tool calls and tool results): enough for a schema-driven client or fuzzer
# to write requests that reach the model, not only ones that stop at the first check.
MESSAGE_SCHEMA = {"type": "object", "required": ["role", "content"], "properties": {
    "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
    "content": {"type": "string"}}}


class ChatCompletionRequest(_Sampling):
    messages: list[dict[str, Any]] = Field(json_schema_extra={"minItems": 1, "items": MESSAGE_SCHEMA})
    max_completion_tokens: int | None = Field(None, ge=1)
    # vLLM's extensions, as transformers' apply_chat_template defines them: continue the final
    # assistant message instead of opening a new turn (prefilling the answer's start)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @property
    def token_limit(self) -> int | None:
        # max_completion_tokens is OpenAI's newer name; it wins when both are given (as in vLLM)
        return self.max_completion_tokens or self.max_tokens

    @property
    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    @property
    def logprobs_k(self) -> int | None:
        return self.logprobs


class FeedbackRequest(BaseModel):
    """POST /v1/feedback: one judgement of one answer (see livelm/learn/feedback.py)."""
    model_config = ConfigDict(extra="ignore")

    kind: Literal["up", "down", "correction", "preference", "fact"]
    conversation: list[dict[str, Any]] = Field(default_factory=list,   # the messages before the answer
                                               json_schema_extra={"items": MESSAGE_SCHEMA})
    answer: str | None = None
    correction: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    model: str | None = None


# ---- bodies that are read by hand (audio.py, app.py), declared here for /openapi.json only -----------
class SpeechRequest(BaseModel):
    """POST /v1/audio/speech (livelm/serve/audio.py checks it)."""
    model: str | None = None
    input: str = Field(max_length=4096)
    voice: str | None = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] | None = None
    speed: float = Field(1.0, ge=0.25, le=4.0)


class TranscriptionRequest(BaseModel):
    """POST /v1/audio/transcriptions, as multipart/form-data: the audio in `file`, the rest as text fields."""
    file: bytes = Field(json_schema_extra={"format": "binary"})
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    response_format: Literal["json", "text", "verbose_json", "srt", "vtt"] | None = None
    temperature: float | None = None


class RollbackRequest(BaseModel):
    """POST /v1/adapters/rollback (the body is optional: without it, the previous live version)."""
    to: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer of the API: OpenAI's error shape."""
    error: ErrorDetail
