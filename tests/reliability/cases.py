"""Hostile files (issue 25): each case writes one adversarial file and returns the livelm call that reads it.

Shared by tests/reliability/test_hostile_files.py (every case must be refused with one of its
documented error classes, quickly, without allocating what the file declares) and
bench/hostile_files.py (the table in bench/RESULTS.md). A case is

    Case(file, name, build)        build(tmp: Path) -> a zero-argument function that reads the file

and `allowed` (module-level) maps each file kind to the exception classes that count as a clear refusal.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

NAME = "模型👍"        # non-ASCII in file and folder names: messages must still name the file


@dataclass
class Case:
    file: str                                   # kind of file: gguf, safetensors, tokenizer.json, ...
    name: str
    build: Callable[[Path], Callable[[], object]]


# ---- valid small files to spoil -------------------------------------------------------------------
def tiny_gguf_bytes() -> bytes:
    """A complete, importable 1-layer llama GGUF (byte-level BPE vocabulary of 259 tokens), ~40 KB."""
    import gguf
    from tokenizers import pre_tokenizers
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + sorted(pre_tokenizers.ByteLevel.alphabet())
    C, F, L, H = 16, 32, 1, 2
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "tiny.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_uint32("llama.block_count", L)
        w.add_uint32("llama.context_length", 64)
        w.add_uint32("llama.embedding_length", C)
        w.add_uint32("llama.feed_forward_length", F)
        w.add_uint32("llama.attention.head_count", H)
        w.add_uint32("llama.attention.head_count_kv", H)
        w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
        w.add_token_merges([])
        w.add_eos_token_id(0)
        w.add_chat_template("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                            "{% endfor %}")
        rng = np.random.default_rng(0)
        r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
        w.add_tensor("token_embd.weight", r(len(tokens), C))
        w.add_tensor("output_norm.weight", np.ones(C, np.float32))
        for i in range(L):
            for n, shape in (("attn_norm", (C,)), ("ffn_norm", (C,)), ("attn_q", (C, C)), ("attn_k", (C, C)),
                             ("attn_v", (C, C)), ("attn_output", (C, C)), ("ffn_gate", (F, C)),
                             ("ffn_up", (F, C)), ("ffn_down", (C, F))):
                w.add_tensor(f"blk.{i}.{n}.weight", r(*shape))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path.read_bytes()


def tiny_run(folder: Path) -> Path:
    """A small valid GPT run (livelm's own save_checkpoint) with a char tokenizer."""
    import torch
    from livelm.models.gpt import GPT, GPTConfig
    from livelm.runs import save_checkpoint
    from livelm.tokenizer import Tokenizer
    tok = Tokenizer.train_char(["hello world 你好世界 👍"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, d_model=16))
    save_checkpoint(folder, model, tok, {"arch": "gpt", "model": model.cfg.to_dict()}, step=3)
    return folder


def safetensors_bytes(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file by hand: u64 little-endian header length, JSON header, data."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + data


# ---- GGUF by hand: the header fields set to hostile values ------------------------------------------
def _gguf_string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def gguf_by_hand(n_tensors=1, n_kv=1, kv: bytes | None = None, tensor: bytes | None = None, tail=b"") -> bytes:
    """GGUF v3: magic, version, tensor count, kv count, the kv pairs, the tensor infos, padding, data."""
    kv = kv if kv is not None else (_gguf_string(b"general.architecture") + struct.pack("<I", 8) +
                                    _gguf_string(b"llama"))
    tensor = tensor if tensor is not None else (_gguf_string(b"token_embd.weight") + struct.pack("<I", 2) +
                                                struct.pack("<QQ", 4, 4) + struct.pack("<I", 0) +
                                                struct.pack("<Q", 0))
    body = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kv + tensor
    body += b"\0" * (-len(body) % 32)
    return body + tail


def _write(tmp: Path, name: str, data: bytes | str) -> Path:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        p.write_text(data, encoding="utf-8")
    else:
        p.write_bytes(data)
    return p


# ---- the readers -------------------------------------------------------------------------------------
def _gguf_case(name, make: Callable[[bytes], bytes], via="read_gguf"):
    def build(tmp):
        p = _write(tmp, f"{NAME}.gguf", make(tiny_gguf_bytes()))
        if via == "read_gguf":
            from livelm.interop.gguf_import import read_gguf
            return lambda: read_gguf(p)
        if via == "import":
            from livelm.interop.hf_import import import_model
            return lambda: import_model(p, tmp / "imported")
        import livelm
        return lambda: livelm.load(p)
    return Case("gguf", name, build)


def _set_tensor_field(data: bytes, field: str, value: int) -> bytes:
    """The first tensor info's dims / type / offset set to `value` (found by the name token_embd.weight)."""
    at = data.index(b"token_embd.weight") + len(b"token_embd.weight")
    n_dims = struct.unpack_from("<I", data, at)[0]
    dims_at, type_at = at + 4, at + 4 + 8 * n_dims
    b = bytearray(data)
    if field == "dim":
        struct.pack_into("<Q", b, dims_at, value)
    elif field == "n_dims":
        struct.pack_into("<I", b, at, value)
    elif field == "type":
        struct.pack_into("<I", b, type_at, value)
    elif field == "offset":
        struct.pack_into("<Q", b, type_at + 4, value)
    return bytes(b)


def _set_string_len(data: bytes, key: bytes, value: int) -> bytes:
    """The declared length of the key string `key` set to `value`."""
    at = data.index(key) - 8
    b = bytearray(data)
    struct.pack_into("<Q", b, at, value)
    return bytes(b)


def _set_array_count(data: bytes, key: bytes, value: int) -> bytes:
    """The element count of metadata array `key` (type ARRAY: u32 9, item type u32, count u64)."""
    at = data.index(key) + len(key) + 4 + 4
    b = bytearray(data)
    struct.pack_into("<Q", b, at, value)
    return bytes(b)


GGUF_CASES = [
    _gguf_case("empty file", lambda d: b""),
    _gguf_case("magic only", lambda d: d[:4]),
    _gguf_case("truncated header", lambda d: d[:200]),
    _gguf_case("truncated in tensor data", lambda d: d[:len(d) - 1000]),
    _gguf_case("text file named .gguf", lambda d: "这不是模型 not a model 👍\n".encode()),
    _gguf_case("version 999", lambda d: d[:4] + struct.pack("<I", 999) + d[8:]),
    _gguf_case("tensor count 2^63", lambda d: d[:8] + struct.pack("<Q", 2 ** 63) + d[16:]),
    _gguf_case("kv count 2^63", lambda d: d[:16] + struct.pack("<Q", 2 ** 63) + d[24:]),
    _gguf_case("key length 2^62", lambda d: _set_string_len(d, b"general.architecture", 2 ** 62)),
    _gguf_case("token array count 2^40", lambda d: _set_array_count(d, b"tokenizer.ggml.tokens", 2 ** 40)),
    _gguf_case("tensor dim 10^12 (declared 4 TB)", lambda d: _set_tensor_field(d, "dim", 10 ** 12)),
    _gguf_case("tensor dim 2^63 (overflow)", lambda d: _set_tensor_field(d, "dim", 2 ** 63)),
    _gguf_case("tensor n_dims 2^31", lambda d: _set_tensor_field(d, "n_dims", 2 ** 31)),
    _gguf_case("tensor type 9999", lambda d: _set_tensor_field(d, "type", 9999)),
    _gguf_case("tensor type I32 (integer weight)", lambda d: _set_tensor_field(d, "type", 26)),
    _gguf_case("tensor offset past end", lambda d: _set_tensor_field(d, "offset", 2 ** 40)),
    _gguf_case("tensor offset 2^64-32", lambda d: _set_tensor_field(d, "offset", 2 ** 64 - 32)),
    _gguf_case("hand-made: no tokenizer, 4x4 tensor", lambda d: gguf_by_hand(tail=b"\0" * 64)),
    _gguf_case("hand-made: kv value type 99", lambda d: gguf_by_hand(
        kv=_gguf_string(b"general.architecture") + struct.pack("<I", 99) + _gguf_string(b"llama"))),
    _gguf_case("hand-made: architecture is an int", lambda d: gguf_by_hand(
        kv=_gguf_string(b"general.architecture") + struct.pack("<II", 4, 7), tail=b"\0" * 64)),
    _gguf_case("hand-made: architecture 中文模型", lambda d: gguf_by_hand(
        kv=_gguf_string(b"general.architecture") + struct.pack("<I", 8) + _gguf_string("中文模型".encode()),
        tail=b"\0" * 64)),
    _gguf_case("hand-made: invalid UTF-8 key", lambda d: gguf_by_hand(
        kv=_gguf_string(b"\xff\xfe\xfd") + struct.pack("<I", 8) + _gguf_string(b"llama"), tail=b"\0" * 64)),
    _gguf_case("truncated, via livelm.load", lambda d: d[:len(d) // 2], via="load"),
    _gguf_case("tensor dim 10^12, via import", lambda d: _set_tensor_field(d, "dim", 10 ** 12), via="import"),
]


# ---- safetensors runs ------------------------------------------------------------------------------
def _run_case(name, spoil: Callable[[Path], None], file="safetensors", via="load_model"):
    def build(tmp):
        run = tiny_run(tmp / f"run-{NAME}")
        spoil(run)
        if via == "load_model":
            from livelm.runs import load_model
            return lambda: load_model(run)
        if via == "resume":
            from livelm.training.checkpoint import load_train_state
            return lambda: load_train_state(run)
        if via == "tokenizer":
            from livelm.tokenizer import Tokenizer
            return lambda: Tokenizer.load(run)
        import livelm
        return lambda: livelm.load(run)
    return Case(file, name, build)


def _spoil_weights(fn: Callable[[bytes], bytes]):
    def spoil(run: Path):
        p = run / "model.safetensors"
        p.write_bytes(fn(p.read_bytes()))
    return spoil


def _header(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack_from("<Q", data)[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _edit_header(edit: Callable[[dict], None]):
    def fn(data):
        h, rest = _header(data)
        edit(h)
        return safetensors_bytes(h, rest)
    return fn


def _first_tensor(h: dict) -> dict:
    return h[next(k for k in h if k != "__metadata__")]


def _shape_huge(h):
    t = _first_tensor(h)
    t["shape"], t["data_offsets"] = [10 ** 6, 10 ** 6], [0, 4 * 10 ** 12]


def _offsets_past_end(h):
    _first_tensor(h)["data_offsets"] = [0, 2 ** 40]


def _offsets_overlap(h):
    for t in (v for k, v in h.items() if k != "__metadata__"):
        t["data_offsets"] = [0, t["data_offsets"][1] - t["data_offsets"][0]]


def _dtype_bogus(h):
    _first_tensor(h)["dtype"] = "F128"


def _shape_mismatch(h):
    t = _first_tensor(h)
    t["shape"] = [t["shape"][0] + 1] + t["shape"][1:]


def _write_file(name: str, data: bytes | str):
    def spoil(run: Path):
        _write(run, name, data)
    return spoil


def _step_meta(h):
    h["__metadata__"] = {"step": ["not", "a", "string"]}


DEEP = "[" * 200_000 + "]" * 200_000         # 200K levels of nesting: Python's json recurses per level

SAFETENSORS_CASES = [
    _run_case("empty weights", _spoil_weights(lambda d: b"")),
    _run_case("7 bytes", _spoil_weights(lambda d: d[:7])),
    _run_case("truncated data", _spoil_weights(lambda d: d[:len(d) - 100])),
    _run_case("header length 2^63", _spoil_weights(lambda d: struct.pack("<Q", 2 ** 63) + d[8:])),
    _run_case("header length past end", _spoil_weights(lambda d: struct.pack("<Q", len(d)) + d[8:])),
    _run_case("header not JSON", _spoil_weights(lambda d: safetensors_bytes(b"{not json \xff\xfe", b""))),
    _run_case("header a JSON list", _spoil_weights(lambda d: safetensors_bytes(b"[1, 2, 3]"))),
    _run_case("header nested 200K deep", _spoil_weights(lambda d: safetensors_bytes(DEEP.encode()))),
    _run_case("shape 10^6 x 10^6 (declared 4 TB)", _spoil_weights(_edit_header(_shape_huge))),
    _run_case("offsets past end", _spoil_weights(_edit_header(_offsets_past_end))),
    _run_case("overlapping offsets", _spoil_weights(_edit_header(_offsets_overlap))),
    _run_case("dtype F128", _spoil_weights(_edit_header(_dtype_bogus))),
    _run_case("shape disagrees with offsets", _spoil_weights(_edit_header(_shape_mismatch))),
    _run_case("metadata not strings", _spoil_weights(_edit_header(_step_meta))),
    _run_case("tensor named 中文 + emoji, config disagrees", _spoil_weights(_edit_header(
        lambda h: h.update({"权重👍": _first_tensor(h)})))),
    _run_case("pickle named model.safetensors", _spoil_weights(
        lambda d: b"\x80\x04\x95" + b"cos\nsystem\n(S'touch /tmp/livelm-pwned'\ntR." * 3)),
    _run_case("config.json a list", _write_file("config.json", "[1, 2]"), file="config.json"),
    _run_case("config.json nested 200K deep", _write_file("config.json", DEEP), file="config.json"),
    _run_case("config.json invalid UTF-8", _write_file("config.json", b"{\"arch\": \"\xff\xfe\"}"),
              file="config.json"),
    _run_case("config.json n_layer 10^9", _write_file("config.json", json.dumps(
        {"arch": "gpt", "model": {"vocab_size": 300, "block_size": 16, "n_layer": 10 ** 9, "n_head": 2,
                                  "d_model": 16}})), file="config.json"),
    _run_case("config.json d_model 10^7", _write_file("config.json", json.dumps(
        {"arch": "gpt", "model": {"vocab_size": 10 ** 7, "block_size": 16, "n_layer": 1, "n_head": 2,
                                  "d_model": 10 ** 7}})), file="config.json"),
    _run_case("config.json model a string", _write_file("config.json", json.dumps(
        {"arch": "gpt", "model": "模型"})), file="config.json"),
    _run_case("train_state.pt a malicious pickle", _write_file(
        "train_state.pt", b"\x80\x04cposix\nsystem\n(S'touch /tmp/livelm-pwned'\ntR."), file="train_state.pt",
        via="resume"),
]


# ---- tokenizer.json and tokenizer_config.json ----------------------------------------------------
def _tok_case(name, files: dict[str, bytes | str]):
    return _run_case(name, lambda run: [_write(run, n, d) for n, d in files.items()], file="tokenizer",
                     via="tokenizer")


TOKENIZER_CASES = [
    _tok_case("tokenizer.json empty", {"tokenizer.json": b""}),
    _tok_case("tokenizer.json truncated", {"tokenizer.json": '{"version": "1.0", "model": {"type": "BPE", "vo'}),
    _tok_case("tokenizer.json invalid UTF-8", {"tokenizer.json": b"{\"model\": \"\xff\xfe\"}"}),
    _tok_case("tokenizer.json nested 200K deep", {"tokenizer.json": DEEP}),
    _tok_case("tokenizer.json a JSON list", {"tokenizer.json": "[\"模型\", 1]"}),
    _tok_case("tokenizer.json model type Evil", {"tokenizer.json": json.dumps(
        {"version": "1.0", "model": {"type": "Evil", "vocab": {"a": 0}}})}),
    _tok_case("tokenizer.json empty WordLevel vocab", {"tokenizer.json": json.dumps(
        {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
         "pre_tokenizer": None, "post_processor": None, "decoder": None,
         "model": {"type": "WordLevel", "vocab": {}, "unk_token": "[UNK]"}})}),
    _tok_case("tokenizer.json pickle-looking __reduce__", {"tokenizer.json": json.dumps(
        {"__reduce__": ["os.system", ["touch /tmp/livelm-pwned"]], "py/object": "os.system"})}),
    _tok_case("tokenizer_config.json a list", {"tokenizer_config.json": "[]"}),
    _tok_case("tokenizer_config.json nested 200K deep", {"tokenizer_config.json": DEEP}),
    _tok_case("tokenizer_config.json invalid UTF-8", {"tokenizer_config.json": b"{\"bos_token\": \"\xff\"}"}),
    _tok_case("chat_template.jinja invalid UTF-8", {"tokenizer_config.json": "{}",
                                                    "chat_template.jinja": b"{{ messages \xff\xfe }}"}),
]


# ---- chat templates ------------------------------------------------------------------------------
def _template_case(name, template: str):
    def build(tmp):
        from livelm.chat.template import render
        run = tiny_run(tmp / f"run-{NAME}")
        _write(run, "tokenizer_config.json", json.dumps({"chat_template": template, "eos_token": "<|eos|>"},
                                                        ensure_ascii=False))
        from livelm.tokenizer import Tokenizer
        tok = Tokenizer.load(run)
        msgs = [{"role": "user", "content": "你好 👍 hello"}]
        return lambda: render(msgs, tok, add_generation_prompt=True)
    return Case("chat template", name, build)


ESCAPES = {
    "__class__.__mro__ subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler.__init__.__globals__ os": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "joiner globals": "{{ joiner.__init__.__globals__ }}",
    "lipsum globals": "{{ lipsum.__globals__['os'].system('touch /tmp/livelm-pwned') }}",
    "namespace globals": "{{ namespace.__init__.__globals__ }}",
    "TemplateReference context": "{{ self._TemplateReference__context }}",
    "raise_exception globals": "{{ raise_exception.__globals__ }}",
    "tojson globals": "{{ (messages|tojson).__class__.__base__.__subclasses__() }}",
    "request/config objects": "{{ config.items() }}{{ request.application.__globals__ }}",
    "messages.__class__ mutation": "{% set x = messages.append(1) %}{{ messages }}",
    "format string attribute": "{{ '{0.__class__.__mro__}'.format(messages) }}",
    "import statement": "{% import 'os' as os %}{{ os.system('id') }}",
    "include file": "{% include '/etc/passwd' %}",
    "extends file": "{% extends '/etc/passwd' %}",
    "func_globals via strftime_now": "{{ strftime_now.__globals__ }}",
    "attr filter to dunder": "{{ messages|attr('__class__')|attr('__mro__') }}",
}
BOMBS = {
    "nested range 10^5 x 10^5": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested range printing": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "string * 10^10": "{{ 'x' * 10000000000 }}",
    "list * 10^9 then join": "{{ (['xxxxxxxxxx'] * 1000000000)|join }}",
    "pow 10**(10**10)": "{{ 10 ** (10 ** 10) }}",
    "center(10^10)": "{{ 'x'|center(10000000000) }}",
    "format width 10^10": "{{ '%10000000000d'|format(1) }}",
    "recursive macro": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "self-doubling strings": "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
                             "{% endfor %}{{ ns.s|length }}",
    "replace blow-up": "{% set ns = namespace(s='xxxxxxxxxx') %}{% for i in range(20) %}"
                       "{% set ns.s = ns.s|replace('x', 'xxxxxxxxxx') %}{% endfor %}{{ ns.s|length }}",
    "division by zero": "{{ 1 / 0 }}",
    "syntax error": "{% for m in messages %}{{ m.content }",
    "undefined call": "{{ nothing() }}",
}
TEMPLATE_CASES = ([_template_case("escape: " + k, v) for k, v in ESCAPES.items()] +
                  [_template_case("bomb: " + k, v) for k, v in BOMBS.items()])


# ---- JSONL training data ---------------------------------------------------------------------------
def _jsonl_case(name, data: bytes | str, reader="chat"):
    def build(tmp):
        p = _write(tmp, f"{NAME}.jsonl", data)
        if reader == "chat":
            from livelm.chat.data import read_conversations
            return lambda: read_conversations(p)
        if reader == "labelled":
            from livelm.data.labelled import read_labelled
            return lambda: read_labelled(p)
        from livelm.data.prepare import prepare
        return lambda: prepare([p], tmp / "prepared", tokenizer_kind="char")
    return Case("jsonl", f"{name} ({reader})", build)


JSONL_CASES = [c for reader in ("chat", "labelled", "prepare") for c in [
    _jsonl_case("invalid UTF-8", b"{\"text\": \"\xff\xfe\"}\n", reader),
    _jsonl_case("truncated line", '{"messages": [{"role": "user", "content": "你好', reader),
    _jsonl_case("nested 200K deep", DEEP + "\n", reader),
    _jsonl_case("a bare number", "1e999999\n", reader),
    _jsonl_case("NUL bytes", b"\0" * 1000, reader),
    _jsonl_case("a record that is a list", '[{"role": "user", "content": "hi"}]\n', reader),
]] + [
    _jsonl_case("role 魔鬼", '{"messages": [{"role": "魔鬼", "content": "👿"}]}\n'),
    _jsonl_case("content an object", '{"messages": [{"role": "user", "content": {"$gt": 1}}]}\n'),
    _jsonl_case("messages 10^5 deep dicts", '{"messages": ' + "{\"a\":" * 100_000 + "1" + "}" * 100_000 + "}\n"),
]


# ---- audio -------------------------------------------------------------------------------------
def _wav_header(rate=16000, channels=1, bits=16, data_len=0, riff_len=None) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, bits)
    riff_len = 36 + data_len if riff_len is None else riff_len
    return b"RIFF" + struct.pack("<I", riff_len) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + \
        b"data" + struct.pack("<I", data_len)


def _audio_case(name, make: Callable[[], bytes]):
    def build(tmp):
        data = make()
        _write(tmp, f"{NAME}.wav", data)
        from livelm.voice.audio import decode
        return lambda: decode(data)
    return Case("audio", name, build)


AUDIO_CASES = [
    _audio_case("WAV declaring 4 GB of samples, none present",
                lambda: _wav_header(data_len=2 ** 32 - 1, riff_len=2 ** 32 - 1)),
    _audio_case("WAV 0 Hz sample rate", lambda: _wav_header(rate=0, data_len=3200) + b"\1\0" * 1600),
    _audio_case("WAV 30000 channels, no samples", lambda: _wav_header(channels=30000, data_len=0)),
    _audio_case("RIFF header only", lambda: b"RIFF\xff\xff\xff\xffWAVE"),
    _audio_case("text named .wav", lambda: "这不是音频 👍".encode()),
    _audio_case("FLAC magic then zeros", lambda: b"fLaC" + b"\0" * 64),
    _audio_case("MP3 sync bytes only", lambda: b"\xff\xfb\x90\x00" * 2000),
    _audio_case("OGG page garbage", lambda: b"OggS" + b"\xff" * 4000),
]

ALL = GGUF_CASES + SAFETENSORS_CASES + TOKENIZER_CASES + TEMPLATE_CASES + JSONL_CASES + AUDIO_CASES


def allowed() -> dict[str, tuple[type, ...]]:
    """File kind -> the exception classes that are a documented, clear refusal."""
    from livelm.chat.data import ChatDataError
    from livelm.chat.template import ChatFormatError
    from livelm.data.shards import DataError
    from livelm.interop.gguf_import import GGUFImportError
    from livelm.interop.hf import InteropError
    from livelm.runs import CheckpointError
    from livelm.tokenizer import TokenizerError
    from livelm.voice.audio import AudioError
    return {"gguf": (GGUFImportError, InteropError), "safetensors": (CheckpointError,),
            "config.json": (CheckpointError,), "train_state.pt": (CheckpointError,),
            "tokenizer": (TokenizerError,), "chat template": (ChatFormatError,),
            "jsonl": (ChatDataError, DataError), "audio": (AudioError,)}
