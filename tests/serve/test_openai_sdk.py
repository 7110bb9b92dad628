"""The official `openai` SDK against a real `livelm serve`: what a user's client code sees."""
from __future__ import annotations

import openai
import pytest

CHAT = [{"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "你好！What is 长城? 🙂 Mixed 中英 text."}]
LONG = {"ignore_eos": True}   # vLLM's extra: keep going past <|end|>, so outputs have a known length


def test_models_base_and_adapter(sdk):
    ids = [m.id for m in sdk.models.list()]
    assert ids[:2] == ["chat", "sharp"]          # then the speech models (tests/serve/test_audio.py)
    card = sdk.models.retrieve("sharp")
    assert card.id == "sharp" and card.owned_by == "livelm"


def test_chat_non_streaming(sdk):
    r = sdk.chat.completions.create(model="chat", messages=CHAT, max_tokens=12, seed=1, extra_body=LONG)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == "chat"
    assert isinstance(r.created, int)
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant" and choice.finish_reason == "length"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens > 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_equals_non_streaming_with_usage(sdk):
    kw = dict(model="chat", messages=CHAT, max_tokens=20, seed=7, temperature=0.9, extra_body=LONG)
    full = sdk.chat.completions.create(**kw)
    chunks = list(sdk.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == full.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"
    # without include_usage there is no usage chunk
    plain = list(sdk.chat.completions.create(**kw, stream=True))
    assert all(c.choices for c in plain) and all(c.usage is None for c in plain)


def test_completions_streaming_and_not(sdk):
    kw = dict(model="chat", prompt="Once upon a time, 从前", max_tokens=16, seed=3, extra_body=LONG)
    full = sdk.completions.create(**kw)
    assert full.object == "text_completion" and full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == 16
    chunks = list(sdk.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert chunks[-1].usage.completion_tokens == 16


def test_seed_reproduces_and_differs(sdk):
    kw = dict(model="chat", messages=CHAT, max_tokens=24, temperature=1.0, extra_body=LONG)
    a = sdk.chat.completions.create(**kw, seed=11).choices[0].message.content
    b = sdk.chat.completions.create(**kw, seed=11).choices[0].message.content
    c = sdk.chat.completions.create(**kw, seed=12).choices[0].message.content
    assert a == b and a != c


def test_n_choices_use_seed_plus_index(sdk):
    kw = dict(model="chat", messages=CHAT, max_tokens=10, temperature=1.0, extra_body=LONG)
    r = sdk.chat.completions.create(**kw, n=3, seed=40)
    assert [c.index for c in r.choices] == [0, 1, 2]
    singles = [sdk.chat.completions.create(**kw, seed=40 + i).choices[0].message.content for i in range(3)]
    assert [c.message.content for c in r.choices] == singles
    assert r.usage.completion_tokens == 30
    # streamed: choices interleave, each keeps its own index
    texts = {0: "", 1: "", 2: ""}
    for chunk in sdk.chat.completions.create(**kw, n=3, seed=40, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert [texts[i] for i in range(3)] == singles
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(**kw, n=1000)


def token_boundary_stop(sdk, kw) -> tuple[str, str]:
    """An answer and a stop string that starts inside one token and ends inside the next."""
    r = sdk.chat.completions.create(**kw, logprobs=True)
    text = r.choices[0].message.content
    toks = [bytes(t.bytes) for t in r.choices[0].logprobs.content]
    data = b"".join(toks)
    assert data.decode("utf-8", errors="replace") == text
    for k in (2, 1):   # prefer two characters on each side; one each still straddles the boundary
        at = 0
        for a, b in zip(toks, toks[1:]):
            at += len(a)
            try:
                left, right = a.decode()[-k:], b.decode()[:k]
            except UnicodeDecodeError:
                continue
            stop = left + right
            before = data[:at].decode("utf-8", errors="replace")
            if len(left) == k and len(right) == k and text.find(stop) == len(before) - k:
                return text, stop
    raise AssertionError(f"no two whole-character tokens in a row in the answer {text!r}")


def test_stop_string_straddling_tokens(sdk):
    # a seeded sample rather than the greedy answer: a tiny model's greedy text is often one token pair
    # repeated, where every boundary's string already occurred earlier
    kw = dict(model="chat", messages=CHAT, max_tokens=60, temperature=1.0, seed=7, extra_body=LONG)
    text, stop = token_boundary_stop(sdk, kw)
    want = text[:text.index(stop)]
    r = sdk.chat.completions.create(**kw, stop=[stop, "never-appears"])
    assert r.choices[0].message.content == want and r.choices[0].finish_reason == "stop"
    deltas = [c.choices[0].delta.content or "" for c in sdk.chat.completions.create(**kw, stop=stop, stream=True)
              if c.choices]
    # nothing of the stop string was ever sent, not even its first half inside an earlier chunk
    assert "".join(deltas) == want


def test_logprobs(sdk):
    kw = dict(model="chat", messages=CHAT, max_tokens=8, seed=2, extra_body=LONG)
    r = sdk.chat.completions.create(**kw, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 8
    for e in content:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        assert e.top_logprobs[0].logprob >= e.top_logprobs[-1].logprob
    streamed = []
    for c in sdk.chat.completions.create(**kw, logprobs=True, top_logprobs=3, stream=True):
        if c.choices and c.choices[0].logprobs:
            streamed += c.choices[0].logprobs.content
    assert [e.token for e in streamed] == [e.token for e in content]
    comp = sdk.completions.create(model="chat", prompt="Hello", max_tokens=5, seed=2, logprobs=2, extra_body=LONG)
    lp = comp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert lp.text_offset[0] == 0


def test_adapter_chosen_by_model(sdk):
    kw = dict(messages=CHAT, max_tokens=16, temperature=0, extra_body=LONG)
    base = sdk.chat.completions.create(model="chat", **kw)
    tuned = sdk.chat.completions.create(model="sharp", **kw)
    assert tuned.model == "sharp"
    assert base.choices[0].message.content != tuned.choices[0].message.content


def test_errors_are_sdk_exceptions(sdk):
    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(model="chat", messages=CHAT, temperature=-1)
    assert e.value.status_code == 400 and "temperature" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "长" * 400}])
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="chat", messages=CHAT, max_tokens=100_000)
    with pytest.raises(openai.NotFoundError) as e:
        sdk.chat.completions.create(model="gpt-5", messages=CHAT)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        sdk.completions.create(model="nope", prompt="x")


def test_continue_final_message(sdk, serve_dirs):
    """vLLM's extension: the final assistant message is the start of the answer, continued in place."""
    from livelm.chat.template import render
    from livelm.tokenizer import Tokenizer
    tok = Tokenizer.load(serve_dirs["run"])
    prefill = CHAT + [{"role": "assistant", "content": "长城 is"}]
    r = sdk.chat.completions.create(model="chat", messages=prefill, max_tokens=4, seed=1, extra_body={
        "continue_final_message": True, "add_generation_prompt": False, **LONG})
    assert r.usage.prompt_tokens == len(render(prefill, tok, continue_final_message=True)[0])
    plain = sdk.chat.completions.create(model="chat", messages=CHAT, max_tokens=4, seed=1, extra_body=LONG)
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError, match="final assistant"):
        sdk.chat.completions.create(model="chat", messages=CHAT, max_tokens=4,
                                    extra_body={"continue_final_message": True})


def test_second_turn_reuses_the_cached_prefix(sdk, server):
    """A conversation's second turn finds its first turn (system prompt, question, answer) in the engine's
    prefix cache: usage says how many prompt tokens were cached, /metrics counts them, and the answer is
    the one a cold engine gives (the same greedy tokens either way, tests/infer/test_paged.py)."""
    hits = server.metric("livelm_prefix_cache_hits_total")
    turn1 = [{"role": "system", "content": "枫叶小铺 🙂 briefly."},
             {"role": "user", "content": "乌龙茶多少钱？oolong?"}]
    first = sdk.chat.completions.create(model="chat", messages=turn1, max_tokens=16, temperature=0)
    turn2 = turn1 + [{"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "绿茶？green?"}]
    second = sdk.chat.completions.create(model="chat", messages=turn2, max_tokens=8, temperature=0)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens < cached < second.usage.prompt_tokens
    assert server.metric("livelm_prefix_cache_hits_total") >= hits + cached
    assert 0 <= server.metric("livelm_kv_cache_usage_perc") <= 1
