"""Fuzzing the GGUF and safetensors readers with hypothesis (issue 25): a valid small file with its
bytes mutated (truncated, flipped, a length/count/offset field set to a huge value) is either read or
refused with the reader's own error (GGUFImportError, CheckpointError), within a time bound; never an
IndexError, struct.error, MemoryError, OverflowError or a hang."""
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability import cases

PER_EXAMPLE_S = 5.0
FUZZ = settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", 150)), deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
HUGE = st.sampled_from([0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 40, 10 ** 12, 2 ** 62, 2 ** 63,
                        2 ** 64 - 1, 2 ** 64 - 32])


@st.composite
def mutations(draw, size: int, hot: int):
    """A list of edits of a file of `size` bytes; `hot` bytes at the start hold the header (most edits land there)."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "u64", "u32"]))
        at = draw(st.integers(0, hot - 1) if draw(st.booleans()) else st.integers(0, size - 1))
        edits.append((kind, at, draw(HUGE) if kind in ("u64", "u32") else draw(st.integers(0, 255))))
    return edits


def mutate(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for kind, at, value in edits:
        at = min(at, max(len(b) - 1, 0))
        if kind == "truncate":
            del b[at:]
        elif kind == "flip" and b:
            b[at] ^= value or 1
        elif kind == "u64" and at + 8 <= len(b):
            struct.pack_into("<Q", b, at, value % 2 ** 64)
        elif kind == "u32" and at + 4 <= len(b):
            struct.pack_into("<I", b, at, value % 2 ** 32)
    return bytes(b)


def _timed(call):
    t0 = time.perf_counter()
    try:
        return call(), None
    except Exception as e:   # noqa: BLE001 - the kind is checked by the caller
        return None, e
    finally:
        assert time.perf_counter() - t0 < PER_EXAMPLE_S, "a mutated file took too long"


GGUF = cases.tiny_gguf_bytes()
GGUF_HEADER = GGUF.index(b"token_embd.weight") + 4096     # metadata and tensor infos


@FUZZ
@given(edits=mutations(len(GGUF), GGUF_HEADER))
def test_gguf_reader(edits, tmp_path_factory):
    from livelm.interop.gguf_import import Checkpoint, GGUFImportError, read_gguf
    path = tmp_path_factory.mktemp("gguf") / f"{cases.NAME}.gguf"
    path.write_bytes(mutate(GGUF, edits))
    out, err = _timed(lambda: read_gguf(path))
    assert err is None and isinstance(out, Checkpoint) or isinstance(err, GGUFImportError), repr(err)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return cases.tiny_run(tmp_path_factory.mktemp("run") / f"run-{cases.NAME}")


@FUZZ
@given(data=st.data())
def test_safetensors_reader(data, run, tmp_path_factory):
    from livelm.runs import CheckpointError, load_model
    weights = (run / "model.safetensors").read_bytes()
    header = 8 + struct.unpack_from("<Q", weights)[0]
    edits = data.draw(mutations(len(weights), header))
    target = tmp_path_factory.mktemp("st") / f"run-{cases.NAME}"
    target.mkdir()
    for f in run.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    (target / "model.safetensors").write_bytes(mutate(weights, edits))
    out, err = _timed(lambda: load_model(target))
    assert err is None or isinstance(err, CheckpointError), repr(err)
