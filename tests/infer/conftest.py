"""A small bilingual BPE tokenizer shared by the engine's tests (Chinese, emoji, mixed text and a repeat)."""
import pytest

from livelm.tokenizer import Tokenizer

TEXT = ["你好，世界！🙂 Hello world. 枫叶小铺的乌龙茶 ¥56。Mixed 中英 text 👍🏽 émoji", "ab" * 20]


@pytest.fixture(scope="session")
def tok():
    return Tokenizer.train_bpe(TEXT * 30, vocab_size=320, show_progress=False)
