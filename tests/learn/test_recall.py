"""livelm/learn/recall.py: the one recall flow of the chat REPL and the server, driven both ways."""
import asyncio

from livelm.learn.feedback import Feedback, FeedbackStore
from livelm.learn.memory import Memory
from livelm.learn.recall import Draft, draft_params, recall, recall_async, steps
from livelm.sampling import SamplingParams

QUESTION = [{"role": "user", "content": "Monday to Friday, what are the hours?"}]
FIX = "On weekdays we are open 8am to 8pm."


def memory(tmp_path, with_note=True):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    if with_note:
        asked = [{"role": "user", "content": "When do you open on weekdays?"}]
        store.add(Feedback(kind="correction", conversation=asked,
                           answer="On weekdays we are open 9am to 9pm.", correction=FIX, tenant="a"))
    return Memory(store)


def test_draft_params_are_greedy_and_fit_the_context_window():
    assert draft_params(10, 100, 32) == SamplingParams(max_tokens=32, temperature=0)
    assert draft_params(90, 100, 32).max_tokens == 10
    assert draft_params(100, 100, 32) is None and draft_params(10, 100, 0) is None


def test_the_draft_finds_the_note_the_question_misses(tmp_path):
    calls = []

    def generate(ids, params):
        calls.append((ids, params))
        return "We are open 9am to 9pm on weekdays."   # repeats the corrected answer

    out = recall(memory(tmp_path), "a", QUESTION, prompt=lambda: [1, 2, 3], max_len=64, draft_tokens=32,
                 generate=generate)
    assert calls == [([1, 2, 3], SamplingParams(max_tokens=32, temperature=0))]
    assert out.notes == [FIX] and FIX in out.messages[0]["content"] and out.wanted_draft
    assert out.draft == "We are open 9am to 9pm on weekdays."


def test_no_draft_without_notes_or_when_turned_off_or_without_room(tmp_path):
    def never(*_):
        raise AssertionError("no draft should run")

    def unused():
        raise AssertionError("the prompt is built only for a draft")

    out = recall(memory(tmp_path, with_note=False), "a", QUESTION, prompt=unused, max_len=64, draft_tokens=32,
                 generate=never)
    assert (out.messages, out.notes, out.draft, out.wanted_draft) == (QUESTION, [], "", False)
    mem = memory(tmp_path / "b")
    out = recall(mem, "a", QUESTION, prompt=unused, max_len=64, draft_tokens=0, generate=never)
    assert not out.wanted_draft and out.notes == []          # by the question alone: the rephrasing misses
    out = recall(mem, "a", QUESTION, prompt=lambda: [0] * 64, max_len=64, draft_tokens=32, generate=never)
    assert out.wanted_draft and out.draft == "" and out.notes == []   # wanted, but the window is full


def test_the_async_driver_runs_the_same_flow(tmp_path):
    """The server's way: memory lookups through in_thread, the draft awaited on the loop."""
    hops = []

    async def in_thread(fn, *args):
        hops.append(fn.__name__)
        return await asyncio.to_thread(fn, *args)

    async def generate(ids, params):
        return "We are open 9am to 9pm on weekdays."

    out = asyncio.run(recall_async(memory(tmp_path), "a", QUESTION, prompt=lambda: [1, 2], max_len=64,
                                   draft_tokens=32, generate=generate, in_thread=in_thread))
    assert out.notes == [FIX] and out.wanted_draft and len(hops) == 2   # before and after the draft
    sync = recall(memory(tmp_path / "b"), "a", QUESTION, prompt=lambda: [1, 2], max_len=64, draft_tokens=32,
                  generate=lambda ids, params: "We are open 9am to 9pm on weekdays.")
    assert (sync.messages, sync.notes, sync.draft) == (out.messages, out.notes, out.draft)


def test_steps_yield_one_draft_and_return_the_recall(tmp_path):
    flow = steps(memory(tmp_path), "a", QUESTION, lambda: [7], 64, 4)
    asked = next(flow)
    assert asked == Draft([7], SamplingParams(max_tokens=4, temperature=0))
    try:
        flow.send("open 9am to 9pm on weekdays")
    except StopIteration as done:
        assert done.value.notes == [FIX]
    else:
        raise AssertionError("the flow asks for one draft only")
