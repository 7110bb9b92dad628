"""Voice: speech to text (Whisper through faster-whisper) and text to speech (espeak-ng, piper), and audio in
and out of every format a browser records or a client asks for. Chinese and English both first class.

    from livelm.voice import load_stt, load_tts, decode, encode
    stt = load_stt()                              # Whisper base, int8 on CPU
    stt.transcribe(open("q.webm", "rb").read(), language="zh").text
    tts = load_tts("espeak")                      # mixed Chinese/English, split by script
    wav = encode(tts.synthesize("你好, world!"), tts.rate, "wav")

Everything heavy (PyAV, faster-whisper, piper) is imported when first used: `import livelm.voice` is cheap,
and a missing package raises livelm.extras.MissingExtra naming the `voice` extra.
"""
from livelm.voice.audio import FORMATS, MAX_AUDIO_BYTES, MAX_AUDIO_SECONDS, AudioError, decode, encode, encode_stream
from livelm.voice.stt import Segment, SpeechToText, Transcript, load_stt
from livelm.voice.tts import TextToSpeech, load_tts, sentences, split_by_script

__all__ = ["AudioError", "MAX_AUDIO_SECONDS", "MAX_AUDIO_BYTES", "FORMATS", "decode", "encode", "encode_stream",
           "Segment", "Transcript", "SpeechToText", "load_stt", "TextToSpeech", "load_tts", "sentences",
           "split_by_script"]
