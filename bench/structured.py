"""Constrained decoding (issue 23): which library, what it costs per token, what it buys.

    python bench/structured.py [--model smollm2|RUN] [--steps 64] [--prompts 20] [--skip-libraries]

Prints one JSON object per section:
  libraries  for llguidance (livelm's choice), xgrammar and outlines-core, whichever are installed, on the
             model's tokenizer: seconds to prepare the tokenizer, to compile three schemas (simple, nested,
             a tool call), and the time to compute the masks of 16 rows and advance them, per step
  overhead   the engine's decode throughput with 1 and 16 rows, free vs constrained by a JSON schema that
             cannot end early (minItems), same prompts and step count: tokens/s and the overhead in %
  compile    livelm's own path: a schema to a grammar (what the server does per request), the first
             matcher of a grammar (compiled) and the next ones (copied from the cached one)
  parses     SmolLM2's greedy answers to prompts that ask for JSON and show the schema: the share that
             parse and validate without the constraint, and with it

Needs jsonschema; xgrammar and outlines-core are optional (pip install xgrammar --no-deps, apache-tvm-ffi;
pip install outlines-core). The model: `livelm pull smollm2` (or any run with a tokenizer.json).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.real_model import cpu  # noqa: E402

SIMPLE = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
NESTED = {"type": "object", "properties": {
    "order": {"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 1}, "status": {"enum": ["new", "paid", "shipped", "已发货"]},
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}, "qty": {"type": "integer", "minimum": 1},
            "price": {"type": "number"}, "note": {"type": "string", "maxLength": 40}},
            "required": ["sku", "qty", "price"]}, "minItems": 1},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city"]}},
        "required": ["id", "status", "items"]},
    "customer": {"type": "object", "properties": {"name": {"type": "string"}, "vip": {"type": "boolean"},
                                                  "email": {"type": "string", "format": "email"}}}},
    "required": ["order", "customer"]}
TOOL = {"type": "object", "properties": {"name": {"const": "get_weather"}, "arguments": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city"]}}, "required": ["name", "arguments"]}
SCHEMAS = {"simple": SIMPLE, "nested": NESTED, "tool": TOOL}
ANSWER = json.dumps({"order": {"id": 4711, "status": "已发货", "items": [
    {"sku": "TEA-0042", "qty": 2, "price": 56.0, "note": "乌龙茶 🍵"}], "address": {"city": "北京"}},
    "customer": {"name": "李雷 Lei", "vip": True}}, ensure_ascii=False)
# never complete within the benchmark's steps: every row decodes the same number of tokens
LONG = {"type": "object", "properties": {"people": {"type": "array", "minItems": 500, "items": {
    "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"]}}}, "required": ["people"]}
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "city": {"type": "string"}},
          "required": ["name", "age", "city"], "additionalProperties": False}
PARSE_PROMPTS = [
    "Make up a person who lives in Paris.", "Describe a chef from Tokyo.", "Invent a student in Beijing.",
    "编一个住在上海的人。", "Describe my grandmother, who is 80 and lives in Rome.", "Create a pilot from Berlin ✈️.",
    "一位来自北京的老师。", "Describe a 30-year-old painter in Madrid 🎨.", "Invent a child from Cairo.",
    "Describe a doctor from Toronto.", "编一个在成都开茶馆的人 🍵。", "Make up a farmer in Kansas.",
    "Describe a singer from Seoul 🎤.", "Invent a sailor from Lisbon.", "Describe a baker in Vienna.",
    "编一个在广州的程序员。", "Make up an athlete from Nairobi.", "Describe a librarian in Dublin 📚.",
    "Invent a taxi driver in Mumbai.", "一个住在西安的学生。",
]


def timed(fn, repeat: int = 1):
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - t) / repeat, out


# ---- libraries -------------------------------------------------------------------------------------
def libraries(tok) -> dict:
    ids = tok.encode(ANSWER)
    out = {}
    try:
        import llguidance
        import llguidance.torch as lt
        t_tok, T = timed(lambda: llguidance.LLTokenizer(tok._hf.to_str(), n_vocab=tok.vocab_size,
                                                        eos_token=sorted(tok.stop_ids)))
        compile_s = {k: timed(lambda s=s: llguidance.LLMatcher(T, llguidance.LLMatcher.grammar_from_json_schema(s)))[0]
                     for k, s in SCHEMAS.items()}
        g = llguidance.LLMatcher.grammar_from_json_schema(NESTED)
        ms = [llguidance.LLMatcher(T, g) for _ in range(16)]
        ex, bm = llguidance.LLExecutor(num_threads=1), lt.allocate_token_bitmask(16, tok.vocab_size)

        def walk():
            for i in ids:
                lt.fill_next_token_bitmask_par(ex, [(m, k) for k, m in enumerate(ms)], bm)
                for m in ms:
                    assert m.consume_token(i), m.get_error()
        step = timed(walk)[0] / len(ids)
        out["llguidance"] = {"version": llguidance.get_version() if hasattr(llguidance, "get_version") else "?",
                             "tokenizer_s": round(t_tok, 3), "compile_ms": {k: round(v * 1e3, 2) for k, v in compile_s.items()},
                             "mask16_ms_per_step": round(step * 1e3, 3)}
    except ImportError as e:
        out["llguidance"] = f"not installed ({e.name})"
    try:
        import xgrammar as xgr
        from transformers import PreTrainedTokenizerFast
        t_tok, info = timed(lambda: xgr.TokenizerInfo.from_huggingface(
            PreTrainedTokenizerFast(tokenizer_object=tok._hf), vocab_size=tok.vocab_size,
            stop_token_ids=sorted(tok.stop_ids)))
        compile_s = {}
        for k, s in SCHEMAS.items():   # a fresh compiler per schema: its cache would hide the cost
            comp = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
            compile_s[k] = timed(lambda: comp.compile_json_schema(json.dumps(s)))[0]
        cg = xgr.GrammarCompiler(info, max_threads=1).compile_json_schema(json.dumps(NESTED))
        ms = [xgr.GrammarMatcher(cg) for _ in range(16)]
        bm = xgr.allocate_token_bitmask(16, tok.vocab_size)

        def walk():
            for i in ids:
                for k, m in enumerate(ms):
                    m.fill_next_token_bitmask(bm, k)
                for m in ms:
                    assert m.accept_token(i)
        step = timed(walk)[0] / len(ids)
        out["xgrammar"] = {"tokenizer_s": round(t_tok, 3), "compile_ms": {k: round(v * 1e3, 2) for k, v in compile_s.items()},
                           "mask16_ms_per_step": round(step * 1e3, 3)}
    except ImportError as e:
        out["xgrammar"] = f"not installed ({e.name})"
    try:
        import outlines_core as oc
        from outlines_core.json_schema import build_regex_from_schema

        def vocabulary():
            table = {}
            for i in range(tok.vocab_size):
                if i not in tok.stop_ids:
                    table.setdefault(tok.token_bytes(i), []).append(i)
            return oc.Vocabulary(min(tok.stop_ids), table)
        t_tok, voc = timed(vocabulary)
        compile_s = {}
        for k, s in SCHEMAS.items():
            try:
                compile_s[k] = round(timed(lambda: oc.Index(build_regex_from_schema(json.dumps(s)), voc))[0] * 1e3, 2)
            except Exception as e:   # a schema feature it lacks
                compile_s[k] = f"failed: {str(e)[:80]}"
        idx = oc.Index(build_regex_from_schema(json.dumps(NESTED)), voc)
        gs = [oc.Guide(idx) for _ in range(16)]
        import torch
        bm = torch.zeros(16, (tok.vocab_size + 31) // 32, dtype=torch.int32)

        def walk():
            for i in ids:
                for k, gd in enumerate(gs):
                    gd.write_mask_into(bm[k].data_ptr(), bm[k].numel(), 4)
                for gd in gs:
                    gd.advance(i)
        step = timed(walk)[0] / len(ids)
        out["outlines-core"] = {"tokenizer_s": round(t_tok, 3), "compile_ms": compile_s,
                                "mask16_ms_per_step": round(step * 1e3, 3)}
    except ImportError as e:
        out["outlines-core"] = f"not installed ({e.name})"
    except Exception as e:
        out["outlines-core"] = f"failed: {type(e).__name__}: {str(e)[:120]}"
    return out


# ---- livelm's engine -----------------------------------------------------------------------------
def overhead(model, tok, steps: int) -> dict:
    from livelm.chat.template import prompt_ids
    from livelm.infer import grammar
    from livelm.infer.engine import Engine
    from livelm.sampling import SamplingParams
    g = grammar.json_schema(LONG)
    prompt = prompt_ids([{"role": "user", "content": "List people as JSON. 列出一些人。"}], tok)
    out = {}
    for rows in (1, 16):
        engine = Engine(model, tok, max_batch=rows, max_len=512)
        engine.generate([prompt] * rows, SamplingParams.greedy(4, ignore_eos=True))       # warm up
        engine.generate([prompt] * rows, SamplingParams.greedy(4, grammar=g))
        res = {}
        for name, params in (("free", SamplingParams.greedy(steps, ignore_eos=True)),
                             ("constrained", SamplingParams.greedy(steps, ignore_eos=True, grammar=g))):
            for s in [engine.add(prompt, params.copy()) for _ in range(rows)]:
                pass
            while any(s.prefilled < len(s.prompt_ids) or s.next_logits is not None for s in engine.running) \
                    or engine.waiting:
                engine.step()                                   # prefill, outside the timing
            t = time.perf_counter()
            tokens = 0
            while engine.has_work:
                tokens += sum(1 for e in engine.step() if not e.finished or e.seq.out_ids)
            res[name] = round(tokens / (time.perf_counter() - t), 1)
        res["overhead_pct"] = round(100 * (1 - res["constrained"] / res["free"]), 1)
        out[f"{rows}_rows_tok_s"] = res
    return out


def compile_costs(tok) -> dict:
    from livelm.infer import grammar
    out = {}
    for k, s in SCHEMAS.items():
        t_g, g = timed(lambda s=s: grammar.json_schema(s))
        c = grammar.Constraints(tok, tok.vocab_size)
        t_first = timed(lambda: c.matcher(g))[0]
        t_next = timed(lambda: c.matcher(g), repeat=20)[0]
        out[k] = {"schema_to_grammar_ms": round(t_g * 1e3, 2), "first_matcher_ms": round(t_first * 1e3, 2),
                  "cached_matcher_ms": round(t_next * 1e3, 3)}
    return out


def parses(model, tok, n: int) -> dict:
    import jsonschema
    from livelm.chat.template import prompt_ids
    from livelm.infer import grammar
    from livelm.infer.engine import Engine
    from livelm.sampling import SamplingParams
    engine = Engine(model, tok, max_batch=8, max_len=1024)
    ask = ("Answer with only a JSON object with the keys name (a string), age (an integer) and city (a string), "
           "like {\"name\": \"Ann\", \"age\": 41, \"city\": \"Oslo\"}. ")
    prompts = [prompt_ids([{"role": "user", "content": ask + p}], tok) for p in PARSE_PROMPTS[:n]]
    out = {}
    for name, g in (("unconstrained", None), ("constrained", grammar.json_schema(PERSON))):
        answers = engine.generate(prompts, SamplingParams.greedy(100, grammar=g))
        ok = 0
        for a in answers:
            try:
                jsonschema.validate(json.loads(a.text.strip().removeprefix("```json").removesuffix("```")), PERSON)
                ok += 1
            except (json.JSONDecodeError, jsonschema.ValidationError):
                pass
        out[name] = {"valid": ok, "of": len(answers), "example": answers[0].text[:120]}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", help="a run directory, or smollm2 (imported from its package)")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--skip-libraries", action="store_true")
    args = ap.parse_args(argv)
    import torch
    from livelm.runs import load
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.model)
        if args.model == "smollm2":
            from livelm.interop.hf_import import import_model
            from livelm.interop.ready import locate
            run = Path(tmp) / "smollm2"
            import_model(locate("smollm2", install=False), run)
        model, tok, _, _ = load(run)
        print(json.dumps({"cpu": cpu(), "model": args.model, "vocab": tok.vocab_size}), flush=True)
        if not args.skip_libraries:
            print(json.dumps({"libraries": libraries(tok)}, ensure_ascii=False), flush=True)
        print(json.dumps({"compile": compile_costs(tok)}), flush=True)
        print(json.dumps({"overhead": overhead(model, tok, args.steps)}), flush=True)
        print(json.dumps({"parses": parses(model, tok, args.prompts)}, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
