"""The default bilingual assistant's recipe: `make demo` (= `livelm demo`) builds it once, then chats with it.

Pipeline (all through the same code a user runs by hand):
    shop corpus -> livelm prepare (BPE) -> livelm train (pretrain)
                   -> livelm finetune (chat SFT) -> held-out accuracy -> livelm chat

The result is cached in runs/assistant/ and rebuilt only when its inputs change
(the generated corpus, this recipe, or the library version).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from livelm import io

RUNS = Path("runs")


# The recipe: small enough to build in a few minutes on 2 CPU cores, whatever the CPU.
# dtype and compile are `auto` (livelm.machine): bf16 where the CPU computes it natively, fp32 where it
# would be emulated (AVX2: ~50-100x slower matmuls), and eager, since at 500 steps compiling does not pay
# for itself (measured on Zen 5, 2 threads, ms per pretraining step: fp32 eager 211, fp32 compiled 159,
# bf16 eager 110, bf16 compiled 64, each compile costing 18-28 s).
PRETRAIN = dict(preset="llama", n_layer=4, n_head=4, n_kv_head=2, d_model=128, block_size=192, batch_size=16,
                max_iters=500, lr=3e-3, min_lr=3e-4, warmup_iters=50, eval_interval=250, eval_iters=8, dropout=0.0,
                dtype="auto", compile="auto")
# Fine-tuning packs several chats per row, so attention takes a mask: compiled, that path was slower
# than eager, so compile is off here whatever the run length.
# batch 16 at lr 2.7e-3 (12 at 2e-3 before, lr scaled with the batch): both dtypes "auto" picks reach 90%+
# in each language (fp32 91/93, bf16 90/93); batch 12 left fp32 builds at 88/89. dropout: +1 point en,
# +5 points zh on held-out phrasings.
FINETUNE = dict(max_iters=700, lr=2.7e-3, min_lr=2.7e-4, warmup_iters=30, eval_interval=350, batch_size=16,
                block_size=192, dropout=0.1, dtype="auto", compile="false")
VOCAB = 2048
SEED = 0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def recipe_hash() -> str:
    """What the build depends on: the corpus itself (generated in ~0.1 s; hashing it rather than the
    generator's source means an edit to livelm/data/shop/ that leaves the corpus as it was does
    not rebuild every user's assistant), this recipe and the library version."""
    import livelm
    from livelm.data import shop
    h = hashlib.sha256()
    corpus = shop.build(SEED)
    for part in (corpus.pretrain_text, shop._jsonl(corpus.train_chats), shop._jsonl(corpus.heldout_chats)):
        h.update(part.encode("utf-8"))
    h.update(json.dumps([PRETRAIN, FINETUNE, VOCAB, SEED, livelm.__version__]).encode())
    return h.hexdigest()[:16]


def evaluate_assistant(model, tokenizer, heldout: list[dict]) -> dict:
    """Exact-fact accuracy on held-out question phrasings, per language (greedy decoding):
    {"en", "zh", "n", "failures": the first 10 (question, answer) it got wrong}."""
    from livelm.data import shop
    from livelm.infer.evaluate import heldout_answers
    facts = {f.key: f for f in shop.FACTS}
    # the answer must state the fact's value (shop.check_answer), not repeat the reference word for word
    answers = heldout_answers(model, tokenizer, [c["messages"] for c in heldout], max_tokens=64, max_batch=32,
                              correct=lambda i, text: shop.check_answer(facts[heldout[i]["fact"]], text,
                                                                        heldout[i]["lang"]))
    result, failures = {}, []
    for lang in ("en", "zh"):
        mine = [a for a in answers if heldout[a.index]["lang"] == lang]
        result[lang] = sum(a.correct for a in mine) / max(1, len(mine))
        failures += [(heldout[a.index]["messages"][-2]["content"], a.text) for a in mine if not a.correct]
    result["n"] = len(heldout)
    result["failures"] = failures[:10]
    return result


def record_for_learning(chat: Path) -> None:
    """Add to the chat run what live learning reads from it, where missing: its probes (the held-out shop
    questions, probes.jsonl: livelm/learn/probes.py) and, in an assistant built before `finetune`
    recorded them, the system prompts it was fine-tuned with (config.json "system_prompts"). Each file
    is replaced atomically; a run that has both is left as it is."""
    from livelm.chat.data import common_system_prompts
    from livelm.data import shop
    from livelm.learn.probes import has_run_probes, write_probes
    config = json.loads((chat / "config.json").read_text(encoding="utf-8"))
    if "system_prompts" in config and has_run_probes(chat):
        return
    corpus = shop.build(SEED)   # the corpus it was built from (the build is keyed on it: recipe_hash)
    if "system_prompts" not in config:
        prompts = common_system_prompts([c["messages"] for c in corpus.train_chats])
        io.write_json(chat / "config.json", {**config, "system_prompts": prompts})
    if not has_run_probes(chat):
        write_probes(chat, shop.probes(corpus.heldout_chats))


def build(out: Path = RUNS / "assistant", force: bool = False, dtype: str = "auto") -> Path:
    """Build the default assistant into `out` (cached). Returns the chat run directory.

    dtype overrides the recipe's `auto` (e.g. float32, to build here what an AVX2 machine builds)."""
    from livelm.api import pretrain_gpt
    from livelm.config import resolve_config
    from livelm.data import shop
    from livelm.data.prepare import prepare
    from livelm.tokenizer import Tokenizer
    from livelm.training.finetune import finetune

    stamp = out / "build.json"
    key = recipe_hash() + ("" if dtype == "auto" else f"-{dtype}")
    if not force and stamp.is_file() and json.loads(stamp.read_text()).get("recipe") == key \
            and (out / "chat" / "model.safetensors").is_file():
        record_for_learning(out / "chat")   # an assistant built by an older livelm lacks them
        return out / "chat"
    from livelm import machine
    from livelm.machine import pick_device
    m = machine.detect(pick_device("auto"))
    trained_in = str(machine.resolve_dtype(dtype, pick_device("auto"), warn=False)).removeprefix("torch.")
    t0 = time.perf_counter()
    log(f"building the default assistant in {out} (once; a few minutes on 2 cores)")
    paths = shop.write(out / "corpus", seed=SEED)
    prepare([paths["pretrain"], paths["chat_train"]], out / "data", vocab_size=VOCAB, val_fraction=0.05)
    t_prep = time.perf_counter() - t0

    cfg = resolve_config(None, **{**PRETRAIN, "dtype": dtype}, seed=SEED)
    pretrain_gpt(cfg, out / "data", out / "base")   # what `livelm train` runs
    t_pre = time.perf_counter() - t0

    log("fine-tuning for chat")
    _, model, _ = finetune(out / "base", paths["chat_train"], out / "chat", val_data=paths["chat_heldout"],
                           accuracy_limit=0, **{**FINETUNE, "dtype": dtype})
    t_ft = time.perf_counter() - t0
    heldout = [json.loads(l) for l in paths["chat_heldout"].read_text(encoding="utf-8").splitlines()]
    record_for_learning(out / "chat")   # the update guard's probes: the held-out questions
    acc = evaluate_assistant(model.eval(), Tokenizer.load(out / "chat" / "tokenizer.json"), heldout)
    total = time.perf_counter() - t0
    report = {"recipe": key, "accuracy_en": acc["en"], "accuracy_zh": acc["zh"], "heldout_questions": acc["n"],
              "seconds": {"prepare": round(t_prep, 1), "pretrain": round(t_pre - t_prep, 1),
                          "finetune": round(t_ft - t_pre, 1), "total": round(total, 1)},
              "params": model.num_params(), "failures": acc["failures"],
              "machine": {"cpu": m.cpu_model, "capability": m.cpu_capability, "train_dtype": trained_in}}
    io.write_json(stamp, report)
    log(f"built in {total:.0f}s: held-out accuracy en {acc['en']:.1%}, zh {acc['zh']:.1%}")
    return out / "chat"
