"""The Python API: `import livelm`, then load, generate, chat and train from code.

    import livelm
    model = livelm.load("runs/assistant/chat")            # a livelm run, an adapter, or a Hugging Face folder
    model.generate("Once upon a time", max_tokens=40)      # -> str
    model.chat([{"role": "user", "content": "营业时间？"}])  # -> str
    model.chat(messages, json_schema={"type": "object", ...})   # -> JSON text valid under the schema
    for delta in model.chat(messages, stream=True):        # -> text pieces as they are decoded
        print(delta, end="", flush=True)
    livelm.train({"preset": "llama", "max_iters": 500}, data="data/mine", out="runs/mine")

These are thin: the same loader, Engine and trainer loop as the CLI, so a script
and `livelm chat` give the same answers for the same seed.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterator

from livelm.sampling import SamplingParams


class Model:
    """A loaded model with its tokenizer and one generation Engine."""

    def __init__(self, model, tokenizer, config: dict, path: Path, adapters: list[str], keep_alive=None):
        from livelm.infer.engine import Engine
        self.model, self.tokenizer, self.config, self.path, self.adapters = model, tokenizer, config, path, adapters
        self.engine = Engine(model, tokenizer)
        self._keep_alive = keep_alive   # the temporary run dir of an imported Hugging Face folder

    def __repr__(self) -> str:
        cfg = self.model.cfg
        return (f"livelm.Model({self.path}, {cfg.n_layer} layers x {cfg.d_model}, "
                f"{self.model.num_params() / 1e6:.2f}M parameters, adapters={self.adapters})")

    @staticmethod
    def _params(max_tokens, temperature, seed, json_schema=None, **sampling) -> SamplingParams:
        if json_schema is not None:   # the answer is JSON valid under this schema (livelm/infer/grammar.py)
            from livelm.infer import grammar
            sampling["grammar"] = grammar.json_schema(json_schema)
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed, **sampling)
        params.validate()
        return params

    def generate(self, prompt: str, max_tokens: int = 128, temperature: float = 0.8, seed: int | None = None,
                 stream: bool = False, **sampling) -> str | Iterator[str]:
        """Continue `prompt` (plain text, no chat template). `sampling`: top_k, top_p, min_p, stop, json_schema, ..."""
        ids = self.tokenizer.prompt(prompt)
        return self._run(ids, self._params(max_tokens, temperature, seed, **sampling), stream)

    def chat(self, messages: list[dict], max_tokens: int = 256, temperature: float = 0.8, seed: int | None = None,
             stream: bool = False, **sampling) -> str | Iterator[str]:
        """Answer the conversation `messages` ([{"role", "content"}, ...]) as the assistant.
        json_schema=SCHEMA: the answer is JSON valid under it (constrained decoding)."""
        from livelm.chat.template import prompt_ids, validate
        ids = prompt_ids(validate(messages), self.tokenizer)
        return self._run(ids, self._params(max_tokens, temperature, seed, **sampling), stream)

    def _run(self, ids: list[int], params: SamplingParams, stream: bool):
        if stream:
            return self.engine.stream(ids, params)
        return self.engine.generate([ids], params)[0].text


def load(path: str | Path, adapters: list[str | Path] | None = None, device: str = "auto",
         dtype: str = "auto") -> Model:
    """Load a livelm run, an adapter directory (with its base run), a Hugging Face folder or a GGUF file
    (Llama, Mistral, Qwen, Gemma, GPT-2). dtype: the weights' dtype (auto: livelm.machine's choice for
    this hardware at batch 1)."""
    from livelm.runs import load as load_run
    path, keep = Path(path), None
    foreign = path.is_file() and path.suffix.lower() == ".gguf" or (path / "config.json").is_file() and \
        "architectures" in (path / "config.json").read_text(encoding="utf-8")
    if foreign:
        # convert it once into a temporary run (the same code as `livelm import`)
        from livelm.interop.hf_import import import_model
        keep = tempfile.TemporaryDirectory(prefix="livelm-import-")
        import_model(path, Path(keep.name) / "run")
        run = Path(keep.name) / "run"
    else:
        run = path
    model, tokenizer, config, names = load_run(run, adapters, device=device, dtype=dtype)
    return Model(model, tokenizer, config, path, names, keep_alive=keep)


def train(config: dict | str | Path | None = None, data: str | Path | None = None, out: str | Path = "runs/model",
          resume: bool = False) -> Path:
    """Pretrain a GPT on data written by `livelm prepare` (or `livelm.prepare`); returns the run directory.

    `config`: TrainConfig fields as a dict, or a YAML file like configs/*.yaml; `data` may also be given there.
    """
    from livelm.config import TrainConfig, load_yaml, resolve_config
    from livelm import runs
    from livelm.training.recipes.config import ArchConfig

    # a config may hold the other architectures' fields too, as `livelm train`'s does (a GPT reads none)
    values = dict(load_yaml(Path(config), also=(ArchConfig,)) if isinstance(config, (str, Path)) else (config or {}))
    data = data or values.pop("data", None)
    values.pop("data", None)
    if not data:
        raise ValueError("train() needs data=: a folder written by `livelm prepare`")
    unknown = set(values) - set(TrainConfig.__dataclass_fields__) - set(ArchConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
    base = runs.read_config(out).get("train") if resume else None
    cfg = resolve_config(None, base=base, **values)
    if cfg.arch != "gpt":
        raise ValueError(f"train() pretrains GPTs; use `livelm train --arch {cfg.arch}` for the other architectures")
    pretrain_gpt(cfg, data, out, resume)
    return Path(out)


def pretrain_gpt(cfg, data: str | Path, out: str | Path, resume: bool = False):
    """The GPT pretraining run behind `livelm train` and `livelm.train()`: data -> model -> the trainer loop."""
    import torch
    from livelm.data.shards import TokenData
    from livelm.models.gpt import GPT
    from livelm.tokenizer import Tokenizer
    from livelm import runs
    from livelm.training.objectives import lm_loss
    from livelm.training.trainer import log, train as train_loop

    tokens = TokenData(data)
    tokenizer = Tokenizer.load(Path(data) / "tokenizer.json")
    torch.manual_seed(cfg.seed)  # the initial weights are part of what --seed reproduces
    model = GPT(cfg.model_config(tokens.vocab_size))
    if resume:
        runs.restore_weights(model, out)
    n_params = model.num_params()
    log(f"model: {cfg.preset} preset, {cfg.n_layer} layers x {cfg.d_model} wide, {n_params / 1e6:.2f}M parameters, "
        f"{model.flops_per_token() / 1e6:.1f} MFLOPs/token (train, 6N + attention)")
    run_config = {"arch": "gpt", "model": model.cfg.to_dict(), "train": cfg.to_dict(),
                  "data": str(Path(data).resolve()), "n_params": n_params}
    return train_loop(cfg, out, model, tokenizer,
                      get_batch=lambda split, i: tokens.batch(split, i, cfg.batch_size, cfg.block_size, cfg.seed),
                      objective=lm_loss, run_config=run_config, bytes_per_token=tokens.bytes_per_token("val"),
                      resume=resume)


def prepare(inputs: list[str | Path], out: str | Path, tokenizer: str = "bpe", vocab_size: int = 4096,
            val_fraction: float = 0.1, progress: bool = True) -> Path:
    """Tokenize text files/folders/JSONL into training shards (what `livelm prepare` does); returns `out`."""
    from livelm.data.prepare import prepare as prepare_shards
    prepare_shards([str(p) for p in inputs], out, tokenizer_kind=tokenizer, vocab_size=vocab_size,
                   val_fraction=val_fraction, progress=progress)
    return Path(out)
