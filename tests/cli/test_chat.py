"""The chat REPL, driven the way people and scripts drive it: through a pipe and through a terminal."""
import io
import json
import os
import time

import pexpect

from livelm.cli.chat import stream_answer
from livelm.chat.template import prompt_ids
from tests.conftest import LIVELM, ROOT, run_cli


def chat(run, lines, *flags):
    return run_cli("chat", run, "--temperature", "0", "--max-tokens", "12", *flags, input="\n".join(lines) + "\n")


def escape_line(text):
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def test_piped_answer_is_one_line_whatever_the_model_writes():
    class Pipe(io.StringIO):
        def isatty(self):
            return False
    out, session = Pipe(), type("S", (), {"notices": []})()
    stream_answer(session, iter(["第一行\n", "second \\ line\r\n", "🙂"]), out)
    assert out.getvalue() == "第一行\\nsecond \\\\ line\\r\\n🙂\n"
    assert out.getvalue().count("\n") == 1


def test_pipe_multi_turn_reset_system_save(tiny_chat_run, tmp_path):
    run = tiny_chat_run / "chat"
    saved = tmp_path / "conv.json"
    res = chat(run, ["你好 🙂", "What are your opening hours?", "/system 你是枫叶小铺的客服助手。",
                     "/save " + str(saved), "/reset", "/temp 0.5", "/temp banana", "/nope", "营业时间？", "/quit",
                     "never sent"])
    answers = res.stdout.split("\n")[:-1]
    assert len(answers) == 3  # one line per message, commands print nothing on stdout
    conv = json.loads(saved.read_text(encoding="utf-8"))["messages"]
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "user", "assistant"]
    assert conv[0]["content"] == "你是枫叶小铺的客服助手。" and conv[1]["content"] == "你好 🙂"
    assert escape_line(conv[2]["content"]) == answers[0]
    err = res.stderr
    assert "[conversation cleared]" in err and "[temperature = 0.5]" in err
    assert "error: could not convert string to float" in err and "unknown command /nope" in err
    # the same input gives the same greedy answers (deterministic), and /load restores a conversation
    chat(run, ["/load " + str(saved), "/save " + str(tmp_path / "again.json")])
    assert json.loads((tmp_path / "again.json").read_text(encoding="utf-8"))["messages"] == conv


def test_pipe_retry_and_overflow(tiny_chat_run):
    run = tiny_chat_run / "chat"
    long_line = "tea " * 40   # ~40+ tokens per turn in a 128-token window
    res = chat(run, [long_line, long_line, long_line, "/retry", "tea " * 400, "hi"])
    assert res.returncode == 0
    assert "dropped the oldest" in res.stderr
    assert "too long for the 128-token context window" in res.stderr
    lines = res.stdout.split("\n")[:-1]
    # one line per message keeps scripts aligned: 3 answers, the retry, an empty line for the refused message, "hi"
    assert len(lines) == 6 and lines[4] == ""


def test_prompt_engineering_flags(tiny_chat_run, tmp_path):
    run = tiny_chat_run / "chat"
    few = tmp_path / "few.jsonl"
    few.write_text('{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"你好！"}]}\n', encoding="utf-8")
    saved = tmp_path / "c.json"
    chat(run, ["tea", "/save " + str(saved)], "--template", "translate_zh", "--few-shot", few)
    conv = json.loads(saved.read_text(encoding="utf-8"))["messages"]
    assert conv[0] == {"role": "system", "content": "You translate English into Chinese."}
    assert conv[1:3] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "你好！"}]
    assert conv[3] == {"role": "user", "content": "Translate to Chinese: tea"}
    res = run_cli("chat", run, "--template", "shop_notes", input="x\n", check=False)
    assert res.returncode == 1 and "--var note=" in res.stderr
    res = run_cli("chat", run, "--template", "nope", input="x\n", check=False)
    assert res.returncode == 1 and "available:" in res.stderr


def slow_run(tiny_chat_run, tmp_path):
    """An untrained but wide model with a long window: it babbles for many seconds, so Ctrl-C lands mid-answer."""
    import torch
    from livelm.models.gpt import GPT, GPTConfig
    from livelm.tokenizer import Tokenizer
    from livelm.runs import save_checkpoint
    tok = Tokenizer.load(tiny_chat_run / "chat")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=4096, n_layer=6, n_head=8, d_model=512))
    # make sure it never ends its turn on its own: the final norm's bias points away from eos/end
    with torch.no_grad():
        c = torch.randn(512)
        c = 3 * c / c.norm()
        model.ln_f.weight.fill_(0.3)
        model.ln_f.bias.copy_(c)
        for t in (tok.eos_id, tok.end_id):
            model.wte.weight[t] = -10 * c
    save_checkpoint(tmp_path / "slow", model, tok, {"arch": "gpt", "model": model.cfg.to_dict()}, step=0)
    return tmp_path / "slow"


def test_terminal_streaming_and_ctrl_c(tiny_chat_run, tmp_path):
    run = slow_run(tiny_chat_run, tmp_path)
    env = {**os.environ, "LIVELM_HISTORY": str(tmp_path / "hist"), "PYTHONUNBUFFERED": "1"}
    child = pexpect.spawn(LIVELM[0], [*LIVELM[1:], "chat", str(run), "--max-tokens", "4000", "--temperature", "1.0",
                                      "--stop", "NEVER"],
                          cwd=str(ROOT), env=env, encoding="utf-8", timeout=60, dimensions=(40, 200))
    child.expect("you> ")
    child.sendline("讲一个很长的故事 🙂")
    child.expect("bot> ")
    child.expect(r".{20}")  # streaming: text arrives while the answer is still being generated
    time.sleep(1.0)
    child.sendintr()  # Ctrl-C: stops the answer, not the program
    child.expect(r"\[stopped\]")
    child.expect("you> ")
    child.sendline("/system hi")
    child.expect(r"\[system prompt set\]")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert (tmp_path / "hist").exists()  # readline history kept


def test_memory_looks_notes_up_by_a_draft_answer_as_the_server_does(tiny_chat_run, tmp_path):
    """Once the tenant has notes, memory gets the model's draft answer (no notes, greedy, --memory-draft
    tokens) beside the question, as in `livelm serve`; finding a note by it is tested in
    tests/learn/test_memory_and_store.py."""
    from livelm.cli.chat import ChatSession
    from livelm.infer.engine import Engine
    from livelm.runs import load
    from livelm.sampling import SamplingParams
    from livelm.learn.feedback import Feedback, FeedbackStore

    model, tok, _, _ = load(tiny_chat_run / "chat", [], "cpu")
    engine = Engine(model, tok, max_batch=1)
    question = "寄快递要付多少？ 🚚 shipping?"
    session = ChatSession(engine, SamplingParams(max_tokens=8, temperature=0), feedback=FeedbackStore(tmp_path / "f.db"))
    drafts = []
    recall = session.memory.recall
    session.memory.recall = lambda tenant, msgs, draft="": (drafts.append(draft), recall(tenant, msgs, draft))[1]
    list(session.ask(question))
    assert drafts == [""]                      # no notes yet: no draft is made
    session.feedback.add(Feedback(kind="fact", conversation=[], correction="Delivery costs ¥12. 运费12元。",
                                  tenant="default"))
    session.history.clear()
    list(session.ask(question))
    expected = "".join(engine.iter_text(engine.add(prompt_ids([{"role": "user", "content": question}], tok),
                                                   SamplingParams(max_tokens=32, temperature=0))))
    assert drafts[-1] == expected and expected
    session.memory_draft = 0
    session.history.clear()
    list(session.ask(question))
    assert drafts[-1] == ""


def test_memory_notes_go_under_the_system_prompt_of_the_run_being_chatted_with(tiny_chat_run, library_chat_run,
                                                                              tmp_path):
    """With no system prompt of its own, the conversation gets the run's (recorded when it was fine-tuned):
    the shop's for the demo-style run, exactly as before, the library's for the library's run."""
    from livelm.cli.chat import ChatSession
    from livelm.infer.engine import Engine
    from livelm.runs import load
    from livelm.sampling import SamplingParams
    from livelm.learn.feedback import Feedback, FeedbackStore
    from tests.conftest import LIBRARY_PROMPTS
    question = [{"role": "user", "content": "How much is delivery? 🚚"}]
    for i, (run, prompt) in enumerate([(tiny_chat_run / "chat", "You are the assistant of Maple Leaf Shop."),
                                       (library_chat_run, LIBRARY_PROMPTS["en"])]):
        model, tok, config, _ = load(run, [], "cpu")
        session = ChatSession(Engine(model, tok, max_batch=1), SamplingParams(max_tokens=4, temperature=0),
                              feedback=FeedbackStore(tmp_path / f"f{i}.db"), system_prompts=config.get("system_prompts"))
        session.feedback.add(Feedback(kind="fact", conversation=[], correction="Delivery costs ¥12.", tenant="default"))
        msgs, notes = session.memory.recall("default", question)
        assert msgs[0] == {"role": "system", "content": f"{prompt}\nNotes:\n- Delivery costs ¥12."} and notes


def test_spoken_questions_spoken_answers_and_a_spoken_correction(tiny_chat_run, tmp_path):
    """--listen asks what an audio file says, --speak DIR writes every answer as a WAV, /correct @FILE stores
    the words of a spoken correction (Whisper base and espeak-ng: make test installs them)."""
    import sqlite3
    import wave
    from livelm.voice import encode, load_tts
    from livelm.voice.stt import error_rate
    tts = load_tts("espeak")
    question, correction = tmp_path / "q.mp3", tmp_path / "c.wav"
    question.write_bytes(encode(tts.synthesize("What time do you open?"), tts.rate, "mp3"))
    correction.write_bytes(encode(tts.synthesize("We open at nine in the morning."), tts.rate, "wav"))
    db, spoken = tmp_path / "fb.sqlite", tmp_path / "spoken"
    res = chat(tiny_chat_run / "chat", ["/correct @" + str(correction), "/listen " + str(tmp_path / "missing.wav"),
                                        "你好 🙂"], "--listen", question, "--speak", spoken, "--feedback-db", db)
    answers = res.stdout.split("\n")[:-1]
    assert len(answers) == 2 and all(answers)                      # the spoken question, then "你好 🙂"
    heard = [line.removeprefix("[heard: ").removesuffix("]") for line in res.stderr.splitlines()
             if line.startswith("[heard: ")]
    assert len(heard) == 2 and error_rate("What time do you open?", heard[0]) <= 0.5, heard
    files = sorted(spoken.glob("answer-*.wav"))
    assert [f.name for f in files] == ["answer-001.wav", "answer-002.wav"]
    with wave.open(str(files[0])) as w:
        assert w.getnframes() / w.getframerate() > 0.3
    assert "cannot read" in res.stderr and "missing.wav" in res.stderr   # a bad file is a notice, not a crash
    (kind, text), = sqlite3.connect(db).execute("SELECT kind, correction FROM feedback").fetchall()
    assert kind == "correction" and text == heard[1] and error_rate("We open at nine in the morning.", text) <= 0.5
