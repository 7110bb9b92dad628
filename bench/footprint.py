"""Does livelm/footprint.py's estimate of a training step hold? Estimated vs measured peak memory.

    python bench/footprint.py                 # SmolLM2 (from `livelm pull smollm2`) and a small model
    python bench/footprint.py --run DIR --steps 2

Each configuration runs `livelm finetune` for a few steps in a subprocess (with --memory-check false, so
the estimate does not stop it) and reads the subprocess's peak resident memory (wait4's ru_maxrss); the
estimate comes from the same shapes. The estimate should be above the measurement (a job it lets start
must not run out) and not far above it (a job that fits should not be refused).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_mb(cmd: list[str]) -> tuple[float, str]:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise RuntimeError(err[-2000:])
    return usage.ru_maxrss / 1024, err


def chats(work: Path, n: int) -> Path:
    from livelm.data import shop
    files = shop.write(work / "shop")
    rows = Path(files["chat_train"]).read_text(encoding="utf-8").splitlines()[:n]
    out = work / "chats.jsonl"
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path.home() / ".cache" / "livelm" / "bench-smollm2")
    ap.add_argument("--steps", type=int, default=2)
    a = ap.parse_args()
    if not (a.run / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "livelm.cli", "pull", "smollm2", "--out", str(a.run)], cwd=ROOT,
                       check=True)
    import torch
    from livelm import footprint, machine
    from livelm.models import lora
    from livelm.runs import load_model
    model, _, _ = load_model(a.run)
    n_params = sum(p.numel() for p in model.parameters())
    lora.add_adapter(model, "x", lora.LoRAConfig())
    n_lora = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    bf16 = machine.resolve_dtype("auto", torch.device("cpu")) != torch.float32
    configs = [("LoRA, batch 8 x 512, checkpointing", 8, 512, True, True),
               ("LoRA, batch 2 x 512, checkpointing", 2, 512, True, True),
               ("LoRA, batch 2 x 512, no checkpointing", 2, 512, False, True),
               ("LoRA, batch 4 x 1024, checkpointing", 4, 1024, True, True)]
    print(f"# footprint.py estimate vs measured peak RSS; {a.run.name} ({n_params / 1e6:.0f}M parameters); "
          f"CPU {machine.cpu_info()[0]} (ATen {machine.cpu_capability()}); activations in "
          f"{'bf16' if bf16 else 'fp32'}\n")
    print("| configuration | estimate (MB) | measured peak (MB) | estimate ÷ measured |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        data = chats(Path(tmp), 64)
        for i, (name, batch, block, ckpt, use_lora) in enumerate(configs):
            cmd = [sys.executable, "-m", "livelm.cli", "finetune", str(a.run), "--data", str(data),
                   "--out", f"{tmp}/out{i}", "--max-iters", str(a.steps), "--eval-interval", str(a.steps),
                   "--batch-size", str(batch), "--block-size", str(block), "--progress", "false",
                   "--activation-checkpointing", str(ckpt).lower(), "--memory-check", "false",
                   "--accuracy-limit", "0"] + \
                (["--lora"] if use_lora else [])
            measured, _ = peak_mb(cmd)
            est = footprint.training_step(model.cfg, n_params, n_lora if use_lora else n_params, batch, block,
                                          act_bytes=2 if bf16 else 4, checkpointing=ckpt, lora=use_lora)
            print(f"| {name} | {est.total / 2**20:.0f} | {measured:.0f} | {est.total / 2**20 / measured:.2f} |",
                  flush=True)
            print(json.dumps({"config": name, "parts_mb": {k: round(v / 2**20) for k, v in est.parts.items()}}),
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
