"""Continuous batching seen from outside: concurrent requests get exactly what they would get alone."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from openai import AsyncOpenAI

PROMPTS = [f"问题 {i}: what is {i} + {i}? 🙂" if i % 2 else f"Tell me about 长城, part {i}." for i in range(16)]


async def ask(client: AsyncOpenAI, i: int, model: str = "chat", tokens: int = 24) -> tuple[str, str]:
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPTS[i]}], max_tokens=tokens + i % 5,
        temperature=0.9, top_p=0.95, seed=1000 + i, stream=True, extra_body={"ignore_eos": i % 3 == 0})
    text, reason = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            reason = chunk.choices[0].finish_reason or reason
    return text, reason


def test_16_concurrent_streams_equal_their_solo_outputs(server):
    async def main():
        async with AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120) as client:
            solo = [await ask(client, i) for i in range(16)]

            async def health_latency():
                # /health answers on the event loop while the batch decodes
                worst = 0.0
                async with httpx.AsyncClient() as h:
                    for _ in range(10):
                        t = time.perf_counter()
                        assert (await h.get(server.url + "/health")).status_code == 200
                        worst = max(worst, time.perf_counter() - t)
                        await asyncio.sleep(0.05)
                return worst

            together = await asyncio.gather(*(ask(client, i) for i in range(16)), health_latency())
            return solo, together[:16], together[16]

    solo, together, worst_health = asyncio.run(main())
    mismatched = [i for i in range(16) if solo[i] != together[i]]
    assert not mismatched, [(i, solo[i], together[i]) for i in mismatched]
    assert worst_health < 2.0
    assert server.metric("livelm_num_requests_running") == 0


def test_mixed_adapters_in_one_batch(server):
    """Requests for the base model and for an adapter share the batch; each row gets its own weights."""
    async def main():
        async with AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120) as client:
            models = ["chat", "sharp"] * 3
            solo = [await ask(client, i, m, tokens=12) for i, m in enumerate(models)]
            together = await asyncio.gather(*(ask(client, i, m, tokens=12) for i, m in enumerate(models)))
            return solo, list(together)

    solo, together = asyncio.run(main())
    assert solo == together


@pytest.mark.slow
def test_compiled_server_answers_like_the_eager_one(server, serve_dirs, tmp_path):
    """`livelm serve --compile`: decode steps through torch.compile (compiled while /health says loading);
    greedy answers to concurrent streams equal the eager server's, Chinese and emoji included."""
    from tests.serve.conftest import ServerProcess
    fast = ServerProcess(serve_dirs["run"], "--compile", "--max-batch", "8", "--learn", "off",
                         "--feedback-db", tmp_path / "fb.sqlite", log_dir=tmp_path, timeout=300)
    try:
        deadline = time.time() + 300
        while httpx.get(fast.url + "/health").status_code != 200:
            assert time.time() < deadline, fast.stderr()
            time.sleep(0.5)

        async def answers(url: str) -> list[str]:
            async with AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120) as client:
                async def one(i: int) -> str:
                    r = await client.chat.completions.create(
                        model="chat", messages=[{"role": "user", "content": PROMPTS[i]}], max_tokens=20,
                        temperature=0, extra_body={"ignore_eos": True})
                    return r.choices[0].message.content
                return list(await asyncio.gather(*(one(i) for i in range(8))))

        eager, compiled = asyncio.run(answers(server.url)), asyncio.run(answers(fast.url))
        assert all(eager) and compiled == eager
    finally:
        fast.stop()
