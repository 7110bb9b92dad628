"""`livelm transcribe` and `livelm speak` through the command line, bad files included."""
import json
import subprocess
import sys

from livelm.voice import FORMATS, decode
from livelm.voice.stt import error_rate
from tests.conftest import ROOT, run_cli


def test_speak_then_transcribe_chinese_and_english(tmp_path):
    en, zh = tmp_path / "en.mp3", tmp_path / "zh.opus"
    out = run_cli("speak", "Thank you for your help. I will fly to London tomorrow.", "--out", en)
    info = json.loads(out.stdout)
    assert info["format"] == "mp3" and info["engine"] == "espeak" and info["voice"] == "en-us+f3"
    assert en.read_bytes()[:3] in (b"ID3", b"\xff\xfb", b"\xff\xf3") and info["bytes"] == en.stat().st_size
    assert abs(len(decode(en.read_bytes())) / 16000 - info["seconds"]) < 0.1
    run_cli("speak", "今天天气很好，我们去公园散步吧。我明天要去北京开会。", "--out", zh, "--voice", "alloy")
    assert zh.read_bytes().startswith(b"OggS")

    proc = run_cli("transcribe", en, zh, "--format", "json")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [d["file"] for d in lines] == [str(en), str(zh)]
    assert error_rate("Thank you for your help. I will fly to London tomorrow.", lines[0]["text"]) <= 0.15
    assert error_rate("今天天气很好，我们去公园散步吧。我明天要去北京开会。", lines[1]["text"]) <= 0.4, lines[1]
    assert "loaded whisper-base (int8 on cpu" in proc.stderr            # logs on stderr, results on stdout

    proc = run_cli("transcribe", en, "--format", "verbose_json", "--language", "en")
    d = json.loads(proc.stdout)
    assert d["language"] == "english" and d["segments"] and d["duration"] > 2


def test_bad_files_one_line_each_and_exit_1(tmp_path, espeak):
    good = tmp_path / "good.wav"
    run_cli("speak", "Hello there.", "--out", good)
    (tmp_path / "notes.txt").write_text("This is a text file, not audio.\n" * 20)
    (tmp_path / "empty.wav").write_bytes(b"")
    proc = run_cli("transcribe", tmp_path / "notes.txt", tmp_path / "missing.wav", tmp_path / "empty.wav", good,
                   check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert errors == [f"livelm transcribe: error: {tmp_path / 'notes.txt'}: this is not an audio file that can be "
                      f"read (send WAV, FLAC, MP3, OGG/Opus, WebM or M4A; invalid data found when processing input)",
                      f"livelm transcribe: error: {tmp_path / 'missing.wav'}: no such file",
                      f"livelm transcribe: error: {tmp_path / 'empty.wav'}: the audio file is empty"]
    assert "Traceback" not in proc.stderr
    assert proc.stdout.lower().startswith("hello there") and proc.stdout.count("\n") == 1   # the good one: text
    # only bad files: the model is never loaded
    proc = run_cli("transcribe", tmp_path / "notes.txt", check=False)
    assert proc.returncode == 1 and "loaded" not in proc.stderr and proc.stdout == ""
    proc = run_cli("transcribe", good, "--language", "klingon", check=False)
    assert proc.returncode == 1 and "unknown language 'klingon'" in proc.stderr


def test_speak_usage_errors_and_stdin(tmp_path):
    proc = run_cli("speak", "hi", "--out", tmp_path / "x.xyz", check=False)
    assert proc.returncode == 1 and "cannot tell the audio format from" in proc.stderr
    proc = run_cli("speak", "hi", "--out", tmp_path / "x.wav", "--speed", "9", check=False)
    assert proc.returncode == 1 and "--speed must be between 0.25 and 4.0" in proc.stderr
    proc = run_cli("speak", "hi", "--out", tmp_path / "x.wav", "--engine", "sam", check=False)
    assert proc.returncode == 2 and "invalid choice: 'sam'" in proc.stderr
    proc = run_cli("speak", "hi", check=False)
    assert proc.returncode == 2 and "--out" in proc.stderr
    assert not (tmp_path / "x.wav").exists()
    # TEXT "-" reads stdin; --out "-" writes the audio to stdout; --format beats the suffix
    proc = subprocess.run([sys.executable, "-m", "livelm.cli", "speak", "-", "--out", "-", "--format", "flac"],
                          input="你好，world!".encode(), capture_output=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith(b"fLaC")
    assert len(decode(proc.stdout)) > 0.5 * 16000
    proc = run_cli("speak", "-", "--out", tmp_path / "y.wav", input="  \n", check=False)
    assert proc.returncode == 1 and "there is no text to speak on stdin" in proc.stderr   # not a silent file
    assert not (tmp_path / "y.wav").exists()


def test_help_loads_nothing_heavy_and_choices_match_the_library():
    code = ("import sys\nfrom livelm.cli import main\n"
            "for argv in (['transcribe', '--help'], ['speak', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(' '.join(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    loaded = set(proc.stdout.splitlines()[-1].split())
    assert "usage: livelm transcribe" in proc.stdout and "usage: livelm speak" in proc.stdout
    assert not {"av", "faster_whisper", "ctranslate2", "torch", "numpy", "livelm.voice"} & loaded
    from livelm.cli import voice as cli_voice
    from livelm.voice import stt, tts
    assert cli_voice.ENGINES == tts.ENGINES and cli_voice.AUDIO_FORMATS == tuple(FORMATS)
    assert cli_voice.COMPUTE_TYPES == stt.COMPUTE_TYPES
    assert set(cli_voice.SUFFIXES.values()) == set(FORMATS)
