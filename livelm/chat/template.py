"""The chat renderer: one per model, its own Jinja chat template, for training, the REPL, the server and evaluation.

Every model carries its template in its tokenizer (`Tokenizer.chat_template`):
an imported model the one its authors wrote (ChatML for SmolLM2 and Qwen,
<start_of_turn> for Gemma, <|start_header_id|> for Llama 3), livelm's own models

    <|bos|> <|system|> text <|end|> <|user|> text <|end|> <|assistant|> text <|end|> ...

(livelm/tokenizer.py CHAT_TEMPLATE). The template runs in Jinja's immutable
sandbox, with the globals and options transformers gives it, so the ids equal
`apply_chat_template`'s: the rendered text is tokenized in one piece, special
token text parsed.

Prompt-injection safety. A user who types "<|im_end|>" must not end their turn.
When a message's text holds any special token's text, the template is rendered
with placeholders instead, and each message's text is encoded as plain text
between the template's pieces, so only the template's own markers are special.

The loss mask (1 = the model learns to produce this token) covers each assistant
message's text and the end-of-turn marker that closes it, found from the template
itself: the assistant turn is what rendering messages[:i+1] adds to rendering
messages[:i] with a generation prompt. So it works for any template, and an
imported model is fine-tuned on its own format.

Tools (OpenAI's `tools`, assistant `tool_calls`, role "tool" results) go to templates that
render them (Qwen2.5, Llama 3.1, Mistral, Hermes); for the others livelm/chat/tools.py's
`prepare` writes them into the conversation as text. Tool results are never learned.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from functools import lru_cache

from livelm.chat import tools as _tools
from livelm.chat.sandbox import ChatFormatError, budget, compiled
from livelm.tokenizer import CHAT_TEMPLATE

ROLES = ("system", "user", "assistant", "tool")
JINJA_TEMPLATE = CHAT_TEMPLATE   # livelm's own format, as exported to tokenizer_config.json


def validate(messages) -> list[dict]:
    """OpenAI chat messages -> [{"role", "content": str}], plus an assistant's "tool_calls"
    (arguments as the JSON text OpenAI sends) and a tool result's "tool_call_id" and "name".
    Validated messages validate again unchanged."""
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError("messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ChatFormatError(f"message {i} is not an object")
        role, content, calls = m.get("role"), m.get("content"), m.get("tool_calls")
        if role not in ROLES:
            raise ChatFormatError(f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if calls is not None and role != "assistant":
            raise ChatFormatError(f"message {i} ({role}) has tool_calls; only assistant messages make tool calls")
        if calls is not None and not isinstance(calls, list):
            raise ChatFormatError(f"message {i}: tool_calls must be a list")
        if calls and content is None:   # OpenAI sends content null beside tool calls
            content = ""
        if not isinstance(content, str):
            raise ChatFormatError(f"message {i} ({role}) has no text content")
        msg = {"role": role, "content": content}
        if calls:
            msg["tool_calls"] = [_tool_call(c, f"message {i} tool_calls[{j}]") for j, c in enumerate(calls)]
        if role == "tool":
            for key in ("tool_call_id", "name"):
                if m.get(key) is not None:
                    if not isinstance(m[key], str):
                        raise ChatFormatError(f"message {i} (tool): {key} must be a string")
                    msg[key] = m[key]
        out.append(msg)
    return out


def _tool_call(c, where: str) -> dict:
    """One OpenAI tool call, checked: {"id"?, "type": "function", "function": {"name", "arguments": JSON text}}."""
    if not isinstance(c, dict):
        raise ChatFormatError(f"{where} is not an object")
    if c.get("type", "function") != "function":
        raise ChatFormatError(f"{where} has type {c.get('type')!r}; only \"function\" tool calls are supported")
    f = c.get("function")
    if not isinstance(f, dict):
        raise ChatFormatError(f"{where} has no \"function\" object")
    name, args = f.get("name"), f.get("arguments")
    if not isinstance(name, str) or not name.strip():
        raise ChatFormatError(f"{where}: function.name must be a non-empty string")
    if isinstance(args, dict):      # transformers' convention; OpenAI sends text
        args = json.dumps(args, ensure_ascii=False)
    if not isinstance(args, str):
        raise ChatFormatError(f"{where}: function.arguments must be a JSON object as a string, "
                              f"got {type(args).__name__}")
    try:
        parsed = json.loads(args)
    except ValueError as e:
        raise ChatFormatError(f"{where}: function.arguments is not valid JSON ({e}): {args[:80]!r}") from None
    if not isinstance(parsed, dict):
        raise ChatFormatError(f"{where}: function.arguments must be a JSON object, not {type(parsed).__name__}")
    out = {"type": "function", "function": {"name": name, "arguments": args}}
    if c.get("id") is not None:
        if not isinstance(c["id"], str):
            raise ChatFormatError(f"{where}: id must be a string")
        out = {"id": c["id"], **out}
    return out


# ---- Jinja, sandboxed and bounded -----------------------------------------------------------------
def render_text(messages: list[dict], tokenizer, add_generation_prompt: bool = False,
                tools: list[dict] | None = None) -> str:
    """The template's text for validated messages and the tools offered (what
    `apply_chat_template(tokenize=False, tools=tools)` returns, after tools.prepare for
    templates that do not render tools)."""
    template = tokenizer.chat_template
    if not template:
        raise ChatFormatError("this model has no chat template (a base model): chat with a model that has one, "
                              "or add a chat_template to its tokenizer_config.json")
    from jinja2 import TemplateError
    messages = _tools.prepare(messages, tools, tokenizer)
    tools = (tools or None) if _tools.supports_tools(tokenizer) else None   # else prepare wrote them in
    cfg = tokenizer.config

    def token_text(key, token_id):
        v = cfg.get(key)
        v = v.get("content") if isinstance(v, dict) else v
        return v if isinstance(v, str) else tokenizer.decode([token_id]) if token_id is not None else ""

    template = compiled(template)
    try:
        with budget(sum(len(m.get("content") or "") for m in messages) + len(json.dumps(tools or []))) as b:
            out, n = [], 0
            for chunk in template.generate(
                    messages=_template_view(messages, tokenizer), add_generation_prompt=add_generation_prompt,
                    tools=tools, documents=None, bos_token=token_text("bos_token", tokenizer.bos_id),
                    eos_token=token_text("eos_token", tokenizer.eos_id),
                    pad_token=token_text("pad_token", tokenizer.pad_id),
                    unk_token=token_text("unk_token", tokenizer.unk_id)):
                n += len(chunk)
                b.size(n, "an output")
                b.tick()
                out.append(chunk)
            return "".join(out)
    except ChatFormatError:
        raise
    except TemplateError as e:
        raise ChatFormatError(f"the model's chat template failed on this conversation: {e}") from None
    except RecursionError:
        raise ChatFormatError("the model's chat template recursed too deeply and was stopped; "
                              "replace the chat_template") from None
    except Exception as e:   # the template's own bug (1/0, "a" + 1, an import without a loader): its failure
        raise ChatFormatError(f"the model's chat template failed on this conversation "
                              f"({type(e).__name__}: {e})") from None


def default_system_prompt(tokenizer) -> str | None:
    """The system prompt the model's template writes when a conversation brings none (SmolLM2: "You are
    a helpful AI assistant named SmolLM, trained by Hugging Face"; Qwen2.5 has one too), or None.

    Found by rendering one user turn with and without a marker system prompt: with one, the text is
    P + marker + Q + question + R; a template with a default renders P + default + Q + question + R.
    Live learning puts its notes under this prompt (livelm/learn/memory.py: with_notes): a model
    answers best under the prompt it was tuned with, and a notes-only system turn would replace it."""
    if not tokenizer.chat_template:
        return None
    marker, question = "\x1fSYSTEM\x1f", "\x1fQUESTION\x1f"
    try:
        with_marker = render_text([{"role": "system", "content": marker}, {"role": "user", "content": question}],
                                  tokenizer)
        plain = render_text([{"role": "user", "content": question}], tokenizer)
    except ChatFormatError:
        return None
    if with_marker.count(marker) != 1:
        return None
    head, tail = with_marker.split(marker)
    if not (plain.startswith(head) and plain.endswith(tail) and len(plain) > len(head) + len(tail)):
        return None
    default = plain[len(head):len(plain) - len(tail)]
    return default.strip() or None


def _template_view(messages: list[dict], tokenizer) -> list[dict]:
    """Messages as transformers hands them to a template: a tool call's arguments as a dict
    (Qwen2.5's, Llama 3.1's and Hermes' templates write `arguments | tojson`, which would quote
    a string once more). Mistral's templates accept only 9-character alphanumeric call ids, so
    other ids (OpenAI's "call_...") are mapped to one, the same for a call and its result."""
    mistral = _tools.tool_format(tokenizer) == "mistral"
    out = []
    for m in messages:
        if m.get("tool_calls"):
            m = dict(m, tool_calls=[_view_call(c, mistral) for c in m["tool_calls"]])
        if mistral and isinstance(m.get("tool_call_id"), str):
            m = dict(m, tool_call_id=_mistral_id(m["tool_call_id"]))
        out.append(m)
    return out


def _view_call(c: dict, mistral: bool) -> dict:
    f = c["function"]
    args = json.loads(f["arguments"]) if isinstance(f["arguments"], str) else f["arguments"]
    c = dict(c, function={**f, "arguments": args})
    if mistral and isinstance(c.get("id"), str):
        c["id"] = _mistral_id(c["id"])
    return c


def _mistral_id(call_id: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9]{9}", call_id):
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


# ---- ids and loss mask --------------------------------------------------------------------------
def render(messages, tokenizer, add_generation_prompt: bool = False,
           continue_final_message: bool = False, with_mask: bool = True,
           tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
    """Conversation -> (token ids, loss mask), as transformers' apply_chat_template renders it.

    add_generation_prompt: end with the template's opening of an assistant turn.
    continue_final_message: the last message is an assistant's unfinished answer; the ids
    stop right after its text (no end-of-turn), so generation continues it.
    tools: OpenAI tool definitions offered to the model.
    """
    msgs = _tools.prepare(validate(messages), tools, tokenizer)   # once, here: the rest sees plain turns
    tools = (tools or None) if _tools.supports_tools(tokenizer) else None
    if continue_final_message and (add_generation_prompt or msgs[-1]["role"] != "assistant"):
        raise ChatFormatError("continue_final_message needs a final assistant message and no generation prompt")
    _check_tool_text(msgs, tools, tokenizer)
    text = render_text(msgs, tokenizer, add_generation_prompt, tools)
    if continue_final_message:
        final = msgs[-1]["content"].strip() or msgs[-1]["content"]
        cut = text.rfind(final)
        if cut < 0:
            raise ChatFormatError("the chat template does not show the final message's text, so it cannot be continued")
        text = text[:cut + len(final)]
    if _injects(msgs, tokenizer):
        return _render_guarded(msgs, tokenizer, add_generation_prompt, continue_final_message, tools)
    ids, offsets = tokenizer.encode_template(text)
    if not with_mask:
        return ids, []
    # assistant turns as (start, end) character spans of `text`
    spans = [_assistant_span(msgs, i, text, tokenizer, tools) for i, m in enumerate(msgs)
             if m["role"] == "assistant" and not (continue_final_message and i == len(msgs) - 1)]
    mask = [1 if any(a <= s < b for a, b in spans) else 0 for s, _ in offsets]
    return ids, mask


def prompt_ids(messages, tokenizer, tools: list[dict] | None = None) -> list[int]:
    """Token ids that ask the model for the next assistant turn."""
    return render(messages, tokenizer, add_generation_prompt=True, with_mask=False, tools=tools)[0]


def _assistant_span(msgs: list[dict], i: int, text: str, tokenizer, tools=None) -> tuple[int, int]:
    """Where message i (an assistant's) lies in `text`: its text and its closing end-of-turn marker."""
    before = render_text(msgs[:i], tokenizer, add_generation_prompt=True, tools=tools) if i else ""
    through = render_text(msgs[:i + 1], tokenizer, tools=tools)
    if i and through.startswith(before) and text.startswith(through):
        start, end = len(before), len(through)
    else:   # a template that renders earlier turns differently once more follow: find the text itself
        content = msgs[i]["content"]
        prev = render_text(msgs[:i], tokenizer, tools=tools) if i else ""
        start = text.find(content, len(os.path.commonprefix([prev, text])) if i else 0)
        if start < 0:
            raise ChatFormatError(f"the chat template does not show assistant message {i}'s text, so its tokens "
                                  f"cannot be found for the loss mask")
        end = start + len(content)
        for stop in _stop_texts(tokenizer):   # through the end-of-turn marker, if one follows
            at = text.find(stop, end)
            if at >= 0 and not text[end:at].strip():
                end = at + len(stop)
                break
    # the span ends with the end-of-turn marker: whitespace the template adds after it
    # (ChatML's "\n") belongs to the template, not to what the model must say
    turn = text[start:end]
    last = max((turn.rfind(t) + len(t) for t in _stop_texts(tokenizer) if t in turn), default=len(turn))
    return start, start + last


def _stop_texts(tokenizer) -> list[str]:
    return [tokenizer.decode([i]) for i in tokenizer.stop_ids]


def _injects(msgs: list[dict], tokenizer) -> bool:
    specials = _special_texts(tokenizer)
    return any(s in m["content"] for m in msgs for s in specials)


def _check_tool_text(msgs: list[dict], tools, tokenizer) -> None:
    """Tool definitions and calls a template renders itself are template text, parsed for special
    tokens: one that spells a special token could forge turns, and placeholders cannot guard it."""
    extra = [{k: v for k, v in m.items() if k not in ("role", "content")} for m in msgs]
    if not tools and not any(extra):
        return
    text = json.dumps([tools, extra], ensure_ascii=False)
    if any(s in text for s in _special_texts(tokenizer)):
        raise ChatFormatError("a tool definition or tool call spells one of the model's special tokens, so it "
                              "cannot be encoded safely; remove the special token text")


@lru_cache(maxsize=8)
def _special_texts(tokenizer) -> tuple[str, ...]:
    return tuple(t for t in (tokenizer.token_bytes(i).decode("utf-8", "replace") for i in tokenizer.special_ids) if t)


_HOLE = "\ue000{}\ue001"    # private-use characters: a placeholder no real text contains


def _render_guarded(msgs, tokenizer, add_generation_prompt, continue_final_message, tools=None):
    """Ids where each message's text is plain text, even if it spells a special token."""
    # a tool call's empty content stays empty: templates test it (`if message.content`)
    order = [i for i, m in enumerate(msgs) if m["content"] or not m.get("tool_calls")]
    holes = [dict(m, content=_HOLE.format(i)) if i in order else m for i, m in enumerate(msgs)]
    shell = render_text(holes, tokenizer, add_generation_prompt, tools)
    pieces, pos = [], 0
    for i in order:
        hole = _HOLE.format(i)
        at = shell.find(hole, pos)
        if at < 0 or shell.count(hole) != 1:
            raise ChatFormatError(f"message {i} spells a special token, and this chat template rewrites message text, "
                                  f"so it cannot be encoded safely; remove the special token text from the message")
        pieces.append(shell[pos:at])
        pos = at + len(hole)
    tail = shell[pos:]
    ids, mask = [], []
    for piece, i in zip(pieces, order):
        ids += tokenizer.encode_template(piece)[0]
        mask += [0] * (len(ids) - len(mask))
        learn = msgs[i]["role"] == "assistant" and not (continue_final_message and i == len(msgs) - 1)
        body = tokenizer.encode(msgs[i]["content"])
        ids += body
        mask += [int(learn)] * len(body)
        if continue_final_message and i == len(msgs) - 1:
            return ids, mask
    rest = tokenizer.encode_template(tail)[0]
    ids += rest
    mask += [0] * len(rest)
    # the end-of-turn marker right after an assistant text is learned too
    for j in range(1, len(ids)):
        if mask[j - 1] == 1 and mask[j] == 0 and ids[j] in tokenizer.stop_ids:
            mask[j] = 1
    return ids, mask
