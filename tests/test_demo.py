"""`make demo`'s cache key: the default assistant is rebuilt when what it is built from changes, and only then."""
import dataclasses

from livelm import demo
from livelm.data import shop


def test_recipe_hash_follows_the_corpus_not_the_generator_source(monkeypatch):
    key = demo.recipe_hash()
    assert key == demo.recipe_hash()   # deterministic: the corpus is generated from a fixed seed
    real = shop.build

    def edited(seed, **kw):   # the generator now writes one Chinese answer differently
        corpus = real(seed, **kw)
        chats = [dict(c) for c in corpus.train_chats]
        chats[0] = {"messages": chats[0]["messages"][:-1] + [{"role": "assistant", "content": "营业时间改了 🕘"}]}
        return dataclasses.replace(corpus, train_chats=chats)

    monkeypatch.setattr(shop, "build", edited)
    assert demo.recipe_hash() != key
    monkeypatch.setattr(shop, "build", real)
    monkeypatch.setattr(demo, "FINETUNE", {**demo.FINETUNE, "max_iters": 701})   # the recipe itself
    assert demo.recipe_hash() != key
