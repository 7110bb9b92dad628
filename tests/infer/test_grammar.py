"""Constrained decoding in the engine (livelm/infer/grammar.py): the output matches its grammar, always.

An untrained model is the hardest case: left alone it emits noise, so every valid answer
below is the mask's doing. Schemas bound their strings (maxLength) so that even noise
completes within max_tokens.
"""
import json
import re

import jsonschema
import pytest
import torch

from livelm.infer import grammar
from livelm.infer.engine import Engine
from livelm.models.gpt import GPT, GPTConfig, PRESETS
from livelm.sampling import SamplingParams
from livelm.tokenizer import Tokenizer

TEXT = ['{"name": "李雷", "city": "北京", "ok": true, "n": 12} 你好，世界！🙂 Hello world. Mixed 中英 text 👍🏽',
        "yes no 是 否 <tool_call> [1, 2.5, -3]"]

SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 6},
                         "city": {"enum": ["北京", "Paris", "東京 🗼"]},
                         "n": {"type": "integer", "minimum": 0, "maximum": 999},
                         "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}},
          "required": ["name", "city", "n"], "additionalProperties": False}


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train_bpe(TEXT * 30, vocab_size=400, show_progress=False)


@pytest.fixture(scope="module")
def engine(tok):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=512, n_layer=2, n_head=2, d_model=32,
                          **PRESETS["llama"])).eval()
    return Engine(model, tok, max_batch=8)


def test_json_schema_rows_always_validate_even_from_noise(engine, tok):
    g = grammar.json_schema(SCHEMA)
    prompts = [tok.encode(t) for t in ("用JSON回答", "answer in JSON 🙂", "x")] * 4
    params = [SamplingParams(max_tokens=200, temperature=1.5, seed=i, grammar=g) for i in range(len(prompts))]
    outs = engine.generate(prompts, params)
    for o in outs:
        assert o.finish_reason == "stop", o.text
        jsonschema.validate(json.loads(o.text), SCHEMA)
    assert len({o.text for o in outs}) > 6     # sampled, not one forced string


LOOSE = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "array", "items": {"type": "number"}},
                                          "c": {"type": "object"}}, "required": ["a", "b", "c"]}


@pytest.mark.parametrize("schema, max_tokens", [(None, 12), (None, 50), (LOOSE, 30), (LOOSE, 90)])
def test_unbounded_json_closes_within_the_budget(engine, tok, schema, max_tokens):
    """Noise never ends a string by itself: near the budget the row closes, so even a cut answer parses."""
    g = grammar.json_schema(schema) if schema else grammar.json_object()
    outs = engine.generate([tok.encode("JSON 🙂")] * 4, [SamplingParams(max_tokens=max_tokens, temperature=1.0,
                                                                        seed=s, grammar=g) for s in range(4)])
    for o in outs:
        value = json.loads(o.text)
        assert len(o.token_ids) <= max_tokens and isinstance(value, dict), o.text
        if schema:
            jsonschema.validate(value, schema)
    assert any(o.finish_reason == "length" for o in outs)     # cut to fit, and said so
    # the reserve is the grammar's shortest answer (a dry run) plus a margin; a regex has none
    assert 8 <= engine.constraints.reserve(g) < 40 and engine.constraints.reserve(grammar.regex("[a-z]+x")) == 0


def test_free_rows_in_a_mixed_batch_are_untouched(engine, tok):
    """A constrained row beside free rows changes nothing for them (same seeds, same tokens)."""
    free = [SamplingParams(max_tokens=24, temperature=1.0, seed=s, ignore_eos=True) for s in (1, 2)]
    prompts = [tok.encode("你好 world"), tok.encode("Mixed 中英")]
    alone = engine.generate(prompts, [p.copy() for p in free])
    mixed = engine.generate(prompts + [tok.encode("JSON")],
                            [p.copy() for p in free] + [SamplingParams.greedy(200, grammar=grammar.json_schema(SCHEMA))])
    assert [o.token_ids for o in mixed[:2]] == [o.token_ids for o in alone]
    jsonschema.validate(json.loads(mixed[2].text), SCHEMA)
    assert mixed[2].finish_reason == "stop"


def test_regex_and_choice(engine, tok):
    out = engine.generate([tok.encode("phone?")] * 3,
                          [SamplingParams(max_tokens=30, temperature=1.0, seed=s, grammar=grammar.regex(r"\d{3}-[a-z]{2}"))
                           for s in range(3)])
    assert all(re.fullmatch(r"\d{3}-[a-z]{2}", o.text) and o.finish_reason == "stop" for o in out)
    picks = engine.generate([tok.encode("?")] * 6, [SamplingParams(max_tokens=10, temperature=2.0, seed=s,
                                                                   grammar=grammar.choice(["是", "否", "maybe 🤔"]))
                                                    for s in range(6)])
    assert all(o.text in ("是", "否", "maybe 🤔") for o in picks)


def test_a_grammar_waits_for_its_trigger(engine, tok):
    """tool_choice "auto": free until the output opens a call, then the call is constrained."""
    g = grammar.lark('start: %json {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, '
                     '"maximum": 9}}, "required": ["a"], "additionalProperties": false} "</tool_call>"')
    seq = engine.add(tok.encode("<tool_call>"), SamplingParams.greedy(40, grammar=g, grammar_trigger="<tool_call>"))
    # force the trigger as the row's first output, as a model that opens a call would
    forced = tok.encode("<tool_call>")

    class Force:
        def __call__(self, prompt_ids, out_ids, logits):
            return forced[len(out_ids)] if len(out_ids) < len(forced) else logits
    seq.params.processors = (Force(),)
    while not seq.finished:
        engine.step()
    assert seq.text.startswith("<tool_call>")
    body = seq.text[len("<tool_call>"):]
    assert re.fullmatch(r'\{"a": ?\d\}</tool_call>', body), body
    assert seq.finish_reason == "stop"


def test_logprobs_report_the_models_own_distribution(engine, tok):
    out = engine.generate([tok.encode("x")], SamplingParams.greedy(3, grammar=grammar.regex("[0-9]+"),
                                                                   logprobs=3))[0]
    # the alternatives are the model's top tokens, mostly not digits: the mask did not hide them
    tops = [t["token"] for e in out.logprobs for t in e["top"]]
    assert any(not t.strip().isdigit() for t in tops)
    assert out.text.isdigit()


def test_compiled_grammars_are_cached_per_engine(engine, tok):
    g = grammar.json_schema({"type": "object", "properties": {"q": {"const": 1}}, "required": ["q"]})
    engine.generate([tok.encode("a")] * 2, SamplingParams.greedy(20, grammar=g))
    before = len(engine.constraints.prototypes)
    engine.generate([tok.encode("b")], SamplingParams.greedy(20, grammar=g))
    assert len(engine.constraints.prototypes) == before and g in engine.constraints.prototypes


@pytest.mark.parametrize("bad, says", [
    ({"type": "object", "properties": {"a": {"type": "strin"}}}, "strin"),
    ('{"type": "object"', "not valid JSON"),
    ([1, 2], "must be an object"),
    ({"type": "string", "pattern": "[a-"}, "regex"),
])
def test_bad_schemas_say_what_is_wrong(bad, says):
    with pytest.raises(grammar.GrammarError, match=re.escape(says)):
        grammar.json_schema(bad)


def test_oversized_and_malformed_grammars_are_refused():
    with pytest.raises(grammar.GrammarError, match="at most"):
        grammar.json_schema({"enum": ["x" * 50] * 3000})
    with pytest.raises(grammar.GrammarError):
        grammar.regex("(unclosed")
    with pytest.raises(grammar.GrammarError):
        grammar.lark("start: undefined_rule")
    with pytest.raises(grammar.GrammarError):
        grammar.choice([])


def test_character_tokenizers_are_constrained_too():
    """livelm's char tokenizer is no format llguidance reads from tokenizer.json: its token table is used."""
    tok = Tokenizer.train_char(TEXT)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=1, n_head=2, d_model=16)).eval()
    outs = Engine(model, tok, max_batch=4).generate(
        [tok.encode("你好")] * 4, [SamplingParams(max_tokens=60, temperature=1.0, seed=s, grammar=grammar.json_schema(SCHEMA))
                                  for s in range(4)])
    for o in outs:
        jsonschema.validate(json.loads(o.text), SCHEMA)


def test_a_trigger_inside_a_token_starts_the_grammar_past_it():
    """One BPE token may end the trigger and begin the call ('>{"'): the matcher starts past that text."""
    tok = Tokenizer.train_bpe(['call <tool_call>{"a": 1}</tool_call> done 你好'] * 50, vocab_size=300,
                              show_progress=False)
    forced = tok.encode('<tool_call>{"a": ')
    assert '>{"' in [tok.decode([i]) for i in forced]          # the case under test
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2, d_model=16)).eval()
    g = grammar.lark('start: %json {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, '
                     '"maximum": 9}}, "required": ["a"], "additionalProperties": false} "</tool_call>"')

    class Force:
        def __call__(self, prompt_ids, out_ids, logits):
            return forced[len(out_ids)] if len(out_ids) < len(forced) else logits
    outs = Engine(model, tok, max_batch=4).generate(
        [tok.encode("你好")] * 4, [SamplingParams(max_tokens=40, temperature=1.0, seed=s, grammar=g,
                                                 grammar_trigger="<tool_call>", processors=(Force(),))
                                  for s in range(4)])
    for o in outs:
        call = re.fullmatch(r"<tool_call>(.*)</tool_call>", o.text, re.S)
        assert call and 0 <= json.loads(call.group(1))["a"] <= 9, o.text   # no second "{": past the trigger
