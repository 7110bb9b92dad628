"""int8 / int8-dynamic / int4 quantization: kernels, logit tolerance, run directories through the CLI.

Stated tolerance (trained 2x64 char model, every position of a validation window):
    max |Δlogit| / max |logit|  <=  2% int8, 3% int8-dynamic, 10% int4
    greedy next token agrees    >= 95% int8 / int8-dynamic, 90% int4
    perplexity change           <=  1% int8 / int8-dynamic, 5% int4
"""
import io
import json

import pytest
import torch
import torch.nn as nn

from livelm.cli import main
from livelm.infer.evaluate import perplexity
from livelm.compress.quantize import quantize_model
from livelm.models import quantized as quantize
from livelm.models.quantized import Int4Linear, Int8Linear, pack_int4, unpack_int4
from livelm.models.gpt import GPT, GPTConfig
from livelm.runs import load_model
from tests.conftest import run_cli

TOLERANCE = {"int8": (0.02, 0.95, 0.01), "int8-dynamic": (0.03, 0.95, 0.01), "int4": (0.10, 0.90, 0.05)}


def test_int4_pack_round_trip():
    q = torch.randint(0, 16, (48, 130), generator=torch.Generator().manual_seed(0))
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (48, 65)
    assert torch.equal(unpack_int4(packed), q.to(torch.uint8))
    assert packed[0, 0] == q[0, 0] | (q[0, 1] << 4)   # column 2j low nibble, 2j+1 high nibble


@pytest.mark.parametrize("out_features", [64, 40])   # 40: not a multiple of 16, the dequantize path
def test_int4_linear_error_bound_and_kernel(out_features):
    torch.manual_seed(0)
    lin = nn.Linear(128, out_features, bias=True)
    q = Int4Linear.from_linear(lin, group_size=32)
    assert (q.cpu_packed is not None) == (out_features % 16 == 0)
    w = lin.weight.detach()
    # each weight is off by at most half a step (plus bf16 rounding of the zero point)
    step = q.scales.float().repeat_interleave(32, dim=1)
    assert ((q.dequantize() - w).abs() <= 0.5 * step + 1e-2 * w.abs().max()).all()
    x = torch.randn(3, 5, 128)
    ref = torch.nn.functional.linear(x, q.dequantize(), lin.bias.detach())
    y = q(x)
    assert y.shape == (3, 5, out_features) and y.dtype == torch.float32
    assert (y - ref).abs().max() <= 0.02 * ref.abs().max()      # the bf16 kernel vs the fp32 dequantized matmul


@pytest.mark.parametrize("dynamic", [False, True])
def test_int8_linear_close_to_fp32(dynamic):
    torch.manual_seed(0)
    lin = nn.Linear(96, 40, bias=True)
    q = Int8Linear.from_linear(lin, dynamic=dynamic)
    assert q.weight.dtype == torch.int8 and q.scale.shape == (40,)
    x = torch.randn(2, 7, 96)
    ref = lin(x).detach()
    assert (q(x) - ref).abs().max() <= 0.02 * ref.abs().max()


def test_gpt2_preset_quantizes_with_biases_and_tied_head():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, n_layer=2, n_head=4, d_model=64, block_size=32)).eval()
    x = torch.randint(0, 300, (2, 16))
    ref = model(x).detach()
    emb = model.wte.weight.detach().clone()
    record = quantize_model(model, "int4", group_size=32)
    # the head is 15% of this model's weights: it gets an int8 copy of its own (int8 whatever the method);
    # the embedding it was tied to stays fp32 and unchanged
    assert record["modules"][-1] == "lm_head" and len(record["modules"]) == 2 * 6 + 1
    assert isinstance(model.lm_head, Int8Linear) and not model.lm_head.dynamic and torch.equal(model.wte.weight, emb)
    assert (model(x) - ref).abs().max() <= 0.05 * ref.abs().max()


@pytest.mark.parametrize("method", ["int8", "int8-dynamic", "int4"])
def test_quantized_logits_within_tolerance(tiny_llama_run, char_data, method):
    from livelm.data.shards import TokenData
    model, _, _ = load_model(tiny_llama_run)
    window = torch.from_numpy(TokenData(char_data).splits["val"][0][:64].astype("int64"))[None]
    with torch.inference_mode():
        ref = model(window)
        before = perplexity(model, char_data)
    quantize_model(model, method)
    with torch.inference_mode():
        out = model(window)
        after = perplexity(model, char_data)
    rel, agree, ppl_tol = TOLERANCE[method]
    drift = ((out - ref).abs().max() / ref.abs().max()).item()
    agreement = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
    change = after["perplexity"] / before["perplexity"] - 1
    print(f"{method}: max|dlogit|/max|logit| {drift:.4f}, top-1 agreement {agreement:.3f}, "
          f"perplexity {before['perplexity']:.4f} -> {after['perplexity']:.4f} ({change:+.3%})")
    assert drift <= rel
    assert agreement >= agree
    assert abs(change) <= ppl_tol


@pytest.mark.parametrize("method", ["int8", "int8-dynamic", "int4"])
def test_quantized_run_saves_loads_and_generates(tiny_llama_run, char_data, tmp_path, capsys, method):
    out = tmp_path / method
    assert main(["quantize", str(tiny_llama_run), "--out", str(out), "--method", method,
                 "--eval-data", str(char_data)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == method and report["quantized_layers"] == 14
    # the report says which kernel runs on this machine, and the measured times that chose it
    kernels = report["kernels"]
    assert kernels["decode"] in quantize.KERNELS[method] and kernels["prefill"] in quantize.KERNELS[method]
    assert kernels["1_rows_us"]["fp32"] > 0 and torch.backends.cpu.get_cpu_capability() in kernels["cpu"]
    assert report["size_mb"] < 0.4 * report["source_size_mb"]
    assert abs(report["perplexity_change"]) <= TOLERANCE[method][2]
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["method"] == method
    # the stored tensors are integers, not floats
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        key = "blocks.0.attn.q_proj." + ("qweight" if method == "int4" else "weight")
        assert f.get_tensor(key).dtype == (torch.uint8 if method == "int4" else torch.int8)
    # loads transparently, and the loaded model is the one that was saved
    model, _, _ = load_model(out)
    assert isinstance(model.blocks[1].mlp.down_proj, Int4Linear if method == "int4" else Int8Linear)
    ref_model, _, _ = load_model(tiny_llama_run)
    quantize_model(ref_model, method)
    x = torch.randint(0, model.cfg.vocab_size, (1, 20))
    with torch.inference_mode():
        assert torch.equal(model(x), ref_model(x))
    # `livelm eval` and `livelm generate` take it like any run
    assert main(["eval", str(out), "--data", str(char_data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["perplexity"] == pytest.approx(report["perplexity"], rel=1e-3)
    assert main(["generate", str(out), "--prompt", "First", "--max-tokens", "20", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip()


def test_quantized_run_generates_in_a_subprocess_and_chats(tiny_llama_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "q"
    run_cli("quantize", tiny_llama_run, "--out", out, "--method", "int4")
    assert run_cli("generate", out, "--prompt", "First", "--max-tokens", "20", "--temperature", "0").stdout.strip()
    # the chat REPL, reading piped lines (one answer per line)
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/reset\nFirst\n"))
    assert main(["chat", str(out), "--temperature", "0", "--max-tokens", "10"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_quantize_cli_errors(tiny_llama_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["quantize", str(tiny_llama_run), "--out", str(tmp_path / "x"), "--method", "int3"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert main(["quantize", str(tmp_path / "nope"), "--out", str(tmp_path / "x"), "--method", "int8"]) == 1
    assert "run directory not found" in capsys.readouterr().err
    assert main(["quantize", str(tiny_llama_run), "--out", str(tiny_llama_run), "--method", "int8"]) == 1
    assert "is the source run" in capsys.readouterr().err
    assert main(["quantize", str(tiny_llama_run), "--out", str(tmp_path / "q"), "--method", "int4"]) == 0
    assert main(["quantize", str(tmp_path / "q"), "--out", str(tmp_path / "qq"), "--method", "int8"]) == 1
    assert "already quantized" in capsys.readouterr().err


def test_quantized_run_in_the_serving_path(tiny_llama_run, tmp_path):
    """`livelm serve` loads through livelm.runs and decodes many rows per step with the Engine."""
    from livelm.compress.quantize import quantize_run
    from livelm.infer.engine import Engine
    from livelm.runs import load
    from livelm.sampling import SamplingParams
    quantize_run(tiny_llama_run, tmp_path / "q", "int8-dynamic")
    model, tok, _, _ = load(tmp_path / "q", device="cpu")
    engine = Engine(model, tok, max_batch=4)
    prompts = [tok.encode(p) for p in ("First", "Before we", "hear me speak", "F")]
    outs = engine.generate(prompts, SamplingParams(max_tokens=12, temperature=0))
    assert all(len(o.token_ids) > 0 for o in outs)
    # batching does not change a row's greedy answer: per-token activation scales keep rows independent
    alone = Engine(model, tok, max_batch=1).generate([prompts[1]], SamplingParams(max_tokens=12, temperature=0))[0]
    assert alone.token_ids == outs[1].token_ids


@pytest.mark.parametrize("method", ["int8", "int8-dynamic", "int4"])
def test_every_kernel_a_machine_may_pick_computes_the_same_product(method, monkeypatch, tmp_path):
    """Whichever kernel a machine picks, a layer computes the same product (up to the kernels' rounding); a
    kernel that does not on this CPU (torch._int_mm under ATen's AVX2 kernels: off by 11-25%) is never picked."""
    monkeypatch.setenv("LIVELM_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    lin = nn.Linear(128, 64, bias=False)
    q = Int4Linear.from_linear(lin, 64) if method == "int4" else Int8Linear.from_linear(lin, method == "int8-dynamic")
    inaccurate = set()
    for rows in (1, 40):
        x = torch.randn(rows, 128)
        ref = torch.nn.functional.linear(x, q.dequantize())
        for kernel in quantize.KERNELS[method]:
            y = q.matmul(x, kernel)
            assert y.shape == (rows, 64)
            if (y - ref).abs().max() > 0.03 * ref.abs().max():
                inaccurate.add(kernel)
    assert not inaccurate & {"dense", "dequantize", "int8pack"}    # the fp32 copy and the weight-only kernels
    choice = quantize.measure_kernels(method, 128, 64, 64)
    assert not {choice["decode"], choice["prefill"]} & inaccurate, (choice, inaccurate)
    assert set(choice.get("inaccurate", {})) <= inaccurate | {"int_mm"}
    assert q.dense is not None and q.dense.dtype == torch.float32    # the "dense" kernel's fp32 copy


def test_kernels_are_chosen_by_measurement_and_never_slower_than_fp32(monkeypatch, tmp_path):
    """A quantized kernel slower than fp32 on this machine is replaced by the fp32 copy ("dense"), per regime
    (decode rows vs prefill rows); the choice is measured once per machine and shape, then read from the cache."""
    monkeypatch.setenv("LIVELM_CACHE_DIR", str(tmp_path))
    calls = []

    def timed(fns):   # an AVX2-like machine: the int8 kernel wins at one row and loses at 128
        calls.append(1)
        rows = 1 if len(calls) % 2 else 128
        fast = {"fp32": 140.0, "int8pack": 76.0, "dequantize": 565.0} if rows == 1 else \
            {"fp32": 3700.0, "int8pack": 4900.0, "dequantize": 4500.0}
        return {k: fast[k] for k in fns}
    monkeypatch.setattr(quantize, "_time_us", timed)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, d_model=64))
    x = torch.randint(0, 64, (1, 20))
    with torch.inference_mode():
        ref = model(x)
    quantize_model(model, "int8")
    layer = model.blocks[0].mlp.down_proj if hasattr(model.blocks[0].mlp, "down_proj") else \
        next(m for m in model.modules() if isinstance(m, Int8Linear))
    assert layer.kernels == ("int8pack", "dense") and len(calls) == 2
    with torch.inference_mode():
        prefill = model(x)                                   # 20 rows: the prefill kernel (fp32 copy)
        decode = model(x[:, :1])                             # one row: the int8 kernel
    assert layer.dense is not None
    assert (prefill - ref).abs().max() <= 0.05 * ref.abs().max()
    assert (decode[:, 0] - prefill[:, 0]).abs().max() <= 0.05 * ref.abs().max()
    # another model of the same shapes on this machine: no new measurement
    other = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, d_model=64))
    quantize_model(other, "int8")
    assert len(calls) == 2
    assert next(m for m in other.modules() if isinstance(m, Int8Linear)).kernels == ("int8pack", "dense")
