"""Chat fine-tuning on real data the project did not write: Tatoeba Chinese-English pairs.

    python bench/sft_translation.py [--pretrain-iters 600 --sft-iters 400]

1. pretrain a small GPT on the training pairs' sentences (plain text, both languages);
2. turn the pairs into chat examples ("Translate to Chinese: ..." and back);
3. fine-tune it twice through `livelm finetune`'s code — all weights, then LoRA only;
4. report held-out loss, trainable parameters and time for each, and a few greedy samples.
The held-out pairs (a fixed 500, by seed) are never trained on, in either stage.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cmn-eng" / "cmn.txt"


def chats(pairs):
    out = []
    for en, zh in pairs:
        out.append({"messages": [{"role": "user", "content": f"Translate to Chinese: {en}"},
                                 {"role": "assistant", "content": zh}]})
        out.append({"messages": [{"role": "user", "content": f"Translate to English: {zh}"},
                                 {"role": "assistant", "content": en}]})
    return out


def write_jsonl(path: Path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def final_val(metrics: Path) -> dict:
    rec = [json.loads(l) for l in metrics.read_text().splitlines() if "val_loss" in l]
    return rec[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain-iters", type=int, default=400)
    p.add_argument("--sft-iters", type=int, default=300)
    p.add_argument("--work", type=Path, default=None, help="working directory (default: a temp dir)")
    a = p.parse_args()
    from livelm.chat.template import prompt_ids
    from livelm.config import resolve_config
    from livelm.data.prepare import prepare
    from livelm.data.shards import TokenData
    from livelm.infer.engine import Engine
    from livelm.sampling import SamplingParams
    from livelm.models.gpt import GPT
    from livelm.tokenizer import Tokenizer
    from livelm.training.finetune import finetune
    from livelm.training.objectives import lm_loss
    from livelm.training.trainer import train

    work = a.work or Path(tempfile.mkdtemp(prefix="livelm-sft-"))
    work.mkdir(parents=True, exist_ok=True)
    pairs = [l.split("\t")[:2] for l in DATA.read_text(encoding="utf-8").splitlines() if l.count("\t") >= 1]
    random.Random(0).shuffle(pairs)
    test, train_pairs = pairs[:500], pairs[500:]
    (work / "text.txt").write_text("\n".join(s for pair in train_pairs for s in pair) + "\n", encoding="utf-8")
    write_jsonl(work / "train.jsonl", chats(train_pairs))
    write_jsonl(work / "test.jsonl", chats(test))

    t0 = time.perf_counter()
    prepare([work / "text.txt"], work / "data", vocab_size=4096, progress=False)
    cfg = resolve_config(None, preset="llama", n_layer=4, n_head=4, n_kv_head=2, d_model=128, block_size=128,
                         batch_size=16, max_iters=a.pretrain_iters, lr=2e-3, min_lr=2e-4, warmup_iters=50,
                         eval_interval=a.pretrain_iters, eval_iters=10, progress=True)
    data = TokenData(work / "data")
    tok = Tokenizer.load(work / "data")
    torch.manual_seed(0)
    model = GPT(cfg.model_config(data.vocab_size))
    res = train(cfg, work / "base", model, tok, lambda s, i: data.batch(s, i, cfg.batch_size, cfg.block_size, cfg.seed),
                lm_loss, {"arch": "gpt", "model": model.cfg.to_dict(), "train": cfg.to_dict()},
                bytes_per_token=data.bytes_per_token())
    pre_s = time.perf_counter() - t0

    rows, samples = [], {}
    for name, use_lora, lr in (("full", False, 1e-3), ("LoRA r=16", True, 3e-3)):
        from livelm.models.lora import LoRAConfig
        t = time.perf_counter()
        result, ft_model, n_train = finetune(work / "base", work / "train.jsonl", work / name.split()[0],
                                             val_data=work / "test.jsonl", use_lora=use_lora,
                                             lora_cfg=LoRAConfig(r=16, lora_alpha=32), accuracy_limit=0,
                                             max_iters=a.sft_iters, eval_interval=a.sft_iters, lr=lr, min_lr=lr / 10,
                                             batch_size=16, block_size=128)
        secs = time.perf_counter() - t
        val = final_val(result.metrics_path)
        rows.append((name, n_train, secs, val["val_loss"]))
        engine = Engine(ft_model.eval(), tok, max_batch=8)
        asks = [c["messages"][:1] for c in chats(test[:3])]
        outs = engine.generate([prompt_ids(m, tok) for m in asks], SamplingParams(max_tokens=40, temperature=0))
        samples[name] = [(m[0]["content"], o.text) for m, o in zip(asks, outs)]

    print(f"pretrain: {model.num_params() / 1e6:.2f}M params, {a.pretrain_iters} iters, val loss {res.val_loss:.3f}, "
          f"{pre_s:.0f}s\n")
    print("| fine-tuning | trainable params | time (s) | held-out loss (assistant tokens) |")
    print("|---|---|---|---|")
    for name, n, secs, loss in rows:
        print(f"| {name} | {n:,} | {secs:.0f} | {loss:.3f} |")
    print()
    for name, ss in samples.items():
        print(f"samples ({name}):")
        for q, ans in ss:
            print(f"- {q} → {ans}")


if __name__ == "__main__":
    main()
