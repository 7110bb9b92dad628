import pytest

from tests.conftest import run_cli


@pytest.fixture(scope="session")
def tiny_llama_run(tmp_path_factory, char_data):
    """A 2-layer x 64 llama-preset GPT (GQA: 4 query heads, 2 K/V heads) trained briefly on char data."""
    d = tmp_path_factory.mktemp("tinyllama")
    run_cli("train", "--data", char_data, "--out", d / "run", "--preset", "llama", "--n-layer", "2", "--n-head", "4",
            "--n-kv-head", "2", "--d-model", "64", "--block-size", "64", "--batch-size", "8", "--max-iters", "60",
            "--eval-interval", "60", "--eval-iters", "2", "--lr", "3e-3", "--progress", "false")
    return d / "run"
