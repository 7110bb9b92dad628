"""`livelm finetune --task classify --pooling mean` through the real CLI: the option reaches the saved model;
and `livelm eval` of a run pretrained without NSP scores masked LM on batches laid out as in its training."""
import json

import torch

from livelm.cli import main
from livelm.data.prepare import prepare
from livelm import runs

POS = ["great stay , friendly staff .", "房间很干净，服务很好。"]
NEG = ["awful room , rude staff .", "房间太脏了，很失望。"]
TINY = ["--n-layer", "1", "--n-head", "2", "--d-model", "32", "--block-size", "32", "--batch-size", "8",
        "--warmup-iters", "2", "--eval-iters", "2", "--progress", "false", "--threads", "1"]


def test_mlm_only_pretraining_and_finetune_with_mean_pooling(tmp_path, capsys):
    (tmp_path / "sents.txt").write_text("\n".join((POS + NEG) * 10) + "\n", encoding="utf-8")
    prepare([tmp_path / "sents.txt"], tmp_path / "data", tokenizer_kind="char", val_fraction=0.2, progress=False)
    (tmp_path / "cls.tsv").write_text("".join(f"pos\t{p}\nneg\t{n}\n" for p, n in zip(POS * 8, NEG * 8)),
                                      encoding="utf-8")
    base, clf = tmp_path / "base", tmp_path / "clf"
    assert main([str(a) for a in ["train", "--arch", "bert", "--data", tmp_path / "data", "--out", base, *TINY,
                                  "--nsp", "false", "--max-iters", "2"]]) == 0
    capsys.readouterr()
    assert main(["eval", str(base), "--data", str(tmp_path / "data"), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert 0 <= scores["mlm_accuracy"] <= 1 and "nsp_accuracy" not in scores
    assert main([str(a) for a in ["finetune", base, "--task", "classify", "--data", tmp_path / "cls.tsv",
                                  "--out", clf, *TINY, "--pooling", "mean", "--max-iters", "30",
                                  "--eval-interval", "30", "--lr", "3e-3", "--dropout", "0",
                                  "--val-fraction", "0.25"]]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["accuracy"] >= 0.75
    model, _, config = runs.load_model(clf, arch=None)
    assert config["model"]["pooling"] == "mean" and model.cfg.pooling == "mean"
    with torch.inference_mode():   # the reloaded model pools the same way: padding leaves its logits alone
        ids = torch.tensor([[9, 20, 21, 8]])
        padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
        torch.testing.assert_close(model(padded, torch.arange(7)[None] < 4)["logits"], model(ids)["logits"])
