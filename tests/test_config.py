import argparse

import pytest

from livelm.config import add_config_flags, resolve_config


def parse(*argv):
    p = argparse.ArgumentParser()
    add_config_flags(p)
    return p.parse_args(list(argv))


def test_precedence_defaults_preset_yaml_flags(tmp_path):
    cfg = resolve_config(parse())
    assert cfg.preset == "gpt2" and cfg.position == "learned" and cfg.n_layer == 4
    cfg = resolve_config(parse("--preset", "llama"))
    assert (cfg.position, cfg.norm, cfg.mlp, cfg.n_kv_head, cfg.bias) == ("rope", "rmsnorm", "swiglu", 2, False)
    y = tmp_path / "c.yaml"
    y.write_text("preset: llama\nn_layer: 6\nlr: 1\n")
    cfg = resolve_config(parse("--config", str(y), "--n-layer", "3", "--compile", "--bias", "true"))
    assert cfg.preset == "llama" and cfg.n_layer == 3 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.compile == "true" and cfg.bias is True and cfg.position == "rope"


def test_bad_configs_are_explained(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("n_layers: 6\n")
    with pytest.raises(ValueError, match="unknown field"):
        resolve_config(parse("--config", str(y)))
    y.write_text("a: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        resolve_config(parse("--config", str(y)))
    with pytest.raises(ValueError, match="divisible"):
        resolve_config(parse("--d-model", "30", "--n-head", "4"))
    with pytest.raises(ValueError, match="not found"):
        resolve_config(parse("--config", str(tmp_path / "missing.yaml")))
