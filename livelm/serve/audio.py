"""POST /v1/audio/transcriptions and /v1/audio/speech: OpenAI's audio endpoints on `livelm serve`.

    transcriptions  multipart: file (any format a browser or phone records), model, language, prompt,
                    response_format (json | text | verbose_json | srt | vtt), temperature
                    -> {"text": ...} (verbose_json: language, duration, segments)
    speech          JSON: model, input, voice, response_format (mp3 | opus | aac | flac | wav | pcm), speed
                    -> the audio, streamed sentence by sentence where the format allows

The speech models (livelm/voice) are loaded on first use and run in this process's own worker
threads, never on the event loop and never in the engine's process, so a long transcription delays no
text generation beyond sharing the CPU. Both are listed in /v1/models under their own ids (and answer
to OpenAI's names too, so clients written for OpenAI work unchanged). Bad audio is a 400 in OpenAI's
error shape, with the reason.
"""
from __future__ import annotations

import asyncio
import importlib.util
import logging
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from livelm.serve.completions import APIError

log = logging.getLogger("livelm.serve")

STT_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")   # OpenAI's names
TTS_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
MAX_SPEECH_CHARS = 4096          # OpenAI's limit for one /v1/audio/speech input
TRANSCRIPT_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
ROUTES = ("/v1/audio/transcriptions", "/v1/audio/speech")


def _bad(message: str, param: str | None = None, code: str = "invalid_parameter") -> APIError:
    return APIError(400, message, param=param, code=code)


class Voice:
    """The speech side of one server: which models, loaded when first asked for, run in worker threads."""

    def __init__(self, stt: str | None = "whisper-base", tts: str | None = "espeak", threads: int = 0):
        self.stt_name, self.tts_name, self.threads = stt, tts, threads
        self.stt_id = Path(stt).name if stt else None      # "whisper-base", or a model folder's name
        self.tts_id = tts
        self._stt = self._tts = None
        self._lock = threading.Lock()
        # one thread each: a second transcription waits for the first rather than halving its speed
        self.stt_pool = ThreadPoolExecutor(1, thread_name_prefix="livelm-stt")
        self.tts_pool = ThreadPoolExecutor(1, thread_name_prefix="livelm-tts")

    @classmethod
    def available(cls, stt: str | None, tts: str | None, threads: int = 0) -> "Voice | None":
        """The engines asked for, minus those whose packages are missing here (said in the log), or None.
        A model that does not exist (a wrong --stt path) or an unknown engine is a ValueError now, at start."""
        missing = [m for m in ("faster_whisper", "av", "python_multipart") if importlib.util.find_spec(m) is None]
        if stt and missing:
            log.warning("speech to text is off: %s not installed (pip install 'livelm[voice]')", ", ".join(missing))
            stt = None
        if stt:
            from livelm.voice.stt import model_folder
            stt = str(model_folder(stt)[1]) if Path(stt).exists() else model_folder(stt)[0]
        if tts:
            from livelm.voice.tts import ENGINES, MissingEngine, load_tts
            if tts not in ENGINES:
                raise ValueError(f"--tts {tts}: unknown engine; choose one of {', '.join(ENGINES)} (or off)")
            if tts == "espeak" and shutil.which("espeak-ng") is None:
                log.warning("text to speech is off: espeak-ng is not installed (apt-get install espeak-ng)")
                tts = None
            elif tts != "espeak":
                try:
                    load_tts(tts)
                except MissingEngine as e:
                    log.warning("text to speech is off: %s", e)
                    tts = None
        return cls(stt, tts, threads) if stt or tts else None

    def cards(self, created: int) -> list[dict]:
        out = []
        if self.stt_id:
            out.append({"id": self.stt_id, "object": "model", "created": created, "owned_by": "livelm",
                        "task": "transcription", "aliases": list(STT_ALIASES)})
        if self.tts_id:
            out.append({"id": self.tts_id, "object": "model", "created": created, "owned_by": "livelm",
                        "task": "speech", "aliases": list(TTS_ALIASES)})
        return out

    def has(self, model_id: str) -> bool:
        return model_id in (self.stt_id, self.tts_id)

    def _check_model(self, model: str | None, task: str) -> None:
        ours, aliases = (self.stt_id, STT_ALIASES) if task == "transcription" else (self.tts_id, TTS_ALIASES)
        if ours is None:
            raise APIError(404, f"this server has no {task} model (start it with "
                                f"{'--stt whisper-base' if task == 'transcription' else '--tts espeak'}, "
                                f"and install livelm[voice])", param="model", code="model_not_found")
        if model and model != ours and model not in aliases:
            raise APIError(404, f"The model `{model}` does not exist for {task}. Available: {ours}",
                           param="model", code="model_not_found")

    def stt(self):
        with self._lock:
            if self._stt is None:
                from livelm.voice import load_stt
                self._stt = load_stt(self.stt_name, threads=self.threads)
                log.info("speech to text: %r", self._stt)
            return self._stt

    def tts(self):
        with self._lock:
            if self._tts is None:
                from livelm.voice import load_tts
                self._tts = load_tts(self.tts_name)
            return self._tts


# ---- transcriptions -------------------------------------------------------------------------------
def _timestamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def transcript_response(t, fmt: str) -> Response:
    if fmt in ("json", "verbose_json"):
        return JSONResponse(t.to_dict(verbose=fmt == "verbose_json"))
    if fmt == "text":
        return PlainTextResponse(t.text)
    sep = "," if fmt == "srt" else "."
    blocks = [f"{i + 1}\n" if fmt == "srt" else "" for i in range(len(t.segments))]
    body = "\n".join(f"{b}{_timestamp(s.start, sep)} --> {_timestamp(s.end, sep)}\n{s.text}\n"
                     for b, s in zip(blocks, t.segments))
    return PlainTextResponse(("WEBVTT\n\n" + body) if fmt == "vtt" else body)


async def read_upload(request: Request) -> tuple[bytes, dict]:
    """The multipart form: the `file` part's bytes and the other fields as strings; 400/413 otherwise."""
    from livelm.voice import MAX_AUDIO_BYTES
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_AUDIO_BYTES + 64 * 1024:
        raise APIError(413, f"the upload is {int(length) / 2**20:.1f} MB; audio files up to "
                            f"{MAX_AUDIO_BYTES // 2**20} MB are accepted", param="file", code="request_too_large")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise _bad("send the audio as multipart/form-data with a `file` field (as OpenAI's clients do)", "file")
    try:
        form = await request.form(max_files=1, max_fields=32, max_part_size=MAX_AUDIO_BYTES)
    except Exception as e:   # starlette's MultiPartException and friends: a malformed body
        raise _bad(f"the multipart body could not be read: {e}", "file") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise _bad("the `file` field with the audio is missing", "file")
    data = await upload.read()
    if len(data) > MAX_AUDIO_BYTES:
        raise APIError(413, f"the audio file is over {MAX_AUDIO_BYTES // 2**20} MB", param="file",
                       code="request_too_large")
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    await form.close()
    return data, fields


async def transcribe(voice: Voice, request: Request) -> Response:
    from livelm.voice import AudioError
    data, f = await read_upload(request)
    voice._check_model(f.get("model"), "transcription")
    fmt = f.get("response_format") or "json"
    if fmt not in TRANSCRIPT_FORMATS:
        raise _bad(f"response_format must be one of {', '.join(TRANSCRIPT_FORMATS)}", "response_format")
    try:
        temperature = float(f.get("temperature") or 0)
    except ValueError:
        raise _bad("temperature must be a number", "temperature") from None
    loop = asyncio.get_running_loop()

    def work():
        return voice.stt().transcribe(data, language=f.get("language") or None, prompt=f.get("prompt") or None,
                                      temperature=temperature)
    try:
        t = await loop.run_in_executor(voice.stt_pool, work)
    except AudioError as e:
        raise _bad(str(e), "file", code="invalid_audio") from None
    except ValueError as e:   # an unknown language, a temperature out of range
        param = "language" if "language" in str(e) else "temperature" if "temperature" in str(e) else None
        raise _bad(str(e), param) from None
    return transcript_response(t, fmt)


# ---- speech ---------------------------------------------------------------------------------------
async def speech(voice: Voice, body: dict) -> Response:
    from livelm.voice import FORMATS
    from livelm.voice.audio import STREAMABLE, encode_stream
    from livelm.voice.tts import sentences
    for name in ("model", "response_format"):   # a list here was a TypeError (a 500) at `fmt not in FORMATS`
        if body.get(name) is not None and not isinstance(body[name], str):
            raise _bad(f"{name} must be a string", name)
    voice._check_model(body.get("model"), "speech")
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise _bad("input must be a non-empty string: the text to speak", "input")
    if len(text) > MAX_SPEECH_CHARS:
        raise _bad(f"input is {len(text)} characters; at most {MAX_SPEECH_CHARS} are spoken per request", "input")
    fmt = body.get("response_format") or "mp3"      # OpenAI's default
    if fmt not in FORMATS:
        raise _bad(f"response_format must be one of {', '.join(FORMATS)}", "response_format")
    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
        raise _bad("speed must be a number from 0.25 to 4.0", "speed")
    voice_name = body.get("voice")
    if voice_name is not None and not isinstance(voice_name, str):
        raise _bad("voice must be a string", "voice")
    loop = asyncio.get_running_loop()
    tts = await loop.run_in_executor(voice.tts_pool, voice.tts)
    pieces = sentences(text) or [text]

    def chunks():   # one sentence at a time: the first is heard while the rest are still being made
        for piece in pieces:
            yield tts.synthesize(piece, voice=voice_name, speed=float(speed))

    stream = encode_stream(chunks(), tts.rate, fmt)

    async def body_bytes():
        while True:
            data = await loop.run_in_executor(voice.tts_pool, next, stream, None)
            if data is None:
                return
            if data:
                yield data
    headers = {"Cache-Control": "no-cache"}
    if fmt in STREAMABLE:
        return StreamingResponse(body_bytes(), media_type=FORMATS[fmt], headers=headers)
    return Response(b"".join([d async for d in body_bytes()]), media_type=FORMATS[fmt], headers=headers)
