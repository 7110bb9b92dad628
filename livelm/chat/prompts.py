"""Prompt engineering: system prompts, few-shot examples and named templates.

Templates live in YAML (configs/prompts.yaml by default), each with optional
`system`, `few_shot` (a list of messages) and `user` (wraps every user line;
`{input}` is the line), and any `{variables}` filled from --var KEY=VALUE:

    translate_zh:
      system: "You translate English into Chinese."
      user: "Translate to Chinese: {input}"
"""
from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from livelm.chat.template import validate

DEFAULT_TEMPLATES = Path(__file__).resolve().parents[2] / "configs" / "prompts.yaml"


@dataclass
class PromptSetup:
    system: str | None = None
    few_shot: list[dict] = field(default_factory=list)
    user: str | None = None


def fill(text: str, variables: dict) -> str:
    names = {f for _, f, _, _ in string.Formatter().parse(text) if f}
    missing = sorted(names - set(variables))
    if missing:
        raise ValueError(f"template needs variable(s) {', '.join(missing)}: pass --var {missing[0]}=...")
    return text.format_map(variables)


def read_few_shot(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"few-shot file not found: {path}") from None
    try:
        data = json.loads(text)
        msgs = data["messages"] if isinstance(data, dict) else data
    except json.JSONDecodeError:
        msgs = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: malformed JSON ({e.msg})") from None
                msgs.extend(rec["messages"] if isinstance(rec, dict) and "messages" in rec else [rec])
    return [m for m in validate(msgs) if m["role"] != "system"]


def parse_vars(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise ValueError(f"--var expects KEY=VALUE, got {p!r}")
        out[key] = value
    return out


def resolve(system=None, system_file=None, few_shot_file=None, template=None, templates_file=None,
            variables: list[str] | None = None) -> PromptSetup:
    setup = PromptSetup()
    values = parse_vars(variables or [])
    if template:
        path = Path(templates_file) if templates_file else DEFAULT_TEMPLATES
        try:
            table = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ValueError(f"templates file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {e}") from None
        if template not in table:
            raise ValueError(f"no template {template!r} in {path}; available: {', '.join(sorted(table))}")
        t = table[template]
        if t.get("system"):
            setup.system = fill(t["system"], values)
        if t.get("few_shot"):
            setup.few_shot = [{"role": m["role"], "content": fill(m["content"], values)} for m in validate(t["few_shot"])]
        if t.get("user"):
            fill(t["user"], {**values, "input": ""})  # fail now, not on the first message
            setup.user = _partial(t["user"], values)
    if system_file:
        try:
            setup.system = Path(system_file).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ValueError(f"system prompt file not found: {system_file}") from None
    if system is not None:
        setup.system = system
    if few_shot_file:
        setup.few_shot = read_few_shot(few_shot_file)
    return setup


def _partial(text: str, values: dict) -> str:
    """Fill every variable except {input}, which is filled per message."""
    return text.replace("{input}", "\0INPUT\0").format_map(values).replace("\0INPUT\0", "{input}")
