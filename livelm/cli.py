"""The `livelm` command line.

Conventions: `--help` on every command; logs and progress go to stderr,
results to stdout; exit 0 on success, 1 on a runtime error (with a one-line
message saying what to do), 2 on a usage error (argparse).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from livelm.infer.sampling import SamplingParams


class CLIError(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- shared flags ------------------------------------------------------------
def add_sampling_flags(p: argparse.ArgumentParser, max_tokens: int = 256, temperature: float = 0.8) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=max_tokens, help=f"most new tokens (default {max_tokens})")
    g.add_argument("--temperature", type=float, default=temperature, help=f"0 = greedy (default {temperature})")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0 = off)")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p * p(max) (default 0 = off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="HF-style, >1 discourages repeats")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    g.add_argument("--seed", type=int, default=None, help="sampling seed for reproducible output")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto)")


def sampling_from_args(a) -> SamplingParams:
    sp = SamplingParams(max_tokens=a.max_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                        min_p=a.min_p, repetition_penalty=a.repetition_penalty, stop=tuple(a.stop), seed=a.seed)
    sp.validate()
    return sp


def load_run(run: str, device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer, config) for inference at batch 1, in the dtype `--dtype` names (auto: livelm.machine)."""
    from livelm.infer.loader import cast_for_inference
    from livelm.runtime import pick_device
    from livelm.train.checkpoint import load_model
    model, tok, config = load_model(run, device=pick_device(device))
    cast_for_inference(model, dtype, batch=1)
    return model, tok, config


# ---- prepare -------------------------------------------------------------------
def cmd_prepare(a) -> int:
    from livelm.data.prepare import prepare
    meta = prepare(a.inputs, a.out, tokenizer_kind=a.tokenizer, vocab_size=a.vocab_size,
                   val_fraction=a.val_fraction, reuse_tokenizer=a.reuse_tokenizer, progress=not a.quiet)
    print(json.dumps({"out": str(a.out), "vocab_size": meta["vocab_size"], "train_tokens": meta["train"]["tokens"],
                      "val_tokens": meta["val"]["tokens"]}, ensure_ascii=False))
    return 0


# ---- train ----------------------------------------------------------------------
def cmd_train(a) -> int:
    from livelm.api import pretrain_gpt
    from livelm.config import resolve_config
    from livelm.train import checkpoint

    base, data_dir = None, a.data
    if a.resume:
        saved = checkpoint.read_config(a.out)
        base = saved.get("train")
        data_dir = data_dir or saved.get("data")
    if not data_dir:
        raise CLIError("--data DIR is required (a folder written by `livelm prepare`)")
    cfg = resolve_config(a, base=base)
    if cfg.arch != "gpt":  # the other architectures (livelm/train/archs.py) share this loop and run layout
        from livelm.train.archs import train_arch
        return train_arch(a, cfg, data_dir)
    result = pretrain_gpt(cfg, data_dir, a.out, a.resume)
    if result.is_main:   # torchrun: one result line, not one per rank
        print(json.dumps({"run": str(a.out), "step": result.step, "val_loss": result.val_loss}))
    return 0


# ---- generate ----------------------------------------------------------------------
def cmd_generate(a) -> int:
    from livelm.infer.engine import Engine
    from livelm import machine
    model, tok, _ = load_run(a.run, a.device, a.dtype)
    prompt = sys.stdin.read() if a.prompt == "-" else a.prompt
    ids = tok.encode(prompt) if prompt else []
    if not ids:
        ids = [tok.bos_id]
    params = sampling_from_args(a)
    engine = Engine(model, tok, max_batch=1,
                    compile=machine.resolve_compile(a.compile, next(model.parameters()).device))
    if sys.stdout.isatty():
        for delta in engine.stream(ids, params):
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        print(engine.generate([ids], params)[0].text)
    return 0


# ---- eval ------------------------------------------------------------------------------
def cmd_eval(a) -> int:
    import torch
    from livelm.data.shards import TokenData
    from livelm.train.checkpoint import read_config
    if read_config(a.run).get("arch", "gpt") != "gpt":
        from livelm.train.archs import eval_arch
        return eval_arch(a)
    model, tok, config = load_run(a.run, a.device)
    data = TokenData(a.data)
    if data.vocab_size != model.cfg.vocab_size:
        raise CLIError(f"{a.data} was prepared with a {data.vocab_size}-token vocabulary but {a.run} uses "
                       f"{model.cfg.vocab_size}; prepare it with --reuse-tokenizer {a.run}")
    block = model.cfg.block_size
    # every validation token once, in consecutive windows (no sampling noise), capped by --max-tokens
    total_loss, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for x, y in data.windows("val", block):
            if total_tokens >= a.max_tokens:
                break
            _, loss = model(x.to(device), y.to(device))
            total_loss += loss.item() * y.numel()
            total_tokens += y.numel()
    if not total_tokens:
        raise CLIError(f"{a.data} has no validation tokens")
    val_loss = total_loss / total_tokens
    result = {"val_loss": val_loss, "perplexity": math.exp(min(val_loss, 50)),
              "bits_per_byte": val_loss / math.log(2) / data.bytes_per_token("val"), "tokens": total_tokens}
    if a.json:
        print(json.dumps(result))
    else:
        print(f"val_loss {val_loss:.4f}  perplexity {result['perplexity']:.3f}  "
              f"bits_per_byte {result['bits_per_byte']:.4f}  ({total_tokens} tokens)")
    return 0


# ---- doctor ------------------------------------------------------------------------------
def cmd_doctor(a) -> int:
    import torch
    from livelm import machine
    from livelm.runtime import pick_device
    if a.remeasure:
        machine.forget_cache()
    m = machine.detect(pick_device(a.device), measure=True)
    report = m.to_dict()
    if m.device == "cpu":
        from livelm.compress.quantize import measure_kernels
        report["quantized_kernels"] = {meth: measure_kernels(meth, 1024, 2816) for meth in ("int8", "int4")}
    report["cache"] = str(machine.cache_dir() / "machine.json")
    if a.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    rates = ", ".join(f"{k.removeprefix('matmul_')} {v} GFLOP/s" for k, v in m.rates.items())
    lines = [f"device        {m.device}{' (' + m.accelerator + ')' if m.accelerator else ''}",
             f"cpu           {m.cpu_model}",
             f"capability    ATen {m.cpu_capability}; flags {' '.join(m.cpu_flags) or '(none readable)'}; "
             f"oneDNN bf16 {'yes' if m.onednn_bf16 else 'no'}",
             f"bf16          {m.bf16_reason}",
             f"matmul        {rates} (256x256, {m.threads} threads)",
             f"threads       {m.threads} of {m.usable_cpus} usable CPUs (torch {torch.__version__})",
             f"compile       {'works' if m.reasons.get('compile') == 'a tiny graph compiled' else 'unavailable'}: "
             f"{m.reasons.get('compile', '')}",
             f"choices       training dtype {m.train_dtype}; inference dtype {m.infer_dtype} for batched models "
             f"past the caches, float32 at batch 1 on CPUs",
             f"              {m.reasons['compile_auto']}"]
    for meth, k in report.get("quantized_kernels", {}).items():
        us = k["1_rows_us"]
        lines.append(f"{meth + ' kernels':<14}decode {k['decode']} ({us.get(k['decode'], us['fp32'])} µs vs fp32 "
                     f"{us['fp32']} µs), prefill {k['prefill']} (1024->2816 layer)")
    lines.append(f"cache         {report['cache']}")
    print("\n".join(lines))
    return 0


# ---- parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from livelm.config import add_config_flags, add_inference_flags

    parser = argparse.ArgumentParser(prog="livelm", description="Train, chat with, serve and teach your own language model.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("prepare", help="tokenize text files/folders/JSONL into training shards",
                       description="Train (or reuse) a tokenizer and write token shards with a train/val split.")
    p.add_argument("inputs", nargs="+", help="text files, folders, or JSONL files")
    p.add_argument("--out", required=True, type=Path, help="output data directory")
    p.add_argument("--tokenizer", choices=["bpe", "char"], default="bpe", help="tokenizer kind (default bpe)")
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size (default 4096)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="tail of each file kept for validation (default 0.1)")
    p.add_argument("--reuse-tokenizer", metavar="PATH", help="use this tokenizer.json (or run dir) instead of training one")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="pretrain a model on prepared data",
                       description="Pretrain a GPT on a prepared data directory. Every config field can be set "
                                   "by --config FILE.yaml or by its own flag.")
    p.add_argument("--data", help="prepared data directory (from `livelm prepare`)")
    p.add_argument("--out", required=True, type=Path, help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_config_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="complete a prompt", description="Print a completion of --prompt.")
    p.add_argument("run", help="run directory")
    p.add_argument("--prompt", required=True, help="prompt text ('-' reads stdin)")
    add_inference_flags(p, "true: faster per token (bench/hf_decode.py), but the first tokens wait for compilation")
    add_sampling_flags(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("eval", help="validation loss, perplexity, bits per byte",
                       description="Evaluate a run on the validation split of a prepared data directory.")
    p.add_argument("run", help="run directory")
    p.add_argument("--data", required=True, help="prepared data directory (same tokenizer as the run)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--max-tokens", type=int, default=1_000_000, help="evaluate at most this many tokens")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("doctor", help="what this machine is and what livelm chose for it",
                       description="Detect the CPU (and GPU), measure fp32 and bf16 matmul rates and the quantized "
                                   "kernels, probe torch.compile, and print the dtype, compile and thread choices "
                                   "that `auto` makes here (the measurements are cached per machine).")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto)")
    p.add_argument("--remeasure", action="store_true",
                   help="forget this machine's cached measurements first (e.g. ones taken while it was busy)")
    p.set_defaults(func=cmd_doctor)

    # commands that live beside their feature
    from livelm.chat import repl
    from livelm.compress import prune, quantize
    from livelm.interop import hf
    from livelm.learn import cli as learn_cli, rl
    from livelm.serve import app as serve_app
    from livelm.train import archs, finetune
    repl.register(sub)
    serve_app.register(sub)
    finetune.register(sub)
    archs.register(sub)
    rl.register(sub)
    learn_cli.register(sub)
    quantize.register(sub)
    prune.register(sub)
    hf.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from livelm import machine
    machine.apply_threads()   # no more torch threads than this process may use (containers, taskset)
    from livelm.data.shards import DataError
    from livelm.tokenizer import TokenizerError
    from livelm.models.lora import AdapterError
    from livelm.train.checkpoint import CheckpointError
    try:
        return args.func(args) or 0
    except (CLIError, DataError, TokenizerError, CheckpointError, AdapterError, ValueError, FileNotFoundError, PermissionError) as e:
        print(f"livelm {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"livelm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
