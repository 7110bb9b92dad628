"""Command-line flags generated from the config dataclasses, by one generator.

Every config a command takes (TrainConfig, ArchConfig, SamplingParams, UpdateConfig, LearnConfig) is a
dataclass; `add_dataclass_flags` turns its fields into flags (`n_layer` -> `--n-layer`, with an
optional prefix: `--learn-steps`), and `dataclass_values` reads the ones a user gave back out of
the parsed namespace. Flags the user did not give are absent from the namespace (SUPPRESS), so
"not given" stays distinguishable from "given the default": that is what lets a YAML file or a
saved run sit between the defaults and the flags (livelm/config.py's precedence).

Why argparse and our own 100 lines rather than jsonargparse or tyro: the flag names are a public
interface older than this file (`--learn-every` for LearnConfig.every_n), a command's `--help` must
import nothing heavy (`livelm prepare --help` imports neither torch nor FastAPI), and both libraries
would add an import-time dependency to every command for what a loop over `dataclasses.fields` does.
"""
from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path


def parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _base_types(cls) -> dict:
    """Each field's Python type with Optional stripped: int, float, str, bool, or tuple (of str)."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
            hint = args[0]
        out[name] = tuple if typing.get_origin(hint) is tuple else hint
    return out


def add_dataclass_flags(parser, cls, *, prefix: str = "", only: tuple[str, ...] | None = None,
                        skip: tuple[str, ...] = (), names: dict[str, str] | None = None,
                        helps: dict[str, str] | None = None, defaults: dict | None = None,
                        choices: dict[str, list] | None = None, title: str | None = None) -> None:
    """One flag per field of `cls` (those in `only`, minus `skip`).

    names: field -> flag name without dashes, where the public name is not prefix + field
    defaults: field -> the default shown in --help and used when the command's default differs
              from the dataclass's (then the flag is always present in the namespace)
    A tuple field takes the flag repeatedly (`--stop A --stop B`); a bool field takes an optional
    true/false (`--nsp`, `--nsp false`)."""
    names, helps, defaults, choices = names or {}, helps or {}, defaults or {}, choices or {}
    group = parser.add_argument_group(title) if title else parser
    kinds = _base_types(cls)
    for f in fields(cls):
        if (only is not None and f.name not in only) or f.name in skip:
            continue
        flag = "--" + names.get(f.name, prefix + f.name).replace("_", "-")
        kind = kinds[f.name]
        shown = defaults.get(f.name, f.default if f.default is not MISSING else None)
        default = defaults[f.name] if f.name in defaults else argparse.SUPPRESS
        text = helps.get(f.name, "")
        text = f"{text} (default: {shown!r})" if text else f"(default: {shown!r})"
        kw = dict(dest=prefix.replace("-", "_") + f.name, default=default, help=text)
        if kind is bool:
            group.add_argument(flag, type=parse_bool, nargs="?", const=True, metavar="BOOL", **kw)
        elif kind is tuple:
            group.add_argument(flag, action="append", metavar="TEXT", **{**kw, "default": list(defaults.get(f.name, []))
                                                                         if f.name in defaults else argparse.SUPPRESS})
        else:
            group.add_argument(flag, type=kind, choices=choices.get(f.name),
                               metavar=None if f.name in choices else f.name.upper(), **kw)


def dataclass_values(args: argparse.Namespace, cls, prefix: str = "", skip: tuple[str, ...] = ()) -> dict:
    """The fields of `cls` present in `args` (given by the user, or with a command default), but `skip`
    (fields whose flags are not generated: the same name may belong to another config)."""
    ns = vars(args)
    dest, kinds = prefix.replace("-", "_"), _base_types(cls)
    out = {}
    for f in fields(cls):
        if dest + f.name in ns and f.name not in skip:
            value = ns[dest + f.name]
            out[f.name] = tuple(value) if kinds[f.name] is tuple else value
    return out


# ---- the configs every command shares -----------------------------------------------------------
def add_train_flags(parser, skip: tuple[str, ...] = (), also: tuple = ()) -> None:
    """--config FILE.yaml plus one flag per TrainConfig field and per field of the dataclasses in `also`
    (the other architectures' ArchConfig: livelm/cli/train.py), all absent from the namespace unless given."""
    from livelm.config import ARCHS, PRESETS, TrainConfig
    parser.add_argument("--config", type=Path, help="YAML file with any of the fields below")
    group = parser.add_argument_group("config overrides (each defaults to the preset/YAML value, then the value shown)")
    add_dataclass_flags(group, TrainConfig, skip=("compile", *skip),
                        choices={"preset": sorted(PRESETS), "arch": list(ARCHS)})
    for cls in also:
        add_dataclass_flags(group, cls, skip=skip)
    if "compile" not in skip:   # a bare --compile means true, as it did when the field was a bool
        group.add_argument("--compile", dest="compile", nargs="?", const="true", default=argparse.SUPPRESS,
                           choices=["auto", "true", "false"], help="(default: 'auto')")


def train_values(args: argparse.Namespace) -> dict:
    """The TrainConfig fields the user set by flag (the YAML file is args.config)."""
    from livelm.config import TrainConfig
    return dataclass_values(args, TrainConfig)


def add_inference_flags(parser, compile_help: str = "") -> None:
    """--dtype and --compile for commands that run a model (generate, chat, serve); livelm.machine resolves auto."""
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="weights' dtype: auto picks bf16 only where it is faster on this machine (CUDA; a CPU "
                             "with native bf16, batched, models past the caches), else float32 (default auto; "
                             "`livelm doctor` shows the choice)")
    parser.add_argument("--compile", nargs="?", const="true", default="auto", choices=["auto", "true", "false"],
                        help="decode steps through torch.compile; auto stays eager (compiling costs tens of seconds "
                             "to minutes at start). " + compile_help)
    parser.add_argument("--speculate", type=int, default=0, metavar="K",
                        help="greedy answers (temperature 0): guess up to K next tokens from the context (prompt "
                             "lookup) and check them in the same pass, while few sequences decode; same tokens, "
                             "fewer passes when answers quote their context (default 0: off)")


def add_kv_flags(parser) -> None:
    """The engine's KV pool (livelm/infer/engine.py): its size, its block size, prefix caching."""
    parser.add_argument("--kv-cache-memory", default=None, metavar="SIZE",
                        help="memory of the KV pool that every sequence's keys and values share: GiB (2, 2GB), "
                             "MiB (512MB) or a fraction of the RAM or GPU memory (0.1); sequences take blocks as "
                             "they grow and wait or are preempted when it is full (default: what --max-batch "
                             "sequences of the whole window need, at most 512 MiB)")
    parser.add_argument("--kv-block-size", type=int, default=16, metavar="N",
                        help="positions per KV block (default 16)")
    parser.add_argument("--no-prefix-caching", action="store_true",
                        help="prefill every prompt in full (default: prompts that start like an earlier one, such "
                             "as a system prompt or a conversation's earlier turns, reuse its cached blocks)")


def engine_options(a, device="cpu") -> dict:
    """Engine keyword arguments from add_kv_flags' flags and --speculate (add_inference_flags)."""
    from livelm import machine
    if a.kv_block_size < 1:
        raise ValueError("--kv-block-size must be at least 1")
    if a.speculate < 0:
        raise ValueError("--speculate must be 0 (off) or more")
    memory = None if a.kv_cache_memory is None else machine.parse_memory(a.kv_cache_memory, device)
    return dict(kv_cache_memory=memory, kv_block_size=a.kv_block_size, prefix_caching=not a.no_prefix_caching,
                speculate=a.speculate)


SAMPLING_FLAGS = ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                  "presence_penalty", "frequency_penalty", "stop", "seed")
SAMPLING_HELP = {"max_tokens": "most new tokens", "temperature": "0 = greedy",
                 "top_k": "keep the k most likely tokens (0 = off)", "top_p": "nucleus sampling mass (1 = off)",
                 "min_p": "drop tokens below min_p * p(max) (0 = off)",
                 "repetition_penalty": "HF-style, >1 discourages tokens already seen",
                 "presence_penalty": "OpenAI-style, on tokens already in the answer",
                 "frequency_penalty": "OpenAI-style, by how often a token is already in the answer",
                 "stop": "stop string (repeatable)", "seed": "sampling seed for reproducible output"}


def add_sampling_flags(parser, max_tokens: int = 256, temperature: float = 0.8) -> None:
    from livelm.sampling import SamplingParams
    add_dataclass_flags(parser, SamplingParams, only=SAMPLING_FLAGS, helps=SAMPLING_HELP, title="sampling",
                        defaults={"max_tokens": max_tokens, "temperature": temperature})
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto)")


def sampling_params(args: argparse.Namespace):
    from livelm.sampling import SamplingParams
    sp = SamplingParams(**dataclass_values(args, SamplingParams))
    sp.validate()
    return sp
