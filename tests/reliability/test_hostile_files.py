"""Hostile files (issue 25): truncated, corrupt and adversarial GGUF, safetensors runs, config.json,
tokenizer.json, chat templates, JSONL and audio are refused with the reader's own error class and a
message naming the file, quickly and without allocating what the file declares; nothing in them runs.
The cases themselves are in cases.py (bench/hostile_files.py measures them)."""
import resource
import time
from pathlib import Path

import pytest

from tests.reliability import cases

SECONDS = 8            # per case, on a loaded 2-core machine (the chat template deadline is 5 s)
GROWTH_MB = 1024       # a case may not raise the process's peak memory by more than this


@pytest.fixture(scope="module")
def allowed():
    return cases.allowed()


@pytest.mark.parametrize("case", cases.ALL, ids=lambda c: f"{c.file}: {c.name}")
def test_refused_clearly(case, allowed, tmp_path):
    if case.file == "audio":
        pytest.importorskip("av")
    call = case.build(tmp_path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    with pytest.raises(Exception) as info:
        call()
    seconds = time.perf_counter() - t0
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    assert isinstance(info.value, allowed[case.file]), \
        f"{case.name}: {type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert len(message) > 20, message
    if case.file in ("gguf", "safetensors", "config.json", "tokenizer", "train_state.pt"):
        assert cases.NAME in message or "tokenizer" in message, message     # it names the file
    assert seconds < SECONDS, f"{case.name} took {seconds:.1f} s"
    assert growth < GROWTH_MB, f"{case.name} grew the peak memory by {growth:.0f} MB"
    assert not Path("/tmp/livelm-pwned").exists()


def test_unsafe_attribute_raises_not_renders(tmp_path):
    """The sandbox used to render `{{ x.__class__ }}` as nothing; now touching one is an error."""
    from livelm.chat.template import ChatFormatError
    call = cases._template_case("", "{{ messages.__class__ }}").build(tmp_path)
    with pytest.raises(ChatFormatError, match="unsafe"):
        call()


def test_real_templates_still_render_within_budget(tmp_path):
    """The limits leave ordinary templates alone: loops, ranges, macros, namespace, filters, long chats."""
    from livelm.chat.template import render_text
    template = ("{% set ns = namespace(n=0) %}{% macro turn(m) %}<|{{ m.role }}|>{{ m.content|trim }}{% endmacro %}"
                "{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ turn(m) }}{% for i in range(2) %}.{% endfor %}"
                "{{ '\\n' * 2 }}{{ m.content|replace('a', 'b')|center(4) ~ '|' }}{% endfor %}"
                "{{ ns.n }}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    run = cases.tiny_run(tmp_path / "run")
    (run / "tokenizer_config.json").write_text('{"chat_template": %s}' % __import__("json").dumps(template))
    from livelm.tokenizer import Tokenizer
    tok = Tokenizer.load(run)
    long = "你好 hello 👍 " * 200_000                   # 2.6M characters: long chats are not bombs
    msgs = [{"role": "user", "content": "a 你好"}, {"role": "assistant", "content": long},
            {"role": "user", "content": "电话: 13812345678, 100% * 2 {:99999999} %99999999d"}]  # not format strings
    out = render_text(msgs, tok, add_generation_prompt=True)
    assert out.startswith("<|user|>a 你好..\n\n") and out.endswith("3<|assistant|>")
    assert "电话: 13812345678, 100% * 2 {:99999999} %99999999d" in out


def test_nested_range_is_stopped_quickly(tmp_path):
    from livelm.chat.template import ChatFormatError
    call = cases._template_case("", cases.BOMBS["nested range 10^5 x 10^5"]).build(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(ChatFormatError, match="range"):
        call()
    assert time.perf_counter() - t0 < 2


def test_deadline_stops_a_slow_template(tmp_path, monkeypatch):
    """A loop that stays under every size cap is stopped by the deadline."""
    from livelm.chat import sandbox
    from livelm.chat.template import ChatFormatError
    monkeypatch.setattr(sandbox, "RENDER_SECONDS", 0.3)
    slow = "{% for i in range(999999) %}{{ messages[0].content|length }}{% endfor %}"
    call = cases._template_case("", slow).build(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(ChatFormatError, match="ran for over"):
        call()
    assert time.perf_counter() - t0 < 3


def test_no_pickle_loading_without_weights_only():
    """Every torch.load call in livelm passes weights_only=True; nothing calls pickle.load(s) directly."""
    import ast
    root = Path(__file__).resolve().parents[2] / "livelm"
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)):
                continue
            name = f"{node.func.value.id}.{node.func.attr}"
            where = f"{f}:{node.lineno}"
            if name == "torch.load":
                safe = [k for k in node.keywords if k.arg == "weights_only" and getattr(k.value, "value", 0) is True]
                assert safe, f"{where}: torch.load without weights_only=True"
            assert name not in ("pickle.load", "pickle.loads"), f"{where}: {name}"
