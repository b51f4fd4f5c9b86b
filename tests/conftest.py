"""Shared fixtures: one loaded default model and one context for the whole session.

A model load takes about half a second and a context a little more, so every test that only
needs "a model" or "a context" shares these. Tests that must not disturb them (a small n_ctx, a
crash that could take the interpreter down) build their own or run in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# llama.cpp's CPU backend runs on OpenMP, whose threads spin while they wait at a barrier. On a
# machine whose cores are busy with other work (CI runners, a shared 2-core VM) a spinning thread
# starves the one it waits for and a 0.3 s generation can take a minute. Passive waiting keeps the
# same results and keeps the timings sane. Set before llama_cpp (and libgomp) is first loaded;
# subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
# Tests check the engine, not yesterday's answers: the result cache is off unless a test
# turns it on (cache=True), and downloads/caches go to a folder of this test session.
os.environ["LOCALLLM_RESULT_CACHE"] = "0"
os.environ.setdefault("LOCALLLM_CACHE_DIR", tempfile.mkdtemp(prefix="localllm-tests-"))

import jupyter_localllm as ll
from jupyter_localllm.errors import LocalLLMError
from jupyter_localllm.models import default_model_path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def model():
    """The packaged SmolLM2-135M-Instruct, loaded once."""
    m = ll.model_load("default")
    yield m
    m.close()


@pytest.fixture(scope="session")
def ctx(model):
    """A one-sequence context on :func:`model` (auto-sized n_ctx)."""
    c = ll.context_create(model, n_seq_max=1)
    yield c
    c.close()


@pytest.fixture(scope="module")
def ctx2(model):
    """A 2-slot context per test module (its rows share no state across modules)."""
    c = ll.context_create(model, n_seq_max=2)
    yield c
    c.close()


@pytest.fixture(scope="module")
def ctx4(model):
    """A 4-slot context per test module."""
    c = ll.context_create(model, n_seq_max=4)
    yield c
    c.close()


def chat(model, text: str, system: str | None = None) -> str:
    """``text`` as one user turn (after an optional system turn), rendered with the model's
    chat template and the assistant's turn opened."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": text})
    return ll.apply_chat_template(model, messages)


def read_shared_csv(name: str):
    """A CSV from ``../shared/data`` as a DataFrame; skips the test when the file is absent."""
    path = DATA_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} is not there (the shared data folder sits beside the repository)")
    import pandas as pd

    return pd.read_csv(path)


@pytest.fixture(scope="session")
def ag_news():
    """The 100-row AG News sample (class, title, description) from ``../shared/data``."""
    return read_shared_csv("ag_news_sample.csv")


def run_python(code: str, *, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (this venv, the repository as working directory).

    For checks where llama.cpp might abort the process: the test sees a return code instead of
    losing the whole pytest session.
    """
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        check=False,
    )


# Four clear-cut reviews and their labels, for tests of label scoring.
SENTIMENT = ["positive", "negative"]
TEXTS = [
    "I love this phone, it is wonderful and fast.",
    "This was the worst meal I have ever eaten. Disgusting.",
    "What a fantastic, happy day with friends!",
    "Terrible service, rude staff, never again.",
]

SEED_INSTRUCTION = (
    "Classify this news article into exactly one category: World, Sports, Business, or "
    "Sci/Tech. Respond with only the category name."
)


@pytest.fixture(scope="session")
def ag_news_prompts(model, ag_news):
    """The localLLM seed tutorial's classification prompt for every AG News row."""
    return [
        chat(
            model,
            f"{SEED_INSTRUCTION}\n\nTitle: {r.title}\nDescription: {r.description[:100]}"
            "\n\nCategory:",
            system="You are a helpful assistant.",
        )
        for r in ag_news.itertuples()
    ]


def wait_for(condition, timeout: float = 120.0) -> None:
    """Poll ``condition()`` until it is true; fail the test after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.02)


def place(src: Path, dst: Path) -> Path:
    """Put the model at ``dst``: a hard link when the file system allows, else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst


@pytest.fixture
def ctrl_c():
    """Ctrl-C reaches this process and the processes it starts, for a test that sends one.

    A shell without job control (a script, ``(make test &)``) starts a background job with
    SIGINT ignored, and a program inherits that: Python then installs no handler,
    ``_thread.interrupt_main()`` does nothing and a child ignores SIGINT too. Python's own
    handler, for the test's duration, gives both what a terminal gives them (a child's handled
    signal is reset to default at exec).
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty model cache folder, set as ``$LOCALLLM_CACHE_DIR`` for the test."""
    folder = tmp_path / "cache"
    folder.mkdir()
    monkeypatch.setenv("LOCALLLM_CACHE_DIR", str(folder))
    return folder


def cases(table: list[tuple]) -> list[tuple]:
    """The data of a table whose rows start with the case's name."""
    return [row[1:] for row in table]


def names(table: list[tuple]) -> list[str]:
    """The case names of a table."""
    return [row[0] for row in table]


def refused(call: Callable[..., Any], error: type[Exception], phrase: str) -> Exception:
    """Call ``call``; check it raised ``error`` (a project error) matching ``phrase``."""
    with pytest.raises(error, match=phrase) as info:
        call()
    assert isinstance(info.value, LocalLLMError), type(info.value)
    return info.value


def model_bytes() -> bytes:
    """The default model file's bytes."""
    return default_model_path().read_bytes()


def make_model_file(tmp_path: Path, spec: Any) -> Path:
    """``tmp_path/m.gguf`` made from ``spec``: None a folder, bytes those bytes, a float that
    share of the default model, an int its first bytes."""
    path = tmp_path / "m.gguf"
    if spec is None:
        path.mkdir()
    elif isinstance(spec, bytes):
        path.write_bytes(spec)
    elif isinstance(spec, float):
        data = model_bytes()
        path.write_bytes(data[: int(len(data) * spec)])
    elif isinstance(spec, int):
        path.write_bytes(model_bytes()[:spec])
    return path


def check_embed_run_logged(ctx: Any, n_embd: int) -> None:
    """Embed a text and an empty one on ``ctx``: the run log holds the run (2 rows, 1 error),
    the vector's row names its size and hash, the empty row says why it failed."""
    import warnings

    import jupyter_localllm as ll

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ll.embed(ctx, ["The cat sat on the mat.", ""], progress=False)
    run = ll.runs(limit=1).iloc[0]
    assert run["function"] == "embed" and (run["n_rows"], run["n_errors"]) == (2, 1)
    rows = ll.run(run["run_id"])
    assert rows["output"][0].startswith(f"<embedding d={n_embd}> sha256:")
    assert "empty" in rows["error"][1]
