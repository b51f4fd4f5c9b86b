"""Tests for model downloads: URLs from a real HTTP server on 127.0.0.1 (resume, retries,
locking, errors) and ``hf://`` references (only the Hugging Face Hub itself is replaced, since no
remote can be reached here)."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import huggingface_hub
import pytest
from conftest import place
from huggingface_hub import utils as hf_errors

from jupyter_localllm.errors import (
    DownloadError,
    InvalidModelFileError,
    InvalidParameterError,
    LocalLLMError,
    ModelNotFoundError,
)
from jupyter_localllm.models import (
    ArraySummary,
    default_model_path,
    list_cached_models,
    read_gguf_metadata,
    resolve_model,
    validate_model_file,
)
from jupyter_localllm.models import download as _download


@pytest.fixture(scope="session")
def model() -> Path:
    return default_model_path()


@pytest.fixture(scope="session")
def model_bytes(model: Path) -> bytes:
    return model.read_bytes()


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-``; can fail or drop on request."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        time.sleep(srv.delay)
        if srv.fail.get(self.path):
            srv.fail[self.path] -= 1
            self._empty(500)
            return
        body = srv.files.get(self.path)
        if body is None:
            self._empty(404)
            return
        start, size = 0, len(body)
        wanted = self.headers.get("Range")
        if wanted and not srv.ignore_range:
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            if start >= size:
                self._empty(416, {"Content-Range": f"bytes */{size}"})
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        drop = srv.drop_after.pop(self.path, None)
        end = size if drop is None else start + drop
        self.wfile.write(memoryview(body)[start:end])
        if drop is not None:
            self.close_connection = True  # the client sees a connection closed mid-file


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Talk to hosts directly, whatever proxy the machine has configured."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def server(no_proxy: None, monkeypatch: pytest.MonkeyPatch, model_bytes: bytes):
    monkeypatch.setattr(_download, "RETRY_BACKOFF_S", 0.0)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.files = {
        "/m/SmolLM2-135M-Instruct.Q4_1.gguf": model_bytes,
        "/page.gguf": b"<!DOCTYPE html><html>Sign in to download</html>",
    }
    srv.requests, srv.fail, srv.drop_after = [], {}, {}
    srv.delay, srv.ignore_range = 0.0, False
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


MODEL_URL_PATH = "/m/SmolLM2-135M-Instruct.Q4_1.gguf"


def gets(srv, path: str = MODEL_URL_PATH) -> list[str | None]:
    """The Range headers of the requests the server got for ``path``."""
    return [rng for p, rng in srv.requests if p == path]


# --- URL downloads -----------------------------------------------------------------------------


def test_url_download_then_reuse_then_force(server, tmp_path, model_bytes):
    url = server.base + MODEL_URL_PATH
    path = resolve_model(url, cache_dir=tmp_path, show_progress=False)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent.parent == tmp_path / "downloads"
    assert path.read_bytes() == model_bytes
    assert validate_model_file(path) == path
    assert not path.with_name(path.name + ".part").exists()
    assert resolve_model(url, cache_dir=tmp_path, show_progress=False) == path
    assert gets(server) == [None]  # reused, not downloaded again
    assert resolve_model(url, cache_dir=tmp_path, force_redownload=True, show_progress=False)
    assert gets(server) == [None, None]
    # the download is now a cached model like any other
    assert resolve_model("smollm2", cache_dir=tmp_path) == path
    assert list(list_cached_models(tmp_path)["path"]) == [str(path)]


def test_url_download_resumes_a_partial_file(server, tmp_path, model_bytes, capsys):
    url = server.base + MODEL_URL_PATH
    dest = _download.url_destination(url, tmp_path)
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(model_bytes[:40_000_000])
    path = resolve_model(url, cache_dir=tmp_path)  # with the progress bar this time
    assert gets(server) == ["bytes=40000000-"]
    assert path.read_bytes() == model_bytes
    bar = capsys.readouterr().err
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in bar and "100%" in bar


def test_url_download_retries_a_dropped_connection(server, tmp_path, model_bytes):
    server.drop_after[MODEL_URL_PATH] = 10_000_000
    server.fail[MODEL_URL_PATH] = 1  # and a 500 before that
    path = resolve_model(server.base + MODEL_URL_PATH, cache_dir=tmp_path, show_progress=False)
    assert gets(server) == [None, None, "bytes=10000000-"]
    assert path.read_bytes() == model_bytes


def test_url_download_restarts_when_range_is_ignored(server, tmp_path, model_bytes):
    server.ignore_range = True
    url = server.base + MODEL_URL_PATH
    dest = _download.url_destination(url, tmp_path)
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(b"stale bytes")
    path = resolve_model(url, cache_dir=tmp_path, show_progress=False)
    assert path.read_bytes() == model_bytes


def test_url_download_keeps_a_complete_part_file(server, tmp_path, model_bytes):
    url = server.base + MODEL_URL_PATH
    dest = _download.url_destination(url, tmp_path)
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(model_bytes)  # stopped before the rename
    path = resolve_model(url, cache_dir=tmp_path, show_progress=False)
    assert gets(server) == [f"bytes={len(model_bytes)}-"]
    assert path.read_bytes() == model_bytes


def test_two_downloads_of_one_url_share_the_work(server, tmp_path, model_bytes):
    server.delay = 0.5  # both callers are waiting on the server at the same time
    url = server.base + MODEL_URL_PATH
    results: list[Path] = []

    def fetch() -> None:
        results.append(resolve_model(url, cache_dir=tmp_path, show_progress=False))

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    assert gets(server) == [None]
    assert results[0].read_bytes() == model_bytes


def test_url_404_raises_download_error(server, tmp_path):
    url = server.base + "/m/missing.gguf"
    with pytest.raises(DownloadError, match=r"failed with HTTP 404 .*; check that the URL"):
        resolve_model(url, cache_dir=tmp_path, show_progress=False)
    assert [p for p in tmp_path.rglob("*") if p.suffix in (".gguf", ".part")] == []


def test_url_that_is_a_web_page_raises_download_error(server, tmp_path):
    with pytest.raises(DownloadError, match=r"did not return a GGUF file \(it starts with b'<!DO'"):
        resolve_model(server.base + "/page.gguf", cache_dir=tmp_path, show_progress=False)
    assert not list(tmp_path.rglob("*.part"))


def test_url_server_errors_give_up_after_retries(server, tmp_path, monkeypatch):
    monkeypatch.setattr(_download, "RETRIES", 2)
    server.fail[MODEL_URL_PATH] = 10
    with pytest.raises(
        DownloadError, match=r"gave up after 3 failed attempts in a row \(last: HTTP 500"
    ):
        resolve_model(server.base + MODEL_URL_PATH, cache_dir=tmp_path, show_progress=False)
    assert len(gets(server)) == 3


def test_url_unreachable_raises_download_error(no_proxy, tmp_path, monkeypatch):
    monkeypatch.setattr(_download, "RETRIES", 1)
    monkeypatch.setattr(_download, "RETRY_BACKOFF_S", 0.0)
    with pytest.raises(DownloadError, match=r"after 2 failed attempts .*resumes from the partial"):
        resolve_model("http://127.0.0.1:9/x.gguf", cache_dir=tmp_path, show_progress=False)


def test_url_unknown_host_fails_at_once(no_proxy, tmp_path, monkeypatch):
    monkeypatch.setattr(_download, "RETRY_BACKOFF_S", 60.0)  # a retry would time the test out
    with pytest.raises(DownloadError, match=r"Cannot look up the host of .*; check the URL"):
        resolve_model("https://no-such-host.invalid/m.gguf", cache_dir=tmp_path)


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and then says nothing (or only its
    headers): a model URL that never answers. It closes itself after ``lifetime`` seconds."""

    def __init__(self, headers: bytes = b"", lifetime: float = 20.0) -> None:
        import socket

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.headers, self.end = headers, time.monotonic() + lifetime
        self.accepted: list = []
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while time.monotonic() < self.end:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # the 0.2 s accept timeout, or closed by stop()
                continue
            self.accepted.append(conn)
            if self.headers:
                conn.recv(65536)
                conn.sendall(self.headers)
        self.stop()

    def stop(self) -> None:
        self.end = 0.0
        for conn in self.accepted:
            conn.close()
        self.sock.close()


SILENCES = [
    ("no-answer", b"", r"did not answer within 0.5 s; check the URL and the network"),
    ("headers-only", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", r"answered but sent no data within 0.5 s"),  # noqa: E501
    ("status-line-only", b"HTTP/1.1 200 OK\r\n", r"did not answer within 0.5 s"),
]  # fmt: skip


@pytest.mark.parametrize("headers, phrase", [c[1:] for c in SILENCES], ids=[c[0] for c in SILENCES])
def test_url_that_never_answers_times_out_with_a_message(
    no_proxy, tmp_path, monkeypatch, headers, phrase
):
    monkeypatch.setattr(_download, "TIMEOUT_S", 0.5)
    monkeypatch.setattr(_download, "RETRY_BACKOFF_S", 60.0)  # a retry would time the test out
    silent = SilentServer(headers)
    try:
        with pytest.raises(DownloadError, match=phrase) as info:
            resolve_model(silent.base + "/m.gguf", cache_dir=tmp_path, show_progress=False)
        assert "\n" not in str(info.value)
        assert len(silent.accepted) == 1  # refused at the first silence, not retried
    finally:
        silent.stop()
    silent.thread.join(5)
    assert not silent.thread.is_alive()


def test_url_without_file_name_is_invalid(tmp_path):
    with pytest.raises(InvalidParameterError, match="names no file"):
        resolve_model("https://example.org/", cache_dir=tmp_path)


# --- Hugging Face ------------------------------------------------------------------------------


@pytest.fixture
def fake_hub(monkeypatch, model):
    """Replaces the remote Hub: records the call and 'downloads' the real model file."""
    calls: list[dict] = []

    def hf_hub_download(**kwargs):
        calls.append(kwargs)
        dest = Path(kwargs["local_dir"]) / kwargs["filename"]
        if not dest.exists():
            place(model, dest)
        return str(dest)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return calls


def test_hf_reference_downloads_into_the_cache(fake_hub, cache):
    path = resolve_model(
        "hf://TheOwner/Some-Repo-GGUF/quants/smol.Q4_1.gguf@v1.0",
        hf_token="hf_secret",
        force_redownload=True,
        show_progress=False,
    )
    assert path == cache / "hf" / "TheOwner" / "Some-Repo-GGUF" / "quants" / "smol.Q4_1.gguf"
    (call,) = fake_hub
    assert call["repo_id"] == "TheOwner/Some-Repo-GGUF"
    assert call["filename"] == "quants/smol.Q4_1.gguf"
    assert call["revision"] == "v1.0"
    assert Path(call["local_dir"]) == cache / "hf" / "TheOwner" / "Some-Repo-GGUF"
    assert call["token"] == "hf_secret"
    assert call["force_download"] is True
    assert validate_model_file(path) == path
    assert resolve_model("smol.q4_1") == path  # found in the cache afterwards


def test_hf_reference_without_revision(fake_hub, tmp_path):
    resolve_model("hf://o/r/f.gguf", cache_dir=tmp_path)
    (call,) = fake_hub
    assert (call["repo_id"], call["filename"], call["revision"]) == ("o/r", "f.gguf", None)
    assert call["token"] is None and call["force_download"] is False


@pytest.mark.parametrize("ref", ["hf://owner/file.gguf", "hf://owner/repo/README.md", "hf://"])
def test_hf_malformed_reference(ref, fake_hub):
    with pytest.raises(InvalidParameterError, match=r"write it as 'hf://owner/repo/file\.gguf'"):
        resolve_model(ref)
    assert fake_hub == []


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (hf_errors.LocalEntryNotFoundError("offline"), "Cannot reach the Hugging Face Hub"),
        (OSError("disk full"), r"failed \(disk full\); check the network"),
    ],
)
def test_hf_failures_become_download_errors(monkeypatch, tmp_path, error, message):
    def hf_hub_download(**kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    with pytest.raises(DownloadError, match=message) as info:
        resolve_model("hf://o/r/f.gguf", cache_dir=tmp_path)
    assert info.value.__cause__ is error
    assert isinstance(info.value, LocalLLMError)


# --- metadata ----------------------------------------------------------------------------------


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
