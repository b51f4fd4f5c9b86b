"""The fault matrix (issue 12), loading: model files checked in Python before llama.cpp reads
them, and model references that cannot be resolved (offline hub, unknown names, bad URLs),
each answered at once by a project error that says what to do."""

# ruff: noqa: E501 (the tables keep one case per line)
from __future__ import annotations

import time
import urllib.error

import pytest
from conftest import cases, make_model_file, names, refused

import jupyter_localllm as ll
from jupyter_localllm.errors import (
    DownloadError,
    InvalidModelFileError,
    InvalidParameterError,
    ModelNotFoundError,
)
from jupyter_localllm.models import download as _download

# -- model files (checked in Python before llama.cpp reads them) -----------------------------
MODEL_FILES = [
    ("directory", None, InvalidModelFileError, "is a folder, not a GGUF file"),
    ("missing", "-", ModelNotFoundError, "No model file at"),
    ("empty", b"", InvalidModelFileError, r"is empty \(0 bytes\); re-download it"),
    ("magic-only", b"GGUF", InvalidModelFileError, "is truncated"),
    ("header-only", 24, InvalidModelFileError, "is truncated"),
    ("garbage-after-magic", b"GGUF" + b"\xff" * 200, InvalidModelFileError, "is corrupt or from a newer GGUF version"),
    ("truncated", 0.5, InvalidModelFileError, r"is truncated: its tensors need .* re-download it"),
    ("metadata-only", 2_000_000, InvalidModelFileError, r"is truncated: its tensors need"),
    ("not-gguf", b"<!DOCTYPE html><html>", InvalidModelFileError, "is not a GGUF file"),
    ("gguf-v1", b"GGUF\x01\x00\x00\x00" + b"\x00" * 40, InvalidModelFileError, "uses GGUF version 1"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "error", "phrase"), cases(MODEL_FILES), ids=names(MODEL_FILES))
def test_model_files(tmp_path, spec, error, phrase):
    path = make_model_file(tmp_path, spec)
    refused(lambda: ll.model_load(path), error, phrase)


# -- model references -------------------------------------------------------------------------
@pytest.fixture
def no_hub(monkeypatch):
    """The Hugging Face Hub behind a host name that does not resolve (as offline)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setattr(_download, "RETRY_BACKOFF_S", 60.0)  # a retry would time the test out


REFERENCES = [
    ("hf-offline", "hf://owner/repo/m.gguf", DownloadError, r"Cannot reach the Hugging Face Hub \(cannot look up hub.invalid"),
    ("hf-malformed", "hf://owner/m.gguf", InvalidParameterError, r"write it as 'hf://owner/repo/file\.gguf'"),
    ("ollama-unknown", "ollama:nosuchmodel", ModelNotFoundError, r"Ollama model 'nosuchmodel:latest' is not in"),
    ("ollama-malformed", "ollama:a/b/c/d", InvalidParameterError, "Cannot read Ollama reference"),
    ("url-unknown-host", "https://no-such-host.invalid/m.gguf", DownloadError, "Cannot look up the host"),
    ("url-bad-scheme", "ftp://example.org/m.gguf", InvalidParameterError, "only https://, http:// and hf://"),
    ("url-malformed", "http://[::1/m.gguf", InvalidParameterError, "Cannot read the URL"),
    ("url-no-file", "https://example.org/", InvalidParameterError, "names no file"),
    ("empty", "  ", InvalidParameterError, "The model reference is empty"),
    ("not-a-string", 5, InvalidParameterError, "must be a string or a path, got int"),
    ("unknown-name", "no-such-model-name", ModelNotFoundError, "Found no cached model matching"),
]  # fmt: skip


@pytest.mark.parametrize(("ref", "error", "phrase"), cases(REFERENCES), ids=names(REFERENCES))
def test_model_references(no_hub, cache, monkeypatch, tmp_path, ref, error, phrase):
    (tmp_path / "ollama" / "manifests").mkdir(parents=True)
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    t0 = time.monotonic()
    refused(lambda: ll.model_load(ref, show_progress=False), error, phrase)
    assert time.monotonic() - t0 < 10  # at once: no retries of a host that is not there


def test_url_without_a_route_fails_at_once(no_hub, cache, monkeypatch):
    def unreachable(*args, **kwargs):  # the remote part: a network with no route to the host
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(_download.urllib.request, "urlopen", unreachable)
    t0 = time.monotonic()
    refused(lambda: ll.model_load("https://example.org/m.gguf"), DownloadError, "Cannot reach")
    assert time.monotonic() - t0 < 5


# -- Ctrl-C during a load (issue 25) ------------------------------------------------------------
_INTERRUPTED_LOAD = """
import linecache, os, signal, sys, threading, time
import jupyter_localllm as ll
from jupyter_localllm.engine.llama import Model
from jupyter_localllm.models import default_model_path

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal or a kernel
main = threading.main_thread().ident
sent = threading.Event()


def inside_load():
    frame = sys._current_frames().get(main)
    while frame is not None:  # a log callback's frame sits on top of the loading line
        line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
        if "llama_model_load_from_file(" in line:
            return True
        frame = frame.f_back
    return False


def ctrl_c_once_inside_load():
    while not inside_load():
        time.sleep(0.0005)
    os.kill(os.getpid(), signal.SIGINT)
    sent.set()


for attempt in range(40):
    sent.clear()
    threading.Thread(target=ctrl_c_once_inside_load, daemon=True).start()
    try:
        model = Model(default_model_path(), use_mmap=False, n_gpu_layers=0)
    except KeyboardInterrupt:
        print("INTERRUPTED", attempt, flush=True)
        break
    if sent.is_set():  # the Ctrl-C came while llama.cpp loaded, and the load went on
        print("SWALLOWED", attempt, flush=True)
        sys.exit(3)
    model.close()  # the load was over before the thread saw it: try again
    time.sleep(0.2)  # let the waiting thread's signal land, if it comes late
else:
    print("NEVER-INSIDE", flush=True)
    sys.exit(4)
model = ll.model_load("default")  # nothing half-open stops the next load
print("RELOADED", model.n_vocab, flush=True)
"""


def test_ctrl_c_during_model_load_reaches_the_user():
    from conftest import run_python

    run = run_python(_INTERRUPTED_LOAD, timeout=55)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    assert "INTERRUPTED" in run.stdout and "RELOADED 49152" in run.stdout, run.stdout
    assert "Exception ignored" not in run.stderr  # not dropped inside a ctypes callback
