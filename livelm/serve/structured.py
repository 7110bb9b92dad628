"""Structured output and tool calls in the OpenAI API: what a request asks for, as a grammar and a tool format.

    response_format {"type": "json_object"}                  -> any JSON object
    response_format {"type": "json_schema", "json_schema": {"schema": ..., "strict": ...}}
    guided_json / guided_regex / guided_choice / guided_grammar  (vLLM's extra fields)
    tools + tool_choice "auto"      -> free text; once the model opens a call in its own format
                                       ("<tool_call>"), the call is constrained to the tools' schemas
    tools + tool_choice "required"  -> the whole answer is one or more calls, arguments valid by schema
    tools + tool_choice {"type": "function", "function": {"name": N}}  -> one call of N
    tools + tool_choice "none"      -> the tools are not offered; plain text

The grammar travels to the engine in SamplingParams (livelm/infer/grammar.py masks the
logits); the model's output is parsed back into message.tool_calls by livelm/chat/tools.py,
in the format its chat template uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from livelm.chat import tools as toolfmt
from livelm.infer import grammar
from livelm.serve.completions import APIError, ChatFormat
from livelm.serve.openai_schema import NamedToolChoice


@dataclass
class Plan:
    """What one request needs beyond plain sampling."""
    grammar: str | None = None
    trigger: str | None = None         # the grammar starts once the output ends with this
    tools: list[dict] | None = None    # offered to the model (rendered by its template)
    tool_format: str | None = None     # how its calls are parsed: livelm.chat.tools.FORMATS
    tool_names: set[str] = field(default_factory=set)


def asks(req) -> bool:
    """Whether the request asks for anything this module handles (most requests do not: they skip it)."""
    fmt = req.response_format
    return bool(fmt is not None and fmt.type != "text" or getattr(req, "tools", None)
                or getattr(req, "tool_choice", None) is not None
                or any(getattr(req, f"guided_{k}", None) is not None for k in ("json", "regex", "choice", "grammar")))


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_parameter")


def _schema_grammar(schema, strict: bool, param: str) -> str:
    try:
        return grammar.json_schema(schema, strict=strict)
    except grammar.GrammarError as e:
        raise _bad(f"{param}: {e}", param) from None


def _output_grammar(req) -> str | None:
    """The grammar of response_format or of vLLM's guided_* fields (at most one of them)."""
    asked = [name for name in ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
             if getattr(req, name, None) is not None]
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        asked.append("response_format")
    if len(asked) > 1:
        raise _bad(f"{' and '.join(asked)} both constrain the output; give one", asked[1])
    if not asked:
        return None
    what = asked[0]
    try:
        if what == "response_format":
            if fmt.type == "json_object":
                return grammar.json_object()
            if fmt.json_schema is None or fmt.json_schema.schema_ is None:
                raise _bad("response_format json_schema needs json_schema.schema", "response_format")
            return _schema_grammar(fmt.json_schema.schema_, bool(fmt.json_schema.strict), "response_format")
        if what == "guided_json":
            return _schema_grammar(req.guided_json, True, what)
        if what == "guided_regex":
            return grammar.regex(req.guided_regex)
        if what == "guided_choice":
            return grammar.choice(req.guided_choice)
        return grammar.lark(req.guided_grammar)
    except grammar.GrammarError as e:
        raise _bad(f"{what}: {e}", what) from None


def plan(req, tokenizer, chat: bool) -> Plan:
    """The request's grammar and tools, or a 400 naming the field that is wrong."""
    out = Plan(grammar=_output_grammar(req))
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if chat and req.tools else None
    choice = req.tool_choice if chat else None
    if choice is not None and not tools and choice != "none":
        raise _bad("tool_choice needs tools", "tool_choice")
    if not tools or choice == "none":
        return out
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise _bad("tool names must be unique", "tools")
    for t in tools:   # a schema that cannot be compiled is the caller's error, found now
        params = t["function"].get("parameters")
        if params is not None:
            _schema_grammar(params, True, "tools")
    out.tools, out.tool_format, out.tool_names = tools, toolfmt.tool_format(tokenizer), set(names)
    forced = choice.function.name if isinstance(choice, NamedToolChoice) else None
    if forced is not None:
        if forced not in out.tool_names:
            raise _bad(f"tool_choice names {forced!r}, which is not one of the tools", "tool_choice")
    parallel = req.parallel_tool_calls is not False
    try:
        if choice == "required" or forced is not None:
            if out.grammar is not None:
                raise _bad("response_format and a required tool call both constrain the output; give one",
                           "tool_choice")
            out.grammar = grammar.lark(toolfmt.call_grammar(tools, out.tool_format, forced,
                                                            parallel and forced is None))
        elif out.grammar is None and (trigger := toolfmt.trigger(out.tool_format)):
            # "auto": free text until the model opens a call; then the call must be valid
            out.grammar, out.trigger = grammar.lark(toolfmt.after_trigger_grammar(tools, out.tool_format)), trigger
    except grammar.GrammarError as e:
        raise _bad(f"tools: {e}", "tools") from None
    return out


class ToolChatFormat(ChatFormat):
    """Chat answers whose text may hold tool calls: parsed into message.tool_calls (finish_reason
    "tool_calls"); streamed, ordinary text goes out as it comes and the calls at the end of the choice."""

    def __init__(self, tokenizer, tool_format: str, tool_names: set[str]):
        super().__init__(tokenizer)
        self.tool_format, self.tool_names = tool_format, tool_names
        self.parsers: dict[int, toolfmt.StreamParser] = {}

    def _parser(self, index: int) -> toolfmt.StreamParser:
        if index not in self.parsers:
            self.parsers[index] = toolfmt.StreamParser(self.tool_format, self.tool_names)
        return self.parsers[index]

    def choice(self, index: int, text: str, logprobs, reason: str) -> dict:
        content, calls = toolfmt.parse(text, self.tool_format, self.tool_names)
        message = {"role": "assistant", "content": content or None}
        if calls:
            message["tool_calls"] = [c.openai() for c in calls]
            reason = "tool_calls" if reason == "stop" else reason
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": reason}

    def delta(self, index: int, text: str, logprobs) -> dict | None:
        content = self._parser(index).push(text)
        if not content and logprobs is None:
            return None
        return super().delta(index, content, logprobs)

    def final(self, index: int, reason: str) -> list[dict]:
        content, calls = self._parser(index).finish()
        out = [super().delta(index, content, None)] if content else []
        if calls:
            out.append({"index": index, "delta": {"tool_calls": [c.openai(i) for i, c in enumerate(calls)]},
                        "logprobs": None, "finish_reason": None})
            reason = "tool_calls" if reason == "stop" else reason
        return out + super().final(index, reason)

