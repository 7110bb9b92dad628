"""The chat format: one renderer for training, the REPL, the server and evaluation.

    <|bos|> <|system|> text <|end|> <|user|> text <|end|> <|assistant|> text <|end|> ...

Turn markers are special tokens that user text can never produce (the
tokenizer encodes a literal "<|end|>" typed by a user as ordinary text), and
generation stops at <|end|>. The loss mask is 1 exactly on the tokens the
assistant must learn to produce: its text and its closing <|end|>.
"""
from __future__ import annotations

ROLES = ("system", "user", "assistant")


class ChatFormatError(ValueError):
    pass


def validate(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError("messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ChatFormatError(f"message {i} is not an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ChatFormatError(f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise ChatFormatError(f"message {i} ({role}) has no text content")
        out.append({"role": role, "content": content})
    return out


def render(messages, tokenizer, add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Conversation -> (token ids, loss mask). With add_generation_prompt the ids end with <|assistant|>."""
    role_id = {"system": tokenizer.system_id, "user": tokenizer.user_id, "assistant": tokenizer.assistant_id}
    ids, mask = [tokenizer.bos_id], [0]
    for m in validate(messages):
        body = tokenizer.encode(m["content"]) + [tokenizer.end_id]
        learn = 1 if m["role"] == "assistant" else 0
        ids += [role_id[m["role"]]] + body
        mask += [0] + [learn] * len(body)
    if add_generation_prompt:
        ids.append(tokenizer.assistant_id)
        mask.append(0)
    return ids, mask


def prompt_ids(messages, tokenizer) -> list[int]:
    """Token ids that ask the model for the next assistant turn."""
    return render(messages, tokenizer, add_generation_prompt=True)[0]


# The same format as a Jinja chat template, for Hugging Face export (tokenizer_config.json).
JINJA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
