"""Structured output and tool calls through the clients agents use: the `openai` SDK and LangChain.

The server is the tiny shop assistant (a 128-token window): a model that has never seen
JSON or a tool, so every valid answer here is the grammar's doing. Its strings are noise
(byte tokens, up to 4 per character), so schemas bound their lengths to fit the window. SmolLM2 runs the same
client code in tests/interop/test_smollm2.py.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import pytest

from tests.serve.conftest import ServerProcess
from tests.serve.test_http_errors import assert_error, post

PERSON = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "city": {"type": "string", "enum": ["北京", "Paris", "東京 🗼"]},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 1}},
          "required": ["name", "city", "age"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
QUESTIONS = ["Who runs the shop?", "你们几点开门？", "Tell me about 乌龙茶 🍵", "Describe a customer.",
             "介绍一位顾客 🙂", "What is your name?", "Mixed 中英: who are you?", "Any tea?", "谁在北京？",
             "Where do you ship?"]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                                    "unit": {"enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ORDER = {"type": "function", "function": {
    "name": "track_order", "description": "Where an order is",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "integer", "minimum": 1, "maximum": 99999}},
                   "required": ["order_id"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def wide(tiny_chat_run, tmp_path_factory):
    """An untrained model with the chat run's tokenizer and a 1,024-token window: tools described in
    the prompt take ~500 of its tokens, more than the tiny assistant's window holds."""
    import torch
    from livelm.models.gpt import GPT, GPTConfig
    from livelm.runs import save_checkpoint
    from livelm.tokenizer import Tokenizer
    tok = Tokenizer.load(tiny_chat_run / "chat")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=1024, n_layer=2, n_head=2, d_model=64))
    run = tmp_path_factory.mktemp("wide") / "wide"
    save_checkpoint(run, model, tok, {"arch": "gpt", "model": model.cfg.to_dict()}, step=0)
    server = ServerProcess(run, "--learn", "off", "--max-batch", "8", log_dir=run.parent)
    yield server
    server.stop()


@pytest.fixture
def tools_sdk(wide):
    from openai import OpenAI
    with OpenAI(base_url=wide.url + "/v1", api_key="EMPTY", max_retries=0, timeout=60) as client:
        yield client


def _ask(sdk, i: int):
    """One of 50 constrained requests: alternately streamed and not, sampled with a seed."""
    kw = dict(model="chat", messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
              response_format=FORMAT, max_tokens=100, temperature=1.0, seed=i)
    if i % 2:
        chunks = list(sdk.chat.completions.create(**kw, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason][0]
    r = sdk.chat.completions.create(**kw)
    return r.choices[0].message.content, r.choices[0].finish_reason


def _free(sdk, i: int):
    r = sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": QUESTIONS[i]}],
                                    max_tokens=30, temperature=1.0, seed=i)
    return r.choices[0].message.content


def test_fifty_json_schema_answers_all_parse_and_validate(sdk):
    """50 constrained requests, streamed and not, batched with free ones in the same engine steps."""
    with ThreadPoolExecutor(16) as pool:
        free = [pool.submit(_free, sdk, i) for i in range(len(QUESTIONS))]
        answers = list(pool.map(lambda i: _ask(sdk, i), range(50)))
        free = [f.result() for f in free]
    for text, reason in answers:
        assert reason in ("stop", "length"), text      # "length": closed early to fit max_tokens, still valid
        jsonschema.validate(json.loads(text), PERSON)
    assert len({t for t, _ in answers}) > 25             # sampled answers, not one forced string
    assert sum(t.lstrip().startswith("{") for t in free) < len(free)   # the free rows were not constrained


def test_json_object_and_vllm_guided_fields(sdk):
    # unbounded strings: a model that never closes them is closed near max_tokens, so the text parses
    for max_tokens in (12, 40, 80):
        r = sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "JSON please 🙂"}],
                                        response_format={"type": "json_object"}, max_tokens=max_tokens, temperature=0)
        assert isinstance(json.loads(r.choices[0].message.content), dict)
        assert r.usage.completion_tokens <= max_tokens
    for extra, check in [({"guided_choice": ["是", "否", "maybe 🤔"]}, lambda t: t in ("是", "否", "maybe 🤔")),
                         ({"guided_regex": r"[0-9]{4}-[0-9]{2}"}, lambda t: len(t) == 7 and t[4] == "-"),
                         ({"guided_json": PERSON}, lambda t: jsonschema.validate(json.loads(t), PERSON) is None),
                         ({"guided_grammar": 'start: "A" ("+" "A")*'}, lambda t: set(t) <= {"A", "+"})]:
        r = sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "?"}],
                                        max_tokens=60, temperature=1.0, seed=3, extra_body=extra)
        assert check(r.choices[0].message.content), (extra, r.choices[0].message.content)
    c = sdk.completions.create(model="chat", prompt="Order number:", max_tokens=10, temperature=1.0,
                               extra_body={"guided_regex": r"#[0-9]{5}"})
    assert c.choices[0].text[0] == "#" and c.choices[0].text[1:].isdigit() and len(c.choices[0].text) == 6


def test_required_tool_call_non_streaming_and_streaming(tools_sdk):
    sdk = tools_sdk
    kw = dict(model="wide", messages=[{"role": "user", "content": "北京天气怎么样？"}], tools=[WEATHER, ORDER],
              tool_choice="required", max_tokens=150, temperature=1.0, seed=5, parallel_tool_calls=False)
    r = sdk.chat.completions.create(**kw)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    tool = {"get_weather": WEATHER, "track_order": ORDER}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])
    # streamed: the same call arrives as tool-call deltas (the SDK's shape), then finish_reason tool_calls
    chunks = list(sdk.chat.completions.create(**kw, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].index == 0 and deltas[0].id.startswith("call_")
    assert deltas[0].function.name == call.function.name
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_named_tool_choice_and_a_full_round_trip(tools_sdk):
    """call -> the tool's result in a tool message -> the model's final answer in text."""
    sdk = tools_sdk
    messages = [{"role": "user", "content": "Where is my order 4711? 📦"}]
    r = sdk.chat.completions.create(model="wide", messages=messages, tools=[WEATHER, ORDER], max_tokens=100,
                                    tool_choice={"type": "function", "function": {"name": "track_order"}})
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "track_order" and isinstance(json.loads(call.function.arguments)["order_id"], int)
    messages += [r.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"status": "已发货 shipped"})}]
    final = sdk.chat.completions.create(model="wide", messages=messages, tools=[WEATHER, ORDER], max_tokens=30,
                                        tool_choice="none", temperature=0)
    assert final.choices[0].message.tool_calls is None and final.choices[0].message.content
    assert final.choices[0].finish_reason in ("stop", "length")


def test_auto_tool_choice_answers_in_text_when_the_model_does_not_call(tools_sdk):
    r = tools_sdk.chat.completions.create(model="wide", messages=[{"role": "user", "content": "你好 🙂"}],
                                    tools=[WEATHER], max_tokens=20, temperature=0)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls


@pytest.mark.parametrize("body, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object",
                                                                             "properties": {"a": {"type": "nope"}}}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"enum": ["x" * 60] * 2000}}}},
     "response_format"),
    ({"guided_regex": "(unclosed"}, "guided_regex"),
    ({"guided_grammar": "start: missing_rule"}, "guided_grammar"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_regex": "a", "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties":
                                                                             {"x": {"type": "wat"}}}}}]}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools"),
])
def test_bad_schemas_and_tools_are_400s_in_openais_shape(server, body, param):
    r = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi 🙂"}], **body})
    assert_error(r, 400, param=param)


def test_history_with_malformed_tool_calls_is_a_400(server):
    bad = {"role": "assistant", "content": None,
           "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}
    r = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}, bad]})
    assert_error(r, 400, param="messages")
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200   # and the engine lives on


# ---- LangChain, as agent code uses it ----------------------------------------------------------
def test_langchain_structured_output_and_tool_round_trip(wide):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class Person(BaseModel):
        name: str = Field(max_length=10)
        age: int = Field(ge=0, le=120)

    llm = ChatOpenAI(base_url=wide.url + "/v1", api_key="EMPTY", model="wide", max_tokens=150, temperature=0,
                     max_retries=0, timeout=60)
    person = llm.with_structured_output(Person, method="json_schema").invoke("Describe a customer 🙂")
    assert isinstance(person, Person) and 0 <= person.age <= 120

    class Order(BaseModel):
        order_id: int = Field(ge=1, le=99999)    # bounded: an untrained model's digits never end by themselves

    @tool(args_schema=Order)
    def track_order(order_id: int) -> str:
        """Where an order is."""
        return "已发货 shipped" if order_id else "unknown"

    agent = llm.bind_tools([track_order], tool_choice="track_order")
    messages = [HumanMessage("Where is order 42?")]
    ai = agent.invoke(messages)
    (call,) = ai.tool_calls
    assert call["name"] == "track_order" and isinstance(call["args"]["order_id"], int)
    messages += [ai, ToolMessage(track_order.invoke(call["args"]), tool_call_id=call["id"])]
    final = llm.bind_tools([track_order]).invoke(messages)
    assert isinstance(final.content, str) and final.content and not final.tool_calls

