"""The optional parts (livelm/extras.py): the core works without them, and each feature that needs one
names the extra to install. pyproject.toml's extras agree with livelm/extras.py."""
import json
import re
import subprocess
import sys
import tomllib

from livelm.extras import EXTRAS
from tests.conftest import ROOT

PAIRS = [("I am happy.", "我很高兴。"), ("I am tired.", "我很累。"), ("He is happy.", "他很高兴。"),
         ("She is tired.", "她很累。"), ("We are happy.", "我们很高兴。"), ("They are tired.", "他们很累。")]

# Run in a fresh interpreter where every extra's packages fail to import, as after `pip install livelm`.
# A finder first on sys.meta_path refuses them: uninstalling would touch the shared virtualenv.
SCRIPT = r'''
import contextlib, io, json, sys
BLOCKED = set(json.loads(sys.argv[1]))

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
work, char_data = sys.argv[2], sys.argv[3]

# the core, every module of it that a user of `pip install livelm` may import
import livelm, livelm.api, livelm.cli, livelm.tokenizer, livelm.models.gpt, livelm.models.lora
import livelm.data.prepare, livelm.training.trainer, livelm.training.finetune, livelm.training.recipes, livelm.training.plot
import livelm.infer.engine, livelm.runs, livelm.cli.chat, livelm.learn.live, livelm.learn.update
import livelm.interop.hf, livelm.interop.gguf, livelm.compress.quantize, livelm.compress.prune
import livelm.cli.serve   # the command's flags need no FastAPI
from livelm.cli import main

out = {}
def missing(*argv):   # what `livelm ARGV` says on stderr when it exits 1, or why it did not
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return err.getvalue().strip().partition(": error: ")[2] if code == 1 else f"no error: exit {code}"

tiny = ["--n-layer", "2", "--n-head", "2", "--d-model", "32", "--block-size", "32", "--batch-size", "4",
        "--warmup-iters", "2", "--eval-iters", "2", "--eval-interval", "2", "--max-iters", "2", "--progress", "false"]
# training works; the loss curve and the translation run's BLEU are left out, each said once
out["train"] = main(["train", "--data", char_data, "--out", f"{work}/gpt", "--preset", "llama", *tiny,
                     "--max-iters", "4"])
out["train_seq2seq"] = main(["train", "--arch", "seq2seq", "--data", f"{work}/pairs.tsv", "--out", f"{work}/s2s",
                             "--holdout", "6", "--bpe-vocab", "300", *tiny])
# features that are the whole point of a command fail with the extra's name
out["eval_bleu"] = missing("eval", f"{work}/s2s", "--data", f"{work}/pairs.tsv", "--json")
out["export_gguf"] = missing("export", f"{work}/gpt", "--format", "gguf", "--out", f"{work}/gguf")
out["serve"] = missing("serve", f"{work}/gpt", "--port", "0")
print(json.dumps(out))
'''


def requirement_name(req: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower().replace("-", "_")


def test_pyproject_extras_match_livelm_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    optional = {k: {requirement_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    for extra, modules in EXTRAS.items():
        assert optional[extra] == set(modules), extra   # these distributions are named as they import
    assert optional["all"] == set().union(*EXTRAS.values())
    core = {requirement_name(r) for r in project["dependencies"]}
    assert not core & optional["all"], "a package is both core and optional"


def test_core_works_without_the_extras_and_each_feature_names_its_extra(tmp_path, char_data):
    (tmp_path / "pairs.tsv").write_text("".join(f"{e}\t{z}\n" for e, z in PAIRS * 6), encoding="utf-8")
    blocked = sorted(set().union(*EXTRAS.values()))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(blocked), str(tmp_path), str(char_data)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])

    assert out["train"] == 0 and (tmp_path / "gpt" / "model.safetensors").is_file()
    assert not (tmp_path / "gpt" / "loss.png").exists()
    # said once per run (two runs, the first of which saved twice), then quiet
    assert proc.stderr.count("no loss.png: the loss curve (loss.png) needs the plot extra") == 2
    assert proc.stderr.count("pip install 'livelm[plot]'") == 2

    assert out["train_seq2seq"] == 0 and (tmp_path / "s2s" / "model.safetensors").is_file()
    assert "pip install 'livelm[bleu]'" in proc.stderr
    assert "bleu" not in (tmp_path / "s2s" / "metrics.jsonl").read_text()
    assert out["eval_bleu"] == ("scoring translations with BLEU and chrF needs the bleu extra "
                                "(sacrebleu is not installed): pip install 'livelm[bleu]'")

    assert out["export_gguf"] == "GGUF export needs the gguf extra (gguf is not installed): pip install 'livelm[gguf]'"
    assert not (tmp_path / "gguf").exists()   # asked before anything is loaded or written
    assert out["serve"].startswith("livelm serve needs the serve extra (")
    assert out["serve"].endswith(" is not installed): pip install 'livelm[serve]'")
