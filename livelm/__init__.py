"""livelm: a compact, readable LLM stack — tokenize, pretrain, fine-tune, chat, serve, learn live.

The Python API (livelm/api.py): load, train, prepare and the Model they return. They are
imported on first use, so `import livelm` (and the `livelm` command) stays fast.
"""
from importlib import metadata

__all__ = ["load", "train", "prepare", "Model"]
try:
    __version__ = metadata.version("livelm")
except metadata.PackageNotFoundError:   # run from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str):
    if name in __all__:
        from livelm import api
        return getattr(api, name)
    raise AttributeError(f"module 'livelm' has no attribute {name!r}")
