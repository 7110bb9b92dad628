"""Memory guards: a job that will not fit is refused before it starts, with what to lower."""
import pytest
import torch

from livelm import footprint
from livelm.models.gpt import GPT, GPTConfig, PRESETS
from tests.conftest import run_cli

SMOL = GPTConfig(vocab_size=49152, block_size=8192, n_layer=30, n_head=9, n_kv_head=3, d_model=576, mlp_ratio=4.0,
                 **{k: v for k, v in PRESETS["llama"].items() if k != "n_kv_head"})


def test_estimate_grows_with_batch_and_block_and_shrinks_with_checkpointing_and_lora():
    n = footprint.model_params(SMOL)
    assert 120e6 < n < 200e6            # counted on meta tensors, nothing allocated
    full = footprint.training_step(SMOL, n, n, 8, 512)
    assert full.parts["optimizer"] == 8 * n and full.parts["weights"] == 4 * n
    assert footprint.training_step(SMOL, n, n, 16, 512).total > full.total
    assert footprint.training_step(SMOL, n, n, 8, 1024).parts["activations"] > 2 * full.parts["activations"]
    ckpt = footprint.training_step(SMOL, n, n, 8, 512, checkpointing=True)
    assert ckpt.parts["activations"] < full.parts["activations"] / 4
    lora = footprint.training_step(SMOL, n, 1_000_000, 8, 512, lora=True)
    assert lora.parts["optimizer"] < full.parts["optimizer"] / 100


def test_a_step_that_does_not_fit_is_refused_with_what_to_lower():
    n = footprint.model_params(SMOL)
    est = footprint.training_step(SMOL, n, n, 64, 2048)
    with pytest.raises(footprint.NotEnoughMemory) as e:
        footprint.check(est, budget=24 << 30)
    msg = str(e.value)
    for tip in ("--batch-size 32", "--activation-checkpointing true", "--block-size 1024", "--lora", "GiB"):
        assert tip in msg
    footprint.check(footprint.training_step(SMOL, n, 1_000_000, 8, 512, checkpointing=True, lora=True),
                    budget=24 << 30)     # what bench/footprint.py measured at ~1.9 GB fits


def test_finetune_refuses_before_it_starts_and_writes_nothing(tiny_chat_run, shop_paths, tmp_path):
    out = tmp_path / "huge"
    r = run_cli("finetune", tiny_chat_run / "base", "--data", shop_paths["chat_train"], "--out", out,
                "--batch-size", "2000000", "--block-size", "128", "--max-iters", "1", "--progress", "false",
                check=False)
    assert r.returncode != 0 and "needs about" in r.stderr and "--batch-size 1000000" in r.stderr
    assert not (out / "model.safetensors").exists() and not (out / "metrics.jsonl").exists()


def test_engine_refuses_a_kv_pool_larger_than_the_machine(tiny_chat_run):
    from livelm.infer.engine import Engine
    from livelm.runs import load_model
    model, tok, _ = load_model(tiny_chat_run / "chat")
    with pytest.raises(footprint.NotEnoughMemory, match="--kv-cache-memory"):
        Engine(model, tok, kv_cache_memory=footprint.available() * 4)
    with pytest.raises(footprint.NotEnoughMemory, match="reserved for learning"):
        Engine(model, tok, kv_cache_memory=1 << 20, memory_reserve=footprint.available() * 2)


def test_parse_memory_sizes():
    from livelm.machine import parse_memory, total_memory
    assert parse_memory("2") == 2 << 30 and parse_memory("512MB") == 512 << 20 and parse_memory("1.5GiB") == 3 << 29
    assert parse_memory("0.5") == total_memory() // 2
    for bad in ("lots", "-1", "0", "nan", "inf"):
        with pytest.raises(ValueError):
            parse_memory(bad)
