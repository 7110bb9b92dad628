"""`livelm finetune GPT_RUN --task classify` (livelm/training/recipes/classify.py), through the CLI in-process:
a tiny decoder learns whether a text mentions a banana (English, Chinese or emoji), full and with --lora,
and `livelm predict` / `livelm eval` read the result."""
import json
import random

import pytest
import torch

from livelm import runs
from livelm.cli import main
from livelm.config import resolve_config
from livelm.data.prepare import prepare
from livelm.models.gpt import GPT
from livelm.tokenizer import Tokenizer
from livelm.training.recipes.classify import GPTClassifier, encode_texts, load_base_weights, pad_rows
from tests.conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

WORDS = ["the", "cat", "sat", "on", "a", "mat", "blue", "sky", "we", "walk", "home", "today",
         "天气", "很好", "我们", "回家", "红色", "的", "猫", "今天", "🙂", "🎉", "☕", "🚲", "ok", "真的"]
MARKERS = ["banana", "香蕉", "🍌"]
YES, NO = "有香蕉", "no"          # a Chinese label name too: it must survive config.json and predict
FAST = ["--batch-size", "16", "--warmup-iters", "5", "--log-interval", "1", "--progress", "false",
        "--threads", "1", "--block-size", "24"]


def toy(n: int, seed: int) -> list[dict]:
    """Texts of 2-8 words from WORDS (mixed languages and emoji, with or without spaces); half get one marker."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.choices(WORDS, k=rng.randint(2, 8))
        label = YES if i % 2 else NO
        if label == YES:
            words.insert(rng.randint(0, len(words)), rng.choice(MARKERS))
        sep = "" if rng.random() < 0.3 else " "
        out.append({"label": label, "text": sep.join(words)})
    return out


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny untrained Llama-style decoder run with a byte-level BPE, and the labelled files."""
    d = tmp_path_factory.mktemp("declassify")
    train, val = toy(400, 0), toy(64, 1)
    tok = Tokenizer.train_bpe([r["text"] for r in train] * 3, vocab_size=300, show_progress=False)
    cfg = resolve_config(preset="llama", n_layer=2, n_head=2, n_kv_head=1, d_model=32, block_size=32)
    torch.manual_seed(0)
    model = GPT(cfg.model_config(tok.vocab_size))
    runs.save_checkpoint(d / "base", model, tok, {"arch": "gpt", "model": model.cfg.to_dict(), "train": cfg.to_dict()}, 0)
    write_jsonl(d / "train.jsonl", train)
    write_jsonl(d / "val.jsonl", val)
    write_jsonl(d / "one.jsonl", [{"label": "only", "text": "香蕉 🍌 banana"}, {"label": "only", "text": "猫 cat"}])
    return d


def cli(capsys, *args) -> str:
    assert main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def train_losses(run) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def predictions(capsys, run) -> list[dict]:
    out = cli(capsys, "predict", run, "--json", "--text", "我们今天吃香蕉 🍌", "--text", "the cat sat on a mat 🙂",
              "--text", "天气很好，a banana", "--text", "☕🚲 真的")
    return [json.loads(line) for line in out.splitlines()]


def test_full_finetune_learns_predicts_and_evaluates(files, tmp_path, capsys):
    out = tmp_path / "clf"
    res = json.loads(cli(capsys, "finetune", files / "base", "--task", "classify", "--data", files / "train.jsonl",
                         "--val-data", files / "val.jsonl", "--out", out, *FAST, "--lr", "3e-3", "--min-lr", "3e-4",
                         "--max-iters", "150", "--eval-interval", "75", "--dtype", "float32"))
    assert res["labels"] == [NO, YES] and res["lora"] is False
    assert res["accuracy"] >= 0.9 and res["val_loss"] < 0.4
    losses = train_losses(out)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10      # starts near ln 2, ends far below
    config = runs.read_config(out)
    assert config["task"] == "classify" and config["labels"] == [NO, YES] and config["classifier"]["eos"] is True
    assert {"model.safetensors", "config.json", "tokenizer.json", "metrics.jsonl", "loss.png"} <= {p.name for p in out.iterdir()}
    model, _, _ = runs.load_model(out)            # the run layer builds the classifier from config.json
    assert isinstance(model, GPTClassifier) and model.score.weight.shape == (2, 32)

    rows = predictions(capsys, out)
    assert [r["label"] for r in rows] == [YES, NO, YES, NO]
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-3 and r["prob"] >= 0.5 for r in rows)
    assert rows[0]["text"] == "我们今天吃香蕉 🍌"
    line = cli(capsys, "predict", out, "--text", "香蕉").strip().split("\t")
    assert line[0] == YES and 0.5 <= float(line[1]) <= 1 and line[2] == "香蕉"
    ev = json.loads(cli(capsys, "eval", out, "--data", files / "val.jsonl", "--json"))
    assert ev["examples"] == 64 and ev["accuracy"] == pytest.approx(res["accuracy"], abs=0.02)


def test_lora_finetune_saves_adapter_and_head_only(files, tmp_path, capsys):
    out = tmp_path / "lora"
    res = json.loads(cli(capsys, "finetune", files / "base", "--task", "classify", "--data", files / "train.jsonl",
                         "--val-data", files / "val.jsonl", "--out", out, "--lora", "--lora-rank", "8", *FAST,
                         "--lr", "1e-2", "--min-lr", "1e-3", "--max-iters", "300", "--eval-interval", "300"))
    assert res["lora"] is True and res["accuracy"] >= 0.85     # seeds 1-3: 0.91-0.98
    files_out = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "classifier_head.safetensors", "config.json"} <= files_out
    assert "model.safetensors" not in files_out and runs.is_adapter(out)
    n_base = sum(p.numel() for p in runs.load_model(files / "base")[0].parameters())
    assert res["trainable_params"] < n_base / 2
    losses = train_losses(out)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert [r["label"] for r in predictions(capsys, out)] == [YES, NO, YES, NO]
    ev = json.loads(cli(capsys, "eval", out, "--data", files / "val.jsonl", "--json"))
    assert ev["accuracy"] == pytest.approx(res["accuracy"], abs=0.05)   # merged adapter, bf16 or not


def test_pooling_reads_each_rows_last_real_token(files):
    """Right padding never changes a row's logits: a row alone and beside a longer one score the same."""
    model, tok, _ = runs.load_model(files / "base")
    clf = GPTClassifier(model.cfg, ["a", "b", "c"])
    clf.load_state_dict(model.state_dict(), strict=False)
    torch.nn.init.normal_(clf.score.weight)
    clf.eval()
    short, long = encode_texts(tok, ["猫🙂", "the cat sat on a mat 天气很好 🎉🎉"], 32)
    assert short[-1] == long[-1] == tok.eos_id and len(short) < len(long)
    with torch.no_grad():
        alone = clf(**{k: v for k, v in pad_rows([short], None, tok.pad_id).items()})["logits"]
        both = clf(**{k: v for k, v in pad_rows([short, long], None, tok.pad_id).items()})["logits"]
    assert torch.allclose(alone[0], both[0], atol=1e-5)
    with pytest.raises(ValueError, match="classifier"):     # not a language model any more
        clf(torch.tensor([short]))


def test_weights_load_slice_by_slice_into_any_dtype(files):
    base, tok, config = runs.load_model(files / "base")
    clf = GPTClassifier(base.cfg, ["a", "b"])
    load_base_weights(clf, files / "base", config, chunk_bytes=200)    # many slices per tensor
    got = clf.state_dict()
    assert all(torch.equal(got[k], v) for k, v in base.state_dict().items())
    clf.blocks[0].attn.q_proj.to(torch.bfloat16)
    load_base_weights(clf, files / "base", config)
    assert torch.equal(clf.blocks[0].attn.q_proj.weight, base.blocks[0].attn.q_proj.weight.bfloat16())
    (files / "cut").mkdir(exist_ok=True)
    (files / "cut" / "model.safetensors").write_bytes((files / "base" / "model.safetensors").read_bytes()[:-100])
    with pytest.raises(runs.CheckpointError, match="corrupt or truncated"):
        load_base_weights(clf, files / "cut", config)


def test_bad_inputs_get_clear_errors(files, tmp_path, capsys):
    base = files / "base"
    # a label file with a single class
    assert main(["finetune", str(base), "--task", "classify", "--data", str(files / "one.jsonl"),
                 "--out", str(tmp_path / "x"), "--max-iters", "1"]) == 1
    assert "needs at least two" in capsys.readouterr().err
    # decoder-only options on a BERT run, and BERT-only ones on a decoder
    (tmp_path / "s.txt").write_text("房间很干净。\n服务很好 🙂\n\nthe cat sat.\n" * 20, encoding="utf-8")
    prepare([tmp_path / "s.txt"], tmp_path / "data", tokenizer_kind="char", val_fraction=0.2, progress=False)
    cli(capsys, "train", "--arch", "bert", "--data", tmp_path / "data", "--out", tmp_path / "bert", "--n-layer", "1",
        "--n-head", "2", "--d-model", "16", "--block-size", "16", "--max-iters", "0", "--progress", "false")
    assert main(["finetune", str(tmp_path / "bert"), "--task", "classify", "--lora", "--data",
                 str(files / "train.jsonl"), "--out", str(tmp_path / "y")]) == 1
    assert "--lora trains adapters on a decoder" in capsys.readouterr().err
    assert main(["finetune", str(base), "--task", "tag", "--data", str(files / "train.jsonl"),
                 "--out", str(tmp_path / "z")]) == 1
    assert "fine-tunes a BERT run" in capsys.readouterr().err
    assert main(["finetune", str(base), "--task", "classify", "--pooling", "cls", "--data",
                 str(files / "train.jsonl"), "--out", str(tmp_path / "w")]) == 1
    assert "last token" in capsys.readouterr().err
    # an empty text, in the training data and to predict; a plain GPT run to predict with
    write_jsonl(tmp_path / "empty.jsonl", [{"label": "a", "text": "猫"}, {"label": "b", "text": "  "}])
    assert main(["finetune", str(base), "--task", "classify", "--data", str(tmp_path / "empty.jsonl"),
                 "--out", str(tmp_path / "v")]) == 1
    assert "expected a label and a text" in capsys.readouterr().err
    clf = tmp_path / "clf"
    cli(capsys, "finetune", base, "--task", "classify", "--data", files / "val.jsonl", "--out", clf, *FAST,
        "--max-iters", "2", "--eval-interval", "2", "--dtype", "float32")
    assert main(["predict", str(clf), "--text", " "]) == 1
    assert "text 1 is empty" in capsys.readouterr().err
    res = run_cli("predict", base, "--text", "香蕉", check=False)
    assert res.returncode == 1 and "not a fine-tuned classifier" in res.stderr
    res = run_cli("generate", clf, "--prompt", "hi", "--max-tokens", "2", check=False)
    assert res.returncode == 1 and "is a classifier" in res.stderr and "Traceback" not in res.stderr
