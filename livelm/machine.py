"""What this machine is, and what runs fastest on it: the one place that chooses dtypes, compile and threads.

Why a module of its own: the right precision depends on the CPU, by a factor of
100. Measured with torch 2.13 (2 threads, 256-1024 square matmuls):

    AMD Zen 5, AVX-512 BF16        fp32 ~160-200 GFLOP/s   bf16 ~600-820 GFLOP/s   (bf16 4x faster)
    the same CPU limited to AVX2   fp32 ~200 GFLOP/s       bf16 ~1.3-2.6 GFLOP/s   (bf16 emulated, ~100x slower)
    AMD Zen 3, AVX2 (issue 18)     fp32 ~31 GFLOP/s        bf16 ~0.6 GFLOP/s       (~50x slower)

so a default tuned on one machine can turn a three-minute build into hours on
another. `auto` therefore decides from the hardware:

1. Capability first. A CPU whose flags show bf16 arithmetic (AVX-512 BF16, AMX,
   Arm's BF16) *and* whose kernels may use it (ATen dispatches AVX-512, oneDNN
   reports bf16) computes bf16 natively; one whose ATen level is AVX2 or below,
   or where oneDNN has no bf16 path, emulates it. Both are conclusive.
2. Otherwise (AVX-512 without the BF16 flag, Arm without /proc/cpuinfo, an
   unknown CPU) a micro-benchmark decides: a 256x256 matmul in fp32 and in bf16,
   measured once and cached per machine.

Measured results (rates, the torch.compile probe, the quantized kernels picked by
livelm/models/quantized.py) are cached in one small JSON file keyed by the CPU
model, its ATen level, the torch version and the ISA limits set in the
environment (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS
change what is fast). The file is written atomically, and ignored and rewritten
when it cannot be read. `livelm doctor` prints all of it.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from livelm import io

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
# environment variables that limit the instruction sets PyTorch's kernels use: part of the cache key
ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
BF16_SPEEDUP = 1.5          # measured bf16/fp32 matmul rate above which bf16 counts as fast (when not conclusive)
# torch.compile costs 15-30 s of CPU before the first step (measured: the default assistant's 4x128 model,
# 18-28 s) and saved 25-40% per step there, so it pays back after ~500-1000 steps; `auto` compiles runs
# of at least this many steps, where compiling is a few percent of the run.
COMPILE_MIN_STEPS = 2000
# bf16 weights for inference: measured on Zen 5 (AVX-512 BF16), greedy decode through the Engine, tok/s:
#   4x128 (2M params):   batch 1 fp32 857 / bf16 710,  batch 16 8863 / 7510   -> fp32 (overheads dominate)
#   6x384 (12M):         batch 1 341 / 310,            batch 16 1774 / 3120   -> bf16 from batch 8
#   12x768 (85M):        batch 1 88 / 94,              batch 16 374 / 826
# so `auto` serves in bf16 only batched, and only models whose fp32 weights pass this size.
BF16_INFER_MIN_BYTES = 16 << 20
BF16_INFER_MIN_BATCH = 8


def cache_dir() -> Path:
    """Where measurements are kept: $LIVELM_CACHE_DIR, else $XDG_CACHE_HOME/livelm, else ~/.cache/livelm."""
    if os.environ.get("LIVELM_CACHE_DIR"):
        return Path(os.environ["LIVELM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "livelm"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- what the hardware says ----------------------------------------------------------------
def cpu_info() -> tuple[str, set[str]]:
    """(model name, feature flags) from /proc/cpuinfo; ("", set()) where there is none (macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine(), set()
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        found.setdefault(key.strip().lower(), value.strip())
    model = found.get("model name") or found.get("cpu model") or found.get("hardware") \
        or platform.processor() or platform.machine()
    if found.get("cpu family"):   # "AMD EPYC" alone names several generations: family 25 is Zen 3/4, 26 Zen 5
        model += f" (family {found['cpu family']}, model {found.get('model', '?')})"
    flags = set((found.get("flags") or found.get("features") or "").split())   # x86 "flags", Arm "Features"
    return model, flags


def cpu_capability() -> str:
    """ATen's vector dispatch level: DEFAULT, AVX2, AVX512, ZVECTOR, SVE256, ... (what its kernels use)."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:
        return "unknown"


def onednn_bf16() -> bool:
    """Whether oneDNN (PyTorch's CPU matmul/conv library for bf16) has a bf16 path on this CPU and ISA limit."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def bf16_hardware(flags: set[str], capability: str, onednn: bool, arch: str | None = None) -> tuple[bool | None, str]:
    """Does this CPU compute bf16 natively? True / False when the hardware settles it, None when it does not."""
    arch = arch or platform.machine().lower()
    if arch in ("x86_64", "amd64", "i686", "x86"):
        if capability in ("DEFAULT", "AVX2") or not onednn:
            return False, f"ATen dispatches {capability}{'' if onednn else ', oneDNN has no bf16 path'}: bf16 is emulated"
        native = sorted(flags & {"avx512_bf16", "amx_bf16"})
        if native:
            return True, f"{' and '.join(native)} with ATen at {capability}: bf16 is native"
        return None, f"{capability} without a bf16 flag: oneDNN may emulate bf16 well or badly; measured"
    if arch in ("aarch64", "arm64"):
        if "bf16" in flags:
            return None, "Arm with BF16 instructions: measured (kernels differ between builds)"
        if flags:
            return False, "Arm without BF16 instructions: bf16 is emulated"
    return None, f"no CPU flags readable on {arch}: measured"


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, and a cgroup CPU quota where one is set (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    try:   # cgroup v2: "max 100000" or "200000 100000" (quota period)
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def compiler_found() -> bool:
    """torch.compile on a CPU writes C++: is the compiler inductor would call installed?"""
    try:
        from torch._inductor import cpp_builder
        return bool(shutil.which(cpp_builder.get_cpp_compiler()))
    except Exception:
        return shutil.which("g++") is not None or shutil.which("c++") is not None


# ---- measurements --------------------------------------------------------------------------
def measure_rates(n: int = 256, seconds: float = 0.3) -> dict[str, float]:
    """Matmul GFLOP/s of an (n, n) @ (n, n) product in fp32 and in bf16, with the current thread count.

    The two are timed in alternation and each keeps its best call, so a machine busy with something else
    slows both alike and their ratio, which is what decides, stays meaningful (~0.3 s; a few seconds where
    bf16 is emulated, at least 3 calls each)."""
    pairs = {name: (torch.randn(n, n).to(dt), torch.randn(n, n).to(dt))
             for name, dt in (("matmul_float32", torch.float32), ("matmul_bfloat16", torch.bfloat16))}
    best = dict.fromkeys(pairs, float("inf"))
    for a, b in pairs.values():
        a @ b   # warm-up: first-call setup of the kernel
    deadline, rounds = time.perf_counter() + seconds, 0
    while rounds < 3 or time.perf_counter() < deadline:
        for name, (a, b) in pairs.items():
            t = time.perf_counter()
            a @ b
            best[name] = min(best[name], time.perf_counter() - t)
        rounds += 1
    return {name: round(2 * n ** 3 / t / 1e9, 1) for name, t in best.items()}


def probe_compile() -> tuple[bool, str]:
    """Compile a tiny graph with torch.compile: the only sure test that inductor works here (5-20 s once)."""
    if not compiler_found():
        return False, "no C++ compiler found (inductor needs one on the CPU; install g++)"
    try:
        fn = torch.compile(lambda x: torch.nn.functional.gelu(x) * 2 + 1)
        x = torch.randn(8, 8)
        ok = torch.allclose(fn(x), torch.nn.functional.gelu(x) * 2 + 1, atol=1e-5)
        return ok, "a tiny graph compiled" if ok else "a tiny compiled graph gave wrong results"
    except Exception as e:  # any failure inside inductor means: do not compile by default
        return False, f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    finally:
        try:
            torch._dynamo.reset()
        except Exception:
            pass


# ---- the per-machine cache -----------------------------------------------------------------
def cache_key() -> str:
    model, _ = cpu_info()
    limits = ",".join(f"{k}={os.environ[k]}" for k in ISA_ENV if os.environ.get(k))
    return f"{model} | {cpu_capability()} | torch {torch.__version__}" + (f" | {limits}" if limits else "")


def _cache_file() -> Path:
    return cache_dir() / "machine.json"


def read_cache() -> dict:
    """This machine's cached measurements ({} when none, or when the file is unreadable or corrupt)."""
    try:
        data = json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entry = data.get(cache_key()) if isinstance(data, dict) else None
    return entry if isinstance(entry, dict) else {}


def write_cache(**values) -> None:
    """Merge `values` into this machine's entry; atomic (temp file, fsync, rename). Best effort: a read-only
    home only costs re-measuring next time."""
    path = _cache_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}   # missing or corrupt: start again
    entry = data.get(cache_key()) if isinstance(data.get(cache_key()), dict) else {}
    data[cache_key()] = {**entry, **values}
    try:
        io.write_json(path, data)
    except OSError as e:
        log(f"livelm: could not write the machine cache {path}: {e}")


def forget_cache() -> None:
    """Drop this machine's entry (others' stay): everything is measured again when next needed."""
    path = _cache_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(data, dict) and data.pop(cache_key(), None) is not None:
        io.write_json(path, data)


def cached(name: str, measure):
    """The cached value `name` for this machine, measuring (and caching) it once when missing."""
    entry = read_cache()
    if name in entry:
        return entry[name]
    value = measure()
    write_cache(**{name: value})
    return value


# ---- the profile ---------------------------------------------------------------------------
@dataclass
class Machine:
    """What was detected on this machine and what livelm chose for it (`livelm doctor` prints this)."""
    device: str                     # cpu | cuda | mps: where `auto` runs
    cpu_model: str
    cpu_capability: str             # ATen's dispatch level
    cpu_flags: list[str]            # the flags that matter here (vector width, bf16, int8 dot products, AMX)
    onednn_bf16: bool
    bf16_native: bool | None        # None: the hardware did not settle it (then rates decide)
    bf16_reason: str
    accelerator: str = ""           # "NVIDIA H100 80GB HBM3 (sm_90)", "Apple MPS", or ""
    threads: int = 1                # torch intra-op threads in use
    usable_cpus: int = 1
    compiler: bool = False          # a C++ compiler for torch.compile on the CPU
    rates: dict = field(default_factory=dict)     # GFLOP/s, when measured
    train_dtype: str = "float32"
    infer_dtype: str = "float32"    # for batched inference of models past the caches (see inference_dtype)
    reasons: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


_FLAGS_SHOWN = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_tile",
                "amx_bf16", "amx_int8", "asimd", "bf16", "i8mm", "sve")


def bf16_is_fast() -> tuple[bool, str]:
    """Whether bf16 matmuls beat fp32 on this CPU, and why we think so: the hardware, else a cached measurement."""
    _, flags = cpu_info()
    native, reason = bf16_hardware(flags, cpu_capability(), onednn_bf16())
    if native is not None:
        return native, reason
    rates = cached("rates", measure_rates)
    ratio = rates["matmul_bfloat16"] / max(rates["matmul_float32"], 1e-9)
    return ratio >= BF16_SPEEDUP, f"{reason}: bf16 {rates['matmul_bfloat16']} vs fp32 {rates['matmul_float32']} GFLOP/s"


@functools.lru_cache(maxsize=None)
def _bf16_fast_cpu() -> tuple[bool, str]:
    return bf16_is_fast()


def total_memory(device: torch.device | str = "cpu") -> int:
    """Bytes of memory on `device`: the GPU's own, or this machine's RAM (within a cgroup limit, if lower)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:   # cgroup v2: "max" or a byte count
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            total = min(total, int(limit))
    except (OSError, ValueError):
        pass
    return total


def parse_memory(text: str, device: torch.device | str = "cpu") -> int:
    """A memory size as a person writes it: "2" or "2GB" or "2GiB" (GiB), "512MB" / "512M" (MiB), or a
    fraction of the device's memory below 1 ("0.1": a tenth of the RAM, or of the GPU's memory)."""
    s = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = {"G": 2**30, "M": 2**20}.get(s[-1:], None)
    try:
        value = float(s[:-1] if unit else s)
    except ValueError:
        raise ValueError(f"{text!r} is not a memory size; write e.g. 2 (GiB), 512MB, or 0.1 (a fraction of "
                         f"this machine's memory)") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"memory size {text!r} must be a positive number")
    if unit is None and value < 1:
        return int(value * total_memory(device))
    return int(value * (unit or 2**30))


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine (try --device cpu)")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"--device {name}: MPS is not available on this machine (try --device cpu)")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def detect(device: torch.device | str | None = None, measure: bool = False) -> Machine:
    """Profile this machine. measure=True times the matmuls and probes torch.compile (cached afterwards)."""
    device = torch.device(device) if device is not None else pick_device("auto")
    model, flags = cpu_info()
    cap, dnn = cpu_capability(), onednn_bf16()
    native, reason = bf16_hardware(flags, cap, dnn)
    m = Machine(device=device.type, cpu_model=model, cpu_capability=cap,
                cpu_flags=[f for f in _FLAGS_SHOWN if f in flags], onednn_bf16=dnn, bf16_native=native,
                bf16_reason=reason, threads=torch.get_num_threads(), usable_cpus=usable_cpus(),
                compiler=compiler_found())
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        m.accelerator = f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    elif device.type == "mps":
        m.accelerator = "Apple MPS"
    if measure:
        m.rates = measure_rates()
        write_cache(rates=m.rates)
        ok, why = probe_compile()
        write_cache(compile=[ok, why])
        m.reasons["compile"] = why
    m.train_dtype = str(resolve_dtype("auto", device, warn=False)).removeprefix("torch.")
    m.infer_dtype = str(inference_dtype("auto", device, n_bytes=1 << 40, batch=64)).removeprefix("torch.")
    if device.type == "cpu":
        fast, why = _bf16_fast_cpu()
        m.reasons["dtype"] = ("bf16: " if fast else "fp32: ") + why
    else:
        m.reasons["dtype"] = f"{m.train_dtype} on {device.type}"
    m.reasons["compile_auto"] = (f"training runs of >= {COMPILE_MIN_STEPS} steps compile when the probe passes; "
                                 "inference stays eager unless --compile true (compiling a 30-layer model took 425 s)")
    m.reasons["infer_auto"] = (f"{m.infer_dtype} for batches >= {BF16_INFER_MIN_BATCH} of models >= "
                               f"{BF16_INFER_MIN_BYTES >> 20} MB; fp32 at batch 1 on CPUs"
                               if device.type == "cpu" else m.infer_dtype)
    return m


# ---- the choices ---------------------------------------------------------------------------
_warned: set[str] = set()


def warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log(f"livelm: warning: {msg}")


def parse_dtype(name: str) -> torch.dtype | None:
    """torch dtype for a flag value; None for "auto". Raises ValueError naming the choices."""
    if name == "auto":
        return None
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto, float32, bfloat16 or float16")
    return DTYPES[name]


def _check_explicit(dtype: torch.dtype, device: torch.device, warn: bool) -> None:
    if device.type == "cpu" and dtype == torch.bfloat16 and warn:
        fast, why = _bf16_fast_cpu()
        if not fast:
            warn_once("bf16", f"--dtype bfloat16 on a CPU without fast bf16 ({why}); matmuls can be 50-100x "
                              f"slower than float32 here. Use --dtype auto (or float32); `livelm doctor` shows the rates.")


def resolve_dtype(name: str, device: torch.device, warn: bool = True) -> torch.dtype:
    """The training dtype (autocast) for `--dtype NAME`: auto picks bf16 where it is fast (CUDA with bf16,
    CPUs with native bf16), fp16 on older GPUs, fp32 elsewhere. An explicit bf16 that will be slow warns once."""
    dtype = parse_dtype(name)
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu":
            return torch.bfloat16 if _bf16_fast_cpu()[0] else torch.float32
        return torch.float32   # MPS: autocast support varies by macOS version; fp32 is always right
    if dtype is torch.float16 and device.type == "cpu":
        raise ValueError("float16 is not supported for CPU training; use bfloat16 or float32")
    _check_explicit(dtype, device, warn)
    return dtype


def inference_dtype(name: str, device: torch.device, n_bytes: int, batch: int, warn: bool = True) -> torch.dtype:
    """The weights' dtype for serving/generating with a model of `n_bytes` fp32 weights at up to `batch` rows.

    auto: on CUDA bf16 (fp16 where bf16 is missing); on a CPU with fast bf16, bf16 only for batched
    decoding of models past the caches (see BF16_INFER_MIN_*: at batch 1 decoding is memory-bound and
    PyTorch's fp32 path reads weights as fast as its bf16 one); fp32 otherwise."""
    dtype = parse_dtype(name)
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and _bf16_fast_cpu()[0] and batch >= BF16_INFER_MIN_BATCH \
                and n_bytes >= BF16_INFER_MIN_BYTES:
            return torch.bfloat16
        return torch.float32
    _check_explicit(dtype, device, warn)
    return dtype


def resolve_compile(value, device: torch.device, steps: int | None = None) -> bool:
    """`compile: auto | true | false` -> bool. auto compiles training runs of >= COMPILE_MIN_STEPS steps when
    torch.compile works here (probed once, cached); inference (steps None) stays eager."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    if text != "auto":
        raise ValueError(f"compile must be auto, true or false, got {value!r}")
    if steps is None or steps < COMPILE_MIN_STEPS:
        return False
    if device.type == "cpu" and not compiler_found():
        return False
    ok, _ = cached("compile", probe_compile)
    return bool(ok)


def apply_threads() -> int:
    """Never run more intra-op threads than this process may use (a container's quota, taskset): oversubscribed
    threads spin against each other. Returns the thread count in use."""
    n = usable_cpus()
    if torch.get_num_threads() > n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


# glibc raises its mmap threshold each time a large block is freed (up to 32 MB), after which big
# tensors come from the heap and freed ones stay in the process: a LoRA step of SmolLM2-135M then peaked
# at 4.1 GB resident where its live tensors never exceeded ~1.4 GB. A fixed threshold keeps blocks of
# 1 MiB and up in their own mappings, returned to the system when freed (measured: 1.9 GB peak).
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3   # mallopt's parameter number (malloc.h)
_malloc_tamed = False


def tame_malloc() -> bool:
    """Fix glibc's mmap threshold (once per process; a no-op elsewhere). Returns whether it applied."""
    global _malloc_tamed
    if _malloc_tamed or not sys.platform.startswith("linux") or os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return _malloc_tamed
    try:
        import ctypes
        _malloc_tamed = bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):   # not glibc (musl, ...)
        pass
    return _malloc_tamed
