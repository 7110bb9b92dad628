"""The update guard's probes (livelm/learn/probes.py): the file format, the run's and the operator's, grading."""
import json

import pytest

from livelm.learn.probes import (PROBES_FILE, ProbeError, copy_probes, has_run_probes, probe_accuracy, probe_set,
                                 read_probes, write_probes)

Q = [{"role": "user", "content": "周末几点开门？🕙"}]


def test_probes_round_trip_through_the_run_and_sample_by_seed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert not has_run_probes(run) and probe_set(run, 10, 0, None) == []
    probes = [{"messages": [{"role": "user", "content": f"Question {i}?"}], "expect": [str(i)], "lang": "en"}
              for i in range(20)] + [{"messages": Q, "expect": ["早上10点", "上午10点"], "lang": "zh"}]
    path = write_probes(run, probes)
    assert path == run / PROBES_FILE and sorted(p.name for p in run.iterdir()) == [PROBES_FILE]   # no temp file
    assert "上午10点" in path.read_text(encoding="utf-8")                                          # readable UTF-8
    assert read_probes(path, "run") == [{**p, "source": "run"} for p in probes]
    sample = probe_set(run, 5, 7, None)
    assert len(sample) == 5 and sample == probe_set(run, 5, 7, None) and sample != probe_set(run, 5, 8, None)
    assert len(probe_set(run, 100, 0, None)) == 21
    copy_probes(run, tmp_path / "promoted")
    assert (tmp_path / "promoted" / PROBES_FILE).read_bytes() == path.read_bytes()
    copy_probes(tmp_path / "promoted" / "none", tmp_path / "other")     # nothing to copy: nothing written
    assert not (tmp_path / "other").exists()


def test_the_operators_file_takes_a_string_or_alternatives_and_reports_bad_lines(tmp_path):
    reg = tmp_path / "regression.jsonl"
    reg.write_text(json.dumps({"messages": Q, "expect": "10点"}, ensure_ascii=False) + "\n\n"
                   + json.dumps({"messages": Q, "expect": ["10点", "十点"], "lang": "zh"}, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    probes = probe_set(tmp_path, 60, 0, str(reg))      # tmp_path records no probes: the operator's alone
    assert [(p["expect"], p["lang"], p["source"]) for p in probes] == [(["10点"], None, "operator"),
                                                                         (["10点", "十点"], "zh", "operator")]
    for bad, message in (("{broken", "not JSON"), ('{"messages": []}', "a probe is"),
                         ('{"messages": [{"role": "user", "content": "hi"}], "expect": []}', "a probe is"),
                         ('{"messages": [{"role": "user", "content": "hi"}], "expect": "x", "lang": "fr"}', "lang")):
        reg.write_text(json.dumps({"messages": Q, "expect": "ok"}) + "\n" + bad + "\n", encoding="utf-8")
        with pytest.raises(ProbeError, match=f"regression.jsonl:2: {message}"):
            read_probes(reg, "operator")


def test_probe_accuracy_grades_values_alternatives_and_language():
    probes = [{"messages": Q, "expect": ["早上10点", "上午10点"], "lang": "zh"},
              {"messages": Q, "expect": ["¥38"], "lang": "en"},
              {"messages": Q, "expect": ["invoice"], "lang": None}]
    assert probe_accuracy(probes, ["周末上午１０点开门。", "It is ¥38 🍵", "An INVOICE, 好的"]) == 1.0
    assert probe_accuracy(probes, ["We open at 10am", "It is ¥388", "no"]) == 0.0
    assert probe_accuracy(probes, ["周末早上10点开门。", "绿茶¥38。", "invoice"]) == pytest.approx(2 / 3)
    assert probe_accuracy([], []) is None                      # nothing to compare (and JSON has no NaN)


def test_the_general_probes_are_bilingual_and_know_no_shop():
    """The project's general prompts guard any model: ≥ 200 probes and a disjoint replay set, English and
    Chinese alike, every kind, and nothing of the default assistant's shop."""
    import json as _json
    from livelm.learn.probes import general_probe_set, general_prompts, same_answer
    from livelm.text import language
    probes, replay = general_prompts("probe"), general_prompts("replay")
    assert len(probes) >= 200 and len(replay) >= 48
    texts = [p["messages"][-1]["content"] for p in probes + replay]
    assert len(set(texts)) == len(texts)
    assert {language(t) for t in texts} == {"en", "zh"} and all(language(t) == p["lang"] for t, p in zip(texts, probes + replay))
    assert {p["kind"] for p in probes} == {"fact", "instruction", "arithmetic", "translation", "chitchat"}
    blob = _json.dumps(probes + replay, ensure_ascii=False)
    assert not any(w in blob for w in ("Maple", "枫叶", "shop", "Shop", "商店", "店铺"))
    assert general_probe_set(48, 0) == general_probe_set(48, 0) and len(general_probe_set(48, 1)) == 48
    assert same_answer("Paris is the capital. 🗼", "paris  is the CAPITAL!") and not same_answer("巴黎。", "伦敦。")
