import argparse

import pytest

from livelm.cli.flags import add_train_flags, train_values
from livelm.config import resolve_config


def resolve(*argv):
    """TrainConfig from command-line flags, as `livelm train` resolves them."""
    p = argparse.ArgumentParser()
    add_train_flags(p)
    a = p.parse_args(list(argv))
    return resolve_config(a.config, **train_values(a))


def test_precedence_defaults_preset_yaml_flags(tmp_path):
    cfg = resolve()
    assert cfg.preset == "gpt2" and cfg.position == "learned" and cfg.n_layer == 4
    cfg = resolve("--preset", "llama")
    assert (cfg.position, cfg.norm, cfg.mlp, cfg.n_kv_head, cfg.bias) == ("rope", "rmsnorm", "swiglu", 2, False)
    y = tmp_path / "c.yaml"
    y.write_text("preset: llama\nn_layer: 6\nlr: 1\n")
    cfg = resolve("--config", str(y), "--n-layer", "3", "--compile", "--bias", "true")
    assert cfg.preset == "llama" and cfg.n_layer == 3 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.compile == "true" and cfg.bias is True and cfg.position == "rope"


def test_bad_configs_are_explained(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("n_layers: 6\n")
    with pytest.raises(ValueError, match="unknown field"):
        resolve("--config", str(y))
    y.write_text("a: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        resolve("--config", str(y))
    with pytest.raises(ValueError, match="divisible"):
        resolve("--d-model", "30", "--n-head", "4")
    with pytest.raises(ValueError, match="not found"):
        resolve("--config", str(tmp_path / "missing.yaml"))


def test_the_other_architectures_fields_are_arch_config_set_the_same_ways(tmp_path):
    """ArchConfig (the recipes' fields) comes from the same flags, YAML file and saved "train" record as
    TrainConfig; a record written when both were one dataclass (arch keys in "train") loads into both."""
    from livelm.cli.train import arch_values, config_flags
    from livelm.training.recipes.config import ArchConfig, resolve_arch_config
    p = argparse.ArgumentParser()
    config_flags(p)
    y = tmp_path / "c.yaml"
    y.write_text("n_layer: 3\nmlm_prob: 1\nholdout: 7\n")
    a = p.parse_args(["--config", str(y), "--holdout", "9", "--nsp", "false", "--lr", "0.5"])
    cfg = resolve_config(a.config, also=(ArchConfig,), **train_values(a))
    arch = resolve_arch_config(a.config, **arch_values(a))
    assert cfg.n_layer == 3 and cfg.lr == 0.5 and not hasattr(cfg, "holdout")
    assert arch == ArchConfig(mlm_prob=1.0, holdout=9, nsp=False) and isinstance(arch.mlm_prob, float)
    with pytest.raises(ValueError, match="unknown field"):   # a file with them needs a reader that knows them
        resolve_config(y)
    old = {**cfg.to_dict(), **ArchConfig(pooling="mean", carry_chunks=3).to_dict()}   # a saved "train" record
    assert resolve_config(base=old) == cfg
    assert resolve_arch_config(base=old) == ArchConfig(pooling="mean", carry_chunks=3)
