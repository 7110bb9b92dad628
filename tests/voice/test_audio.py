"""livelm/voice/audio.py: every format a browser or a client sends decodes to mono float32 at the asked rate;
every format OpenAI's speech endpoint offers encodes; bad uploads say what is wrong."""
import io
import wave

import numpy as np
import pytest

from livelm.voice import FORMATS, MAX_AUDIO_BYTES, MAX_AUDIO_SECONDS, AudioError, decode, encode, encode_stream
from livelm.voice import audio
from tests.voice.conftest import tone


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def av_file(container: str, codec: str, rate: int, channels: int, seconds: float = 1.5, hz: float = 440.0) -> bytes:
    """A file written by PyAV directly (not by our encode): stereo at 44.1/48 kHz, as phones and browsers record."""
    import av
    x = (tone(seconds, rate, hz, channels) * 32767).astype("<i2").reshape(channels, -1)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as c:
        s = c.add_stream(codec, rate=rate, layout="stereo" if channels == 2 else "mono")
        frame = av.AudioFrame.from_ndarray(x.T.reshape(1, -1).copy(), format="s16",
                                           layout="stereo" if channels == 2 else "mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=s.codec_context.format.name, layout=s.codec_context.layout.name, rate=rate)
        for f in [*resampler.resample(frame), *resampler.resample(None)]:
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return buf.getvalue()


@pytest.mark.parametrize("container,codec,rate", [("wav", "pcm_s16le", 44100), ("flac", "flac", 44100),
                                                  ("mp3", "libmp3lame", 44100), ("ogg", "libopus", 48000),
                                                  ("webm", "libopus", 48000), ("ipod", "aac", 48000)])
def test_decode_what_recorders_write_stereo_44k_48k(container, codec, rate):
    data = av_file(container, codec, rate, channels=2, seconds=1.5)
    x = decode(data, 16000)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) / 16000 - 1.5) < 0.08, len(x) / 16000          # codec padding: a few ms, never a rate error
    assert abs(peak_hz(x, 16000) - 440) < 5                           # resampled, not sped up or slowed down
    assert 0.2 < np.abs(x).max() < 0.5    # mixed down at -3 dB a channel (0.42), not summed (0.6)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "pcm"])
@pytest.mark.parametrize("rate", [16000, 22050])
def test_encode_then_decode_every_format(fmt, rate):
    x = tone(2.0, rate, hz=300)
    data = encode(x, rate, fmt)
    y = decode(data, 24000)
    # encoder delay and padding: ADTS carries no priming info, so AAC decodes up to two frames (0.13 s at 16 kHz) long
    assert abs(len(y) / 24000 - 2.0) < (0.15 if fmt == "aac" else 0.08)
    assert abs(peak_hz(y, 24000) - 300) < 5
    magic = {"wav": b"RIFF", "flac": b"fLaC", "opus": b"OggS"}
    if fmt in magic:
        assert data.startswith(magic[fmt])
    if fmt == "opus":
        assert b"OpusHead" in data[:100]


def test_pcm_and_wav_are_16_bit_mono():
    x = tone(0.5, 24000)
    pcm = encode(x, 24000, "pcm")
    assert len(pcm) == len(x) * 2
    assert np.allclose(np.frombuffer(pcm, "<i2") / 32767, x, atol=1e-4)
    with wave.open(io.BytesIO(encode(x, 24000, "wav"))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 24000, len(x))
    assert set(FORMATS) == {"wav", "mp3", "opus", "aac", "flac", "pcm"}
    assert FORMATS["mp3"] == "audio/mpeg" and FORMATS["wav"] == "audio/wav"
    with pytest.raises(ValueError, match="unknown audio format 'ogg-vorbis'"):
        encode(x, 24000, "ogg-vorbis")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_encode_stream_yields_while_chunks_arrive(fmt):
    """The answer's audio goes out sentence by sentence: bytes come after the first chunk, before the last."""
    rate = 22050
    chunks = [tone(1.0, rate, 300), tone(1.0, rate, 300)]
    produced = []

    def source():
        for c in chunks:
            yield c
            produced.append(len(b"".join(out)))   # what the consumer had when the next chunk was asked for

    out = []
    for data in encode_stream(source(), rate, fmt):
        out.append(data)
    whole = b"".join(out)
    if fmt in audio.STREAMABLE:
        assert produced[0] > 0, "nothing was sent after the first chunk"
    if fmt == "pcm":
        assert len(whole) == 2 * rate * 2
        return
    y = decode(whole, 16000)
    assert abs(len(y) / 16000 - 2.0) < 0.1


def test_change_tempo_and_resample():
    x = tone(2.0, 22050, 300)
    for factor in (0.25, 0.5, 1.5, 4.0):
        y = audio.change_tempo(x, 22050, factor)
        assert abs(len(y) / len(x) - 1 / factor) < 0.03
        assert abs(peak_hz(y, 22050) - 300) < 6   # the pitch stays
    y = audio.resample(x, 22050, 16000)
    assert abs(len(y) - 32000) < 50 and abs(peak_hz(y, 16000) - 300) < 5


def wav_bytes(x, rate):
    return encode(x, rate, "wav")


def test_bad_uploads_say_what_is_wrong(tmp_path):
    with pytest.raises(AudioError, match="empty"):
        decode(b"")
    with pytest.raises(AudioError, match="not an audio file"):
        decode(np.random.default_rng(0).bytes(4000))
    with pytest.raises(AudioError, match="not an audio file"):
        decode(("Hello, this is a text file.\n你好，这是一个文本文件。\n" * 40).encode("utf-8"))
    with pytest.raises(AudioError, match="limit is 25.0 MB"):
        decode(b"\0" * (MAX_AUDIO_BYTES + 1))
    # cut off before any sound: a header with nothing after it, an mp3 / ogg's first few hundred bytes
    x = tone(2.0, 22050)
    with pytest.raises(AudioError, match="no audio samples|not an audio file"):
        decode(wav_bytes(x, 22050)[:44])
    for fmt in ("mp3", "opus"):
        with pytest.raises(AudioError):
            decode(encode(x, 22050, fmt)[:150])
    # cut off in the middle: what was recorded is kept (a browser upload that lost its tail)
    cut = decode(encode(x, 22050, "mp3")[:len(encode(x, 22050, "mp3")) // 2], 16000)
    assert 0.6 < len(cut) / 16000 < 1.4
    # a video container with no sound
    import av
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="webm") as c:
        s = c.add_stream("libvpx", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            frame.pts = i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    with pytest.raises(AudioError, match="no audio stream"):
        decode(buf.getvalue())


def test_too_long_is_refused_with_and_without_a_declared_duration():
    rate = 8000
    x = np.zeros((MAX_AUDIO_SECONDS + 5) * rate, np.float32)
    with pytest.raises(AudioError, match=f"limit is {MAX_AUDIO_SECONDS} s"):
        decode(wav_bytes(x, rate))                                      # the header says how long
    streamed = audio.wav_stream_header(rate) + audio.to_int16(x).tobytes()   # sizes unknown: counted while decoding
    with pytest.raises(AudioError, match=f"limit is {MAX_AUDIO_SECONDS} s"):
        decode(streamed)
    ok = decode(audio.wav_stream_header(rate) + audio.to_int16(x[:rate * 3]).tobytes(), 16000)
    assert abs(len(ok) - 3 * 16000) < 10
