"""Characters per token of livelm's byte-level BPE on Chinese and English.

    python bench/tokenizer_compression.py [--vocab-size 8192]

Trains one tokenizer on a mix of real Chinese and English text from
../shared/data (Tang poems, Tatoeba Chinese-English pairs, Tiny Shakespeare)
and reports compression on held-out lines of each, next to a GPT-2-style
pre-tokenizer (no CJK split) trained on the same text, to show what the split
costs and what it prevents (tokens spanning several Chinese characters).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

from livelm.text import HAN
from livelm.tokenizer import SPECIAL_TOKENS, Tokenizer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def corpora():
    shakespeare = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").splitlines()
    poems = (DATA / "tang-poems" / "poems.txt").read_text(encoding="utf-8").splitlines()
    pairs = [l.split("\t") for l in (DATA / "cmn-eng" / "cmn.txt").read_text(encoding="utf-8").splitlines()]
    en_sent = [p[0] for p in pairs if len(p) >= 2]
    zh_sent = [p[1] for p in pairs if len(p) >= 2]
    split = lambda xs: (xs[: int(len(xs) * 0.9)], xs[int(len(xs) * 0.9):])  # noqa: E731
    return {"English (Shakespeare)": split(shakespeare), "English (Tatoeba)": split(en_sent),
            "Chinese (Tatoeba)": split(zh_sent), "Chinese (Tang poems)": split(poems)}


def gpt2_style(texts, vocab_size):
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab-size", type=int, default=8192)
    a = p.parse_args()
    sets = corpora()
    train_text = [line for tr, _ in sets.values() for line in tr]
    ours = Tokenizer.train_bpe(train_text, vocab_size=a.vocab_size, show_progress=False)
    plain = gpt2_style(train_text, a.vocab_size)
    multi_cjk = sum(1 for i in range(plain.get_vocab_size())
                    if len(HAN.findall(plain.decode([i]))) > 1)
    print(f"vocab {a.vocab_size}; GPT-2-style tokens spanning >1 Chinese character: {multi_cjk}; livelm: 0\n")
    print("| held-out text | chars | livelm chars/token | GPT-2-style chars/token |")
    print("|---|---|---|---|")
    for name, (_, test) in sets.items():
        text = "\n".join(test)
        n_ours = len(ours.encode(text))
        n_plain = len(plain.encode(text).ids)
        print(f"| {name} | {len(text):,} | {len(text) / n_ours:.2f} | {len(text) / n_plain:.2f} |")


if __name__ == "__main__":
    main()
