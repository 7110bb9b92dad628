"""Does llama.cpp read our GGUF the way livelm runs the model? Next-token logits and greedy text, compared.

    python bench/gguf_llamacpp.py                 # train a small llama-preset BPE model on Tiny Shakespeare
    python bench/gguf_llamacpp.py --preset gpt2   # the same with the gpt2 preset
    python bench/gguf_llamacpp.py --run RUN       # or check an existing run

Needs llama-cpp-python. If it is not installed this script builds it from PyPI into the
running Python (a C++ compile: ~25+ minutes on 2 cores; CMAKE_ARGS below switch off the
parts not needed here). If it cannot be built, it prints why and exits 0 (a skip).

Checks, on a few prompts (token ids fed to both, so tokenization is not what is compared):
    max |logit difference| over every prompt position       (fp32 GGUF and KV cache: expect < 1e-3)
    next-token argmax agreement at every position            (expect 100%)
    32 greedy tokens continued by each                       (expect the same ids)
and, separately, whether llama.cpp's own tokenizer gives livelm's ids for each prompt and for
Chinese, Japanese, Korean, emoji and mixed texts (TOKENIZER_TEXTS; use --run with a model whose
vocabulary has Chinese merges, e.g. the default assistant, for that to mean something), and
whether it parses the turn markers of the chat template (what Ollama's TEMPLATE relies on).

Measured here (llama-cpp-python 0.3.36, 4 x 128 models, 150 training steps): llama preset
max |dlogit| 3e-6, gpt2 preset 5e-4 (ggml's GELU goes through an fp16 table); argmax 100%,
32 greedy tokens identical, tokenizer ids identical, for both.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
CMAKE_ARGS = ("-DGGML_NATIVE=ON -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF "
              "-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF")
PROMPTS = ["ROMEO:\nWhat light", "First Citizen:\nBefore we proceed any further, hear me speak.",
           "KING RICHARD II:\nLet's talk of graves", "\n"]
# llama.cpp's "gpt-2" pre-tokenizer keeps a run of Chinese characters together, where livelm isolates each;
# livelm's merges never span two such characters, so the ids should still agree: checked on these
TOKENIZER_TEXTS = ["退货期限是多久？", "Hello 你好 world", "枫叶小铺的乌龙茶 ¥56。", "Mixed 中英 text 👍🏽 émoji",
                   "请问，delivery 要几天?", "abc你好def  \n\n 運費12元", "カタカナとひらがな、漢字", "한국어 텍스트",
                   "   spaces\tand\ttabs 1234567", "🙂🙂 e\u0301 ﷺ"]


def ensure_llama_cpp(timeout: int):
    """Import llama_cpp, building llama-cpp-python first if needed; (module, None) or (None, reason)."""
    try:
        import llama_cpp
        return llama_cpp, None
    except ImportError:
        pass
    print(f"llama-cpp-python is not installed; building it from source (timeout {timeout}s) ...", file=sys.stderr)
    env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": "1", "FORCE_CMAKE": "1"}
    log = Path(tempfile.gettempdir()) / "llama-cpp-python-build.log"
    t0 = time.time()
    try:
        with open(log, "w") as fh:
            proc = subprocess.run(["nice", "-n", "19", sys.executable, "-m", "pip", "install", "--no-cache-dir",
                                   "llama-cpp-python"], env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"building llama-cpp-python did not finish within {timeout}s (log: {log})"
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return None, f"pip install llama-cpp-python failed after {time.time() - t0:.0f}s: {' | '.join(tail)} (log: {log})"
    try:
        import llama_cpp
        return llama_cpp, None
    except ImportError as e:
        return None, f"llama-cpp-python built but does not import: {e}"


def train_small_run(work: Path, iters: int, preset: str) -> Path:
    """A 4-layer x 128 model (llama preset: GQA 4/2) with a 512-token BPE on Tiny Shakespeare."""
    cli = [sys.executable, "-m", "livelm.cli"]
    if not (work / "data" / "meta.json").exists():
        subprocess.run([*cli, "prepare", str(SHAKESPEARE), "--out", str(work / "data"), "--vocab-size", "512", "--quiet"],
                       check=True, cwd=ROOT)
    subprocess.run([*cli, "train", "--data", str(work / "data"), "--out", str(work / preset), "--preset", preset,
                    "--n-layer", "4", "--n-head", "4", "--n-kv-head", "2" if preset == "llama" else "4",
                    "--d-model", "128", "--block-size", "128",
                    "--batch-size", "16", "--max-iters", str(iters), "--eval-interval", str(iters), "--eval-iters", "5",
                    "--lr", "2e-3", "--progress", "false"], check=True, cwd=ROOT)
    return work / preset


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="llama- or gpt2-preset run directory (default: train a small one)")
    ap.add_argument("--preset", choices=["llama", "gpt2"], default="llama", help="preset of the small model trained")
    ap.add_argument("--iters", type=int, default=300, help="training steps for the small model")
    ap.add_argument("--build-timeout", type=int, default=1800, help="seconds allowed for building llama-cpp-python")
    ap.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    a = ap.parse_args()

    llama_cpp, reason = ensure_llama_cpp(a.build_timeout)
    if llama_cpp is None:
        print(f"SKIP: {reason}")
        return 0

    from livelm.interop.gguf import export_gguf
    from livelm.runs import load_model
    work = a.work or Path(tempfile.mkdtemp(prefix="gguf-bench-"))
    run = a.run or train_small_run(work, a.iters, a.preset)
    path = export_gguf(run, work / "gguf")
    model, tok, _ = load_model(run)
    # an fp32 KV cache (llama.cpp's default is fp16, which alone moves logits by ~1e-3)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=model.cfg.block_size, logits_all=True, n_threads=1,
                          n_batch=model.cfg.block_size, type_k=llama_cpp.GGML_TYPE_F32,
                          type_v=llama_cpp.GGML_TYPE_F32, verbose=False)

    rows, ok = [], True
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        with torch.inference_mode():
            ours = model(torch.tensor([ids]))[0].numpy()                         # (S, V)
        llm.reset()
        llm.eval(ids)
        theirs = np.array(llm.scores[:len(ids)])                                 # (S, V)
        diff = float(np.abs(ours - theirs).max())
        agree = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
        # greedy continuations, each model feeding itself
        g_ours, ctx = [], list(ids)
        with torch.inference_mode():
            for _ in range(32):
                if len(ctx) >= model.cfg.block_size:
                    break
                nxt = int(model(torch.tensor([ctx]))[0, -1].argmax())
                g_ours.append(nxt)
                ctx.append(nxt)
        g_theirs = []
        llm.reset()
        llm.eval(ids)
        for _ in range(len(g_ours)):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            g_theirs.append(nxt)
            llm.eval([nxt])
        same_tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=False) == ids
        rows.append({"prompt": prompt[:30], "tokens": len(ids), "max_abs_logit_diff": diff, "argmax_agreement": agree,
                     "greedy_32_equal": g_ours == g_theirs, "tokenizer_ids_equal": same_tokens,
                     "livelm": tok.decode(g_ours)[:40], "llama.cpp": tok.decode(g_theirs)[:40]})
        ok &= diff <= 1e-3 and agree == 1.0 and g_ours == g_theirs

    text_ids_equal = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) == tok.encode(t)
                      for t in TOKENIZER_TEXTS]
    ok &= all(text_ids_equal)
    chat = "<|bos|><|user|>hello<|end|><|assistant|>"
    specials_ok = llm.tokenize(chat.encode(), add_bos=False, special=True) == \
        [tok.bos_id, tok.user_id, *tok.encode("hello"), tok.end_id, tok.assistant_id]
    ok &= specials_ok
    print(f"llama-cpp-python {llama_cpp.__version__}; {path} ({path.stat().st_size / 2**20:.1f} MiB); "
          f"chat turn markers parse as special tokens: {specials_ok}")
    print(f"{'prompt':32} {'tok':>4} {'max|dlogit|':>12} {'argmax':>7} {'greedy':>7} {'tok ids':>7}")
    for r in rows:
        print(f"{r['prompt']!r:32} {r['tokens']:4d} {r['max_abs_logit_diff']:12.2e} {r['argmax_agreement']:7.1%} "
              f"{str(r['greedy_32_equal']):>7} {str(r['tokenizer_ids_equal']):>7}")
    print(f"llama.cpp's tokenizer gives livelm's ids on {sum(text_ids_equal)} of {len(TOKENIZER_TEXTS)} "
          f"Chinese / Japanese / Korean / emoji / mixed texts"
          + "".join(f"\n  differs: {t!r}" for t, same in zip(TOKENIZER_TEXTS, text_ids_equal) if not same))
    print(json.dumps({"match": ok, "special_tokens_parse": specials_ok, "rows": rows,
                      "cjk_texts_ids_equal": sum(text_ids_equal), "cjk_texts": len(TOKENIZER_TEXTS)},
                     ensure_ascii=False))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
