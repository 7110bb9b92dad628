"""Lifelong memory: 1,000 facts of one tenant, looked up as fast as 10, and corrections that supersede."""
import itertools

from livelm.learn.feedback import Feedback, FeedbackStore
from livelm.learn.memory import Memory

SYLLABLES = ["ka", "lo", "mi", "zu", "re", "to", "va", "ne", "qi", "sha", "dor", "fen"]


def names(n: int, length: int = 4) -> list[str]:
    """n different invented words (no digits, no real words): entities and their capitals."""
    return ["".join(p).capitalize() for p in itertools.islice(itertools.product(SYLLABLES, repeat=length), n)]


def test_lookup_among_1000_facts_visits_what_it_visits_among_10(tmp_path):
    countries, capitals = names(1000), names(1000, 3)[::-1]
    visited = {}
    for n in (10, 1000):
        store = FeedbackStore(tmp_path / f"{n}.sqlite")
        for country, city in zip(countries[:n], capitals[:n]):
            store.add(Feedback("fact", [], correction=f"The capital of {country} is {city}.", tenant="t"))
        memory = Memory(store)
        for i in (0, 3, n - 1):
            notes = memory.notes("t", f"What is the capital of {countries[i]}?")
            assert notes == [f"The capital of {countries[i]} is {capitals[i]}."]
        # Chinese and emoji questions find nothing among English notes, and cost nothing either
        assert memory.notes("t", "首都是哪里？🙂") == []
        index = memory.index("t")
        index.search(f"What is the capital of {countries[5]}?", min_coverage=memory.min_coverage)
        visited[n] = index.visited
    assert visited[1000] <= 2 * visited[10], visited     # an index, not a scan of every note


def test_a_later_correction_supersedes_and_forget_removes(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    memory = Memory(store)
    ask = [{"role": "user", "content": "How much is the oolong tea? 乌龙茶多少钱？"}]
    store.add(Feedback("correction", ask, answer="¥40", correction="The oolong tea is ¥56. 乌龙茶¥56。", tenant="t"))
    assert memory.notes("t", ask[0]["content"]) == ["The oolong tea is ¥56. 乌龙茶¥56。"]
    later = store.add(Feedback("correction", ask, answer="¥56", correction="The oolong tea is ¥58 now. 乌龙茶¥58。",
                               tenant="t"))
    assert memory.notes("t", ask[0]["content"]) == ["The oolong tea is ¥58 now. 乌龙茶¥58。"]   # one note, the latest
    assert store.forget("t", later.id)
    assert memory.notes("t", ask[0]["content"]) == ["The oolong tea is ¥56. 乌龙茶¥56。"]     # the earlier one again


def test_chinese_function_characters_do_not_hide_a_note():
    """A rephrasing that adds function characters (了, 谁) finds the note: they are not terms, and no
    bigram spans them; the content characters and their bigrams still are."""
    from livelm.learn.memory import BM25, MemoryItem, terms
    assert terms("谁写了《水浒传》？📚") == ["写", "水", "浒", "传", "水浒", "浒传"]
    index = BM25([MemoryItem(1, "a", "What is the capital of Burkina Faso? The capital is Ouagadougou."),
                  MemoryItem(2, "b", "《水浒传》的作者是谁？ 《水浒传》的作者是施耐庵。")])
    assert [item.id for _, item in index.search("谁写了《水浒传》？📚", 3, min_coverage=0.4)] == [2]
    assert index.search("今天天气怎么样？☀️", 3, min_coverage=0.4) == []
