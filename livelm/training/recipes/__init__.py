"""Recipes for the other architectures — BERT, encoder-decoder translation, LSTM — on the GPT's machinery.

Each is the same four pieces the GPT uses, and nothing else:
    a model built from TrainConfig fields        (livelm/models/bert.py, seq2seq.py, lstm.py)
      and the recipe's own, ArchConfig's          (config.py: --mlm-prob, --holdout, --lstm-hidden, ...)
    get_batch(split, index) -> dict of tensors   a pure function of index (exact --resume)
    an objective(model, batch) -> loss           (livelm/training/objectives.py)
    trainer.train(...)                           the one loop: AdamW, schedule, eval, checkpoints, resume
and a run directory laid out like a GPT run, with config.json["arch"] naming the model (livelm/runs.py
loads every kind). One module per architecture: bert.py, seq2seq.py, lstm.py; the files they read are
livelm/data/labelled.py, their metrics livelm/infer/evaluate.py.
"""
from __future__ import annotations

from pathlib import Path

from livelm import runs
from livelm.machine import pick_device
from livelm.training.recipes import bert, lstm, seq2seq
from livelm.training.recipes.config import ArchConfig, resolve_arch_config   # noqa: F401  (the recipes' settings)
from livelm.training.trainer import log


def train_arch(cfg, arch_cfg: ArchConfig, data, out: str | Path, resume: bool = False):
    """`livelm train --arch bert|seq2seq|lstm` with the resolved configs; returns the trainer's TrainResult."""
    if cfg.sample_interval:
        log("--sample-interval applies to GPT runs only; ignored")
        cfg.sample_interval = 0
    train = {"bert": bert.train_bert, "seq2seq": seq2seq.train_seq2seq, "lstm": lstm.train_lstm}[cfg.arch]
    return train(cfg, arch_cfg, data, Path(out), resume)


def evaluate_arch(run: str | Path, data: str | Path, device: str = "auto", max_tokens: int = 1_000_000) -> dict:
    """`livelm eval RUN --data ...` for bert, seq2seq and lstm runs: the metrics of the run's kind."""
    model, tok, config = runs.load_model(run, pick_device(device), arch=("bert", "seq2seq", "lstm"))
    if config["arch"] == "lstm":
        return lstm.evaluate(run, data, model, max_tokens)
    if config["arch"] == "bert":
        return bert.evaluate(model, tok, config, data, max_tokens)
    return seq2seq.evaluate(run, data, model, tok, config)
