import pytest
import torch

from livelm.learn.copying import CopyFromNotes
from livelm.infer.engine import Engine, PromptTooLong
from livelm.sampling import SamplingParams
from livelm.infer.textstream import TextStream
from livelm.models.gpt import GPT, GPTConfig, PRESETS


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, d_model=32,
                         **PRESETS["llama"])).eval()


def test_seeded_sampling_is_reproducible(model, tok):
    eng = Engine(model, tok, max_batch=4)
    p = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, top_k=50, seed=7, ignore_eos=True)
    a = eng.generate([tok.encode("你好")], p)[0]
    b = eng.generate([tok.encode("你好")], p)[0]
    c = eng.generate([tok.encode("你好")], SamplingParams(**{**p.__dict__, "seed": 8}))[0]
    assert a.token_ids == b.token_ids and len(a.token_ids) == 20
    assert a.token_ids != c.token_ids


def test_batched_prompts_of_different_lengths_match_alone(model, tok):
    prompts = [tok.encode(t) for t in ("你好", "Hello world. 枫叶小铺的乌龙茶", "ab")]
    params = [SamplingParams(max_tokens=12, temperature=0.8, seed=i, ignore_eos=True) for i in range(3)]
    together = Engine(model, tok, max_batch=3).generate(prompts, [p.copy() for p in params])
    for prompt, p, got in zip(prompts, params, together):
        alone = Engine(model, tok, max_batch=1).generate([prompt], p.copy())[0]
        assert got.token_ids == alone.token_ids


def test_continuous_batching_admits_new_work_while_others_run(model, tok):
    eng = Engine(model, tok, max_batch=2)
    long = eng.add(tok.encode("ab"), SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    for _ in range(3):
        eng.step()
    short = eng.add(tok.encode("你好"), SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    steps = 0
    while not short.finished:
        eng.step()
        steps += 1
    assert steps <= 4 and not long.finished  # the short request did not wait for the long one
    assert eng.free_slots == [] or len(eng.free_slots) == 1


def test_prompt_chunks_share_the_decode_pass(model, tok):
    """A prompt arriving mid-generation is prefilled chunk by chunk in the same forward pass as the
    other rows' decode steps (one pass per step), per-row LoRA adapters included, and every
    sequence gets the tokens it gets alone."""
    import copy
    from livelm.models import lora
    model = copy.deepcopy(model)   # the module's model stays without adapters
    torch.manual_seed(1)
    lora.add_adapter(model, "sharp", lora.LoRAConfig(r=4, lora_alpha=8.0))
    with torch.no_grad():
        for m in lora.lora_modules(model).values():
            m.B("sharp").normal_(0, 0.3)
    lora.set_active(model, None)
    greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    first, late = tok.encode("ab"), tok.encode("你好，世界！🙂 Hello world. 枫叶小铺的乌龙茶")
    eng = Engine(model, tok, max_batch=3, prefill_chunk=8, row_adapters=True)
    passes = []
    model.register_forward_hook(lambda m, args, out: passes.append(args[0].shape))
    a = eng.add(first, greedy.copy())
    eng.step()
    eng.step()
    b = eng.add(late, greedy.copy(), adapter="sharp")
    del passes[:]
    for _ in range(3):   # b's prompt takes ceil(len / 8) steps, each one pass with a's decode row
        eng.step()
    assert len(late) > 16 and len(passes) == 3 and passes[0] == (1 + 8, 1)
    while not (a.finished and b.finished):
        eng.step()
    alone = Engine(model, tok, max_batch=1, row_adapters=True)
    assert a.out_ids == alone.generate([first], greedy.copy())[0].token_ids
    assert b.out_ids == alone.generate([late], greedy.copy(), adapters=["sharp"])[0].token_ids
    assert b.out_ids != alone.generate([late], greedy.copy())[0].token_ids   # the adapter mattered


def test_greedy_matches_argmax_of_full_forward(model, tok):
    prompt = tok.encode("Hello")
    out = Engine(model, tok).generate([prompt], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0]
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(8):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert ids[0, len(prompt):].tolist() == out.token_ids


def test_streaming_never_yields_broken_characters(model, tok):
    eng = Engine(model, tok)
    for seed in range(5):
        p = SamplingParams(max_tokens=40, temperature=1.5, seed=seed, ignore_eos=True)
        deltas = list(eng.stream(tok.encode("你好🙂"), p))
        full = eng.generate([tok.encode("你好🙂")], p.copy())[0]
        assert "".join(deltas) == full.text
        for d in deltas:
            d.encode("utf-8")  # no lone surrogates
            # a partial multi-byte character would have come out as U+FFFD
        if "\ufffd" not in tok.decode(full.token_ids):
            assert all("\ufffd" not in d for d in deltas)


def test_text_stream_holds_back_possible_stop_strings(tok):
    ids = tok.encode("你好，世界！🙂 Hello world.")
    s = TextStream(tok, stops=["世界！", "world"])
    out = []
    for i in ids:
        delta, stopped = s.push(i)
        out.append(delta)
        if stopped:
            break
    assert "".join(out) == "你好，"
    assert all("世" not in d for d in out)
    s2 = TextStream(tok, stops=["Hello world!"])  # a prefix appears but never completes
    text = "".join(s2.push(i)[0] for i in ids) + s2.finish()
    assert text == tok.decode(ids)


def test_stop_string_straddling_tokens_and_finish_reasons(model, tok):
    eng = Engine(model, tok)
    base = eng.generate([tok.encode("ab")], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))[0]
    assert base.finish_reason == "length" and len(base.token_ids) == 30
    # a stop string made of the end of token 5 and the start of token 6
    b = len(tok.decode(base.token_ids[:6]))
    stop = base.text[b - 2:b + 1]
    assert len(stop) == 3
    out = eng.generate([tok.encode("ab")], SamplingParams(max_tokens=30, temperature=0, stop=(stop,), ignore_eos=True))[0]
    assert out.finish_reason == "stop" and out.text == base.text[:base.text.find(stop)]


def test_prompt_too_long_is_refused_not_truncated(model, tok):
    eng = Engine(model, tok)
    with pytest.raises(PromptTooLong, match="context window is 64"):
        eng.add(list(range(10, 80)), SamplingParams())
    with pytest.raises(ValueError, match="top_p"):
        eng.add([5], SamplingParams(top_p=0))


def test_generation_stops_at_context_window(model, tok):
    out = Engine(model, tok).generate([[5] * 60], SamplingParams(max_tokens=100, temperature=0, ignore_eos=True))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 4


def test_cancel_frees_the_slot(model, tok):
    eng = Engine(model, tok, max_batch=1)
    seq = eng.add([5, 6], SamplingParams(max_tokens=50, ignore_eos=True))
    eng.step()
    eng.cancel(seq)
    eng.step()
    assert seq.finish_reason == "cancelled" and eng.free_slots == [0] and not eng.running


def test_compiled_decode_matches_eager(tok):
    """Engine(compile=True) runs decode steps through torch.compile: same greedy tokens as eager,
    for one stream and for a batch whose rows sit at different positions in the cache."""
    torch.manual_seed(1)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, d_model=64, **PRESETS["llama"])
    model = GPT(cfg).eval()
    prompts = [tok.encode(t) for t in ("你好，世界！🙂", "Hello world. 枫叶小铺的乌龙茶 ¥56", "ab")]
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    eager = Engine(model, tok, max_batch=3).generate(prompts, params)
    compiled = Engine(model, tok, max_batch=3, compile=True)
    assert compiled.decode_model is not model
    assert [c.token_ids for c in compiled.generate(prompts, params)] == [c.token_ids for c in eager]
    one = compiled.generate(prompts[1:2], params)[0]
    assert one.token_ids == eager[1].token_ids
    # once its graphs are compiled, decoding longer (across KV blocks) compiles nothing more: a guard on
    # the paged cache's own state recompiled every step (13x slower than eager) before it was removed
    from torch._dynamo.utils import counters
    before = sum(counters["stats"].values()), dict(counters["recompiles"])
    longer = compiled.generate(prompts, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    assert [len(c.token_ids) for c in longer] == [40, 40, 40]
    assert (sum(counters["stats"].values()), dict(counters["recompiles"])) == before


def test_copy_next_follows_the_longest_repeated_stretch():
    from livelm.learn.copying import MIN_COPY_MATCH, copy_next
    note = (5, 6, 7, 8, 9, 10, 11)
    other = (1, 6, 7, 8, 2)
    assert MIN_COPY_MATCH == 4
    assert copy_next([3, 5, 6, 7, 8], (note,)) == 9            # the answer repeats 4 tokens of the note
    assert copy_next([6, 7, 8], (note,)) is None                # 3 tokens are not enough
    assert copy_next([0, 6, 7, 8], (note, other)) is None       # only 3-token matches, in either
    assert copy_next([0, 6, 7, 8, 9, 10, 11], (note,)) is None  # the note is used up
    # the longest match wins over a source listed first
    assert copy_next([1, 6, 7, 8], ((6, 7, 8, 4), (1, 6, 7, 8, 2))) == 2
    assert copy_next([4, 5, 6, 7, 8, 9, 10], ((0, 5, 6, 7, 8, 9, 10, 12), (7, 8, 9, 10, 13))) == 12
    # an answer that begins the way a note begins goes on with it, from its first token
    assert copy_next([5], (other, note)) == 6 and copy_next([1, 6], (other, note)) == 7
    assert copy_next([6], (note,)) is None and copy_next([], (note,)) is None


def test_first_token_leans_to_the_best_note():
    from livelm.learn.copying import COPY_FIRST_BIAS, lean_to_first_source
    logits = torch.zeros(10)
    out = lean_to_first_source(logits, ((3, 4), (7, 8)))
    assert out[3] == COPY_FIRST_BIAS and out.count_nonzero() == 1 and logits.count_nonzero() == 0
    assert lean_to_first_source(logits, ()) is logits


def test_logits_processors_run_in_order_and_may_pick_the_token(model, tok):
    """The engine's one hook for decoding policies: processors change the logits, or name the next token."""
    ban = tok.encode("a")[0]

    class Ban:
        def __call__(self, prompt_ids, out_ids, logits):
            logits = logits.clone()
            logits[ban] = -float("inf")
            return logits

    class EveryThird:   # an int: that token comes next, no distribution drawn from
        def __call__(self, prompt_ids, out_ids, logits):
            return ban + 1 if len(out_ids) % 3 == 2 else logits

    eng = Engine(model, tok, max_batch=1)
    out = eng.generate([tok.encode("你好 🙂 a")], SamplingParams(max_tokens=9, temperature=1.0, seed=3, ignore_eos=True,
                                                             processors=(Ban(), EveryThird())))[0].token_ids
    assert ban not in out and out[2::3] == [ban + 1] * 3


def test_answers_copy_from_their_notes(model, tok):
    """Once the answer repeats the start of a copy source, it goes on with the source: the engine's
    memory mechanism (live learning passes the tenant's notes as copy sources)."""
    eng = Engine(model, tok, max_batch=2)
    prompt = tok.encode("枫叶小铺 👍 Hello")
    plain = eng.generate([prompt], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))[0].token_ids
    # a note that starts like the model's own answer, then says something else (in Chinese)
    detour = [t for t in tok.encode("乌龙茶¥56。") if t not in plain[4:7]][:3]
    note = tuple(plain[:4]) + tuple(detour)
    got = eng.generate([prompt, prompt], [SamplingParams(max_tokens=12, temperature=0, ignore_eos=True,
                                                         processors=(CopyFromNotes((note,)),)),
                                          SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)])
    assert got[0].token_ids[:7] == list(note) and got[0].token_ids[:7] != plain[:7]
    assert got[1].token_ids == plain   # a row without notes in the same batch is untouched
