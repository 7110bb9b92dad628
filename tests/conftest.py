import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
LIVELM = [sys.executable, "-m", "livelm.cli"]

TEXT = ("First Citizen: Before we proceed any further, hear me speak.\n"
        "所有人：说吧，说吧。我们听着呢！🙂 Mixed 中英 text.\n") * 200


def run_cli(*args, check=True, env=None, timeout=300, input=None, process=False):
    """Run `livelm ARGS` and return a CompletedProcess (text mode).

    In this process by default (livelm.cli.main with stdout/stderr captured, torch's global settings
    restored afterwards): importing torch again for every command cost the suite minutes. A test whose
    point is the process (an environment, stdin, exit on a signal) passes process=True, env= or input=."""
    argv = list(map(str, args))
    if process or env or input is not None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.run([*LIVELM, *argv], capture_output=True, text=True, env=full_env,
                              timeout=timeout, input=input, cwd=ROOT)
    else:
        proc = _run_in_process(argv)
    if check and proc.returncode != 0:
        raise AssertionError(f"livelm {' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def _run_in_process(argv: list[str]) -> subprocess.CompletedProcess:
    import contextlib
    import io

    import torch

    from livelm.cli import main
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.random.get_rng_state())
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:   # argparse: --help (0), usage errors (2)
                code = e.code if isinstance(e.code, int) else 1
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.random.set_rng_state(saved[3])
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is faster, and never spins on a busy machine."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def char_data(tmp_path_factory):
    """A small prepared character-level data directory."""
    d = tmp_path_factory.mktemp("chardata")
    (d / "input.txt").write_text(TEXT, encoding="utf-8")
    from livelm.data.prepare import prepare
    prepare([d / "input.txt"], d / "prep", tokenizer_kind="char", val_fraction=0.1, progress=False)
    return d / "prep"


@pytest.fixture(scope="session")
def shop_paths(tmp_path_factory):
    from livelm.data import shop
    return shop.write(tmp_path_factory.mktemp("shop"), seed=0)


@pytest.fixture(scope="session")
def tiny_chat_run(tmp_path_factory, shop_paths):
    """A tiny BPE GPT pretrained briefly on the shop corpus (the demo's data set), then chat fine-tuned briefly.

    Too small to answer well; good for exercising every code path quickly."""
    d = tmp_path_factory.mktemp("tinychat")
    run_cli("prepare", shop_paths["pretrain"], "--out", d / "data", "--vocab-size", "600", "--quiet")
    run_cli("train", "--data", d / "data", "--out", d / "base", "--preset", "llama", "--n-layer", "2",
            "--n-head", "2", "--n-kv-head", "1", "--d-model", "48", "--block-size", "128", "--batch-size", "8",
            "--max-iters", "30", "--eval-interval", "30", "--eval-iters", "2", "--progress", "false")
    run_cli("finetune", d / "base", "--data", shop_paths["chat_train"], "--out", d / "chat", "--max-iters", "20",
            "--eval-interval", "20", "--accuracy-limit", "4", "--progress", "false", "--batch-size", "4")
    return d


# A chat run that has nothing to do with the shop: its own system prompts, its own questions.
LIBRARY_PROMPTS = {"en": "You help the readers of the city library.", "zh": "你是市图书馆的助手。"}
LIBRARY_QA = {"en": [("When does the library open?", "The library opens at 8am."),
                     ("Can I renew a book online?", "Yes, you can renew it on our website."),
                     ("How many books can I borrow?", "You can borrow up to 10 books.")],
              "zh": [("图书馆几点开门？", "图书馆早上8点开门。"),
                     ("可以在网上续借吗？", "可以，在我们的网站上续借。"),
                     ("一次能借几本书？", "一次最多借10本书。")]}


@pytest.fixture(scope="session")
def library_chat_run(tmp_path_factory, tiny_chat_run):
    """tiny_chat_run's base fine-tuned briefly (in-process) on a library's chats instead of the shop's: a
    run whose prompts and guard must hold no shop text. Returns the chat run directory."""
    import json
    from livelm.training.finetune import finetune
    d = tmp_path_factory.mktemp("librarychat")
    chats = []
    for i in range(12):
        for lang, pairs in LIBRARY_QA.items():
            q, a = pairs[i % len(pairs)]
            system = [] if i == 11 else [{"role": "system", "content": LIBRARY_PROMPTS[lang]}]   # one without
            chats.append({"messages": system + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    data = d / "chats.jsonl"
    data.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chats), encoding="utf-8")
    finetune(tiny_chat_run / "base", data, d / "chat", accuracy_limit=0, max_iters=4, eval_interval=4,
             batch_size=4, progress=False, dtype="float32", compile="false")
    return d / "chat"
