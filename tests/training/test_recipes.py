"""The other architectures through the real CLI: train --arch, finetune --task, predict, translate, eval, resume."""
import json

import pytest

from livelm.cli import main
from livelm.data.prepare import prepare
from livelm.data.shards import DataError
from livelm import runs
from livelm.text import has_han
from livelm.data.labelled import read_labelled
from livelm.infer.evaluate import bleu_chrf
from tests.conftest import run_cli


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

TINY = ["--n-layer", "2", "--n-head", "2", "--d-model", "32", "--block-size", "32", "--batch-size", "4",
        "--warmup-iters", "2", "--eval-iters", "2", "--log-interval", "1", "--progress", "false"]
POS = ["房间很干净，服务很好。", "早餐不错，位置方便。", "great stay , friendly staff .", "环境优雅，下次还来。"]
NEG = ["房间太脏了，很失望。", "服务差，隔音不好。", "awful room , rude staff .", "设施陈旧，不推荐。"]
PAIRS = [("I am happy.", "我很高兴。"), ("I am tired.", "我很累。"), ("He is happy.", "他很高兴。"),
         ("She is tired.", "她很累。"), ("We are happy.", "我们很高兴。"), ("They are tired.", "他们很累。")]


def cli(capsys, *args) -> str:
    assert main([str(a) for a in args]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("archs")
    lines = []
    for i in range(60):   # documents of 5 sentences, a blank line between them
        lines += [POS[i % 4], NEG[(i + 1) % 4]] + ([""] if i % 5 == 4 else [])
    (d / "sents.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare([d / "sents.txt"], d / "data", tokenizer_kind="char", val_fraction=0.2, progress=False)
    (d / "cls.tsv").write_text("label\ttext\n" + "".join(f"pos\t{p}\nneg\t{n}\n" for p, n in zip(POS * 4, NEG * 4)),
                               encoding="utf-8")
    (d / "pairs.tsv").write_text("".join(f"{e}\t{z}\tCC-BY attribution\n" for e, z in PAIRS * 6), encoding="utf-8")
    return d


def metrics(run):
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if "loss" in r], [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]


ARCH_DATA = {"bert": "data", "seq2seq": "pairs.tsv", "lstm": "data"}
ARCH_FLAGS = {"bert": ["--dropout", "0.1"], "seq2seq": ["--dropout", "0.1", "--holdout", "6", "--bpe-vocab", "300"],
              "lstm": ["--dropout", "0.1", "--carry-chunks", "4", "--block-size", "8"]}


@pytest.mark.parametrize("arch", ["bert", "seq2seq", "lstm"])
def test_each_arch_saves_loads_and_resumes_exactly(arch, files, tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    common = ["--arch", arch, "--data", files / ARCH_DATA[arch], *TINY, *ARCH_FLAGS[arch], "--eval-interval", "2"]
    cli(capsys, "train", "--out", full, *common, "--max-iters", "4")
    # stop at step 2 (mid-window for the LSTM: its carried state must come back from train_state.pt)
    cli(capsys, "train", "--out", part, *common, "--max-iters", "2", "--lr-decay-iters", "4")
    cli(capsys, "train", "--out", part, "--resume", "--max-iters", "4")
    assert metrics(full) == metrics(part)
    model, tok, config = runs.load_model(full, arch=None)
    assert config["arch"] == arch and config["step"] == 4 and not model.training


def test_bert_pretrain_finetune_predict_eval_on_chinese(files, tmp_path, capsys):
    base, clf = tmp_path / "base", tmp_path / "clf"
    cli(capsys, "train", "--arch", "bert", "--data", files / "data", "--out", base, *TINY, "--max-iters", "4",
        "--eval-interval", "4")
    out = json.loads(cli(capsys, "eval", base, "--data", files / "data", "--json"))
    assert {"mlm_loss", "mlm_accuracy", "nsp_accuracy"} <= set(out)
    res = json.loads(cli(capsys, "finetune", base, "--task", "classify", "--data", files / "cls.tsv", "--out", clf,
                         "--max-iters", "40", "--eval-interval", "40", "--lr", "3e-3", "--warmup-iters", "5",
                         "--dropout", "0", "--val-fraction", "0.25", "--batch-size", "8", "--progress", "false"))
    assert res["labels"] == ["neg", "pos"] and res["accuracy"] >= 0.75      # "label" header line skipped
    lines = cli(capsys, "predict", clf, "--text", "房间很干净，服务很好。", "--text", "房间太脏了，很失望。").splitlines()
    assert [l.split("\t")[0] for l in lines] == ["pos", "neg"]
    assert all(0.5 <= float(l.split("\t")[1]) <= 1 for l in lines) and lines[0].endswith("服务很好。")
    row = json.loads(cli(capsys, "predict", clf, "--text", "设施陈旧", "--json"))
    assert row["text"] == "设施陈旧" and abs(sum(row["probs"].values()) - 1) < 1e-3
    out = json.loads(cli(capsys, "eval", clf, "--data", files / "cls.tsv", "--json"))
    assert out["accuracy"] >= 0.75 and 0 <= out["f1"] <= 1 and out["examples"] == 32


def test_token_classification(files, tmp_path, capsys):
    conll = tmp_path / "tags.txt"
    sents = [[("张三", "PER"), ("去", "O"), ("北京", "LOC")], [("李四", "PER"), ("在", "O"), ("上海", "LOC")]] * 8
    conll.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in s) for s in sents) + "\n", encoding="utf-8")
    base = tmp_path / "base"
    cli(capsys, "train", "--arch", "bert", "--data", files / "data", "--out", base, *TINY, "--max-iters", "0")
    res = json.loads(cli(capsys, "finetune", base, "--task", "tag", "--data", conll, "--out", tmp_path / "tag",
                         "--max-iters", "30", "--eval-interval", "30", "--lr", "3e-3", "--warmup-iters", "3",
                         "--progress", "false", "--val-fraction", "0.2", "--batch-size", "8"))
    assert res["labels"] == ["LOC", "O", "PER"] and res["accuracy"] > 0.9
    # raw Chinese text is split into characters for tagging
    out = cli(capsys, "predict", tmp_path / "tag", "--text", "张三去北京")
    assert out.split() == ["张/PER", "三/PER", "去/O", "北/LOC", "京/LOC"] or len(out.split()) == 5


def test_seq2seq_translates_chinese_and_scores_bleu(files, tmp_path, capsys):
    run = tmp_path / "zh-en"
    cli(capsys, "train", "--arch", "seq2seq", "--data", files / "pairs.tsv", "--out", run, *TINY, "--reverse",
        "--shared-vocab", "false", "--holdout", "6", "--bpe-vocab", "300", "--max-iters", "120", "--eval-interval", "120",
        "--batch-size", "12", "--lr", "3e-3", "--min-lr", "3e-3", "--weight-decay", "0", "--dropout", "0",
        "--label-smoothing", "0")
    assert (run / "src_tokenizer.json").is_file() and len((run / "heldout.tsv").read_text().splitlines()) == 6
    refs = ["I am happy.", "They are tired."]
    lines = cli(capsys, "translate", run, "--text", "我很高兴。", "--text", "他们很累。").split("\n")[:-1]
    assert len(lines) == 2 and not any(has_han(line) for line in lines)   # one English line per input
    assert bleu_chrf(lines, refs)["chrf"] > 60
    beam = cli(capsys, "translate", run, "--text", "我很高兴。", "--beam", "3").split("\n")[:-1]
    assert len(beam) == 1 and bleu_chrf(beam, refs[:1])["chrf"] > 60
    out = json.loads(cli(capsys, "eval", run, "--data", files / "pairs.tsv", "--json"))
    assert out["on"] == "held-out pairs" and out["pairs"] == 6 and out["bleu_tokenize"] == "13a"
    assert out["greedy_chrf"] > 90 and out["beam4_chrf"] > 90


def test_lstm_eval_and_generate(files, tmp_path, capsys):
    run = tmp_path / "lstm"
    cli(capsys, "train", "--arch", "lstm", "--data", files / "data", "--out", run, *TINY, "--max-iters", "3",
        "--eval-interval", "3")
    out = json.loads(cli(capsys, "eval", run, "--data", files / "data", "--json"))
    assert {"val_loss", "perplexity", "bits_per_byte", "tokens"} <= set(out)
    # through the command line: `livelm generate` takes every run kind it documents, LSTM runs included
    args = ("generate", run, "--prompt", "房间", "--max-tokens", "5", "--temperature", "0.8", "--seed", "1",
            "--device", "cpu")
    first = cli(capsys, *args)
    assert cli(capsys, *args) == first and first.endswith("\n") and len(first) > 1   # seeded: reproducible


def test_labelled_file_formats(tmp_path):
    (tmp_path / "a.csv").write_text('label,review\n1,"好,很好"\n0,差\n', encoding="utf-8")
    assert read_labelled(tmp_path / "a.csv")[0] == [("1", "好,很好"), ("0", "差")]
    (tmp_path / "a.jsonl").write_text('{"label": 1, "text": "good"}\n{"label": "0", "sentence": "bad"}\n')
    assert read_labelled(tmp_path / "a.jsonl")[0] == [("1", "good"), ("0", "bad")]
    (tmp_path / "bad.tsv").write_text("1\tfine\nno tab here\n")
    with pytest.raises(DataError, match="bad.tsv:2"):
        read_labelled(tmp_path / "bad.tsv")
    assert read_labelled(tmp_path / "bad.tsv", skip_bad=True) == ([("1", "fine")], 1)


def test_wrong_run_kinds_are_explained(files, tmp_path, capsys):
    run = tmp_path / "b"
    cli(capsys, "train", "--arch", "bert", "--data", files / "data", "--out", run, *TINY, "--max-iters", "0")
    assert main(["translate", str(run), "--text", "你好"]) == 1
    assert "needs `livelm train --arch seq2seq`" in capsys.readouterr().err
    res = run_cli("predict", run, "--text", "你好", check=False, env={"OMP_NUM_THREADS": "1"})   # the real exit code
    assert res.returncode == 1 and "not a fine-tuned classifier" in res.stderr and "Traceback" not in res.stderr
