import json

import pytest

from livelm.chat.data import ChatDataError, PackedChats, common_system_prompts, encode_examples, read_conversations
from livelm.tokenizer import Tokenizer


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "Hi 🙂"}]},
                  ensure_ascii=False)
ALPACA = json.dumps({"instruction": "Translate to Chinese:", "input": "tea", "output": "茶"}, ensure_ascii=False)


def test_bad_lines_reported_with_file_and_line(tmp_path):
    f = write(tmp_path / "d.jsonl", [GOOD, "{broken", ALPACA])
    with pytest.raises(ChatDataError, match=r"d\.jsonl:2: malformed JSON"):
        read_conversations(f)
    f2 = write(tmp_path / "e.jsonl", [GOOD, json.dumps({"messages": [{"role": "bot", "content": "x"}]}), GOOD])
    with pytest.raises(ChatDataError, match=r"e\.jsonl:2: .*role 'bot'"):
        read_conversations(f2)
    f3 = write(tmp_path / "f.jsonl", [GOOD, json.dumps({"messages": [{"role": "user", "content": "only"}]})])
    with pytest.raises(ChatDataError, match=r"f\.jsonl:2: .*no assistant turn"):
        read_conversations(f3)


def test_skip_bad_counts_and_keeps_the_rest(tmp_path):
    f = write(tmp_path / "d.jsonl", [GOOD, "{broken", ALPACA, "[1,2]"])
    convs, bad = read_conversations(f, skip_bad=True)
    assert bad == 2 and len(convs) == 2
    assert convs[1] == [{"role": "user", "content": "Translate to Chinese:\n\ntea"}, {"role": "assistant", "content": "茶"}]


def test_json_list_and_packing_keeps_conversations_apart(tmp_path):
    f = tmp_path / "d.json"
    f.write_text(json.dumps([json.loads(GOOD), json.loads(ALPACA)] * 5, ensure_ascii=False), encoding="utf-8")
    convs, _ = read_conversations(f)
    tok = Tokenizer.train_bpe(["你好 Hi 🙂 Translate to Chinese: tea 茶"] * 10, vocab_size=300, show_progress=False)
    ex, too_long = encode_examples(convs, tok, block_size=64)
    assert too_long == 0 and len(ex) == 10
    packed = PackedChats(ex, 64, tok.pad_id, seed=0)
    b = packed.batch(0, 2)
    assert b["idx"].shape == (2, 64)
    # every loss target is an assistant token or <|end|>; no target is a user/system/role token
    targets = b["targets"][b["targets"] >= 0].tolist()
    assert targets and not {tok.user_id, tok.system_id, tok.assistant_id, tok.bos_id} & set(targets)
    # several conversations share a row, each with its own doc id
    assert len(set(b["doc_ids"][0].tolist()) - {-1}) > 1


def test_common_system_prompts_per_language():
    def chat(system, question):
        head = [{"role": "system", "content": system}] if system else []
        return head + [{"role": "user", "content": question}, {"role": "assistant", "content": "ok"}]
    convs = [chat("You help readers.", "When do you open?"), chat("You help readers.\nNotes:\n- x", "Hours?"),
             chat("You help readers.", "Fees? 🙂"), chat("You help readers.", "Renew?"),
             chat("你是图书馆的助手。", "几点开门？"),
             chat("你是图书馆的助手。", "What time 开门?"),          # mixed: a Han character makes it Chinese
             chat(None, "Hi"), chat(None, "Hello")]
    assert common_system_prompts(convs) == {"en": "You help readers.", "zh": "你是图书馆的助手。"}
    # mostly without a system prompt: none recorded for that language
    assert common_system_prompts(convs + [chat(None, "Hey")] * 3) == {"zh": "你是图书馆的助手。"}
    # a tie goes to the prompt seen first, whatever the order of the others
    assert common_system_prompts([chat("B", "q"), chat("A", "q"), chat("A", "q"), chat("B", "q")]) == {"en": "B"}
    assert common_system_prompts([]) == {}
