"""livelm.machine: dtype, compile and thread choices follow the hardware; the measurement cache is safe.

The branch this machine does not have is reached by replacing the capability probes (monkeypatch),
so both an AVX2-only CPU and one with native bf16 are checked wherever the suite runs."""
import json
import os

import pytest
import torch

from livelm import machine

CPU = torch.device("cpu")
ZEN3 = ("AMD EPYC 7B13 (family 25, model 1)", {"avx2", "fma", "sse4_2"})
ZEN4 = ("AMD EPYC 9B14 (family 25, model 17)", {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"})
SKYLAKE = ("Intel Xeon Gold 6148", {"avx2", "fma", "avx512f", "avx512bw"})


@pytest.fixture
def cpu_as(monkeypatch, tmp_path):
    """Pretend to be another CPU: (model, flags), ATen level, oneDNN bf16; with a private measurement cache."""
    monkeypatch.setenv("LIVELM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(machine.platform, "machine", lambda: "x86_64")

    def as_(info, capability, onednn):
        monkeypatch.setattr(machine, "cpu_info", lambda: info)
        monkeypatch.setattr(machine, "cpu_capability", lambda: capability)
        monkeypatch.setattr(machine, "onednn_bf16", lambda: onednn)
        machine._bf16_fast_cpu.cache_clear()
        machine._warned.clear()
    yield as_
    machine._bf16_fast_cpu.cache_clear()
    machine._warned.clear()


def test_hardware_decides_where_it_is_conclusive():
    assert machine.bf16_hardware(ZEN3[1], "AVX2", False, "x86_64")[0] is False
    assert machine.bf16_hardware(ZEN4[1], "AVX512", True, "x86_64")[0] is True
    # native flags but the kernels are limited to AVX2 (ATEN_CPU_CAPABILITY=avx2): emulated all the same
    assert machine.bf16_hardware(ZEN4[1], "AVX2", False, "x86_64")[0] is False
    assert machine.bf16_hardware(SKYLAKE[1], "AVX512", True, "x86_64")[0] is None      # not conclusive
    assert machine.bf16_hardware({"asimd"}, "DEFAULT", False, "aarch64")[0] is False
    assert machine.bf16_hardware({"asimd", "bf16"}, "SVE256", True, "aarch64")[0] is None
    assert machine.bf16_hardware(set(), "DEFAULT", False, "arm64")[0] is None            # macOS: no flags


def test_auto_is_fp32_on_avx2_and_bf16_with_bf16_hardware(cpu_as):
    cpu_as(ZEN3, "AVX2", False)
    assert machine.resolve_dtype("auto", CPU) is torch.float32
    assert machine.inference_dtype("auto", CPU, n_bytes=1 << 30, batch=16) is torch.float32
    assert machine.detect(CPU).train_dtype == "float32"

    cpu_as(ZEN4, "AVX512", True)
    assert machine.resolve_dtype("auto", CPU) is torch.bfloat16
    m = machine.detect(CPU)
    assert m.train_dtype == "bfloat16" and m.bf16_native is True and "avx512_bf16" in m.cpu_flags
    # inference: bf16 only batched and past the caches; batch-1 decoding stays fp32 (memory-bound)
    assert machine.inference_dtype("auto", CPU, n_bytes=1 << 30, batch=16) is torch.bfloat16
    assert machine.inference_dtype("auto", CPU, n_bytes=1 << 30, batch=1) is torch.float32
    assert machine.inference_dtype("auto", CPU, n_bytes=1 << 20, batch=16) is torch.float32
    # explicit choices are kept
    assert machine.resolve_dtype("float32", CPU) is torch.float32
    assert machine.inference_dtype("float32", CPU, n_bytes=1 << 30, batch=16) is torch.float32


def test_inconclusive_hardware_is_measured_once_and_cached(cpu_as, monkeypatch):
    cpu_as(SKYLAKE, "AVX512", True)
    calls = []

    def rates():
        calls.append(1)
        return {"matmul_float32": 100.0, "matmul_bfloat16": 40.0}     # emulated bf16: slower
    monkeypatch.setattr(machine, "measure_rates", rates)
    assert machine.resolve_dtype("auto", CPU) is torch.float32
    machine._bf16_fast_cpu.cache_clear()
    assert machine.resolve_dtype("auto", CPU) is torch.float32
    assert len(calls) == 1, "the second process-level decision must come from the cache file"
    entry = machine.read_cache()
    assert entry["rates"]["matmul_bfloat16"] == 40.0

    # another CPU model is another cache entry: measured afresh, and fast bf16 picks bf16
    cpu_as(("Intel Xeon w/ fast emulation", SKYLAKE[1]), "AVX512", True)
    monkeypatch.setattr(machine, "measure_rates", lambda: {"matmul_float32": 100.0, "matmul_bfloat16": 300.0})
    assert machine.resolve_dtype("auto", CPU) is torch.bfloat16


def test_explicit_bf16_on_avx2_warns_once(cpu_as, capsys):
    cpu_as(ZEN3, "AVX2", False)
    assert machine.resolve_dtype("bfloat16", CPU) is torch.bfloat16     # still honoured
    machine.resolve_dtype("bf16", CPU)
    machine.inference_dtype("bfloat16", CPU, n_bytes=1, batch=1)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "bfloat16" in err and "--dtype auto" in err

    cpu_as(ZEN4, "AVX512", True)
    machine.resolve_dtype("bfloat16", CPU)
    assert "warning" not in capsys.readouterr().err


def test_cache_is_written_atomically_and_a_corrupt_one_is_ignored(cpu_as, monkeypatch, tmp_path):
    cpu_as(ZEN3, "AVX2", False)
    path = machine.cache_dir() / "machine.json"
    machine.write_cache(rates={"matmul_float32": 1.0, "matmul_bfloat16": 0.1})
    assert json.loads(path.read_text())[machine.cache_key()]["rates"]["matmul_float32"] == 1.0

    # a writer killed before the rename leaves the old file whole and no temp file behind
    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(os, "replace", killed)
        machine.write_cache(compile=[True, "x"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["machine.json"]
    assert "compile" not in json.loads(path.read_text())[machine.cache_key()]

    # corrupt file: read as empty, measured again, rewritten as valid JSON
    path.write_text("{not json", encoding="utf-8")
    assert machine.read_cache() == {}
    assert machine.cached("rates", lambda: {"matmul_float32": 2.0}) == {"matmul_float32": 2.0}
    assert json.loads(path.read_text())[machine.cache_key()]["rates"] == {"matmul_float32": 2.0}
    path.write_text(json.dumps(["a list, not a mapping"]))
    assert machine.read_cache() == {}


def test_isa_limits_in_the_environment_are_part_of_the_cache_key(monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    plain = machine.cache_key()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert machine.cache_key() != plain and "ATEN_CPU_CAPABILITY=avx2" in machine.cache_key()


def test_compile_auto(cpu_as, monkeypatch):
    cpu_as(ZEN3, "AVX2", False)
    assert machine.resolve_compile("true", CPU) is True and machine.resolve_compile(False, CPU) is False
    assert machine.resolve_compile("auto", CPU, steps=None) is False                 # inference: eager
    assert machine.resolve_compile("auto", CPU, steps=500) is False                  # does not pay back
    probes = []
    monkeypatch.setattr(machine, "compiler_found", lambda: True)
    monkeypatch.setattr(machine, "probe_compile", lambda: probes.append(1) or (True, "ok"))
    assert machine.resolve_compile("auto", CPU, steps=machine.COMPILE_MIN_STEPS) is True
    assert machine.resolve_compile("auto", CPU, steps=10 ** 5) is True and len(probes) == 1   # probed once
    monkeypatch.setattr(machine, "compiler_found", lambda: False)
    assert machine.resolve_compile("auto", CPU, steps=10 ** 5) is False                # no g++: eager
    with pytest.raises(ValueError, match="auto, true or false"):
        machine.resolve_compile("sometimes", CPU)


def test_threads_never_exceed_the_usable_cpus(monkeypatch):
    n = torch.get_num_threads()
    try:
        monkeypatch.setattr(machine, "usable_cpus", lambda: 1)
        torch.set_num_threads(2)
        assert machine.apply_threads() == 1
    finally:
        torch.set_num_threads(n)
    assert 1 <= machine.usable_cpus() <= (os.cpu_count() or 1)


def test_doctor_prints_what_it_found_and_chose(tmp_path, monkeypatch, capsys):
    from livelm.cli import main
    monkeypatch.setenv("LIVELM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(machine, "probe_compile", lambda: (True, "a tiny graph compiled"))   # the slow part
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert report["rates"]["matmul_float32"] > 0 and report["rates"]["matmul_bfloat16"] > 0
    assert report["train_dtype"] in ("float32", "bfloat16")
    assert report["quantized_kernels"]["int8"]["decode"] in ("int8pack", "dequantize", "dense")
    assert (tmp_path / "machine.json").is_file()
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "GFLOP/s" in text and "training dtype" in text
    # --remeasure forgets what was cached (a measurement taken on a busy machine) and measures again
    machine.write_cache(stale=True)
    assert main(["doctor", "--remeasure", "--json"]) == 0
    assert "stale" not in machine.read_cache() and "rates" in machine.read_cache()


def test_trainer_logs_its_choice(char_data, tmp_path, capsys):
    """`livelm train` says which dtype and compile mode `auto` became, and why one can find out more."""
    from livelm.cli import main
    assert main(["train", "--data", str(char_data), "--out", str(tmp_path / "run"), "--n-layer", "1",
                 "--d-model", "32", "--n-head", "2", "--block-size", "32", "--batch-size", "2", "--max-iters", "2",
                 "--eval-interval", "2", "--eval-iters", "1", "--progress", "true"]) == 0
    err = capsys.readouterr().err
    expected = str(machine.resolve_dtype("auto", CPU, warn=False)).removeprefix("torch.")
    assert f"training in {expected} (--dtype auto), eager (--compile auto)" in err


def test_tame_malloc_keeps_big_freed_tensors_out_of_the_process():
    """After big tensors are freed, resident memory goes back down (glibc's fixed mmap threshold). In a fresh
    process: this one's heap already holds whatever earlier tests freed."""
    import subprocess
    import sys
    if not sys.platform.startswith("linux"):
        return
    script = """
import sys, torch
from livelm import machine
if sys.argv[1] == "tame":
    assert machine.tame_malloc() and machine.tame_malloc()      # applies, once
def rss_mb():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
before = rss_mb()
for _ in range(3):              # freed 8 MiB blocks raise glibc's threshold unless it is fixed
    t = torch.ones(64, 1 << 15)
    del t
blocks = [torch.ones(1 << 20) for _ in range(50)]   # 200 MB live
grown = rss_mb() - before
del blocks
print(grown, rss_mb() - before)
"""
    # without it the freed 200 MB stayed resident in one measurement (205 MB) and not in another (14 MB):
    # glibc's heap trimming depends on layout, so only the tamed case is asserted
    out = subprocess.run([sys.executable, "-c", script, "tame"], capture_output=True, text=True, check=True)
    grown, kept = map(float, out.stdout.split())
    assert grown > 150 and kept < 50
