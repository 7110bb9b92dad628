"""`livelm generate`, `eval`, `predict`, `translate`: run a trained model on text and print what it says."""
from __future__ import annotations

import sys

from livelm.cli import CLIError, emit
from livelm.cli.flags import add_inference_flags, add_sampling_flags, sampling_params

PARSER_KW = {
    "generate": {"description": "Print a completion of --prompt (GPT and LSTM runs, adapters, quantized runs)."},
    "eval": {"description": "Evaluate a run on the validation split of a prepared data directory: loss, perplexity "
                            "and bits per byte (BERT: masked-LM or classification metrics; seq2seq: BLEU/chrF)."},
    "predict": {"description": "Classify texts (label<TAB>probability<TAB>text per line) or tag their words "
                               "(word/TAG ...) with a run from `livelm finetune --task classify|tag` (BERT "
                               "runs; GPT runs and their --lora classifiers: classify)."},
    "translate": {"description": "Translate texts (one output line per input) with a run from "
                                 "`livelm train --arch seq2seq`: greedy by default, or beam search."},
}


def run_arch(run: str) -> str:
    from livelm.runs import read_config
    return read_config(run).get("arch", "gpt")


def write_stream(deltas) -> None:
    """Text pieces to stdout: as they come on a terminal, as one line otherwise."""
    if sys.stdout.isatty():
        for delta in deltas:
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        print("".join(deltas))


# ---- generate ----------------------------------------------------------------------------------------
def generate_flags(p) -> None:
    p.add_argument("run", help="run directory")
    p.add_argument("--prompt", required=True, help="prompt text ('-' reads stdin)")
    add_inference_flags(p, "true: faster per token (bench/hf_decode.py), but the first tokens wait for compilation")
    add_sampling_flags(p)


def run_generate(a) -> int:
    from livelm import machine
    from livelm.machine import pick_device
    params = sampling_params(a)
    prompt = sys.stdin.read() if a.prompt == "-" else a.prompt
    if run_arch(a.run) == "lstm":
        from livelm.runs import load_model
        from livelm.training.recipes.lstm import lstm_stream
        model, tok, _ = load_model(a.run, pick_device(a.device), arch="lstm")
        write_stream(lstm_stream(model, tok, tok.encode(prompt) or [tok.bos_id], params))
        return 0
    from livelm.infer.engine import Engine
    from livelm.runs import load
    model, tok, _, _ = load(a.run, device=a.device, dtype=a.dtype, batch=1)
    ids = tok.prompt(prompt)
    engine = Engine(model, tok, max_batch=1, speculate=a.speculate,
                    compile=machine.resolve_compile(a.compile, next(model.parameters()).device))
    if sys.stdout.isatty():
        write_stream(engine.stream(ids, params))
    else:
        print(engine.generate([ids], params)[0].text)
    return 0


# ---- eval ------------------------------------------------------------------------------------------------
def eval_flags(p) -> None:
    p.add_argument("run", help="run directory")
    p.add_argument("--data", required=True, help="prepared data directory (same tokenizer as the run); for a "
                                                  "classifier, a labelled file (label<TAB>text, CSV or JSONL)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--max-tokens", type=int, default=1_000_000, help="evaluate at most this many tokens")
    p.add_argument("--device", default="auto")


def run_eval(a) -> int:
    from livelm.runs import read_config
    if read_config(a.run).get("task") == "classify":   # a decoder classifier: accuracy/F1 on a labelled file
        from livelm.training.recipes.classify import evaluate, load_for_inference
        model, tok, config = load_for_inference(a.run, a.device, n_texts=64)
        result = evaluate(model, tok, config, a.data)
    elif run_arch(a.run) != "gpt":
        from livelm.training.recipes import evaluate_arch
        result = evaluate_arch(a.run, a.data, a.device, a.max_tokens)
    else:
        from livelm.runs import load
        from livelm.infer.evaluate import perplexity
        model, _, _, _ = load(a.run, device=a.device, dtype="float32")
        result = perplexity(model, a.data, a.max_tokens, run=a.run)
    if a.json:
        emit(result)
    elif "perplexity" in result and "val_loss" in result:
        print(f"val_loss {result['val_loss']:.4f}  perplexity {result['perplexity']:.3f}  "
              f"bits_per_byte {result['bits_per_byte']:.4f}  ({result['tokens']} tokens)")
    else:
        print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    return 0


# ---- predict, translate ------------------------------------------------------------------------------------
def add_text_flags(p, what: str) -> None:
    p.add_argument("--text", action="append", help=f"a {what} (repeatable)")
    p.add_argument("--file", help="one per line ('-' = stdin)")
    p.add_argument("--device", default="auto")


def read_texts(a) -> list[str]:
    texts = list(a.text or [])
    if a.file:
        fh = sys.stdin if a.file == "-" else open(a.file, encoding="utf-8-sig")
        with fh:
            texts += [line.rstrip("\r\n") for line in fh if line.strip()]
    if not texts:
        raise CLIError("nothing to do: pass --text TEXT (repeatable) or --file FILE ('-' = stdin)")
    return texts


def predict_flags(p) -> None:
    p.add_argument("run", help="fine-tuned run directory")
    add_text_flags(p, "text to label")
    p.add_argument("--json", action="store_true", help="one JSON object per text, with every label's probability")


def run_predict(a) -> int:
    from livelm.machine import pick_device
    from livelm.runs import load_model, read_config
    texts = read_texts(a)
    if read_config(a.run).get("task") == "classify" and run_arch(a.run) == "gpt":   # a decoder classifier
        from livelm.training.recipes.classify import load_for_inference, predict
        model, tok, config = load_for_inference(a.run, a.device, n_texts=len(texts))
        items = predict(model, tok, config, texts)
    else:
        from livelm.training.recipes.bert import predict_labels
        model, tok, config = load_model(a.run, pick_device(a.device), arch=None)
        if config["arch"] != "bert" or model.cfg.task == "pretrain":
            raise CLIError(f"{a.run} is not a fine-tuned classifier; make one with "
                           f"`livelm finetune {a.run} --task classify --data FILE --out RUN`")
        items = predict_labels(model, tok, texts)
    for item in items:
        if a.json:
            emit(item)
        elif isinstance(item, dict):
            print(f"{item['label']}\t{item['prob']:.3f}\t{item['text']}")
        else:
            print(" ".join(f"{w['word']}/{w['tag']}" for w in item))
    return 0


def translate_flags(p) -> None:
    p.add_argument("run", help="seq2seq run directory")
    add_text_flags(p, "sentence to translate")
    p.add_argument("--beam", type=int, default=1, help="beam size (default 1 = greedy)")
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam score = log-prob / length**penalty (default 1.0; 0 = raw log-prob)")
    p.add_argument("--max-tokens", type=int, default=0, help="longest translation in tokens (default: the model's window)")
    p.add_argument("--temperature", type=float, default=0.0, help="greedy decoding only: 0 = argmax (default)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")


def run_translate(a) -> int:
    from livelm.sampling import SamplingParams
    from livelm.machine import pick_device
    from livelm.runs import load_model
    from livelm.training.recipes.seq2seq import source_tokenizer, translate_texts
    model, tok, config = load_model(a.run, pick_device(a.device), arch=None)
    if config["arch"] != "seq2seq":
        raise CLIError(f"{a.run} is a {config['arch']!r} run; `livelm translate` needs `livelm train --arch seq2seq`")
    if a.beam < 1:
        raise CLIError("--beam must be at least 1")
    params = SamplingParams(max_tokens=a.max_tokens or 1, temperature=a.temperature, seed=a.seed)
    params.validate()
    for line in translate_texts(model, source_tokenizer(a.run, tok), tok, read_texts(a), beam=a.beam,
                                length_penalty=a.length_penalty, max_tokens=a.max_tokens, params=params):
        # one source line in, one translation line out: a stray line break from the model must not shift them
        print(" ".join(line.splitlines()))
    return 0
