# Every target installs what it needs into .venv first (idempotent, offline-friendly).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED := $(abspath ../shared/data)
export GPT2KIT_GPT2_VOCAB ?= $(SHARED)/gpt2-vocab/gpt2.tiktoken
export GPT2KIT_SHARED_DATA ?= $(SHARED)

.PHONY: install test test-slow lint demo bench clean browser

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The playground's browser test needs Chromium; install Debian's when missing, and go on without it if that fails.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; else \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); export DEBIAN_FRONTEND=noninteractive; \
	  { $$sudo apt-get install -y -q chromium chromium-driver \
	    || { $$sudo apt-get update -q && $$sudo apt-get install -y -q chromium chromium-driver; }; } >/dev/null 2>&1 \
	  || echo "note: could not install chromium + chromium-driver; the playground browser test will be skipped"; fi

test: lint browser
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

demo: install
	$(PY) -m gpt2kit demo

bench: install
	$(PY) bench/tokenizer.py
	$(PY) bench/overlap.py
	$(PY) bench/generate.py
	$(PY) bench/serve_load.py
	$(PY) bench/prepare.py
	$(PY) bench/train.py
	$(PY) bench/eval.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
