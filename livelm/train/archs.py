"""The other architectures — BERT, encoder-decoder translation, LSTM — on the GPT's machinery.

Each path is the same four pieces the GPT uses, and nothing else:
    a model built from TrainConfig fields        (livelm/models/bert.py, seq2seq.py, lstm.py)
    get_batch(split, index) -> dict of tensors   a pure function of index (exact --resume)
    an objective(model, batch) -> loss           (livelm/train/objectives.py)
    trainer.train(...)                           the one loop: AdamW, schedule, eval, checkpoints, resume
and a run directory laid out like a GPT run, with config.json["arch"] naming the
model. This file is the glue: reading data files, the CLI commands (`train
--arch`, `finetune --task classify|tag`, `eval`, `predict`, `translate`, and
`generate` for LSTM runs) and the metrics (accuracy/F1, BLEU/chrF).

Data each command reads:
    train --arch bert     a `livelm prepare` directory of plain text: one sentence per line,
                          a blank line between documents (masked LM + next-sentence prediction)
    finetune --task classify   label<TAB>text (.tsv/.txt), label,text (.csv) or JSONL
                          {"label", "text"}; a first line whose label is "label" is a header
    finetune --task tag   JSONL {"tokens": [...], "tags": [...]} or CoNLL: word<TAB>tag lines,
                          blank line between sentences
    train --arch seq2seq  source<TAB>target lines (further columns, e.g. attribution, ignored)
    train --arch lstm     a `livelm prepare` directory, exactly as for the GPT
"""
from __future__ import annotations

import csv
import functools
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import torch

from livelm import extras
from livelm.config import resolve_config
from livelm.data.shards import DataError, TokenData
from livelm.infer.sampling import SamplingParams, sample_next
from livelm.infer.textstream import TextStream
from livelm.models.bert import Bert, BertConfig, mask_tokens, nsp_pair, sentence_spans
from livelm.models.lstm import LSTMConfig, LSTMLM
from livelm.models.seq2seq import Seq2Seq, Seq2SeqConfig, beam_search, greedy, pad_batch
from livelm.runtime import pick_device
from livelm.tokenizer import SPECIAL_TOKENS, Tokenizer
from livelm.train import checkpoint
from livelm.train.objectives import classify_loss, lstm_loss, mlm_nsp_loss, seq2seq_loss
from livelm.train.trainer import log, train

N_SPECIAL = len(SPECIAL_TOKENS)      # ids below this are special: never masked, never random replacements
MODELS = {"bert": (Bert, BertConfig), "seq2seq": (Seq2Seq, Seq2SeqConfig), "lstm": (LSTMLM, LSTMConfig)}
# fine-tuning a BERT starts from its pretraining config; these defaults differ (eval_iters 0 = whole val set)
CLASSIFY_DEFAULTS = dict(max_iters=1000, lr=2e-4, min_lr=2e-5, warmup_iters=50, eval_interval=200, eval_iters=0,
                         batch_size=32, grad_accum=1)


# ---- model configs from TrainConfig, loading runs --------------------------------------------
def bert_config(cfg, vocab_size: int, task: str = "pretrain", labels=()) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                      d_model=cfg.d_model, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout, bias=cfg.bias,
                      position=cfg.position, norm=cfg.norm, mlp=cfg.mlp, tie_embeddings=True, task=task,
                      labels=list(labels), pooling=cfg.pooling)


def seq2seq_config(cfg, src_vocab: int, tgt_vocab: int) -> Seq2SeqConfig:
    return Seq2SeqConfig(src_vocab_size=src_vocab, tgt_vocab_size=tgt_vocab, block_size=cfg.block_size,
                         n_enc_layer=cfg.n_enc_layer or cfg.n_layer, n_dec_layer=cfg.n_layer, n_head=cfg.n_head,
                         d_model=cfg.d_model, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout, bias=cfg.bias,
                         position=cfg.position, norm=cfg.norm, mlp=cfg.mlp, shared_vocab=cfg.shared_vocab,
                         tie_embeddings=cfg.tie_embeddings)


def lstm_config(cfg, vocab_size: int) -> LSTMConfig:
    return LSTMConfig(vocab_size=vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer, d_model=cfg.d_model,
                      hidden=cfg.lstm_hidden, dropout=cfg.dropout, tie_embeddings=cfg.tie_embeddings)


def load_tensors(model: torch.nn.Module, tensors: dict, where, allow_new: tuple[str, ...] = ()) -> None:
    """Strict load that knows tied weights: save_checkpoint stores a shared tensor once, under
    its first name, so later names of the same storage are not expected in the file.
    allow_new: name prefixes that may be missing (a fresh fine-tuning head)."""
    expected = model.state_dict()
    seen, tied = set(), set()
    for name, t in expected.items():
        if t.numel() and t.data_ptr() in seen:
            tied.add(name)
        seen.add(t.data_ptr())
    missing = [k for k in expected if k not in tensors and k not in tied and not k.startswith(allow_new)]
    unexpected = [k for k in tensors if k not in expected]
    bad_shape = [k for k in tensors if k in expected and tensors[k].shape != expected[k].shape]
    if missing or unexpected or bad_shape:
        raise checkpoint.CheckpointError(f"{where} does not match its config.json: missing {missing[:3]}, "
                                         f"unexpected {unexpected[:3]}, wrong shape {bad_shape[:3]}")
    model.load_state_dict(tensors, strict=False)


def load_arch_model(run: str | Path, device="cpu"):
    """(model in eval mode, tokenizer, config) from a bert/seq2seq/lstm run directory.

    A seq2seq run with separate vocabularies also holds src_tokenizer.json: see source_tokenizer()."""
    run = Path(run)
    config = checkpoint.read_config(run)
    arch = config.get("arch", "gpt")
    if arch not in MODELS:
        raise checkpoint.CheckpointError(f"{run} holds a {arch!r} model; this command needs a "
                                         f"{'/'.join(MODELS)} run")
    cls, cfg_cls = MODELS[arch]
    try:
        model = cls(cfg_cls.from_dict(config["model"]))
    except (KeyError, TypeError, ValueError) as e:
        raise checkpoint.CheckpointError(f"{run}/config.json has an invalid model section: {e}") from None
    tensors, _ = checkpoint.load_weights(run / "model.safetensors")
    load_tensors(model, tensors, run / "model.safetensors")
    return model.to(device).eval(), Tokenizer.load(run / "tokenizer.json"), config


def source_tokenizer(run: str | Path, tokenizer: Tokenizer) -> Tokenizer:
    path = Path(run) / "src_tokenizer.json"
    return Tokenizer.load(path) if path.is_file() else tokenizer


def _run_config(arch: str, model, cfg, data, **extra) -> dict:
    return {"arch": arch, "model": model.cfg.to_dict(), "train": cfg.to_dict(), "data": str(Path(data).resolve()),
            "n_params": model.num_params(), **extra}


def _restore_weights(model, run_dir: Path) -> None:
    tensors, _ = checkpoint.load_weights(run_dir / "model.safetensors")
    load_tensors(model, tensors, run_dir / "model.safetensors")


# ---- BERT pretraining batches -------------------------------------------------------------------
class SentenceData:
    """One split of a prepared directory as sentences, and MLM(+NSP) batches drawn from it.

    The split's shards are read into one array (BERT corpora here are small; a corpus
    larger than RAM would want per-shard spans instead)."""

    def __init__(self, data: TokenData, tokenizer: Tokenizer, split: str):
        arrays = data.splits[split]
        self.stream = np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(0, np.int64)
        newlines = np.array([tokenizer.token_bytes(i).count(b"\n") for i in range(tokenizer.vocab_size)])
        self.spans, self.doc = sentence_spans(self.stream, newlines, tokenizer.eos_id)
        if len(self.spans) < 2:
            raise DataError(f"the {split} split of {data.dir} has {len(self.spans)} sentence(s); BERT pretraining "
                            f"needs text with one sentence per line (and a larger --val-fraction if this is val)")
        self.tok, self.split_id = tokenizer, 0 if split == "train" else 1

    def batch(self, index: int, batch_size: int, block_size: int, seed: int, mlm_prob: float, nsp: bool) -> dict:
        rng = np.random.default_rng([seed, self.split_id, index])
        cls, sep = self.tok.cls_id, self.tok.sep_id
        rows, segs, labels = [], [], []
        for _ in range(batch_size):
            if nsp:
                a, b, is_next = nsp_pair(self.stream, self.spans, self.doc, rng, block_size)
                rows.append([cls, *a, sep, *b, sep])
                segs.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
                labels.append(is_next)
            else:   # one segment of consecutive sentences filling the window
                start = int(self.spans[rng.integers(len(self.spans)), 0])
                a = self.stream[start:start + block_size - 2].tolist()
                rows.append([cls, *a, sep])
                segs.append([0] * (len(a) + 2))
        idx = pad_batch(rows, self.tok.pad_id).numpy()
        segments = pad_batch(segs, 0).numpy()
        pad_mask = np.arange(idx.shape[1])[None] < np.array([len(r) for r in rows])[:, None]
        inputs, targets = mask_tokens(idx, pad_mask & (idx >= N_SPECIAL), rng, mlm_prob, self.tok.mask_id,
                                      N_SPECIAL, self.tok.vocab_size)
        out = {"idx": torch.from_numpy(inputs), "pad_mask": torch.from_numpy(pad_mask),
               "segments": torch.from_numpy(segments), "mlm_targets": torch.from_numpy(targets)}
        if nsp:
            out["nsp_labels"] = torch.tensor(labels, dtype=torch.long)
        return out


def _train_bert(a, cfg, data_dir) -> int:
    data = TokenData(data_dir)
    tok = Tokenizer.load(Path(data_dir) / "tokenizer.json")
    sets = {s: SentenceData(data, tok, s) for s in ("train", "val")}
    torch.manual_seed(cfg.seed)
    model = Bert(bert_config(cfg, data.vocab_size))
    if a.resume:
        _restore_weights(model, Path(a.out))
    log(f"model: BERT encoder, {cfg.n_layer} layers x {cfg.d_model} wide, {model.num_params() / 1e6:.2f}M parameters; "
        f"{len(sets['train'].spans):,} training sentences; MLM {cfg.mlm_prob:.0%}{' + NSP' if cfg.nsp else ''}")

    def get_batch(split, i):
        return sets[split].batch(i, cfg.batch_size, cfg.block_size, cfg.seed, cfg.mlm_prob, cfg.nsp)

    result = train(cfg, a.out, model, tok, get_batch, mlm_nsp_loss, _run_config("bert", model, cfg, data_dir),
                   resume=a.resume)
    if result.is_main:   # torchrun: one result line, not one per rank
        print(json.dumps({"run": str(a.out), "step": result.step, "val_loss": result.val_loss}))
    return 0


# ---- labelled text for fine-tuning ------------------------------------------------------------------
def _text_field(rec: dict):
    for key in ("text", "sentence", "content", "review"):
        if isinstance(rec.get(key), str):
            return rec[key]
    return None


def read_labelled(path: str | Path, skip_bad: bool = False) -> tuple[list[tuple[str, str]], int]:
    """[(label, text)] from label<TAB>text, CSV (label first) or JSONL {"label", "text"}; and the bad-line count."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labelled data not found: {path}")
    out, bad = [], 0
    suffix = path.suffix.lower()
    with open(path, encoding="utf-8-sig", newline="") as fh:
        if suffix == ".csv":
            records = ((n, row[0] if row else "", ",".join(row[1:])) for n, row in enumerate(csv.reader(fh), 1))
        elif suffix in (".jsonl", ".json"):
            def parse(n, line):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    return n, "", None
                if not isinstance(rec, dict):
                    return n, "", None
                return n, "" if rec.get("label") is None else str(rec["label"]), _text_field(rec)
            records = (parse(n, line) for n, line in enumerate(fh, 1) if line.strip())
        else:
            records = ((n, *(line.rstrip("\r\n").split("\t", 1) + [None])[:2]) for n, line in enumerate(fh, 1)
                       if line.strip())
        for n, label, text in records:
            label = label.strip()
            if n == 1 and label.lower() in ("label", "labels"):
                continue   # a header line
            if not label or text is None or not text.strip():
                if not skip_bad:
                    raise DataError(f"{path}:{n}: expected a label and a text (label<TAB>text, CSV label,text "
                                    f"or JSONL {{\"label\", \"text\"}}); pass --skip-bad to skip such lines")
                bad += 1
                continue
            out.append((label, text.strip()))
    if not out:
        raise DataError(f"{path} holds no labelled examples")
    return out, bad


def read_tagged(path: str | Path, skip_bad: bool = False) -> tuple[list[tuple[list[str], list[str]]], int]:
    """[(words, tags)] from JSONL {"tokens", "tags"} or CoNLL (word<TAB>tag, blank line between sentences)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tagged data not found: {path}")
    out, bad = [], 0
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    if path.suffix.lower() in (".jsonl", ".json"):
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                words, tags = rec["tokens"], rec.get("tags", rec.get("labels"))
                assert isinstance(words, list) and isinstance(tags, list) and len(words) == len(tags) and words
                out.append(([str(w) for w in words], [str(t) for t in tags]))
            except (json.JSONDecodeError, KeyError, TypeError, AssertionError):
                if not skip_bad:
                    raise DataError(f"{path}:{n}: expected {{\"tokens\": [...], \"tags\": [...]}} of equal "
                                    f"length; pass --skip-bad to skip such lines") from None
                bad += 1
    else:
        words, tags = [], []
        for n, line in enumerate(lines + [""], 1):
            if not line.strip():
                if words:
                    out.append((words, tags))
                words, tags = [], []
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) < 2:
                if not skip_bad:
                    raise DataError(f"{path}:{n}: expected word<TAB>tag; pass --skip-bad to skip such lines")
                bad += 1
                continue
            words.append(parts[0])
            tags.append(parts[-1])
    if not out:
        raise DataError(f"{path} holds no tagged sentences")
    return out, bad


_CJK_CHAR = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(f"[{_CJK_CHAR}]|[^\\s{_CJK_CHAR}]+")


def split_words(text: str) -> list[str]:
    """Words for tagging raw text: runs of non-space, except that every Chinese character is its own word."""
    return _WORD.findall(text)


def encode_words(tok: Tokenizer, words: list[str]) -> tuple[list[int], list[int]]:
    """Token ids for a word list, and the index of each word's first token (where its tag is predicted).
    A space goes before every non-Chinese word but the first, as in running text."""
    ids, first = [], []
    for i, w in enumerate(words):
        first.append(len(ids))
        chinese = len(w) == 1 and re.match(f"[{_CJK_CHAR}]", w) is not None
        piece = w if i == 0 or chinese else " " + w
        ids.extend(tok.encode(piece) or [tok.unk_id])
    return ids, first


def encode_classify(tok: Tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    """[CLS] text [SEP], the text cut to fit max_len. (Keeping the head and the tail of long texts instead,
    as Sun et al. 2019 found best for English reviews, measured 3 points lower on ChnSentiCorp: 83.1% vs 86.1%.)"""
    return [[tok.cls_id, *ids[:max_len - 2], tok.sep_id] for ids in tok.encode_batch(texts)]


def encode_tagged(tok: Tokenizer, words: list[str], tags: list[str] | None, label_ids: dict,
                  max_len: int) -> tuple[list[int], list[int], list[int]]:
    """[CLS] words [SEP] with one label per word on its first token (-1 elsewhere) and the first-token positions."""
    ids, first = encode_words(tok, words)
    ids = ids[:max_len - 2]
    first = [f + 1 for f in first if f < len(ids)]
    labels = [-1] * (len(ids) + 2)
    if tags is not None:
        for f, t in zip(first, tags):
            labels[f] = label_ids.get(t, -1)
    return [tok.cls_id, *ids, tok.sep_id], labels, first


def _pad_rows(rows: list[list[int]], labels, pad_id: int) -> dict:
    idx = pad_batch(rows, pad_id)
    pad_mask = torch.arange(idx.size(1))[None] < torch.tensor([len(r) for r in rows])[:, None]
    if labels and isinstance(labels[0], list):
        lab = pad_batch(labels, -1)
    else:
        lab = torch.tensor(labels, dtype=torch.long)
    return {"idx": idx, "pad_mask": pad_mask, "labels": lab}


@torch.inference_mode()
def classify_batches(model: Bert, rows: list[list[int]], batch_size: int = 64) -> list[torch.Tensor]:
    """Probabilities for each row: (L,) for a classify model, (S_i, L) per token for a tag model."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        b = _pad_rows(chunk, [0] * len(chunk), 0)
        probs = torch.softmax(model(b["idx"].to(device), b["pad_mask"].to(device))["logits"].float(), -1).cpu()
        out.extend(probs[j] if probs.dim() == 2 else probs[j, :len(r)] for j, r in enumerate(chunk))
    return out


def accuracy_f1(gold: list[int], pred: list[int], n_labels: int) -> dict:
    """Accuracy, macro-F1, and (for two labels) the F1 of the second label (the "positive" one: "1" after "0")."""
    g, p = np.asarray(gold), np.asarray(pred)
    f1s = []
    for c in range(n_labels):
        tp, fp, fn = int(((p == c) & (g == c)).sum()), int(((p == c) & (g != c)).sum()), int(((p != c) & (g == c)).sum())
        f1s.append(2 * tp / max(1, 2 * tp + fp + fn))
    out = {"accuracy": float((g == p).mean()) if len(g) else float("nan"), "macro_f1": float(np.mean(f1s))}
    out["f1"] = f1s[1] if n_labels == 2 else out["macro_f1"]
    return out


def evaluate_labelled(model: Bert, tok: Tokenizer, examples, task: str) -> dict:
    labels = model.cfg.labels
    label_ids = {l: i for i, l in enumerate(labels)}
    if task == "classify":
        rows = encode_classify(tok, [t for _, t in examples], model.cfg.block_size)
        probs = classify_batches(model, rows)
        gold = [label_ids.get(l, -1) for l, _ in examples]
        pred = [int(p.argmax()) for p in probs]
    else:
        gold, pred = [], []
        enc = [encode_tagged(tok, w, t, label_ids, model.cfg.block_size) for w, t in examples]
        for (ids, lab, first), probs in zip(enc, classify_batches(model, [e[0] for e in enc])):
            gold += [lab[f] for f in first]
            pred += [int(probs[f].argmax()) for f in first]
    return {**accuracy_f1(gold, pred, len(labels)), "examples": len(examples)}


def finetune_task(a) -> int:
    """`livelm finetune BERT_RUN --task classify|tag --data FILE --out RUN`."""
    base = Path(a.run)
    base_model, tok, saved = load_arch_model(base)
    if saved["arch"] != "bert":
        raise ValueError(f"--task {a.task} fine-tunes a BERT run (`livelm train --arch bert`); {base} is a "
                         f"{saved['arch']!r} run")
    reader = read_labelled if a.task == "classify" else read_tagged
    examples, bad = reader(a.data, a.skip_bad)
    if bad:
        log(f"skipped {bad} bad line(s) in {a.data}")
    cfg = resolve_config(a, base={**saved["train"], **CLASSIFY_DEFAULTS})
    seed_rng = np.random.default_rng(cfg.seed)
    if a.val_data:
        val, vbad = reader(a.val_data, a.skip_bad)
        if vbad:
            log(f"skipped {vbad} bad line(s) in {a.val_data}")
    else:  # a fixed held-out slice, chosen by seed
        order = seed_rng.permutation(len(examples))
        n_val = max(1, int(len(examples) * a.val_fraction))
        val, examples = [examples[i] for i in order[:n_val]], [examples[i] for i in order[n_val:]] or examples
    if a.task == "classify":
        labels = sorted({l for l, _ in examples})
    else:
        labels = sorted({t for _, tags in examples for t in tags})
    if len(labels) < 2:
        raise DataError(f"{a.data} has only the label(s) {labels}; classification needs at least two")

    mcfg = BertConfig.from_dict({**saved["model"], "task": a.task, "labels": labels, "dropout": cfg.dropout,
                                 "pooling": cfg.pooling})
    torch.manual_seed(cfg.seed)
    model = Bert(mcfg)
    tensors, _ = checkpoint.load_weights(base / "model.safetensors")
    keep_head = saved["model"].get("task") == a.task and saved["model"].get("labels") == labels
    tensors = {k: v for k, v in tensors.items() if keep_head or not k.startswith(("cls_head", "tag_head"))}
    load_tensors(model, tensors, base / "model.safetensors", allow_new=("cls_head", "tag_head"))
    del base_model

    max_len = min(cfg.block_size, mcfg.block_size)
    label_ids = {l: i for i, l in enumerate(labels)}
    if a.task == "classify":
        def encode(exs):
            return encode_classify(tok, [t for _, t in exs], max_len), [label_ids.get(l, -1) for l, _ in exs]
    else:
        def encode(exs):
            enc = [encode_tagged(tok, w, t, label_ids, max_len) for w, t in exs]
            return [e[0] for e in enc], [e[1] for e in enc]
    train_rows, train_labels = encode(examples)
    val_rows, val_labels = encode(val)
    n_val_batches = math.ceil(len(val_rows) / cfg.batch_size)
    if cfg.eval_iters <= 0:
        cfg.eval_iters = n_val_batches
    cfg.sample_interval = 0

    def get_batch(split, i):
        if split == "train":
            pick = np.random.default_rng([cfg.seed, 0, i]).integers(len(train_rows), size=cfg.batch_size)
            return _pad_rows([train_rows[j] for j in pick], [train_labels[j] for j in pick], tok.pad_id)
        lo = (i % n_val_batches) * cfg.batch_size
        return _pad_rows(val_rows[lo:lo + cfg.batch_size], val_labels[lo:lo + cfg.batch_size], tok.pad_id)

    def extra_eval(m):
        out = evaluate_labelled(m, tok, val, a.task)
        m.train()
        return {k: v for k, v in out.items() if k != "examples"}

    log(f"fine-tuning {base} for {a.task} on {len(examples):,} examples, {len(val):,} held out, "
        f"{len(labels)} labels: {', '.join(labels[:10])}{' ...' if len(labels) > 10 else ''}")
    run_config = _run_config("bert", model, cfg, a.data, base_run=str(base.resolve()))
    result = train(cfg, a.out, model, tok, get_batch, classify_loss, run_config, extra_eval=extra_eval)
    last = {}
    for line in result.metrics_path.read_text().splitlines():
        rec = json.loads(line)
        if "val_loss" in rec:
            last = rec
    if result.is_main:   # torchrun: one result line, not one per rank
        print(json.dumps({"out": str(a.out), "task": a.task, "labels": labels, **last}))
    return 0


# ---- translation pairs -------------------------------------------------------------------------------
def read_pairs(path: str | Path, reverse: bool = False) -> list[tuple[str, str]]:
    """(source, target) from source<TAB>target[<TAB>...] lines; reverse swaps the two columns."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"sentence pairs not found: {path} (expected a source<TAB>target file)")
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
            raise DataError(f"{path}:{n}: expected source<TAB>target")
        s, t = cols[0].strip(), cols[1].strip()
        pairs.append((t, s) if reverse else (s, t))
    if not pairs:
        raise DataError(f"{path} holds no sentence pairs")
    return pairs


def split_pairs(pairs: list, holdout: int, seed: int) -> tuple[list, list]:
    """A fixed held-out set, chosen by seed: (train, heldout)."""
    n_hold = holdout if holdout < len(pairs) else max(1, len(pairs) // 10)
    order = np.random.default_rng([seed, 7]).permutation(len(pairs))
    held = sorted(order[:n_hold].tolist())
    held_set = set(held)
    return [p for i, p in enumerate(pairs) if i not in held_set], [pairs[i] for i in held]


class PairData:
    """Encoded pairs: source = x [EOS]; decoder input = [BOS] y; targets = y [EOS]."""

    def __init__(self, pairs, src_tok: Tokenizer, tgt_tok: Tokenizer, block_size: int):
        self.src = [ids[:block_size - 1] + [src_tok.eos_id] for ids in src_tok.encode_batch([s for s, _ in pairs])]
        self.tgt = [ids[:block_size - 1] for ids in tgt_tok.encode_batch([t for _, t in pairs])]
        self.bos, self.eos, self.pad = tgt_tok.bos_id, tgt_tok.eos_id, tgt_tok.pad_id

    def __len__(self):
        return len(self.src)

    def rows(self, which) -> dict:
        src = pad_batch([self.src[j] for j in which], self.pad)
        lengths = torch.tensor([len(self.src[j]) for j in which])
        return {"src": src, "src_pad": torch.arange(src.size(1))[None] < lengths[:, None],
                "idx": pad_batch([[self.bos, *self.tgt[j]] for j in which], self.pad),
                "targets": pad_batch([[*self.tgt[j], self.eos] for j in which], -1)}


def is_chinese(texts: list[str]) -> bool:
    text = "".join(texts)
    return bool(text) and len(re.findall(f"[{_CJK_CHAR}]", text)) > 0.3 * len(re.sub(r"\s", "", text))


BLEU_FEATURE = "scoring translations with BLEU and chrF"


def bleu_chrf(hyps: list[str], refs: list[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu, the bleu extra); Chinese targets use sacrebleu's Chinese tokenizer."""
    sacrebleu = extras.need("sacrebleu", "bleu", BLEU_FEATURE)
    zh = is_chinese(refs)
    bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh" if zh else "13a")
    chrf = sacrebleu.corpus_chrf(hyps, [refs])
    return {"bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2), "bleu_tokenize": "zh" if zh else "13a"}


def translate_texts(model: Seq2Seq, src_tok: Tokenizer, tgt_tok: Tokenizer, texts: list[str], beam: int = 1,
                    length_penalty: float = 1.0, max_tokens: int = 0, params: SamplingParams | None = None,
                    batch_size: int = 64) -> list[str]:
    """Translate texts in batches: greedy (beam 1, or sampling with params) or beam search."""
    out = []
    limit = model.cfg.block_size - 1
    for i in range(0, len(texts), batch_size):
        srcs = [ids[:limit] + [src_tok.eos_id] for ids in src_tok.encode_batch(texts[i:i + batch_size])]
        kw = dict(bos=tgt_tok.bos_id, eos=tgt_tok.eos_id, pad_id=tgt_tok.pad_id, max_len=max_tokens)
        if beam > 1:
            ids = beam_search(model, srcs, beam=beam, length_penalty=length_penalty, **kw)
        else:
            ids = greedy(model, srcs, params=params, **kw)
        out.extend(tgt_tok.decode(x, skip_special=True).strip() for x in ids)
    return out


def _train_seq2seq(a, cfg, data_file) -> int:
    out = Path(a.out)
    if Path(data_file).is_dir():
        raise DataError(f"--arch seq2seq reads a source<TAB>target file, not a folder ({data_file})")
    train_pairs, held = split_pairs(read_pairs(data_file, cfg.reverse), cfg.holdout, cfg.seed)
    if a.resume:   # the run's own tokenizers, never retrained
        tgt_tok = Tokenizer.load(out / "tokenizer.json")
        src_tok = source_tokenizer(out, tgt_tok)
    elif cfg.shared_vocab:
        tgt_tok = src_tok = Tokenizer.train_bpe((x for p in train_pairs for x in p), cfg.bpe_vocab, show_progress=False)
    else:
        src_tok = Tokenizer.train_bpe((s for s, _ in train_pairs), cfg.bpe_vocab, show_progress=False)
        tgt_tok = Tokenizer.train_bpe((t for _, t in train_pairs), cfg.bpe_vocab, show_progress=False)
    out.mkdir(parents=True, exist_ok=True)
    if not a.resume:
        tgt_tok.save(out / "tokenizer.json")
        if src_tok is not tgt_tok:
            src_tok.save(out / "src_tokenizer.json")
        (out / "heldout.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in held), encoding="utf-8")
    sets = {"train": PairData(train_pairs, src_tok, tgt_tok, cfg.block_size),
            "val": PairData(held, src_tok, tgt_tok, cfg.block_size)}
    if not len(sets["val"]):
        raise DataError(f"{data_file}: no pairs held out for validation; set --holdout")
    torch.manual_seed(cfg.seed)
    model = Seq2Seq(seq2seq_config(cfg, src_tok.vocab_size, tgt_tok.vocab_size))
    if a.resume:
        _restore_weights(model, out)
    log(f"model: encoder-decoder, {model.cfg.n_enc_layer}+{model.cfg.n_dec_layer} layers x {cfg.d_model} wide, "
        f"{model.num_params() / 1e6:.2f}M parameters; {len(train_pairs):,} training pairs, {len(held):,} held out; "
        f"vocab {src_tok.vocab_size}{'' if src_tok is tgt_tok else ' + %d' % tgt_tok.vocab_size}")
    n_val_batches = math.ceil(len(sets["val"]) / cfg.batch_size)

    def get_batch(split, i):
        if split == "train":
            return sets["train"].rows(np.random.default_rng([cfg.seed, 0, i]).integers(len(sets["train"]),
                                                                                      size=cfg.batch_size))
        lo = (i % n_val_batches) * cfg.batch_size
        return sets["val"].rows(range(lo, min(lo + cfg.batch_size, len(sets["val"]))))

    def bleu_eval(m):   # greedy BLEU on (up to) 200 held-out pairs: a cheap progress signal
        hyps = translate_texts(m, src_tok, tgt_tok, [s for s, _ in held[:200]])
        m.train()
        return {k: v for k, v in bleu_chrf(hyps, [t for _, t in held[:200]]).items() if k != "bleu_tokenize"}

    try:   # without sacrebleu (the bleu extra) the run trains all the same, judged by held-out loss alone
        extras.need("sacrebleu", "bleu", BLEU_FEATURE)
        extra_eval = bleu_eval
    except extras.MissingExtra as e:
        log(f"no BLEU or chrF at evaluations: {e}")
        extra_eval = None

    objective = functools.partial(seq2seq_loss, label_smoothing=cfg.label_smoothing)
    result = train(cfg, out, model, tgt_tok, get_batch, objective, _run_config("seq2seq", model, cfg, data_file),
                   resume=a.resume, extra_eval=extra_eval)
    if result.is_main:   # torchrun: one result line, not one per rank
        print(json.dumps({"run": str(out), "step": result.step, "val_loss": result.val_loss}))
    return 0


# ---- LSTM language model ---------------------------------------------------------------------------
def lstm_batch(data: TokenData, split: str, index: int, cfg) -> dict:
    """Batch `index` for truncated BPTT, still a pure function of index.

    Batches come in windows of carry_chunks consecutive chunks: window w = index // carry_chunks
    is one of TokenData's deterministic random batches, carry_chunks * block_size long, and
    batch `index` is its chunk c = index % carry_chunks. The objective carries the hidden state
    from chunk c-1 to chunk c and starts each window from zeros.

    Why windows rather than one endless stream: it keeps batches a function of their index
    (random access for eval, DDP, exact --resume) while the state still flows through
    carry_chunks * block_size tokens. The state itself is stored in train_state.pt at every
    save, so a run resumed mid-window continues from the very same state.
    """
    window, chunk = divmod(index, cfg.carry_chunks)
    b = data.batch(split, window, cfg.batch_size, cfg.block_size * cfg.carry_chunks, cfg.seed)
    lo, hi = chunk * cfg.block_size, (chunk + 1) * cfg.block_size
    return {"idx": b["idx"][:, lo:hi], "targets": b["targets"][:, lo:hi], "split": split, "index": index,
            "chunk": chunk}


def _train_lstm(a, cfg, data_dir) -> int:
    data = TokenData(data_dir)
    tok = Tokenizer.load(Path(data_dir) / "tokenizer.json")
    torch.manual_seed(cfg.seed)
    model = LSTMLM(lstm_config(cfg, data.vocab_size))
    carry: dict = {}
    if a.resume:
        _restore_weights(model, Path(a.out))
        saved = checkpoint.load_train_state(a.out).get("lstm_carry")
        if saved is not None:
            carry["train"] = saved
    run_config = _run_config("lstm", model, cfg, data_dir)
    log(f"model: LSTM, {cfg.n_layer} layers x {model.cfg.hidden} wide (embedding {cfg.d_model}), "
        f"{model.num_params() / 1e6:.2f}M parameters; BPTT {cfg.block_size} tokens, state carried over "
        f"{cfg.carry_chunks} chunks")

    def save_fn(run_dir, m, step, state):   # the trainer's checkpoint plus the carried hidden state
        checkpoint.save_checkpoint(run_dir, m, tok, run_config, step, {**state, "lstm_carry": carry.get("train")})

    result = train(cfg, a.out, model, tok, lambda split, i: lstm_batch(data, split, i, cfg),
                   functools.partial(lstm_loss, carry=carry), run_config,
                   bytes_per_token=data.bytes_per_token("val"), resume=a.resume, save_fn=save_fn)
    if result.is_main:   # torchrun: one result line, not one per rank
        print(json.dumps({"run": str(a.out), "step": result.step, "val_loss": result.val_loss}))
    return 0


@torch.inference_mode()
def lstm_stream_loss(model: LSTMLM, arr: np.ndarray, block: int, streams: int = 16, max_tokens: int = 0):
    """Mean next-token loss over a token array read as `streams` contiguous parallel streams
    (each carrying its state from chunk to chunk, as in Zaremba et al.). Returns (loss, tokens)."""
    device = next(model.parameters()).device
    n = len(arr) - 1
    if max_tokens:
        n = min(n, max_tokens)
    per = n // streams
    if per < 1:
        streams, per = 1, n
    x = torch.from_numpy(arr[:streams * per].astype(np.int64)).view(streams, per)
    y = torch.from_numpy(arr[1:streams * per + 1].astype(np.int64)).view(streams, per)
    state, total = None, 0.0
    for lo in range(0, per, block):
        xb, yb = x[:, lo:lo + block].to(device), y[:, lo:lo + block].to(device)
        _, loss, state = model(xb, yb, state=state)
        total += loss.item() * yb.numel()
    return total / max(1, streams * per), streams * per


def generate_arch(a) -> int:
    """`livelm generate` for an LSTM run: the prompt sets the hidden state, then one token at a time
    through the shared sample_next and TextStream (stop strings, UTF-8-safe streaming)."""
    from livelm.cli import sampling_from_args
    model, tok, config = load_arch_model(a.run, pick_device(a.device))
    if config["arch"] != "lstm":
        raise ValueError(f"{a.run} is a {config['arch']!r} run: use `livelm predict` (bert) or "
                         f"`livelm translate` (seq2seq)")
    params = sampling_from_args(a)
    prompt = sys.stdin.read() if a.prompt == "-" else a.prompt
    ids = tok.encode(prompt) if prompt else []
    ids = ids or [tok.bos_id]
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else torch.Generator()
    if params.seed is None:
        gen.seed()
    stream = TextStream(tok, params.stop)
    stop_ids = {tok.eos_id, tok.end_id} if params.stop_token_ids is None else set(params.stop_token_ids)
    tty = sys.stdout.isatty()
    text, out_ids = [], []
    with torch.inference_mode():
        logits, state = model(torch.tensor([ids], device=device), last_only=True)
        for _ in range(params.max_tokens):
            t = sample_next(logits[0, -1].float(), params, ids, out_ids, gen)
            if t in stop_ids and not params.ignore_eos:
                break
            out_ids.append(t)
            delta, stopped = stream.push(t)
            text.append(delta)
            if tty:
                sys.stdout.write(delta)
                sys.stdout.flush()
            if stopped:
                break
            logits, state = model(torch.tensor([[t]], device=device), state=state, last_only=True)
    tail = stream.finish()
    text.append(tail)
    if tty:
        sys.stdout.write(tail + "\n")
    else:
        print("".join(text))
    return 0


# ---- CLI: train, eval ----------------------------------------------------------------------------------
def train_arch(a, cfg, data_dir) -> int:
    """`livelm train --arch bert|seq2seq|lstm`; called by cli.cmd_train with the resolved config."""
    if cfg.sample_interval:
        log("--sample-interval applies to GPT runs only; ignored")
        cfg.sample_interval = 0
    return {"bert": _train_bert, "seq2seq": _train_seq2seq, "lstm": _train_lstm}[cfg.arch](a, cfg, data_dir)


def eval_arch(a) -> int:
    """`livelm eval RUN --data ...` for bert, seq2seq and lstm runs."""
    model, tok, config = load_arch_model(a.run, pick_device(a.device))
    arch, cfg = config["arch"], config.get("train", {})
    if arch == "lstm":
        data = TokenData(a.data)
        if data.vocab_size != model.cfg.vocab_size:
            raise ValueError(f"{a.data} was prepared with a {data.vocab_size}-token vocabulary but {a.run} uses "
                             f"{model.cfg.vocab_size}; prepare it with --reuse-tokenizer {a.run}")
        arrays = [arr for arr in data.splits["val"] if arr.size > 1]
        if not arrays:
            raise DataError(f"{a.data} has no validation tokens")
        loss, n = lstm_stream_loss(model, np.concatenate(arrays), model.cfg.block_size, max_tokens=a.max_tokens)
        result = {"val_loss": loss, "perplexity": math.exp(min(loss, 50)),
                  "bits_per_byte": loss / math.log(2) / data.bytes_per_token("val"), "tokens": n}
    elif arch == "bert" and model.cfg.task == "pretrain":
        data = TokenData(a.data)
        sents = SentenceData(data, tok, "val")
        hits = total = nsp_hits = nsp_total = 0
        loss_sum = 0.0
        nsp = bool(cfg.get("nsp", True))   # batches laid out as in training (a run pretrained without NSP has no pairs)
        with torch.inference_mode():
            for i in range(1000):   # deterministic masked batches until --max-tokens predictions
                if total >= min(a.max_tokens, 20000):
                    break
                b = sents.batch(i, 32, model.cfg.block_size, int(cfg.get("seed", 1337)), float(cfg.get("mlm_prob", 0.15)),
                                nsp)
                chosen = b["mlm_targets"] >= 0
                out = model(b["idx"], b["pad_mask"], b["segments"], mlm_mask=chosen, nsp=nsp)
                gold = b["mlm_targets"][chosen]
                loss_sum += torch.nn.functional.cross_entropy(out["mlm"].float(), gold, reduction="sum").item()
                hits += int((out["mlm"].argmax(-1) == gold).sum())
                total += gold.numel()
                if nsp:
                    nsp_hits += int((out["nsp"].argmax(-1) == b["nsp_labels"]).sum())
                    nsp_total += b["nsp_labels"].numel()
        result = {"mlm_loss": loss_sum / total, "mlm_accuracy": hits / total, "masked_tokens": total}
        if nsp:
            result["nsp_accuracy"] = nsp_hits / nsp_total
    elif arch == "bert":
        reader = read_labelled if model.cfg.task == "classify" else read_tagged
        examples, _ = reader(a.data)
        result = evaluate_labelled(model, tok, examples, model.cfg.task)
    else:
        result = _eval_translation(a, model, tok, config)
    if a.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    return 0


def _eval_translation(a, model, tok, config) -> dict:
    """BLEU/chrF, greedy and beam 4, on the held-out pairs when --data is the training file, else on all of --data."""
    import time
    cfg = config.get("train", {})
    data = Path(a.data)
    if config.get("data") and data.resolve() == Path(config["data"]):
        pairs = read_pairs(Path(a.run) / "heldout.tsv")
        where = "held-out pairs"
    else:
        pairs = read_pairs(data, reverse=bool(cfg.get("reverse")) and data.name != "heldout.tsv")
        where = "pairs"
    src_tok = source_tokenizer(a.run, tok)
    srcs, refs = [s for s, _ in pairs], [t for _, t in pairs]
    result = {"pairs": len(pairs), "on": where}
    for name, beam in (("greedy", 1), ("beam4", 4)):
        t0 = time.perf_counter()
        hyps = translate_texts(model, src_tok, tok, srcs, beam=beam)
        scores = bleu_chrf(hyps, refs)
        result.update({f"{name}_bleu": scores["bleu"], f"{name}_chrf": scores["chrf"],
                       f"{name}_s": round(time.perf_counter() - t0, 1)})
        result["bleu_tokenize"] = scores["bleu_tokenize"]
    return result


# ---- CLI: predict, translate ---------------------------------------------------------------------------
def _inputs(a) -> list[str]:
    texts = list(a.text or [])
    if a.file:
        fh = sys.stdin if a.file == "-" else open(a.file, encoding="utf-8-sig")
        with fh:
            texts += [line.rstrip("\r\n") for line in fh if line.strip()]
    if not texts:
        raise ValueError("nothing to do: pass --text TEXT (repeatable) or --file FILE ('-' = stdin)")
    return texts


def cmd_predict(a) -> int:
    model, tok, config = load_arch_model(a.run, pick_device(a.device))
    if config["arch"] != "bert" or model.cfg.task == "pretrain":
        raise ValueError(f"{a.run} is not a fine-tuned classifier; make one with "
                         f"`livelm finetune {a.run} --task classify --data FILE --out RUN`")
    texts, labels = _inputs(a), model.cfg.labels
    if model.cfg.task == "classify":
        for text, probs in zip(texts, classify_batches(model, encode_classify(tok, texts, model.cfg.block_size))):
            best = int(probs.argmax())
            if a.json:
                print(json.dumps({"text": text, "label": labels[best], "prob": round(float(probs[best]), 4),
                                  "probs": {l: round(float(p), 4) for l, p in zip(labels, probs)}}, ensure_ascii=False))
            else:
                print(f"{labels[best]}\t{float(probs[best]):.3f}\t{text}")
    else:
        words = [split_words(t) for t in texts]
        enc = [encode_tagged(tok, w, None, {}, model.cfg.block_size) for w in words]
        for ws, (_, _, first), probs in zip(words, enc, classify_batches(model, [e[0] for e in enc])):
            tags = [(labels[int(probs[f].argmax())], float(probs[f].max())) for f in first]
            if a.json:
                print(json.dumps([{"word": w, "tag": t, "prob": round(p, 4)} for w, (t, p) in zip(ws, tags)],
                                 ensure_ascii=False))
            else:
                print(" ".join(f"{w}/{t}" for w, (t, _) in zip(ws, tags)))
    return 0


def cmd_translate(a) -> int:
    model, tok, config = load_arch_model(a.run, pick_device(a.device))
    if config["arch"] != "seq2seq":
        raise ValueError(f"{a.run} is a {config['arch']!r} run; `livelm translate` needs `livelm train --arch seq2seq`")
    if a.beam < 1:
        raise ValueError("--beam must be at least 1")
    params = SamplingParams(max_tokens=a.max_tokens or 1, temperature=a.temperature, seed=a.seed)
    params.validate()
    for line in translate_texts(model, source_tokenizer(a.run, tok), tok, _inputs(a), beam=a.beam,
                                length_penalty=a.length_penalty, max_tokens=a.max_tokens, params=params):
        # one source line in, one translation line out: a stray line break from the model must not shift them
        print(" ".join(line.splitlines()))
    return 0


def register(sub) -> None:
    p = sub.add_parser("predict", help="labels with probabilities from a fine-tuned BERT classifier/tagger",
                       description="Classify texts (label<TAB>probability<TAB>text per line) or tag their words "
                                   "(word/TAG ...) with a run from `livelm finetune --task classify|tag`.")
    p.add_argument("run", help="fine-tuned run directory")
    p.add_argument("--text", action="append", help="a text to label (repeatable)")
    p.add_argument("--file", help="one text per line ('-' = stdin)")
    p.add_argument("--json", action="store_true", help="one JSON object per text, with every label's probability")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("translate", help="translate with an encoder-decoder run",
                       description="Translate texts (one output line per input) with a run from "
                                   "`livelm train --arch seq2seq`: greedy by default, or beam search.")
    p.add_argument("run", help="seq2seq run directory")
    p.add_argument("--text", action="append", help="a sentence to translate (repeatable)")
    p.add_argument("--file", help="one sentence per line ('-' = stdin)")
    p.add_argument("--beam", type=int, default=1, help="beam size (default 1 = greedy)")
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam score = log-prob / length**penalty (default 1.0; 0 = raw log-prob)")
    p.add_argument("--max-tokens", type=int, default=0, help="longest translation in tokens (default: the model's window)")
    p.add_argument("--temperature", type=float, default=0.0, help="greedy decoding only: 0 = argmax (default)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_translate)
