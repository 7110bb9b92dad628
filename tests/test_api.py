"""The README's Python API examples, run exactly as written (in an empty folder), plus the API's edges."""
import contextlib
import io
import re

import pytest

from tests.conftest import ROOT

import livelm


def readme_examples() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"<!-- api-example -->\n```python\n(.*?)```", text, flags=re.S)


def test_readme_examples_run(tmp_path, monkeypatch):
    blocks = readme_examples()
    assert len(blocks) == 2, "the README's API examples moved; keep the <!-- api-example --> markers"
    monkeypatch.chdir(tmp_path)
    outputs = []
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
        outputs.append(out.getvalue())
    assert (tmp_path / "runs/example/base/model.safetensors").is_file()
    assert outputs[0].startswith("livelm.Model(runs/example/base, 2 layers x 64")
    # chat() and chat(stream=True) with the same seed give the same text (Chinese + emoji prompt)
    lines = outputs[1].split("\n")
    assert lines[0] == lines[1] and lines[0] != ""


def test_generate_is_the_engine_and_stream_matches(tiny_chat_run):
    model = livelm.load(tiny_chat_run / "chat")
    text = model.generate("营业时间 opening hours 🙂", max_tokens=12, temperature=0.9, seed=3)
    assert text == "".join(model.generate("营业时间 opening hours 🙂", max_tokens=12, temperature=0.9, seed=3, stream=True))
    assert model.chat([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0) == \
        model.chat([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0)


def test_chat_with_a_json_schema_answers_valid_json(tiny_chat_run):
    import json
    model = livelm.load(tiny_chat_run / "chat")
    schema = {"type": "object", "properties": {"hours": {"type": "string", "maxLength": 12},
                                               "open": {"type": "boolean"}}, "required": ["hours", "open"],
              "additionalProperties": False}
    answer = json.loads(model.chat([{"role": "user", "content": "营业时间？🙂"}], json_schema=schema, max_tokens=60))
    assert set(answer) == {"hours", "open"} and isinstance(answer["open"], bool)
    from livelm.infer.grammar import GrammarError
    with pytest.raises(GrammarError, match="strin"):
        model.chat([{"role": "user", "content": "x"}], json_schema={"type": "strin"})


def test_api_errors_are_clear(tmp_path, tiny_chat_run):
    with pytest.raises(Exception, match="not found|no config.json"):
        livelm.load(tmp_path / "nope")
    with pytest.raises(ValueError, match="needs data="):
        livelm.train({"max_iters": 1}, out=tmp_path / "r")
    with pytest.raises(ValueError, match="unknown config fields: learning_rate"):
        livelm.train({"learning_rate": 1}, data=tiny_chat_run / "data", out=tmp_path / "r")
    with pytest.raises(ValueError, match="temperature"):
        livelm.load(tiny_chat_run / "chat").generate("x", temperature=-1)
    with pytest.raises(AttributeError):
        livelm.no_such_thing


def test_livelm_train_is_the_function_whatever_was_imported_before():
    """The package is `livelm.training`, so importing it never shadows the API's `livelm.train`."""
    import subprocess
    import sys
    code = "import livelm.training.trainer, livelm; print(livelm.train.__module__, livelm.train.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["livelm.api", "train"]
