"""Text classification with a pretrained decoder: `livelm finetune GPT_RUN --task classify`.

A GPT run — one trained here or a real model brought in by `livelm import` / `livelm pull` — gets a
linear head (GPTClassifier) on the final hidden state of each text's last token, and is fine-tuned
on labelled text (livelm/data/labelled.py), full or with --lora, on the one trainer loop.

    rows       the run's own text prefix (bos for Gemma and Llama 3, nothing for SmolLM2 and livelm's
               models: Tokenizer.prompt), the text's tokens (the head of a long text, cut to fit
               --block-size), then eos; right-padded, so no real token ever attends to padding
    pooling    the hidden state at each row's last real token, which is always the eos: a causal
               model's only position that has read the whole text, and appending eos makes it the same
               token in every row, so the head never has to cope with texts that end in a word piece,
               an emoji byte or no punctuation (and pretrained models have seen text<eos> at every
               document end)
    head       score: Linear(d_model, n_labels) with weights N(0, 0.001²) and zero bias: the logits
               start near 0 (uniform probabilities, loss ln n_labels), so the first steps' gradients
               do not kick the pretrained body around before the head means anything
    --lora     adapters on the attention and MLP projections (livelm/models/lora.py's defaults) plus the
               head; the frozen projections are kept in bf16 when training runs in bf16 (autocast
               would compute with bf16 copies of them anyway), which halves the weights' memory
    memory     models over ACTIVATION_CHECKPOINT_PARAMS train with activation checkpointing unless
               --activation-checkpointing is given; training batches group rows of similar length
               (LengthBatches) and a batch is as wide as its longest row, rounded up to one of a few
               widths (bucket_width); weights are read into the model slice by slice (load_base_weights)

A classifier run is a GPT run whose config.json also says "task": "classify", its "labels" and
"classifier" (how rows were built); its model.safetensors holds the head (score.weight, score.bias)
beside the GPT's weights (livelm/runs.py builds a GPTClassifier for it). With --lora the output is an
adapter folder (PEFT layout) plus that config.json and the head in HEAD_FILE; its base run is named
in both JSON files. `livelm predict` and `livelm eval` read either (load_classifier).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from livelm import io, machine, runs
from livelm.config import resolve_config
from livelm.data.labelled import read_labelled, read_train_val
from livelm.data.shards import DataError
from livelm.infer.evaluate import accuracy_f1
from livelm.models import lora
from livelm.models.classifier import GPTClassifier
from livelm.models.gpt import GPTConfig
from livelm.runtime import autocast
from livelm.tokenizer import Tokenizer
from livelm.training.objectives import classify_loss
from livelm.training.recipes.config import ArchConfig
from livelm.training.trainer import log, train

# fine-tuning a pretrained decoder starts from its saved config; these defaults differ (eval_iters 0 = the
# whole held-out set). The learning rates are for real pretrained models; a from-scratch toy needs more.
DEFAULTS = dict(max_iters=300, lr=3e-5, min_lr=3e-6, warmup_iters=20, eval_interval=300, eval_iters=0,
                batch_size=16, grad_accum=1, dropout=0.0, sample_interval=0, compile="false")
LORA_LR = 1e-3                       # --lora: the adapters and the head
MAX_LEN = 512                        # default --block-size cap: a real model's window is far longer than texts
ACTIVATION_CHECKPOINT_PARAMS = 50e6  # models larger than this recompute their blocks in backward by default
HEAD_FILE = "classifier_head.safetensors"   # a --lora classifier's head, beside its adapter


# ---- rows and batches ----------------------------------------------------------------------------------
def encode_texts(tok: Tokenizer, texts: list[str], max_len: int, eos: bool = True) -> list[list[int]]:
    """prefix + text tokens (the head of a long text) + eos, at most max_len ids each."""
    tail = [tok.eos_id] if eos else []
    room = max_len - len(tok.prefix_ids) - len(tail)
    if room < 1:
        raise ValueError(f"--block-size {max_len} leaves no room for text")
    for n, t in enumerate(texts, 1):
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"text {n} is empty: a classifier needs some text to label")
    return [[*tok.prefix_ids, *ids[:room], *tail] for ids in tok.encode_batch(texts)]


def bucket_width(n: int, cap: int | None = None) -> int:
    """n rounded up to one of a few widths, at most 4 per doubling (4, 8, 12, 16, 20, 24, 28, 32, 40, 48, ...),
    so at most a quarter of a batch is padding past its longest row. Every new (rows, width) shape costs
    oneDNN a new cached kernel: with a width per length, a SmolLM2 LoRA run grew from 0.9 to 2 GB resident
    over its first 150 steps (and to 3.5 GB for Gemma 3 270M on reviews up to 128 tokens)."""
    g = max(4, 1 << max(0, n.bit_length() - 3))
    return min(-(-n // g) * g, max(n, cap or 1 << 30))


def pad_rows(rows: list[list[int]], labels: list[int] | None, pad_id: int, cap: int | None = None) -> dict:
    """Right-padded idx (B, S) as wide as bucket_width of the longest row (at most `cap`, the model's
    window), pad_mask (True = real) and labels (B,)."""
    width = bucket_width(max(len(r) for r in rows), cap)
    idx = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        idx[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    pad_mask = torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]
    out = {"idx": idx, "pad_mask": pad_mask}
    if labels is not None:
        out["labels"] = torch.tensor(labels, dtype=torch.long)
    return out


class LengthBatches:
    """Training batches of rows of similar length, a pure function of the step index (exact and seedable).

    Each pass over the data sorts the rows by length plus a random jitter of up to `jitter` tokens, cuts
    that order into batches and shuffles the batches: every row is seen once per pass, and a batch is
    padded to about its own length rather than to the longest text in the set (SST-2's phrases are 1 to
    60 tokens: random batches would be mostly padding)."""

    def __init__(self, rows: list[list[int]], labels: list[int], batch_size: int, seed: int, jitter: float = 4.0):
        self.rows, self.labels, self.seed, self.jitter = rows, labels, seed, jitter
        self.bs = min(batch_size, len(rows))
        self.lengths = np.array([len(r) for r in rows], dtype=np.float64)
        self.per_pass = len(rows) // self.bs
        self._pass, self._order = -1, None

    def pick(self, index: int) -> list[int]:
        p, k = divmod(index, self.per_pass)
        if p != self._pass:
            rng = np.random.default_rng([self.seed, 0, p])
            order = np.argsort(self.lengths + rng.uniform(0, self.jitter, len(self.rows)), kind="stable")
            start = rng.integers(len(self.rows) - self.per_pass * self.bs + 1)   # the rows left over: either end
            chunks = order[start:start + self.per_pass * self.bs].reshape(self.per_pass, self.bs)
            self._order, self._pass = chunks[rng.permutation(self.per_pass)], p
        return self._order[k].tolist()

    def batch(self, index: int, pad_id: int, cap: int | None = None) -> dict:
        pick = self.pick(index)
        return pad_rows([self.rows[j] for j in pick], [self.labels[j] for j in pick], pad_id, cap)


@torch.no_grad()
def classify_rows(model: GPTClassifier, rows: list[list[int]], pad_id: int, dtype: torch.dtype = torch.float32,
                  max_tokens: int = 4096) -> torch.Tensor:
    """Label probabilities (N, L) for encoded rows, in batches of rows of similar length (at most
    max_tokens padded tokens each) under autocast `dtype`; the model is left in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    cap = model.cfg.block_size
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    probs = torch.zeros(len(rows), len(model.labels))
    i = 0
    while i < len(order):   # rows sorted by length: a batch's width is its last row's, bucketed
        n = 1
        while i + n < len(order) and n < 256 and (n + 1) * bucket_width(len(rows[order[i + n]]), cap) <= max_tokens:
            n += 1
        chunk = order[i:i + n]
        b = pad_rows([rows[j] for j in chunk], None, pad_id, cap)
        with autocast(device, dtype):
            logits = model(b["idx"].to(device), b["pad_mask"].to(device))["logits"]
        probs[chunk] = torch.softmax(logits.float(), -1).cpu()
        i += n
    return probs


def metrics(probs: torch.Tensor, gold: list[int]) -> dict:
    """val_loss (mean cross-entropy; gold -1 = a label the model does not know, scored as wrong), accuracy, F1."""
    g = torch.tensor(gold, dtype=torch.long)
    known = g >= 0
    loss = F.nll_loss(probs[known].clamp_min(1e-12).log(), g[known]).item() if known.any() else float("nan")
    return {"val_loss": loss, **accuracy_f1(gold, probs.argmax(-1).tolist(), probs.size(1))}


# ---- loading -------------------------------------------------------------------------------------------
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def load_base_weights(model: nn.Module, run: Path, config: dict, allow_new: tuple[str, ...] = ("score",),
                      keep_head: bool = True, chunk_bytes: int = 64 << 20) -> None:
    """A run's weights into `model` (a GPTClassifier built from its config), checked like runs.load_state.

    Plain runs are read from the file a slice of rows at a time into the model's parameters, in whatever
    dtype those already have: the peak is the model plus one slice, where loading the file whole
    (runs.load_weights) holds a second copy of every weight — and mapping it (safetensors' safe_open)
    counts the whole file in the process's resident memory. Quantized or sparse runs go through
    runs.decode_stored. keep_head=False leaves the model's own (fresh) head."""
    path = run / "model.safetensors"
    if "quantization" in config or config.get("sparse"):
        tensors, _ = runs.load_weights(path)
        tensors = runs.decode_stored(model, tensors, config)
        tensors = {k: v for k, v in tensors.items() if keep_head or not k.startswith("score.")}
        runs.load_state(model, tensors, path, allow_new=allow_new)
        return
    if not path.is_file():
        raise runs.CheckpointError(f"missing weights file {path}")
    state, tied = model.state_dict(), runs.tied_names(model)
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
            header.pop("__metadata__", None)
            names = [k for k in header if keep_head or not k.startswith("score.")]
            missing = [k for k in state if k not in names and k not in tied and not k.startswith(allow_new)]
            unexpected = [k for k in names if k not in state]
            bad = [k for k in names if k in state and (tuple(header[k]["shape"]) != tuple(state[k].shape)
                                                       or header[k]["dtype"] not in SAFETENSORS_DTYPES)]
            if missing or unexpected or bad:
                raise runs.CheckpointError(f"{path} does not match its config.json: missing {missing[:3]}, "
                                           f"unexpected {unexpected[:3]}, wrong shape or type {bad[:3]}")
            with torch.no_grad():
                for k in names:
                    info, t = header[k], state[k].view(-1, *state[k].shape[1:]) if state[k].dim() else state[k].view(1)
                    start, end = info["data_offsets"]
                    if not t.numel():
                        continue
                    row_bytes = (end - start) // t.shape[0]
                    step = max(1, chunk_bytes // max(1, row_bytes))
                    for lo in range(0, t.shape[0], step):
                        rows = min(step, t.shape[0] - lo)
                        buf = bytearray(rows * row_bytes)
                        fh.seek(8 + n + start + lo * row_bytes)
                        if fh.readinto(buf) != len(buf):
                            raise EOFError(f"{k} is cut off")
                        t[lo:lo + rows].copy_(torch.frombuffer(buf, dtype=SAFETENSORS_DTYPES[info["dtype"]])
                                              .view(rows, *t.shape[1:]))
    except runs.CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, RuntimeError) as e:   # a damaged file
        raise runs.CheckpointError(f"{path} is corrupt or truncated ({e}); restore it from a backup or retrain") from None


def load_classifier(run: str | Path, device="cpu"):
    """(GPTClassifier in eval mode, tokenizer, config) from a decoder classifier run: a full run (through
    runs.load_model) or a --lora one (its base run's weights, then its head and adapter, merged)."""
    run = Path(run)
    config = runs.read_config(run)
    if config.get("arch", "gpt") != "gpt" or config.get("task") != "classify":
        raise runs.CheckpointError(f"{run} is not a decoder classifier; make one with "
                                   f"`livelm finetune GPT_RUN --task classify --data FILE --out RUN`")
    if not runs.is_adapter(run):
        return runs.load_model(run, device=device)
    base = runs.adapter_base(run)
    model = runs.build_model(config, run)
    load_base_weights(model, base, runs.read_config(base))
    head, _ = runs.load_weights(run / HEAD_FILE)
    try:
        model.score.load_state_dict({k.removeprefix("score."): v for k, v in head.items()})
    except RuntimeError as e:
        raise runs.CheckpointError(f"{run / HEAD_FILE} does not match {run / 'config.json'}: {e}") from None
    lora.load_adapter(model, run, "classify")
    lora.merge(model, "classify")            # inference only: one matmul per projection, as in the base
    lora.set_active(model, "classify")
    return model.to(device).eval(), Tokenizer.load(base / "tokenizer.json"), config


# ---- fine-tuning ---------------------------------------------------------------------------------------
def finetune_classify(run: str | Path, data: str | Path, out: str | Path, val_data: str | Path | None = None,
                      val_fraction: float = 0.05, skip_bad: bool = False, config_file=None, use_lora: bool = False,
                      lora_cfg: lora.LoRAConfig | None = None, eos: bool = True, **values):
    """`livelm finetune GPT_RUN --task classify --data FILE --out RUN [--lora]`. `values`: TrainConfig fields
    (the user's flags). Returns (TrainResult, summary: out, task, labels, lora, trainable_params and the
    last evaluation: val_loss, accuracy, f1)."""
    base, out = Path(run), Path(out)
    if runs.is_adapter(base):
        raise ValueError(f"{base} is a LoRA adapter; fine-tune a classifier from a full run (its base run, "
                         f"or one made with `livelm learn --promote`)")
    saved = runs.read_config(base)
    if saved.get("arch", "gpt") != "gpt":
        raise ValueError(f"this classifier fine-tunes a decoder (GPT-family) run; {base} is a {saved['arch']!r} run")
    if values.get("pooling") not in (None, "last"):
        raise ValueError("--pooling: a decoder classifier reads the last token (its only position that has "
                         "seen the whole text); cls/mean/max are for BERT runs")
    tok = Tokenizer.load(base / "tokenizer.json")
    mcfg = GPTConfig.from_dict(saved["model"])
    defaults = {**DEFAULTS, "block_size": min(mcfg.block_size, MAX_LEN)}
    if use_lora:
        defaults.update(lr=LORA_LR, min_lr=LORA_LR / 10)
    cfg = resolve_config(config_file, base={**saved.get("train", {}), **defaults}, also=(ArchConfig,), **values)
    if cfg.block_size > mcfg.block_size:
        raise ValueError(f"--block-size {cfg.block_size} exceeds the base model's context window {mcfg.block_size}")

    examples, val = read_train_val(read_labelled, data, val_data, val_fraction, skip_bad, cfg.seed, log)
    labels = sorted({l for l, _ in examples})
    if len(labels) < 2:
        raise DataError(f"{data} has only the label(s) {labels}; classification needs at least two")
    label_ids = {l: i for i, l in enumerate(labels)}

    device = machine.pick_device(cfg.device)
    dtype = machine.resolve_dtype(cfg.dtype, device, warn=False)
    torch.manual_seed(cfg.seed)                      # the head's initial weights
    model = GPTClassifier(mcfg, labels)
    if use_lora and dtype == torch.bfloat16:         # frozen projections: bf16 before loading, never fp32 twice
        for m in model.blocks.modules():
            if isinstance(m, nn.Linear):
                m.to(torch.bfloat16)
    keep_head = saved.get("task") == "classify" and saved.get("labels") == labels
    load_base_weights(model, base, saved, keep_head=keep_head)
    model.set_dropout(cfg.dropout)
    if "activation_checkpointing" not in values and model.num_params() > ACTIVATION_CHECKPOINT_PARAMS:
        cfg.activation_checkpointing = True

    train_rows = encode_texts(tok, [t for _, t in examples], cfg.block_size, eos)
    train_labels = [label_ids[l] for l, _ in examples]
    val_rows = encode_texts(tok, [t for _, t in val], cfg.block_size, eos)
    val_labels = [label_ids.get(l, -1) for l, _ in val]
    if cfg.eval_iters > 0:   # a cap on the held-out rows scored at each evaluation
        val_rows, val_labels = val_rows[:cfg.eval_iters * cfg.batch_size], val_labels[:cfg.eval_iters * cfg.batch_size]
    # the held-out loss and accuracy come from one pass (extra_eval), not the trainer's loss pass and a second one
    cfg.eval_iters = 0
    batches = LengthBatches(train_rows, train_labels, cfg.batch_size, cfg.seed)

    def get_batch(split, i):
        if split == "train":
            return batches.batch(i, tok.pad_id, mcfg.block_size)
        lo = (i * cfg.batch_size) % len(val_rows)
        return pad_rows(val_rows[lo:lo + cfg.batch_size], val_labels[lo:lo + cfg.batch_size], tok.pad_id,
                        mcfg.block_size)

    def extra_eval(m):
        return metrics(classify_rows(m, val_rows, tok.pad_id, dtype), val_labels)

    run_config = {"arch": "gpt", "task": "classify", "labels": labels,
                  "classifier": {"pooling": "last", "eos": eos, "block_size": cfg.block_size},
                  "model": mcfg.to_dict(), "train": cfg.to_dict(), "base_run": str(base.resolve()),
                  "data": str(Path(data).resolve()), "lora": use_lora}
    head_params = sum(p.numel() for p in model.score.parameters())
    if use_lora:
        lcfg = lora_cfg or lora.LoRAConfig()
        lora_trainable, lora_save = lora.attach_for_training(model, "default", lcfg, str(base.resolve()),
                                                             extra={"livelm_task": "classify"})

        def trainable(m):
            lora_trainable(m)
            m.score.requires_grad_(True)

        def save_fn(run_dir, m, step, state):
            lora_save(run_dir, m, step, state)
            io.write_bytes(Path(run_dir) / HEAD_FILE, _head_bytes(m, step))
            io.write_json(Path(run_dir) / "config.json", {**run_config, "step": step})
        n_train = head_params + sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    else:
        trainable = None

        def save_fn(run_dir, m, step, state):   # no optimizer state: `finetune` has no --resume
            runs.save_checkpoint(run_dir, m, tok, run_config, step)
        n_train = sum(p.numel() for p in model.parameters())
    lengths = [len(r) for r in train_rows]
    log(f"fine-tuning {base} to classify, {'LoRA r=%d' % lcfg.r if use_lora else 'all weights'}: "
        f"{n_train:,} of {sum(p.numel() for p in model.parameters()):,} parameters trainable; "
        f"{len(examples):,} examples ({np.mean(lengths):.0f} tokens on average, longest {max(lengths)}), "
        f"{len(val):,} held out; {len(labels)} labels: {', '.join(labels[:10])}{' ...' if len(labels) > 10 else ''}"
        f"{'; activation checkpointing' if cfg.activation_checkpointing else ''}")
    result = train(cfg, out, model, tok, get_batch, classify_loss, run_config, extra_eval=extra_eval,
                   trainable=trainable, save_fn=save_fn)
    return result, {"out": str(out), "task": "classify", "labels": labels, "lora": use_lora,
                    "trainable_params": n_train, **result.last_eval()}


def _head_bytes(model: GPTClassifier, step: int) -> bytes:
    from safetensors.torch import save
    head = {f"score.{k}": v.detach().float().cpu().contiguous() for k, v in model.score.state_dict().items()}
    return save(head, metadata={"step": str(step), "format": "pt"})


# ---- predict, eval -------------------------------------------------------------------------------------
def _rows(model: GPTClassifier, tok: Tokenizer, config: dict, texts: list[str]) -> list[list[int]]:
    c = config.get("classifier", {})
    return encode_texts(tok, texts, c.get("block_size", model.cfg.block_size), c.get("eos", True))


def predict(model: GPTClassifier, tok: Tokenizer, config: dict, texts: list[str]) -> list[dict]:
    """Per text {"text", "label", "prob", "probs"} (the format of bert.predict_labels)."""
    probs = classify_rows(model, _rows(model, tok, config, texts), tok.pad_id, next(model.parameters()).dtype)
    out = []
    for text, p in zip(texts, probs):
        best = int(p.argmax())
        out.append({"text": text, "label": model.labels[best], "prob": round(float(p[best]), 4),
                    "probs": {l: round(float(q), 4) for l, q in zip(model.labels, p)}})
    return out


def evaluate(model: GPTClassifier, tok: Tokenizer, config: dict, data: str | Path) -> dict:
    """Accuracy, F1 and loss on a labelled file (labels the model does not know count as errors)."""
    examples, _ = read_labelled(data)
    label_ids = {l: i for i, l in enumerate(model.labels)}
    probs = classify_rows(model, _rows(model, tok, config, [t for _, t in examples]), tok.pad_id,
                          next(model.parameters()).dtype)
    return {**metrics(probs, [label_ids.get(l, -1) for l, _ in examples]), "examples": len(examples)}


def load_for_inference(run: str | Path, device: str = "auto", n_texts: int = 1):
    """load_classifier on `device`, in the dtype livelm picks for this machine and batch (runs.cast_for_inference)."""
    model, tok, config = load_classifier(run, machine.pick_device(device))
    runs.cast_for_inference(model, "auto", batch=min(64, max(1, n_texts)))
    return model, tok, config
