"""FSDP (--fsdp): same losses as DDP, sharded checkpoints that move between process counts, a safe loader.

Two processes with gloo on the CPU, a 2-layer x 64 model. Tolerance 1e-3 on the logged losses (rounded
to 6 decimals): FSDP and DDP reduce gradients in a different order, so they agree to float32 rounding,
not bit for bit (here they agree to all 6 logged decimals).
"""
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from livelm import runs
from livelm.training import checkpoint
from tests.conftest import ROOT, run_cli

TOL = 1e-3
COMMON = ["--n-layer", "2", "--n-head", "2", "--d-model", "64", "--block-size", "32", "--batch-size", "4",
          "--warmup-iters", "2", "--eval-iters", "3", "--log-interval", "1", "--progress", "false",
          "--eval-interval", "4", "--grad-accum", "2", "--threads", "1", "--lr-decay-iters", "16"]


def torchrun(*args, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           "-m", "livelm.cli", "train", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def curve(run):
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return ({r["step"]: r["loss"] for r in recs if "loss" in r},
            {r["step"]: r["val_loss"] for r in recs if "val_loss" in r})


def assert_close(got: dict, want: dict, steps):
    assert sorted(got) == list(steps), sorted(got)
    for s in steps:
        assert abs(got[s] - want[s]) < TOL, (s, got[s], want[s])


@pytest.mark.slow
def test_fsdp_matches_ddp_and_resumes_on_other_process_counts(char_data, tmp_path):
    ddp, run = tmp_path / "ddp", tmp_path / "fsdp"
    torchrun("--data", char_data, "--out", ddp, *COMMON, "--max-iters", "16")   # the reference, uninterrupted
    want_train, want_val = curve(ddp)

    # 2 processes, FSDP, steps 0..7 (eval_iters 3 is uneven over 2 ranks: must not hang)
    torchrun("--data", char_data, "--out", run, *COMMON, "--max-iters", "8", "--fsdp")
    train, val = curve(run)
    assert_close(train, want_train, range(8))
    assert_close(val, want_val, [4, 8])
    files = {p.name for p in (run / checkpoint.SHARDED).iterdir()}
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "train_state.json"} <= files
    assert not (run / "train_state.pt").exists()

    # the consolidated weights serve every other command, on one process
    model, tok, cfg = runs.load_model(run)
    assert cfg["step"] == 8 and cfg["train"]["fsdp"] is True
    tensors, _ = runs.load_weights(run / "model.safetensors")
    assert "lm_head.weight" not in tensors  # tied to wte.weight, stored once
    from livelm.infer.engine import Engine, SamplingParams
    out = Engine(model, tok, max_batch=1).generate([tok.encode("First")], SamplingParams(max_tokens=5, temperature=0))
    assert out[0].token_ids   # (`livelm generate RUN` is this same load_model + Engine)

    # 2 -> 1: resume on one process, past what a killed save left behind
    (run / f".{checkpoint.SHARDED}.tmp").mkdir()
    (run / f".{checkpoint.SHARDED}.tmp" / "__0_0.distcp").write_bytes(b"half-written")
    run_cli("train", "--out", run, "--resume", "--max-iters", "12")
    assert not (run / f".{checkpoint.SHARDED}.tmp").exists()
    assert {p.name for p in (run / checkpoint.SHARDED).iterdir()} == {".metadata", "__0_0.distcp", "train_state.json"}

    # 1 -> 2: and back onto two processes
    torchrun("--out", run, "--resume", "--max-iters", "16")
    train, val = curve(run)
    assert_close(train, want_train, range(16))
    assert_close(val, want_val, [4, 8, 12, 16])
    assert {p.name for p in run.iterdir() if p.name.startswith(".")} == set()


def _tiny(seed=0):
    from livelm.models.gpt import GPT, GPTConfig
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=40, n_layer=2, n_head=2, d_model=64, block_size=16))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def _saved_run(tmp_path):
    """A one-process --fsdp style checkpoint at step 3, written in-process."""
    model, opt = _tiny()
    for _ in range(3):
        idx = torch.randint(0, 40, (2, 16))
        model(idx, idx)[1].backward()
        opt.step()
        opt.zero_grad()
    run = tmp_path / "run"
    config = {"arch": "gpt", "model": model.cfg.to_dict()}
    rng = torch.get_rng_state()
    checkpoint.save_sharded(run, model, opt, None, config, 3, {"best_val": 2.5, "rng_cpu": rng})
    return run, model, opt, rng


def test_sharded_checkpoint_round_trip_and_interrupted_swap(tmp_path):
    run, model, opt, rng = _saved_run(tmp_path)
    for attempt in ("normal", "killed between the two renames of a save"):
        if attempt != "normal":  # the new shards never got in place; the previous ones lie whole in .old
            (run / checkpoint.SHARDED).rename(run / f".{checkpoint.SHARDED}.old")
        fresh, fresh_opt = _tiny(seed=1)
        state = checkpoint.load_resume_state(run, fresh, fresh_opt)
        assert state["step"] == 3 and state["best_val"] == 2.5
        assert torch.equal(state["rng_cpu"], rng), attempt
        for (n, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters()):
            assert torch.equal(a, b), n
            assert torch.equal(opt.state[a]["exp_avg_sq"], fresh_opt.state[b]["exp_avg_sq"]), n


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_sharded_loader_never_unpickles(tmp_path):
    run, *_ = _saved_run(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    meta = run / checkpoint.SHARDED / ".metadata"
    meta.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(runs.CheckpointError, match="not allowed"):
        checkpoint.load_sharded(run, *_tiny())
    assert not marker.exists()

    # a tensor entry replaced by a pickled object: DCP would torch.load(weights_only=False) it
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model, opt = _tiny()
    model_sd, optim_sd = get_state_dict(model, opt)
    model_sd["wte.weight"] = "not a tensor"  # DCP pickles anything that is not a tensor
    for p in (run / checkpoint.SHARDED).glob("*.distcp"):
        p.unlink()
    meta.unlink()
    dcp.save({"model": model_sd, "optim": optim_sd["state"]}, checkpoint_id=run / checkpoint.SHARDED, no_dist=True)
    with pytest.raises(runs.CheckpointError, match="pickled object"):
        checkpoint.load_sharded(run, *_tiny())
