"""`livelm chat`: a terminal conversation with a model.

On a TTY: streaming answers, line editing and history (readline), Ctrl-C stops
the current answer (not the program), Ctrl-D or /quit leaves. With stdin not a
TTY it reads one message per line and prints one answer per line, so it can be
scripted: `printf 'hi\\n/reset\\n你好\\n' | livelm chat RUN`.
Notices (dropped turns, errors) go to stderr; answers go to stdout.

Voice (livelm[voice]): `--listen FILE` asks the question spoken in an audio file (repeatable; then the
conversation goes on as usual), `/listen FILE` does it mid-conversation, `/correct @FILE` takes a spoken
correction, and `--speak` speaks every answer on the sound device, or `--speak DIR` writes each answer
to DIR/answer-NNN.wav.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from livelm.chat import prompts
from livelm.chat.template import prompt_ids, validate
from livelm.infer.engine import Engine
from livelm.learn.copying import CopyFromNotes
from livelm.sampling import SamplingParams
from livelm.cli.flags import add_inference_flags, add_sampling_flags, sampling_params

HELP = """commands:
  /help            this help
  /reset           forget the conversation (keeps the system prompt)
  /system TEXT     set the system prompt (empty TEXT removes it)
  /temp X          sampling temperature (0 = greedy)
  /topp X          nucleus sampling mass
  /save FILE       save the conversation as JSON
  /load FILE       load a conversation saved with /save (or any {"messages": [...]} file)
  /retry           regenerate the last answer
  /good, /bad      thumbs up / down on the last answer (stored as feedback)
  /correct TEXT    what the last answer should have been (used as memory at once)
  /remember TEXT   a fact to keep in mind ("delivery is free above ¥99")
  /forget N        forget feedback item N (ids are printed when stored)
  /listen FILE     ask the question spoken in an audio file (livelm[voice])
  /correct @FILE   a spoken correction: the words in an audio file
  /quit            leave (Ctrl-D works too)"""


class Voice:
    """The REPL's ears and mouth: questions from audio files, answers spoken on the sound device or to files."""

    def __init__(self, speak: str | None = None, stt_model: str = "whisper-base", tts_engine: str = "espeak"):
        self.stt_model, self.tts_engine, self._stt, self._tts = stt_model, tts_engine, None, None
        self.device = speak == "device"
        self.folder = None if speak in (None, "device") else Path(speak)
        self.player = None
        if self.device:
            import shutil
            self.player = next((p for p in ("paplay", "aplay", "ffplay") if shutil.which(p)), None)
            if self.player is None or not (Path("/dev/snd").exists() or os.environ.get("PULSE_SERVER")):
                raise ValueError("--speak: no sound device here (no aplay/paplay, or no /dev/snd); "
                                 "pass --speak DIR to write each answer to DIR/answer-NNN.wav")
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.spoken = len(list(self.folder.glob("answer-*.wav"))) if self.folder else 0

    def hear(self, path: str) -> str:
        """The words spoken in an audio file (any format), or ValueError saying what is wrong with it."""
        from livelm.voice import load_stt
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror}") from None
        if self._stt is None:
            self._stt = load_stt(self.stt_model)
        text = self._stt.transcribe(data).text.strip()
        if not text:
            raise ValueError(f"no speech was heard in {path}")
        return text

    def say(self, text: str) -> str | None:
        """Speak an answer; returns the file written, if any."""
        if not text.strip() or not (self.device or self.folder):
            return None
        from livelm.voice import encode, load_tts
        if self._tts is None:
            self._tts = load_tts(self.tts_engine)
        wav = encode(self._tts.synthesize(text), self._tts.rate, "wav")
        if self.device:
            import subprocess
            args = {"ffplay": ["ffplay", "-nodisp", "-autoexit", "-loglevel", "quiet", "-"]}.get(self.player,
                                                                                                 [self.player])
            subprocess.run(args, input=wav, check=False)
            return None
        from livelm.io import write_bytes
        self.spoken += 1
        out = self.folder / f"answer-{self.spoken:03d}.wav"
        write_bytes(out, wav)      # atomic: a killed chat leaves no half-written file
        return str(out)


class ChatSession:
    """The conversation state and how it becomes a prompt. Front ends (REPL, tests) drive it."""

    def __init__(self, engine: Engine, params: SamplingParams, system: str | None = None,
                 few_shot: list[dict] | None = None, user_template: str | None = None,
                 feedback=None, tenant: str = "default", memory: bool = True, model_name: str | None = None,
                 memory_draft: int = 32, system_prompts: dict[str, str] | None = None):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.params = params
        self.system = system
        self.few_shot = few_shot or []
        self.user_template = user_template
        self.history: list[dict] = []   # user/assistant turns only
        self.notices: list[str] = []
        self.feedback = feedback        # a FeedbackStore, or None
        self.tenant = tenant
        self.model_name = model_name
        from livelm.learn.memory import Memory
        # notes go under the run's own system prompt when the conversation has none (config.json's
        # "system_prompts", recorded at fine-tune time)
        self.memory = Memory(feedback, system_prompts=system_prompts) if (feedback is not None and memory) else None
        self.notes: list[str] = []   # the memory notes in the current prompt (the answer may copy from them)
        self.memory_draft = memory_draft   # tokens of the draft answer memory also looks notes up by (0 = none)
        self.voice: Voice | None = None    # --listen / --speak / /listen (livelm[voice])

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.few_shot + self.history

    def _fit(self) -> list[int] | None:
        """Prompt ids for the current history, dropping the oldest turns while it does not fit."""
        budget = self.engine.max_len - min(self.params.max_tokens, self.engine.max_len // 4)
        dropped = 0
        self.notes = []
        while True:
            msgs = self.messages()
            if self.memory is not None:  # relevant remembered facts/corrections go into the system prompt
                msgs, self.notes = self._recall(msgs)
            ids = prompt_ids(msgs, self.tokenizer)
            if len(ids) <= budget:
                break
            if len(self.history) <= 1:
                self.notices.append(f"your message is too long for the {self.engine.max_len}-token context window "
                                    f"({len(ids)} tokens); it was not sent")
                self.history.clear()
                return None
            # drop the oldest exchange (user + assistant); the system prompt and few-shot stay
            del self.history[:2]
            dropped += 1
        if dropped:
            self.notices.append(f"the conversation outgrew the {self.engine.max_len}-token context window: "
                                f"dropped the oldest {dropped} exchange(s)")
        return ids

    def _recall(self, msgs: list[dict]) -> tuple[list[dict], list[str]]:
        """(msgs with memory's notes, the notes), looked up by the question and a draft answer
        (greedy, short, without notes) as the server does (livelm/learn/recall.py): a rephrased
        question shares few words with the corrected one, but the draft repeats the answer that was
        corrected, which the note is indexed by."""
        from livelm.learn.recall import recall
        recalled = recall(self.memory, self.tenant, msgs, prompt=lambda: prompt_ids(msgs, self.tokenizer),
                          max_len=self.engine.max_len, draft_tokens=self.memory_draft,
                          generate=lambda ids, params: "".join(self.engine.iter_text(self.engine.add(ids, params))))
        return recalled.messages, recalled.notes

    def ask(self, text: str):
        """Add a user turn and stream the assistant's answer (a generator of text deltas)."""
        if self.user_template:
            text = prompts.fill(self.user_template, {"input": text})
        self.history.append({"role": "user", "content": text})
        return self._answer()

    def retry(self):
        if self.history and self.history[-1]["role"] == "assistant":
            self.history.pop()
        if not self.history:
            self.notices.append("nothing to retry")
            return iter(())
        return self._answer()

    def _answer(self):
        ids = self._fit()
        if ids is None:
            return
        params = self.params.copy()
        params.processors = CopyFromNotes.of(self.notes, self.tokenizer)   # copy from the notes, as the server does
        seq = self.engine.add(ids, params)
        parts = []
        try:
            for delta in self.engine.iter_text(seq):
                parts.append(delta)
                yield delta
        finally:
            # keep what was said, even when interrupted: the next turn sees the same text the user saw
            self.history.append({"role": "assistant", "content": "".join(parts)})
            self.last_finish = seq.finish_reason or "cancelled"

    def reset(self):
        self.history.clear()

    def give_feedback(self, kind: str, text: str | None = None) -> int:
        """Store feedback on the last answer (or a fact); returns the item id."""
        from livelm.learn.feedback import Feedback
        if self.feedback is None:
            raise ValueError("feedback is off (no --feedback-db)")
        if kind == "fact":
            item = Feedback(kind="fact", conversation=[], correction=text, tenant=self.tenant, model=self.model_name)
        else:
            if not self.history or self.history[-1]["role"] != "assistant":
                raise ValueError("there is no answer to give feedback on yet")
            conv = self.messages()[:-1]
            answer = self.history[-1]["content"]
            item = Feedback(kind=kind, conversation=conv, answer=answer, correction=text, tenant=self.tenant,
                            model=self.model_name)
        return self.feedback.add(item).id

    def save(self, path: str) -> None:
        from livelm import io
        io.write_json(path, {"messages": self.messages()})

    def load(self, path: str) -> None:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"no such file: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not a conversation JSON file ({e})") from None
        msgs = validate(data.get("messages") if isinstance(data, dict) else data)
        self.system = next((m["content"] for m in msgs if m["role"] == "system"), self.system)
        self.few_shot = []
        self.history = [m for m in msgs if m["role"] != "system"]


def command(session: ChatSession, line: str, out) -> bool | None:
    """Handle a slash command. Returns False to quit, True if handled, None if `line` is not a command."""
    if not line.startswith("/"):
        return None
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    try:
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            print(HELP, file=sys.stderr)
        elif name == "/reset":
            session.reset()
            session.notices.append("conversation cleared")
        elif name == "/system":
            session.system = arg or None
            session.notices.append("system prompt set" if arg else "system prompt removed")
        elif name in ("/temp", "/topp"):
            value = float(arg)
            field = "temperature" if name == "/temp" else "top_p"
            trial = session.params.copy()
            setattr(trial, field, value)
            trial.validate()
            session.params = trial
            session.notices.append(f"{field} = {value}")
        elif name == "/save":
            if not arg:
                raise ValueError("usage: /save FILE")
            session.save(arg)
            session.notices.append(f"saved to {arg}")
        elif name == "/load":
            if not arg:
                raise ValueError("usage: /load FILE")
            session.load(arg)
            session.notices.append(f"loaded {len(session.history)} turn(s) from {arg}")
        elif name == "/retry":
            answer(session, session.retry(), out)
        elif name == "/listen":
            if not arg:
                raise ValueError("usage: /listen FILE (an audio file with the question)")
            ask_spoken(session, arg, out)
        elif name in ("/good", "/bad"):
            n = session.give_feedback("up" if name == "/good" else "down")
            session.notices.append(f"feedback #{n} stored")
        elif name in ("/correct", "/remember"):
            if not arg:
                raise ValueError(f"usage: {name} TEXT")
            if arg.startswith("@"):   # spoken: the words in an audio file
                arg = heard(session, arg[1:])
            n = session.give_feedback("correction" if name == "/correct" else "fact", arg)
            session.notices.append(f"feedback #{n} stored; it is used from the next question on")
        elif name == "/forget":
            if session.feedback is None:
                raise ValueError("feedback is off (no --feedback-db)")
            if not session.feedback.forget(session.tenant, int(arg)):
                raise ValueError(f"no feedback item #{arg} for this tenant")
            session.notices.append(f"forgot #{arg}")
        else:
            session.notices.append(f"unknown command {name}; /help lists them")
    except ValueError as e:
        session.notices.append(f"error: {e}")
    return True


def stream_answer(session: ChatSession, deltas, out) -> None:
    tty = out.isatty()
    gen = iter(deltas)
    try:
        for delta in gen:
            if tty:
                out.write(delta)
                out.flush()
            else:
                # Through a pipe every answer is exactly one line, so scripts stay aligned with their input
                # lines: line breaks inside an answer are written as the escapes \n and \r (and a real
                # backslash as \\), which `printf %b` turns back.
                out.write(delta.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r"))
    except KeyboardInterrupt:
        gen.close()  # cancels the sequence; the partial answer stays in history
        session.notices.append("stopped")
    out.write("\n")
    out.flush()


def answer(session: ChatSession, deltas, out) -> None:
    """Stream an answer to `out`, then speak it when the chat speaks (--speak)."""
    stream_answer(session, deltas, out)
    if session.voice is not None and session.history and session.history[-1]["role"] == "assistant":
        if written := session.voice.say(session.history[-1]["content"]):
            session.notices.append(f"spoken to {written}")


def heard(session: ChatSession, path: str) -> str:
    """The words in an audio file (the chat's speech-to-text model is loaded on first use)."""
    if session.voice is None:
        session.voice = Voice()
    text = session.voice.hear(path)
    print(f"[heard: {text}]", file=sys.stderr, flush=True)
    return text


def ask_spoken(session: ChatSession, path: str, out) -> None:
    answer(session, session.ask(heard(session, path)), out)


def flush_notices(session: ChatSession) -> None:
    for n in session.notices:
        print(f"[{n}]", file=sys.stderr, flush=True)
    session.notices.clear()


def repl(session: ChatSession, stdin=None, out=None, spoken: list[str] = ()) -> int:
    """The conversation: first the questions spoken in the `spoken` audio files, then stdin's lines."""
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    for path in spoken:
        try:
            ask_spoken(session, path, out)
        except ValueError as e:   # a bad audio file: say so and go on
            session.notices.append(f"error: {e}")
        flush_notices(session)
    interactive = stdin.isatty()
    if interactive:
        # Ctrl-C must stop an answer even when we were started with SIGINT ignored (a shell's background job,
        # nohup): Python installs its KeyboardInterrupt handler only if SIGINT was at its default at startup
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        except ValueError:   # not the main thread: leave signals alone
            pass
        _setup_readline()
        print("livelm chat — /help for commands, Ctrl-C stops an answer, Ctrl-D quits", file=sys.stderr)
    while True:
        try:
            line = input("you> ") if interactive else stdin.readline()
        except EOFError:
            break
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        if not interactive:
            if line == "":
                break
            line = line.rstrip("\r\n")
        if not line.strip():
            continue
        handled = command(session, line.strip(), out)
        if handled is False:
            break
        if handled is None:
            if interactive:
                out.write("bot> ")
            answer(session, session.ask(line), out)
        flush_notices(session)
    flush_notices(session)
    return 0


def _setup_readline() -> None:
    try:
        import readline
    except ImportError:  # e.g. Windows without pyreadline: plain input() still works
        return
    hist = Path(os.environ.get("LIVELM_HISTORY", Path.home() / ".livelm_history"))
    try:
        readline.read_history_file(hist)
    except OSError:
        pass
    import atexit
    atexit.register(lambda: _save_history(readline, hist))


def _save_history(readline, hist: Path) -> None:
    try:
        readline.set_history_length(1000)
        readline.write_history_file(hist)
    except OSError:
        pass


PARSER_KW = {"chat": {"description": "Multi-turn chat with streaming output. Reads one message per line when stdin "
                                     "is not a terminal.\n\n" + HELP,
                      "formatter_class": argparse.RawDescriptionHelpFormatter}}


def chat_flags(p) -> None:
    p.add_argument("run", help="run directory (or a LoRA adapter directory)")
    p.add_argument("--adapter", action="append", default=[], help="LoRA adapter directory to apply")
    add_inference_flags(p)
    g = p.add_argument_group("feedback and memory")
    g.add_argument("--feedback-db", help="SQLite file for /good /bad /correct /remember (default RUN/feedback.sqlite; "
                                         "'off' disables)")
    g.add_argument("--tenant", default="default", help="whose feedback and memory this chat uses")
    g.add_argument("--no-memory", action="store_true", help="do not put remembered facts/corrections into prompts")
    g.add_argument("--memory-draft", type=int, default=32, metavar="N",
                   help="memory looks notes up by the question and a greedy draft answer of N tokens, once the "
                        "tenant has notes (0 = by the question alone; default 32, as `livelm serve`)")
    g = p.add_argument_group("voice (livelm[voice])")
    g.add_argument("--listen", action="append", default=[], metavar="FILE",
                   help="ask the question spoken in this audio file first (repeatable; any format)")
    g.add_argument("--speak", nargs="?", const="device", default=None, metavar="DIR",
                   help="speak every answer: on the sound device, or with DIR written to DIR/answer-NNN.wav")
    g.add_argument("--stt", default="whisper-base", metavar="MODEL",
                   help="speech-to-text model for --listen and /listen (default whisper-base)")
    g.add_argument("--tts", default="espeak", metavar="ENGINE", help="text-to-speech engine for --speak (default espeak)")
    g = p.add_argument_group("prompt engineering")
    g.add_argument("--system", help="system prompt text")
    g.add_argument("--system-file", help="read the system prompt from a file")
    g.add_argument("--few-shot", metavar="FILE", help="example turns (JSON/JSONL messages) put before the conversation")
    g.add_argument("--template", help="named prompt template (from --templates)")
    g.add_argument("--templates", default=None, help=f"YAML file of prompt templates (default {prompts.DEFAULT_TEMPLATES})")
    g.add_argument("--var", action="append", default=[], metavar="KEY=VALUE", help="template variable (repeatable)")
    add_sampling_flags(p, max_tokens=128, temperature=0.7)


def run_chat(a) -> int:
    from livelm import machine
    from livelm.runs import load
    model, tokenizer, config, _ = load(a.run, a.adapter, a.device, dtype=a.dtype)
    params = sampling_params(a)
    setup = prompts.resolve(system=a.system, system_file=a.system_file, few_shot_file=a.few_shot,
                            template=a.template, templates_file=a.templates, variables=a.var)
    engine = Engine(model, tokenizer, max_batch=1, speculate=a.speculate,
                    compile=machine.resolve_compile(a.compile, next(model.parameters()).device))
    feedback = None
    from livelm.learn.memory import run_system_prompts
    if a.feedback_db != "off":
        from livelm.learn.feedback import FeedbackStore
        feedback = FeedbackStore(a.feedback_db or Path(a.run) / "feedback.sqlite")
    session = ChatSession(engine, params, system=setup.system, few_shot=setup.few_shot, user_template=setup.user,
                          feedback=feedback, tenant=a.tenant, memory=not a.no_memory, model_name=Path(a.run).name,
                          memory_draft=a.memory_draft, system_prompts=run_system_prompts(config, tokenizer))
    if a.listen or a.speak:
        session.voice = Voice(a.speak, stt_model=a.stt, tts_engine=a.tts)
    return repl(session, spoken=a.listen)
