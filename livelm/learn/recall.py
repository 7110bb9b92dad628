"""Recall: a conversation's notes from memory, looked up by its question and a draft answer.

One flow for the chat REPL (livelm/cli/chat.py) and the server (livelm/serve/app.py),
so both put the same notes into the same prompt:

    1. does memory want a draft for this tenant (it has notes, or a learned adapter
       whose scope a draft helps test: LiveLearner.wants_draft)?
    2. if so, a short greedy answer without notes (`draft_params`), run through the
       caller's generate function;
    3. memory.recall(tenant, messages, draft): the messages with the notes in the system
       prompt, and the notes (the answer's copy sources).

Why a draft: a rephrased question shares few words with the corrected one, but the
model's draft repeats the answer that was corrected, which the note is indexed by
(as HyDE retrieves by a hypothetical answer; LearnConfig.memory_draft).

The flow is written once, as a generator (`steps`) that yields the one thing it
cannot do itself, running the draft, and is sent the draft's text back. `recall`
drives it synchronously (the REPL: the engine runs in-process). `recall_async`
drives it from the event loop (the server): the memory lookups, which read SQLite,
run in a worker thread, and the draft runs on the loop as any request does. A plain
function called through run_in_threadpool with a generate function that hops back
to the loop would also work, but would hold a worker thread for the whole draft, and
the thread pool is shared by every request's blocking work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable, Generator

from livelm.sampling import SamplingParams


def draft_params(prompt_len: int, max_len: int, tokens: int) -> SamplingParams | None:
    """SamplingParams of the draft answer memory and the adapter's scope look up by (greedy, `tokens`
    long, within the context window), or None when there is no room or no draft is wanted."""
    room = min(tokens, max_len - prompt_len)
    return SamplingParams.greedy(room) if room > 0 else None


@dataclass
class Draft:
    """What `steps` asks its driver to run: the conversation's prompt ids, greedily, with these params."""
    ids: list[int]
    params: SamplingParams


@dataclass
class Recalled:
    messages: list[dict]             # with the notes in the system prompt (unchanged without notes)
    notes: list[str] = field(default_factory=list)
    draft: str = ""                  # the draft answer ("" when none ran); the adapter's scope test uses it too
    wanted_draft: bool = False       # memory wanted one (the server counts these in /metrics, even with no room)


def steps(memory, tenant: str, messages: list[dict], prompt: Callable[[], list[int]], max_len: int,
          draft_tokens: int) -> Generator[Draft, str, Recalled]:
    """The recall flow: yields at most one Draft, is sent its text, returns a Recalled.

    `memory` is a Memory (livelm/learn/memory.py) or a LiveLearner (live.py): anything with
    wants_draft(tenant) and recall(tenant, messages, draft). `prompt()` gives the conversation's
    prompt ids; it is called only when a draft is wanted. `draft_tokens` = 0 means no draft."""
    draft, wanted = "", bool(draft_tokens) and memory.wants_draft(tenant)
    if wanted:
        ids = prompt()
        params = draft_params(len(ids), max_len, draft_tokens)
        if params is not None:   # no room: no draft (the real request then reports the overflow)
            draft = yield Draft(ids, params)
    messages, notes = memory.recall(tenant, messages, draft)
    return Recalled(messages, notes, draft, wanted)


def _advance(flow: Generator, value) -> tuple[Draft | None, Recalled | None]:
    """One step of the flow: (the next Draft, None) or (None, the result). It never raises
    StopIteration, which cannot cross a thread's future (recall_async runs steps in a thread)."""
    try:
        return flow.send(value), None
    except StopIteration as done:
        return None, done.value


def recall(memory, tenant: str, messages: list[dict], *, prompt: Callable[[], list[int]], max_len: int,
           draft_tokens: int, generate: Callable[[list[int], SamplingParams], str]) -> Recalled:
    """Run the recall flow here; generate(ids, params) -> the draft's text."""
    flow = steps(memory, tenant, messages, prompt, max_len, draft_tokens)
    draft, done = _advance(flow, None)
    while done is None:
        draft, done = _advance(flow, generate(draft.ids, draft.params))
    return done


async def recall_async(memory, tenant: str, messages: list[dict], *, prompt: Callable[[], list[int]],
                       max_len: int, draft_tokens: int,
                       generate: Callable[[list[int], SamplingParams], Awaitable[str]],
                       in_thread: Callable[..., Awaitable]) -> Recalled:
    """Run the recall flow from an event loop: its steps through in_thread(fn, *args) (the server
    passes starlette's run_in_threadpool), the draft through `await generate(ids, params)`."""
    flow = steps(memory, tenant, messages, prompt, max_len, draft_tokens)
    draft, done = await in_thread(_advance, flow, None)
    while done is None:
        draft, done = await in_thread(_advance, flow, await generate(draft.ids, draft.params))
    return done
