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
