"""The sandbox chat templates run in: no way out, and a budget of time and size for every render.

Jinja's ImmutableSandboxedEnvironment is the base (transformers renders templates in it too); the rest
of this file bounds what a hostile template can cost. livelm/chat/template.py renders through it and
livelm/chat/tools.py parses with it.
"""
from __future__ import annotations

import functools
import json
import re
import time
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache


class ChatFormatError(ValueError):
    pass


# A chat template is code that comes with a model file. Jinja's immutable sandbox stops it reaching
# Python's internals (here an unsafe attribute such as __class__ or __globals__ raises at once instead
# of rendering as nothing), but not from running for hours or building a 10 GB string:
#     {% for i in range(100000) %}{% for j in range(100000) %}...      'x' * 10**10      'x'|center(10**10)
# So every render gets a budget (_Budget, one per render_text call): a deadline, checked at every step
# the template takes (each range element, attribute, item, call, operator, filter and output chunk); a
# cap on all range elements together; and a cap on the size of any string or list it builds, checked
# *before* building wherever the size is known in advance (repetition, powers, concatenation, joins,
# widths, replace) and after otherwise. Real templates use a few hundred steps and output a few times
# the conversation's size, far below the limits.
RENDER_SECONDS = 5.0            # wall-clock deadline of one render
MAX_RANGE_STEPS = 1_000_000     # range() elements per render, all loops together
MAX_CHARS = 8_000_000           # the longest string (or list) a template may build, and its whole output


class _Budget:
    def __init__(self, min_chars: int = 0):
        self.deadline = time.monotonic() + RENDER_SECONDS
        self.range_left = MAX_RANGE_STEPS
        self.max_chars = max(MAX_CHARS, 4 * min_chars)   # a long conversation may legitimately render long

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise ChatFormatError(f"the model's chat template ran for over {RENDER_SECONDS:g} s and was stopped; "
                                  f"it loops too long (replace the chat_template in tokenizer_config.json)")

    def size(self, n: int, what: str = "a string") -> None:
        if n > self.max_chars:
            raise ChatFormatError(f"the model's chat template tried to build {what} of {n:,} characters (the limit "
                                  f"is {self.max_chars:,}) and was stopped; replace the chat_template")

    def result(self, x):
        if isinstance(x, (str, list, tuple, dict)):
            self.size(len(x))
        return x

    def fmt(self, s) -> None:
        """A format string ('%10000000d' % 1, '{:10000000}'.format(1)) whose field widths are huge."""
        if isinstance(s, str) and _HUGE_WIDTH.search(s):
            raise ChatFormatError("the model's chat template formats a field millions of characters wide and was "
                                  "stopped; replace the chat_template")

    def args(self, args, kwargs) -> None:
        """Arguments that would make a call build something huge: an int used as a width or count,
        a list whose strings join to more than the limit."""
        for a in (*args, *kwargs.values()):
            if isinstance(a, int) and not isinstance(a, bool):
                self.size(abs(a), "a width or count")
            elif isinstance(a, str):
                self.size(len(a))
            elif isinstance(a, (list, tuple)):
                self.size(len(a), "a list")
                self.size(sum(len(x) for x in a if isinstance(x, str)))


_HUGE_WIDTH = re.compile(r"%[^a-zA-Z%]*?\d{7,}|%[-+ #0]*\*|\{[^{}]*:[^{}]*?\d{7,}")   # %10000000d %*d {:10000000}
_budget: ContextVar[_Budget | None] = ContextVar("chat_template_budget", default=None)


def _range(*args):
    """range() for templates: elements count against the render's budget, and each one checks the deadline."""
    r = range(*args)
    b = _budget.get() or _Budget()
    b.range_left -= len(r)
    if b.range_left < 0:
        raise ChatFormatError(f"the model's chat template loops over more than {MAX_RANGE_STEPS:,} range() "
                              f"elements and was stopped; replace the chat_template")
    for i in r:
        b.tick()
        yield i


@lru_cache(maxsize=1)
def _env_class():
    """The sandbox with every hook counted and sized (a function: jinja2 is imported on first use)."""
    from jinja2.compiler import CodeGenerator
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generator(CodeGenerator):
        def visit_Concat(self, node, frame):     # `a ~ b`: joined by the budget, its size known beforehand
            self.write("environment.checked_join((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class Env(ImmutableSandboxedEnvironment):
        code_generator_class = Generator
        intercepted_binops = frozenset({"*", "**", "%", "+", "//"})

        def unsafe_undefined(self, obj, attribute):
            raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")

        def getattr(self, obj, attribute):
            _tick()
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):
            _tick()
            return super().getitem(obj, argument)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
            b = _tick()
            b.args(args, kwargs)
            if getattr(__obj, "__name__", None) == "replace" and len(args) >= 2:
                _check_replace(b, getattr(__obj, "__self__", None), args[0], args[1])
            if getattr(__obj, "__name__", None) in ("format", "format_map"):
                b.fmt(getattr(__obj, "__self__", None))
            out = super().call(__context, __obj, *args, **kwargs)
            return b.result(out)

        def call_binop(self, context, op, left, right):
            b = _tick()
            if op == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                        b.size(len(seq) * max(n, 0))
            elif op == "**" and isinstance(left, int) and isinstance(right, int):
                if right > 0 and abs(left) > 1 and right * abs(left).bit_length() > 64 * 1024:
                    raise ChatFormatError(f"the model's chat template computes {left} ** {right}, a number of "
                                          f"over 64K bits, and was stopped; replace the chat_template")
            elif op == "%":
                b.fmt(left)
            elif op == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, type(left)):
                b.size(len(left) + len(right))
            out = self.binop_table[op](left, right)
            return b.result(out)

        def checked_join(self, parts):
            b = _tick()
            parts = [str(p) for p in parts]
            b.size(sum(len(p) for p in parts))
            return "".join(parts)
    return Env


def _tick() -> _Budget:
    # outside render_text (Jinja folds constant expressions such as 'x' * 10**10 while compiling) a
    # fresh budget still bounds the size of what one step builds
    b = _budget.get() or _Budget()
    b.tick()
    return b


def _check_replace(b: _Budget, s, old, new) -> None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        n = s.count(old) if old else len(s) + 1
        b.size(len(s) + n * max(len(new) - len(old), 0))


def _bounded_filter(f):
    """A filter that counts as a step and whose arguments and result are sized (widths, joins, replace)."""
    @functools.wraps(f)
    def run(*args, **kwargs):
        b = _tick()
        first = 1 if getattr(run, "jinja_pass_arg", None) else 0      # the context/environment Jinja passes
        value, extra = (args[first] if len(args) > first else None), args[first + 1:]
        b.args(extra, kwargs)                      # widths and counts: center(10**10), indent, format...
        if isinstance(value, (list, tuple)):       # join, sum...: the strings it would put together
            b.args((value,), {})
        if f.__name__ == "do_format":              # '%10000000d'|format(1)
            b.fmt(value)
        if f.__name__ == "do_replace" and len(extra) >= 2:
            _check_replace(b, str(value), extra[0], extra[1])
        out = f(*args, **kwargs)
        return b.result(out)
    return run


def sandbox():
    """The Jinja environment chat templates are parsed, compiled and rendered in (livelm/chat/tools.py
    parses with it too: even parsing folds constant expressions)."""
    def raise_exception(message):
        raise ChatFormatError(f"the chat template refused the conversation: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = _env_class()(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.filters = {name: _bounded_filter(f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["range"] = _range
    return env


@lru_cache(maxsize=16)
def compiled(template: str):
    """The template compiled in an immutable sandbox: it can read what it is given and call
    nothing else (no attribute writes, no file or module access), within the render's budget."""
    from jinja2 import TemplateError
    env = sandbox()
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise ChatFormatError(f"the model's chat template does not compile: {e}") from None
    except RecursionError:
        raise ChatFormatError("the model's chat template is nested too deeply to compile") from None


@contextmanager
def budget(min_chars: int = 0):
    """One render's budget: every step the template takes inside the block counts against it."""
    b = _Budget(min_chars)
    token = _budget.set(b)
    try:
        yield b
    finally:
        _budget.reset(token)
