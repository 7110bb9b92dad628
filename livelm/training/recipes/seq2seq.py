"""Encoder-decoder translation on the one trainer: `train --arch seq2seq` on source<TAB>target pairs,
`livelm translate` (greedy or beam search) and BLEU/chrF evaluation."""
from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import numpy as np
import torch

from livelm import runs
from livelm.data.labelled import read_pairs, split_pairs
from livelm.data.shards import DataError
from livelm import extras
from livelm.infer.evaluate import BLEU_FEATURE, bleu_chrf
from livelm.models.seq2seq import Seq2Seq, Seq2SeqConfig, beam_search, greedy, pad_batch
from livelm.sampling import SamplingParams
from livelm.tokenizer import Tokenizer
from livelm.training.objectives import seq2seq_loss
from livelm.training.trainer import log, run_record, train


def seq2seq_config(cfg, arch_cfg, src_vocab: int, tgt_vocab: int) -> Seq2SeqConfig:
    return Seq2SeqConfig(src_vocab_size=src_vocab, tgt_vocab_size=tgt_vocab, block_size=cfg.block_size,
                         n_enc_layer=arch_cfg.n_enc_layer or cfg.n_layer, n_dec_layer=cfg.n_layer, n_head=cfg.n_head,
                         d_model=cfg.d_model, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout, bias=cfg.bias,
                         position=cfg.position, norm=cfg.norm, mlp=cfg.mlp, shared_vocab=arch_cfg.shared_vocab,
                         tie_embeddings=cfg.tie_embeddings)


def source_tokenizer(run: str | Path, tokenizer: Tokenizer) -> Tokenizer:
    path = Path(run) / "src_tokenizer.json"
    return Tokenizer.load(path) if path.is_file() else tokenizer


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


def train_seq2seq(cfg, arch_cfg, data_file, out: Path, resume: bool):
    if Path(data_file).is_dir():
        raise DataError(f"--arch seq2seq reads a source<TAB>target file, not a folder ({data_file})")
    train_pairs, held = split_pairs(read_pairs(data_file, arch_cfg.reverse), arch_cfg.holdout, cfg.seed)
    if resume:   # the run's own tokenizers, never retrained
        tgt_tok = Tokenizer.load(out / "tokenizer.json")
        src_tok = source_tokenizer(out, tgt_tok)
    elif arch_cfg.shared_vocab:
        tgt_tok = src_tok = Tokenizer.train_bpe((x for p in train_pairs for x in p), arch_cfg.bpe_vocab,
                                                show_progress=False)
    else:
        src_tok = Tokenizer.train_bpe((s for s, _ in train_pairs), arch_cfg.bpe_vocab, show_progress=False)
        tgt_tok = Tokenizer.train_bpe((t for _, t in train_pairs), arch_cfg.bpe_vocab, show_progress=False)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        tgt_tok.save(out / "tokenizer.json")
        if src_tok is not tgt_tok:
            src_tok.save(out / "src_tokenizer.json")
        (out / "heldout.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in held), encoding="utf-8")
    sets = {"train": PairData(train_pairs, src_tok, tgt_tok, cfg.block_size),
            "val": PairData(held, src_tok, tgt_tok, cfg.block_size)}
    if not len(sets["val"]):
        raise DataError(f"{data_file}: no pairs held out for validation; set --holdout")
    torch.manual_seed(cfg.seed)
    model = Seq2Seq(seq2seq_config(cfg, arch_cfg, src_tok.vocab_size, tgt_tok.vocab_size))
    if resume:
        runs.restore_weights(model, out)
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

    objective = functools.partial(seq2seq_loss, label_smoothing=arch_cfg.label_smoothing)
    return train(cfg, out, model, tgt_tok, get_batch, objective, run_record("seq2seq", model, cfg, arch_cfg, data_file),
                 resume=resume, extra_eval=extra_eval)


def evaluate(run, data, model, tok, config) -> dict:
    """BLEU/chrF, greedy and beam 4, on the held-out pairs when --data is the training file, else on all of --data."""
    cfg = config.get("train", {})
    data = Path(data)
    if config.get("data") and data.resolve() == Path(config["data"]):
        pairs = read_pairs(Path(run) / "heldout.tsv")
        where = "held-out pairs"
    else:
        pairs = read_pairs(data, reverse=bool(cfg.get("reverse")) and data.name != "heldout.tsv")
        where = "pairs"
    src_tok = source_tokenizer(run, tok)
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
