"""`livelm rl` raises the reward it is given (issue 5: "the RL example raises its reward").

Real components end to end: the shared tiny chat model, the CLI, the Engine's
group sampling, the shipped reward `same_language`, grpo_loss on a LoRA
adapter, the saved adapter loaded back. The tiny model is barely trained: asked
in English it answers byte soup that mixes Latin and Chinese characters, so an
8-token answer is "in English" (Latin letters, no Chinese character) only about
a third of the time. That is the reward RL has to raise.

Why the adapter also wraps lm_head: in a model this untrained the blocks add
almost nothing to the residual stream, and LoRA on the attention/MLP projections
barely moves the output distribution (measured: the sampled reward stays flat
over 40 steps). An adapter on the output layer moves it directly, which is what
`--lora-targets ... lm_head` is for. English questions only: telling the two
languages apart from the prompt is beyond this model, so a mixed set stays flat.

Measured with seeds 1-4 (40 steps, ~15 s): mean sampled reward of the first 10
steps 0.31-0.38, of the last 10 0.87-0.95; held-out prompts 0.23-0.40 -> 0.89-0.94;
held-out phrasings with the saved adapter 0.26 -> 0.88-0.93. Without lm_head
in the targets it stays at 0.33 -> 0.34, and with the advantage's sign flipped
it falls to 0.07: the assertions below can fail.
"""
import json

import numpy as np

from tests.conftest import run_cli

TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head"


def english_questions(split: int, per_fact: int) -> list[str]:
    from livelm.data import shop
    return [q for fact in shop.FACTS for q in shop.split_questions(fact, "en")[split][:per_fact]]


def sampled_reward(run, adapter, questions, samples: int = 2) -> float:
    """Mean same_language reward of T=1 answers, as RL sampled them (8 tokens), with or without the adapter."""
    from livelm.chat.template import prompt_ids
    from livelm.infer.engine import Engine
    from livelm.runs import load
    from livelm.sampling import SamplingParams
    from livelm.learn.rewards import same_language
    model, tok, _, _ = load(run, [adapter] if adapter else None, device="cpu")
    convs = [[{"role": "user", "content": q}] for q in questions for _ in range(samples)]
    outs = Engine(model, tok, max_batch=64).generate(
        [prompt_ids(c, tok) for c in convs],
        [SamplingParams(temperature=1.0, max_tokens=8, seed=i) for i in range(len(convs))])
    return float(np.mean([same_language(c, o.text) for c, o in zip(convs, outs)]))


def test_rl_raises_reward(tiny_chat_run, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    # the extra "fact" column is not a parameter of same_language: load_reward must leave it out
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}], "fact": i}) + "\n"
                               for i, q in enumerate(english_questions(split=0, per_fact=2))), encoding="utf-8")
    out = tmp_path / "adapter"
    proc = run_cli("rl", tiny_chat_run / "chat", "--prompts", prompts, "--reward", "livelm.learn.rewards:same_language",
                   "--out", out, "--lora-targets", TARGETS, "--max-tokens", "8", "--group", "8",
                   "--prompts-per-step", "4", "--max-iters", "40", "--lr", "1e-2", "--min-lr", "1e-3",
                   "--eval-interval", "40", "--seed", "1", "--progress", "false")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    steps = result["reward_train_per_step"]
    assert len(steps) == 40
    first, last = np.mean(steps[:10]), np.mean(steps[-10:])
    held = result["reward_heldout_sampled_before"], result["reward_heldout_sampled_after"]
    print(f"sampled reward: first 10 steps {first:.3f}, last 10 {last:.3f}; held-out prompts {held[0]:.3f} -> "
          f"{held[1]:.3f} (greedy {result['reward_heldout_before']:.2f} -> {result['reward_heldout_after']:.2f})")
    assert first < 0.6, f"the task is already solved before RL ({first:.2f}): the test would prove nothing"
    assert last > first + 0.25, f"sampled reward did not rise: {steps}"
    # the greedy answer of a model this weak is one degenerate string for every prompt (often bytes of a
    # broken character, reward 0), so it is printed, not asserted; the sampled reward is what RL raises
    assert held[1] > held[0] + 0.25, f"held-out sampled reward did not rise: {held}"

    cfg = json.loads((out / "adapter_config.json").read_text())
    assert "lm_head" in cfg["target_modules"] and cfg["reward"] == "livelm.learn.rewards:same_language"
    # the saved adapter, on phrasings neither SFT nor RL saw
    heldout = english_questions(split=1, per_fact=2)
    before = sampled_reward(tiny_chat_run / "chat", None, heldout)
    after = sampled_reward(tiny_chat_run / "chat", out, heldout)
    print(f"held-out phrasings, sampled reward: {before:.3f} -> {after:.3f}")
    assert after > before + 0.25, (before, after)


def test_rl_errors(tmp_path):
    """Bad input fails before any model is loaded, with exit status 1 and a message naming the problem."""
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "hi"}\n', encoding="utf-8")
    common = ["rl", tmp_path / "no-run", "--out", tmp_path / "out"]

    proc = run_cli(*common, "--prompts", good, "--reward", "same_language", check=False)
    assert proc.returncode == 1 and "module:function" in proc.stderr, proc.stderr
    proc = run_cli(*common, "--prompts", good, "--reward", "livelm.learn.rewards:no_such_reward", check=False)
    assert proc.returncode == 1 and "cannot load reward" in proc.stderr, proc.stderr

    proc = run_cli(*common, "--prompts", tmp_path / "missing.jsonl", "--reward", "livelm.learn.rewards:same_language",
                   check=False)
    assert proc.returncode == 1 and "prompts file not found" in proc.stderr, proc.stderr

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi"}\n\n{"prompt": "oops"\n', encoding="utf-8")
    proc = run_cli(*common, "--prompts", bad, "--reward", "livelm.learn.rewards:same_language", check=False)
    assert proc.returncode == 1 and f"{bad}:3: malformed JSON" in proc.stderr, proc.stderr
