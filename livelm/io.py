"""Crash-safe file writing: a killed process never leaves a half-written file.

Every file livelm writes goes to a temporary name in the same directory, is
flushed and fsync'ed, then renamed over the target. A rename within one file
system is atomic, so readers see either the old file or the new one.
"""
from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path


def temp_path(path: Path) -> Path:
    """A fresh hidden name beside `path`, for a file that is renamed over `path` once complete."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs):
    """Open a temporary file beside `path`; on clean exit fsync it and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    # 0666 minus the umask, as open() would; not tempfile.mkstemp, whose files are 0600, so a run
    # written by one user could not be served by another (a service account, a shared team folder)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # make the rename itself durable; not supported on every platform, so best effort
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def parse_json(text: str | bytes):
    """json.loads whose every failure is a json.JSONDecodeError (a ValueError).

    Python's json recurses once per nesting level, so a hostile file of "[[[[..." raises
    RecursionError, which callers catching JSONDecodeError would let escape; it is turned into
    a JSONDecodeError saying what is wrong."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply (hundreds of levels of [ or {)",
                                   text if isinstance(text, str) else "", 0) from None


def read_json_object(path: str | Path, error=ValueError) -> dict:
    """A JSON file holding one object; anything else raises `error` with a message naming the file."""
    path = Path(path)
    try:
        obj = parse_json(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is corrupt (not valid JSON: {e})") from None
    if not isinstance(obj, dict):
        raise error(f"{path} does not hold a JSON object")
    return obj
