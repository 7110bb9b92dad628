"""Fixtures for the voice tests: the real Whisper base model and the real espeak-ng, loaded once.

Nothing here is skipped quietly: a missing package or program fails the test with what to install
(`make test` installs them all: the voice extra, and espeak-ng through apt-get)."""
import pytest


@pytest.fixture(scope="session")
def stt():
    from livelm.extras import MissingExtra
    from livelm.voice import load_stt
    try:
        model = load_stt()
    except MissingExtra as e:
        pytest.fail(f"speech to text is not installed: {e} (make test installs it)")
    import ctranslate2
    ctranslate2.set_random_seed(0)   # Whisper's temperature fallback samples: the same transcript every run
    return model


@pytest.fixture(scope="session")
def espeak():
    from livelm.voice import load_tts
    from livelm.voice.tts import MissingEngine
    try:
        return load_tts("espeak")
    except MissingEngine as e:
        pytest.fail(f"{e} (make test installs it with apt-get when run as root)")


def tone(seconds: float, rate: int, hz: float = 440.0, channels: int = 1):
    import numpy as np
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return np.stack([x] * channels) if channels > 1 else x
