"""Audio in and out: any container or codec a browser or a phone records -> mono float32 samples, and
samples -> WAV, MP3, Ogg/Opus, AAC, FLAC or raw PCM.

Decoding goes through PyAV (FFmpeg's libraries in a wheel; faster-whisper depends on it anyway): WAV,
FLAC, MP3, Ogg/Opus and Vorbis, WebM (what MediaRecorder produces), MP4/M4A and AAC, resampled and
mixed down to one channel in the same pass. Every way an upload can be wrong (empty, not audio, cut
off before any sound, too long, too large) raises AudioError with a sentence a person can act on.

Encoding: WAV and raw PCM with the standard library (16-bit signed little-endian, as OpenAI's `pcm`),
the compressed formats with the encoders PyAV's wheel carries (libmp3lame, libopus, FFmpeg's aac and
flac). `encode_stream` encodes a sequence of chunks (a spoken answer, sentence by sentence) into one
stream and yields its bytes as they are produced, for the formats that can be streamed.
"""
from __future__ import annotations

import io
import struct
import wave
from typing import Iterable, Iterator

import numpy as np

from livelm import extras

MAX_AUDIO_SECONDS = 600                  # longer uploads are refused (OpenAI accepts up to 25 MB of any length)
MAX_AUDIO_BYTES = 25 * 1024 * 1024       # OpenAI's upload limit

# format -> content type (the response_format names of OpenAI's /v1/audio/speech)
FORMATS: dict[str, str] = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",       # Opus in an Ogg container, as OpenAI sends it
    "aac": "audio/aac",        # ADTS frames
    "flac": "audio/flac",
    "pcm": "audio/pcm",        # raw 16-bit signed little-endian mono, no header
}
# formats whose bytes can be sent while later chunks are still being synthesized (flac rewrites its header)
STREAMABLE = ("wav", "mp3", "opus", "aac", "pcm")
# format -> (container, codec, sample rates the encoder takes, or None for any)
_AV_FORMATS = {
    "mp3": ("mp3", "libmp3lame", (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)),
    "opus": ("ogg", "libopus", (8000, 12000, 16000, 24000, 48000)),
    "aac": ("adts", "aac", (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)),
    "flac": ("flac", "flac", None),
}
_BITRATES = {"mp3": 64_000, "opus": 32_000, "aac": 64_000}   # mono speech


class AudioError(ValueError):
    """Audio that cannot be used (empty, not audio, too long, too large, undecodable); the message says why."""


def _av():
    return extras.need("av", "voice", "decoding and encoding audio")


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


# ---- in ----------------------------------------------------------------------------------------
def check_size(n_bytes: int) -> None:
    """AudioError for an empty file or one over MAX_AUDIO_BYTES (callers may check before reading it all)."""
    if n_bytes == 0:
        raise AudioError("the audio file is empty")
    if n_bytes > MAX_AUDIO_BYTES:
        raise AudioError(f"the audio file is {_mb(n_bytes)}; the limit is {_mb(MAX_AUDIO_BYTES)} "
                         f"(send a shorter recording or a compressed format such as mp3 or opus)")


def decode(data: bytes, rate: int = 16000) -> np.ndarray:
    """Audio file bytes (any container and codec FFmpeg reads) -> mono float32 samples at `rate` Hz."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode takes the file's bytes, not {type(data).__name__}")
    check_size(len(data))
    av = _av()
    unreadable = ("this is not an audio file that can be read (send WAV, FLAC, MP3, OGG/Opus, WebM or M4A; "
                  "{why})")
    try:
        container = av.open(io.BytesIO(bytes(data)), mode="r", metadata_errors="ignore")
    except av.FFmpegError as e:
        raise AudioError(unreadable.format(why=_reason(e))) from None
    with container:
        if not container.streams.audio:
            raise AudioError("the file holds no audio stream" +
                             (" (it is a video without sound)" if container.streams.video else ""))
        stream = container.streams.audio[0]
        declared = container.duration / 1_000_000 if container.duration else None   # av.time_base units (µs)
        if declared and declared > MAX_AUDIO_SECONDS + 1:
            raise AudioError(_too_long(declared))
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks, n, limit = [], 0, MAX_AUDIO_SECONDS * rate
        try:
            for frame in container.decode(stream):
                frame.pts = None   # resample by sample count: broken timestamps must not insert silence
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    n += chunks[-1].size
                if n > limit:
                    raise AudioError(_too_long(n / rate))
        except av.FFmpegError as e:
            if n == 0:   # nothing decoded at all: undecodable. A recording cut off later keeps what it has
                raise AudioError(unreadable.format(why=_reason(e))) from None
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if samples.size == 0:
        raise AudioError("the file holds no audio samples (it is cut off before the sound starts, or empty)")
    if samples.size > limit:
        raise AudioError(_too_long(samples.size / rate))
    return samples


def _reason(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return msg.strip().rstrip(".").lower() or "unknown format"


def _too_long(seconds: float) -> str:
    return (f"the audio is {seconds:.0f} s long; the limit is {MAX_AUDIO_SECONDS} s "
            f"({MAX_AUDIO_SECONDS // 60} minutes): split it into shorter pieces")


def duration(samples: np.ndarray, rate: int) -> float:
    return len(samples) / rate


# ---- out ---------------------------------------------------------------------------------------
def to_int16(samples) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    return (np.clip(np.nan_to_num(x), -1.0, 1.0) * 32767.0).astype("<i2")


def _check_format(fmt: str) -> str:
    fmt = (fmt or "").lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return fmt


def encode(samples, rate: int, fmt: str) -> bytes:
    """Mono samples (float in [-1, 1]) at `rate` Hz -> the bytes of a `fmt` file (a key of FORMATS)."""
    fmt = _check_format(fmt)
    if fmt == "wav":
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(to_int16(samples).tobytes())
        return buf.getvalue()
    if fmt == "pcm":
        return to_int16(samples).tobytes()
    return b"".join(_av_encode([samples], rate, fmt, streaming=False))


def wav_stream_header(rate: int) -> bytes:
    """A WAV header for a stream of unknown length (sizes 0xFFFFFFFF, as streaming servers send), 16-bit mono."""
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" + struct.pack("<I", 0xFFFFFFFF))


def encode_stream(chunks: Iterable, rate: int, fmt: str) -> Iterator[bytes]:
    """Encode a sequence of mono chunks at `rate` Hz as one `fmt` stream, yielding bytes as they are ready:
    after each chunk for the STREAMABLE formats (wav gets a header of unknown length), at the end for flac."""
    fmt = _check_format(fmt)
    if fmt in ("wav", "pcm"):
        if fmt == "wav":
            yield wav_stream_header(rate)
        for chunk in chunks:
            if len(chunk):
                yield to_int16(chunk).tobytes()
        return
    yield from _av_encode(chunks, rate, fmt, streaming=fmt in STREAMABLE)


def _av_encode(chunks: Iterable, rate: int, fmt: str, streaming: bool) -> Iterator[bytes]:
    av = _av()
    container_name, codec_name, rates = _AV_FORMATS[fmt]
    out_rate = rate if rates is None or rate in rates else min((r for r in rates if r >= rate), default=max(rates))
    # streaming: a sink that cannot seek, so no muxer goes back to rewrite bytes already sent (mp3's
    # Xing header stays a placeholder); whole files: a BytesIO, so the headers are complete
    sink = _Sink() if streaming else io.BytesIO()
    options = {"page_duration": "100000"} if container_name == "ogg" else {}   # Ogg pages every 0.1 s, not 1 s
    with av.open(sink, mode="w", format=container_name, options=options) as container:
        stream = container.add_stream(codec_name, rate=out_rate, layout="mono")
        if fmt in _BITRATES:
            stream.codec_context.bit_rate = _BITRATES[fmt]
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=out_rate)
        for chunk in chunks:
            if not len(chunk):
                continue
            # 16-bit input for every encoder: what a listener gets, and flac's native width
            frame = av.AudioFrame.from_ndarray(to_int16(chunk)[None, :], format="s16", layout="mono")
            frame.sample_rate = rate
            for f in resampler.resample(frame):
                for packet in stream.encode(f):
                    container.mux(packet)
            if streaming and (data := sink.take()):
                yield data
        for f in resampler.resample(None):
            for packet in stream.encode(f):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    yield sink.take() if streaming else sink.getvalue()


class _Sink:
    """A write-only, unseekable file for the muxer that hands out what was written since the last take."""

    def __init__(self):
        self.buf = bytearray()

    def write(self, b) -> int:
        self.buf += b
        return len(b)

    def take(self) -> bytes:
        data, self.buf = bytes(self.buf), bytearray()
        return data


# ---- changing the tempo --------------------------------------------------------------------------
def change_tempo(samples: np.ndarray, rate: int, factor: float) -> np.ndarray:
    """Play `factor` times faster (or slower, < 1) without changing the pitch (FFmpeg's atempo filter)."""
    if abs(factor - 1.0) < 1e-3 or len(samples) == 0:
        return np.asarray(samples, dtype=np.float32)
    av = _av()
    import av.filter
    graph = av.filter.Graph()
    node = graph.add_abuffer(format="flt", sample_rate=rate, layout="mono", time_base=f"1/{rate}")
    first = node
    steps, left = [], factor
    while left < 0.5 or left > 2.0:   # one atempo stays within [0.5, 2] for quality; chain them beyond
        step = 0.5 if left < 0.5 else 2.0
        steps.append(step)
        left /= step
    for step in [*steps, left]:
        nxt = graph.add("atempo", f"{step:.6f}")
        node.link_to(nxt)
        node = nxt
    sink = graph.add("abuffersink")
    node.link_to(sink)
    graph.configure()
    frame = av.AudioFrame.from_ndarray(np.asarray(samples, np.float32).reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate, frame.pts = rate, 0
    first.push(frame)
    first.push(None)
    out = []
    while True:
        try:
            out.append(sink.pull().to_ndarray().reshape(-1))
        except (av.error.BlockingIOError, av.error.EOFError):
            break
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def resample(samples: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """Mono float32 samples from `rate` Hz to `new_rate` Hz (FFmpeg's resampler)."""
    if rate == new_rate or len(samples) == 0:
        return np.asarray(samples, dtype=np.float32)
    av = _av()
    resampler = av.AudioResampler(format="flt", layout="mono", rate=new_rate)
    frame = av.AudioFrame.from_ndarray(np.asarray(samples, np.float32).reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = rate
    out = [f.to_ndarray().reshape(-1) for f in (*resampler.resample(frame), *resampler.resample(None))]
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
