"""The package's shape, checked: layers import only downwards, no cycles, commands import only what they use."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    """pyproject.toml's [tool.importlinter] contracts: the layers (cli on top; models, tokenizer, machine
    at the bottom), nothing imports the CLI, and no cycles between sibling modules."""
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "broken" in proc.stdout and "0 broken" in proc.stdout


def modules_loaded(*argv: str) -> set[str]:
    code = ("import sys\nfrom livelm.cli import main\n"
            f"try:\n    main({list(argv)!r})\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(proc.stdout.split())


def test_a_command_imports_only_what_it_uses():
    loaded = modules_loaded("prepare", "--help")
    assert not {"fastapi", "uvicorn", "torch", "torch.distributed", "livelm.serve.app"} & loaded
    top = modules_loaded("--help")
    assert "torch" not in top and not any(m.startswith("livelm.cli.") and m != "livelm.cli.flags" for m in top)
    serve = modules_loaded("serve", "--help")            # a command's own help builds its own parser only
    assert "livelm.cli.serve" in serve and "livelm.cli.train" not in serve and "fastapi" not in serve


def test_the_cli_keeps_the_libraries_choices():
    """livelm/cli/ship.py lists the methods itself (so `--help` imports nothing heavy): the same as the library's."""
    from livelm.cli import ship
    from livelm.compress import prune
    from livelm.models import quantized
    assert ship.QUANT_METHODS == quantized.METHODS and ship.INT4_GROUP_SIZES == quantized.INT4_GROUP_SIZES
    assert ship.PRUNE_METHODS == prune.METHODS
