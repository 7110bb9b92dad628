"""Voice to voice through `livelm serve`: from the end of a spoken question to the first audio of the answer.

    python bench/voice_to_voice.py                        # the default assistant and SmolLM2
    python bench/voice_to_voice.py --runs runs/assistant/chat --rounds 5

What a voice client does, timed on the client (loopback only; the server is started here):
  1. upload the recorded question (a ~3 s WAV spoken by espeak-ng) to /v1/audio/transcriptions;
  2. stream /v1/chat/completions with the transcript until the answer's first sentence is complete;
  3. ask /v1/audio/speech for that sentence (wav, streamed) and stop at its first bytes.
The figure is the sum (1 + 2 + 3); the parts are printed too. Every round asks a different question.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.real_model import cpu  # noqa: E402
from bench.serve_load import start_server  # noqa: E402

QUESTIONS = ["What time do you open on Sunday?", "How much is the oolong tea?", "Do you ship to Canada?",
             "Can I return a gift card?", "What is your phone number?", "Where is your shop?"]
SENTENCE = re.compile(r"[。！？!?]|[.…](?=\s)|\n")


def question_wav(text: str) -> bytes:
    """`text` spoken by espeak-ng, padded with silence to 3 s (a short spoken question, as a recorder sends it)."""
    import numpy as np
    from livelm.voice import encode, load_tts
    tts = load_tts("espeak")
    speech = tts.synthesize(text)
    pad = max(0, 3 * tts.rate - len(speech))
    return encode(np.concatenate([speech, np.zeros(pad, dtype=np.float32)]), tts.rate, "wav")


def one_round(url: str, model: str, wav: bytes) -> dict:
    with httpx.Client(timeout=120) as c:
        t0 = time.perf_counter()
        r = c.post(url + "/v1/audio/transcriptions", files={"file": ("q.wav", wav, "audio/wav")},
                   data={"model": "whisper-1", "language": "en"})
        r.raise_for_status()
        question = r.json()["text"]
        t1 = time.perf_counter()
        text, first = "", None
        with c.stream("POST", url + "/v1/chat/completions",
                      json={"model": model, "messages": [{"role": "user", "content": question}], "stream": True,
                            "temperature": 0, "max_tokens": 96}) as resp:
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    text += chunk["choices"][0]["delta"]["content"]
                    m = SENTENCE.search(text)
                    if m and len(text[:m.end()].strip()) > 1:
                        first = text[:m.end()]
                        break
            first = first or text
        t2 = time.perf_counter()
        with c.stream("POST", url + "/v1/audio/speech",
                      json={"model": "tts-1", "input": first, "response_format": "wav"}) as resp:
            for data in resp.iter_raw():
                if len(data) > 44:     # past the WAV header: sound
                    break
        t3 = time.perf_counter()
    return {"total_s": t3 - t0, "asr_s": t1 - t0, "first_sentence_s": t2 - t1, "tts_first_audio_s": t3 - t2,
            "heard": question, "first_sentence": first.strip()[:80]}


def measure(run: Path, rounds: int, label: str) -> dict:
    proc, url = start_server(run, ["--learn", "off", "--max-batch", "4"])
    try:
        model = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
        wavs = [question_wav(q) for q in QUESTIONS]
        one_round(url, model, wavs[0])          # warm up: loads Whisper and espeak
        rows = [one_round(url, model, wavs[i % len(wavs)]) for i in range(rounds)]
    finally:
        proc.terminate()
        proc.wait(60)
    med = {k: round(statistics.median(r[k] for r in rows), 3) for k in ("total_s", "asr_s", "first_sentence_s",
                                                                           "tts_first_audio_s")}
    return {"model": label, "rounds": rounds, "median": med, "max_total_s": round(max(r["total_s"] for r in rows), 3),
            "example": {k: rows[0][k] for k in ("heard", "first_sentence")}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="*", type=Path, help="runs to serve (default: the default assistant and SmolLM2)")
    ap.add_argument("--rounds", type=int, default=6)
    a = ap.parse_args(argv)
    print(json.dumps({"cpu": cpu()}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        runs = a.runs
        if not runs:
            from livelm.demo import build
            from livelm.interop.hf_import import import_model
            from livelm.interop.ready import locate
            smol = Path(tmp) / "smollm2"
            import_model(locate("smollm2", install=False), smol)
            runs = [build(), smol]
        for run in runs:
            print(json.dumps(measure(run, a.rounds, run.name), ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
