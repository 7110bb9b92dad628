"""Real servers on free loopback ports for the serving tests.

`server`: the tiny chat run plus one LoRA adapter, as `livelm serve` runs it (a subprocess).
`slow_run`: an untrained but wider model with a long window, so a request can outlast a
disconnect, a full queue or a shutdown. Every server listens on 127.0.0.1 only.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    """`python -m livelm.cli serve RUN --port 0 ...` (= `livelm serve`), waited on until it prints its URL."""

    def __init__(self, run, *args, log_dir: Path, timeout: float = 120, env: dict | None = None):
        self.log_path = Path(log_dir) / f"server-{os.getpid()}-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w+")
        cmd = [sys.executable, "-m", "livelm.cli", "serve", str(run), "--host", "127.0.0.1", "--port", "0",
               "--log-level", "warning", *map(str, args)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0].startswith("http://"):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line}\n{self.stderr()}")
        self.url = line[0].strip()

    def stderr(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill_with(self, sig=signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def metric(self, name: str, headers=None) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10, headers=headers).text
        for ln in text.splitlines():
            if ln.startswith(name + " ") or ln.startswith(name + "{"):
                return float(ln.rsplit(" ", 1)[1])
        raise KeyError(name)


@pytest.fixture(scope="session")
def serve_dirs(tiny_chat_run, tmp_path_factory):
    """The tiny chat run and a LoRA adapter on it whose weights are large enough to change the output."""
    import torch
    from livelm.models import lora
    from livelm.runs import load_model
    run = tiny_chat_run / "chat"
    out = tmp_path_factory.mktemp("adapters") / "sharp"
    model, _, _ = load_model(run)
    cfg = lora.LoRAConfig(r=4, lora_alpha=8.0)
    lora.add_adapter(model, "sharp", cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in lora.lora_modules(model).values():
            m.B("sharp").copy_(torch.randn(m.B("sharp").shape, generator=g) * 0.5)
    lora.save_adapter(out, model, "sharp", cfg, str(run.resolve()))
    return {"run": run, "adapter": out}


@pytest.fixture(scope="session")
def server(serve_dirs, tmp_path_factory):
    d = tmp_path_factory.mktemp("server")
    # live learning is exercised in tests/learn/test_live_server.py; here notes from one test's feedback
    # would lengthen later tests' prompts, and updates would only add background load
    s = ServerProcess(serve_dirs["run"], "--adapter", serve_dirs["adapter"], "--max-batch", "16",
                      "--feedback-db", d / "feedback.sqlite", "--learn", "off", log_dir=d)
    s.feedback_db = d / "feedback.sqlite"
    yield s
    s.stop()


@pytest.fixture(scope="session")
def slow_run(tiny_chat_run, tmp_path_factory):
    """Untrained, 6 layers x 512 wide, 2048-token window: it babbles (ignore_eos) for many seconds."""
    import torch
    from livelm.models.gpt import GPT, GPTConfig
    from livelm.tokenizer import Tokenizer
    from livelm.runs import save_checkpoint
    tok = Tokenizer.load(tiny_chat_run / "chat")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=2048, n_layer=6, n_head=8, d_model=512))
    out = tmp_path_factory.mktemp("slow") / "slow"
    save_checkpoint(out, model, tok, {"arch": "gpt", "model": model.cfg.to_dict()}, step=0)
    return out


@pytest.fixture
def sdk(server):
    from openai import OpenAI
    with OpenAI(base_url=server.url + "/v1", api_key="EMPTY", max_retries=0, timeout=60) as client:
        yield client


def sse_events(response: httpx.Response) -> list:
    """Parse a streamed response into its `data:` payloads (JSON objects, or the string '[DONE]')."""
    import json
    out = []
    for block in response.read().decode("utf-8").split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[6:]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out
