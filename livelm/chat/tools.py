"""Tool calls in a model's own format: offering tools, reading the calls back, and their grammars.

A model calls a tool by writing text its chat template taught it:

    hermes   <tool_call>{"name": "f", "arguments": {...}}</tool_call>        Qwen2.5, Hermes; SmolLM2
             puts a JSON list of calls inside one <tool_call>...</tool_call>
    llama3   <|python_tag|>{"name": "f", "parameters": {...}}               the whole output (Llama 3.1+)
    mistral  [TOOL_CALLS][{"name": "f", "arguments": {...}}]                 or v11's [TOOL_CALLS]f[ARGS]{...}

A template that reads `tools` renders tools, tool calls and tool results itself (livelm/chat/template.py
hands them over). One that does not (SmolLM2's ChatML, Gemma's, livelm's own) gets `prepare`'s fallback:
the tools described in the system message and calls and results written as plain turns in the hermes
format, the one small models most often saw. `parse` and `StreamParser` read calls out of the output;
`call_grammar` and `after_trigger_grammar` give Lark grammars (llguidance's dialect) that constrain
decoding to well-formed calls of the offered tools.
"""
from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass
from functools import lru_cache

FORMATS = ("hermes", "llama3", "mistral")
HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
TOOL_CALLS = "[TOOL_CALLS]"
_V11 = re.compile(r"([A-Za-z0-9_.:-]+)(?:\[CALL_ID\][A-Za-z0-9]*)?\[ARGS\]")   # [TOOL_CALLS]name[ARGS]{...}
_ALNUM = string.ascii_letters + string.digits
# JSON as models write it (Python's json.dumps style: ", " and ": ", no newlines): a grammar that forces
# another spacing pushes a small model off its own habits and into noise. llguidance reads this from a
# schema's "x-guidance" key; livelm/infer/grammar.py uses the same style for response_format.
JSON_STYLE = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


# ---- which format ----------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _template_format(template: str) -> str:
    if TOOL_CALLS in template:
        return "mistral"
    if PYTHON_TAG in template or "ipython" in template:
        return "llama3"
    return "hermes"


@lru_cache(maxsize=16)
def _reads_tools(template: str) -> bool:
    # `tools` read as a Jinja variable (not the word in a default system prompt's text)
    import jinja2
    from jinja2 import meta

    from livelm.chat.sandbox import ChatFormatError, sandbox
    # parsed in the bounded sandbox rendering uses: analysing a template folds its constant expressions,
    # and a hostile one ('x' * 10**10) must not allocate them here either
    try:
        ast = sandbox().parse(template)
        return "tools" in meta.find_undeclared_variables(ast)
    except (jinja2.TemplateError, ChatFormatError, RecursionError):
        return False     # rendering will say what is wrong with it


def tool_format(tokenizer) -> str:
    """The tool-call format the model's chat template uses (hermes when it names none)."""
    return _template_format(tokenizer.chat_template or "")


def supports_tools(tokenizer) -> bool:
    """Whether the chat template renders tools itself (else `prepare` writes them as text)."""
    return _reads_tools(tokenizer.chat_template or "")


def _function(tool: dict) -> dict:
    """An OpenAI tool {"type": "function", "function": {...}} -> its function {"name", "description", "parameters"}."""
    return tool.get("function", tool) if isinstance(tool, dict) else {}


# ---- the fallback: tools as plain text in templates that know none ------------------------------
def _tools_text(tools: list[dict]) -> str:
    lines = "\n".join(json.dumps(_function(t), ensure_ascii=False) for t in tools)
    return (f"You can call these tools:\n<tools>\n{lines}\n</tools>\n"
            'To call a tool, answer with <tool_call>{"name": <tool name>, "arguments": <JSON object>}</tool_call>, '
            "one per call.")


def _calls_text(calls: list[dict]) -> str:
    def call(f):
        args = f["arguments"]
        return {"name": f["name"], "arguments": json.loads(args) if isinstance(args, str) else args}
    return "\n".join(HERMES_OPEN + json.dumps(call(c["function"]), ensure_ascii=False) + HERMES_CLOSE for c in calls)


def prepare(messages: list[dict], tools: list[dict] | None, tokenizer) -> list[dict]:
    """Validated messages as the chat template should see them.

    A template that renders tools itself gets them unchanged. For one that does not, tools are
    listed in the system message (after its text, or in a new one), an assistant's tool calls
    become its text (content, then one <tool_call> per call) and tool results become a user turn
    of <tool_response> blocks (consecutive results in one turn, as Qwen's template does), so the
    conversation only has roles every template knows.
    """
    uses_tools = tools or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
    if not uses_tools or supports_tools(tokenizer):
        return messages
    out: list[dict] = []
    for k, m in enumerate(messages):
        if m["role"] == "tool":
            block = f"<tool_response>\n{m['content']}\n</tool_response>"
            if k and messages[k - 1]["role"] == "tool":
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block})
        elif m.get("tool_calls"):
            text = _calls_text(m["tool_calls"])
            out.append({"role": "assistant", "content": f"{m['content']}\n{text}" if m["content"] else text})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if tools:
        if out and out[0]["role"] == "system":
            first = out[0]["content"]
            out[0] = {"role": "system", "content": f"{first}\n\n{_tools_text(tools)}" if first else _tools_text(tools)}
        else:
            out.insert(0, {"role": "system", "content": _tools_text(tools)})
    return out


# ---- reading calls out of the output ----------------------------------------------------------
def _new_id() -> str:
    return "call_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str      # a JSON object as text, as OpenAI sends it

    def openai(self, index: int | None = None) -> dict:
        d = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return d if index is None else {"index": index, **d}


_BAD = object()    # "this is not JSON"


def _json(text: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _BAD


def _call(obj, names: set[str] | None) -> ToolCall | None:
    """One {"name", "arguments"|"parameters"} object -> a ToolCall, or None when it is not a valid call."""
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not isinstance(name, str) or not name or (names is not None and name not in names):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):       # some models write the arguments as a JSON string, as OpenAI sends them
        args = _json(args)
    if not isinstance(args, dict):
        return None
    return ToolCall(_new_id(), name, json.dumps(args, ensure_ascii=False))


def _calls(obj, names: set[str] | None) -> list[ToolCall] | None:
    """A call object or a list of them -> the calls, or None if any is not a valid call."""
    items = obj if isinstance(obj, list) else [obj]
    calls = [_call(x, names) for x in items]
    return calls if all(calls) else None     # [] (SmolLM2's "no call needed") is valid: no calls


def _split_hermes(text: str, names) -> tuple[str, list[ToolCall]]:
    content, calls, pos = [], [], 0
    while (start := text.find(HERMES_OPEN, pos)) >= 0:
        end = text.find(HERMES_CLOSE, start)
        body_end, after = (end, end + len(HERMES_CLOSE)) if end >= 0 else (len(text), len(text))  # unclosed: the rest
        found = _calls(_json(text[start + len(HERMES_OPEN):body_end]), names)
        content.append(text[pos:start] if found is not None else text[pos:after])
        calls += found or []
        pos = after
    content.append(text[pos:])
    return "".join(content), calls


def _json_sequence(text: str, sep: str) -> list | None:
    """`obj sep obj ...` (a trailing sep allowed) -> the objects, or None unless that is all the text holds."""
    dec, objs, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text) and objs:
            return objs
        try:
            obj, i = dec.raw_decode(text, i)
        except (ValueError, RecursionError):
            return None
        objs.append(obj)
        while i < len(text) and text[i].isspace():
            i += 1
        if i < len(text):
            if text[i] != sep:
                return None
            i += 1


def _split_llama3(text: str, names) -> tuple[str, list[ToolCall]]:
    head, tag, body = text.partition(PYTHON_TAG)
    if not tag:
        head, body = "", text
    objs = _json_sequence(body, ";")
    calls = _calls(objs, names) if objs is not None else None
    return (head, calls) if calls else (text, [])


def _split_mistral(text: str, names) -> tuple[str, list[ToolCall]]:
    content, calls, pos = [], [], 0
    dec = json.JSONDecoder()
    while (start := text.find(TOOL_CALLS, pos)) >= 0:
        content.append(text[pos:start])
        i, found = start + len(TOOL_CALLS), None
        try:
            while i < len(text) and text[i].isspace():
                i += 1
            if m := _V11.match(text, i):           # v11: name[ARGS]{...}
                args, i = dec.raw_decode(text, m.end())
                found = _calls({"name": m.group(1), "arguments": args}, names)
            else:                                   # [{"name", "arguments"}, ...]
                obj, i = dec.raw_decode(text, i)
                found = _calls(obj, names)
        except (ValueError, RecursionError):
            pass
        if found is None:    # not a call: the text up to the next marker stays content
            nxt = text.find(TOOL_CALLS, start + len(TOOL_CALLS))
            i = nxt if nxt >= 0 else len(text)
            content.append(text[start:i])
        calls += found or []
        pos = i
    content.append(text[pos:])
    return "".join(content), calls


_SPLIT = {"hermes": _split_hermes, "llama3": _split_llama3, "mistral": _split_mistral}


def _split(text: str, fmt: str, tool_names) -> tuple[str, list[ToolCall]]:
    if fmt not in _SPLIT:
        raise ValueError(f"unknown tool-call format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return _SPLIT[fmt](text, set(tool_names) if tool_names is not None else None)


def parse(text: str, fmt: str, tool_names: set[str] | None = None) -> tuple[str, list[ToolCall]]:
    """A finished output -> (its content, the tool calls it makes).

    What is not a well-formed call (bad JSON, no name, arguments not an object, a tool not in
    tool_names) stays in the content as the text it was: the caller sees what the model said.
    """
    content, calls = _split(text, fmt, tool_names)
    return content.strip(), calls


class StreamParser:
    """parse() for a streamed output: content goes out as it comes, except text that is, or may
    still become, a tool call. Text is held back from the first character that could start a
    marker ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>"; for llama3 also a "{" opening the
    output) and, once a marker is complete, to the end, where finish() parses the held text.
    Whitespace is held too until text follows it, so content never ends in the newline before a call.
    """

    def __init__(self, fmt: str, tool_names: set[str] | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"unknown tool-call format {fmt!r}; expected one of {', '.join(FORMATS)}")
        self.fmt, self.tool_names = fmt, tool_names
        self.marker = {"hermes": HERMES_OPEN, "llama3": PYTHON_TAG, "mistral": TOOL_CALLS}[fmt]
        self.text = ""          # the whole output so far
        self.sent = 0           # text[:sent] is emitted (or dropped leading whitespace)
        self.emitted = False
        self.held = False       # a marker began: everything from `sent` waits for finish()

    def push(self, delta: str) -> str:
        self.text += delta
        if self.held:
            return ""
        text = self.text
        if not self.emitted:    # like parse's strip(): no leading whitespace
            self.sent = len(text) - len(text.lstrip())
            if self.fmt == "llama3" and text[self.sent:].startswith("{"):
                self.held = True
                return ""
        safe = text.find(self.marker, self.sent)
        if safe >= 0:
            self.held = True
        else:   # all of it, but a suffix that may still grow into the marker
            safe = len(text)
            for k in range(min(len(self.marker) - 1, len(text) - self.sent), 0, -1):
                if self.marker.startswith(text[-k:]):
                    safe = len(text) - k
                    break
        piece = text[self.sent:safe].rstrip()
        if not piece:
            return ""
        self.sent += len(piece)
        self.emitted = True
        return piece

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The content still to emit and the calls the whole output made."""
        rest, calls = _split(self.text[self.sent:], self.fmt, self.tool_names)
        rest = rest.rstrip() if self.emitted else rest.strip()
        self.sent = len(self.text)
        return rest, calls


# ---- grammars: decoding constrained to calls -------------------------------------------------
def trigger(fmt: str) -> str | None:
    """The text after which a call's JSON follows (None: llama3's call is the whole output)."""
    return {"hermes": HERMES_OPEN, "mistral": TOOL_CALLS, "llama3": None}[fmt]


def _schemas(tools: list[dict], fmt: str, choice: str | None = None) -> list[dict]:
    """One JSON schema per tool for its call object {"name": ..., "arguments": ...}."""
    key = "parameters" if fmt == "llama3" else "arguments"    # what Llama 3.1's template asks for
    funcs = [_function(t) for t in tools]
    if choice is not None:
        funcs = [f for f in funcs if f.get("name") == choice]
        if not funcs:
            raise ValueError(f"tool_choice names {choice!r}, which is not among the tools")
    if not funcs:
        raise ValueError("no tools to call")
    return [{"type": "object",
             "properties": {"name": {"const": f.get("name")}, key: f.get("parameters") or {"type": "object"}},
             "required": ["name", key], "additionalProperties": False} for f in funcs]


def _call_rules(schemas: list[dict]) -> str:
    # one rule per tool, so each %json stays the tool's own schema
    alts = " | ".join(f"call_{i}" for i in range(len(schemas)))
    return f"call: {alts}\n" + "".join(f"call_{i}: %json {_styled(s)}\n" for i, s in enumerate(schemas))


def _styled(schema: dict) -> str:
    return json.dumps({**schema, "x-guidance": JSON_STYLE}, ensure_ascii=False)


def _list_schema(schemas: list[dict], parallel: bool) -> str:
    s = {"type": "array", "items": {"anyOf": schemas}, "minItems": 1}
    if not parallel:
        s["maxItems"] = 1
    return _styled(s)


def call_grammar(tools: list[dict], fmt: str, choice: str | None = None, parallel: bool = True) -> str:
    """A Lark grammar (llguidance) for an output that must be tool calls: of any tool (choice None)
    or of the named one, one call or (parallel) several."""
    schemas = _schemas(tools, fmt, choice)
    lit = json.dumps
    if fmt == "hermes":
        # the object Qwen and Hermes write, or the list SmolLM2 writes; newlines as either has them
        head = "start: block (/[ \\t\\n]*/ block)*\n" if parallel else "start: block\n"
        return (head + f'block: {lit(HERMES_OPEN)} "\\n"? body "\\n"? {lit(HERMES_CLOSE)}\n'
                f"body: call | %json {_list_schema(schemas, parallel)}\n" + _call_rules(schemas))
    if fmt == "mistral":
        return f'start: {lit(TOOL_CALLS)} " "? %json {_list_schema(schemas, parallel)}\n'
    if fmt == "llama3":
        return ('start: call (";" " "? call)*\n' if parallel else "start: call\n") + _call_rules(schemas)
    raise ValueError(f"unknown tool-call format {fmt!r}; expected one of {', '.join(FORMATS)}")


def after_trigger_grammar(tools: list[dict], fmt: str) -> str:
    """A Lark grammar for what follows trigger(fmt) when the model chose to call a tool
    (tool_choice "auto"): well-formed calls of the offered tools, then free text (more calls, or the end)."""
    schemas = _schemas(tools, fmt)
    rest = "rest: /(.|\\n)*/\n"
    if fmt == "hermes":
        return (f'start: /[ \\t\\n]*/ body "\\n"? {json.dumps(HERMES_CLOSE)} rest\n'
                f"body: call | %json {_list_schema(schemas, True)}\n" + _call_rules(schemas) + rest)
    if fmt == "mistral":
        return f'start: " "? %json {_list_schema(schemas, True)} rest\n' + rest
    raise ValueError(f"format {fmt!r} has no trigger: constrain the whole output with call_grammar")
