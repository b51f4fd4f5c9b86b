"""Tests for model downloads: URLs from a real HTTP server on 127.0.0.1 (resume, retries,
locking, errors) and ``hf://`` references (only the Hugging Face Hub itself is replaced, since no
remote can be reached here)."""

from __future__ import annotations

import hashlib
import http.server
import os
import random
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import huggingface_hub
import pytest
from conftest import REPO_ROOT, place
from huggingface_hub import utils as hf_errors

from jupyter_localllm.errors import (
    DownloadError,
    InvalidParameterError,
    LocalLLMError,
)
from jupyter_localllm.models import (
    default_model_path,
    list_cached_models,
    resolve_model,
    validate_model_file,
)
from jupyter_localllm.models import download as _download
from jupyter_localllm.models.download import download_model
from jupyter_localllm.models.gguf import GGUF_MAGIC


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
    ("no-answer", b"", r"did not answer within 0.5 s, and m.gguf is not in the model cache; check"),
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


# --- download_model ----------------------------------------------------------------------------

SMALL_PATH = "/s/small.gguf"
# A small stand-in for a model: the GGUF magic, then 3 MB that a cut download would garble.
SMALL = GGUF_MAGIC + random.Random(27).randbytes(3_000_000)
SMALL_SHA256 = hashlib.sha256(SMALL).hexdigest()


@pytest.fixture
def small(server) -> str:
    """The URL of :data:`SMALL` on the local server."""
    server.files[SMALL_PATH] = SMALL
    return server.base + SMALL_PATH


def leftovers(folder: Path) -> list[str]:
    """Model files and partial downloads under ``folder`` (lock files do not count)."""
    return sorted(p.name for p in folder.rglob("*") if p.suffix in (".gguf", ".part"))


def test_download_model_is_public_and_model_load_uses_it(server, tmp_path, model_bytes):
    import jupyter_localllm as ll

    assert ll.download_model is download_model and "download_model" in ll.__all__
    url = server.base + MODEL_URL_PATH
    digest = hashlib.sha256(model_bytes).hexdigest()
    path = ll.download_model(url, cache_dir=tmp_path, sha256=digest, show_progress=False)
    assert path == _download.url_destination(url, tmp_path).absolute()
    assert path.read_bytes() == model_bytes
    loaded = ll.model_load(url, cache_dir=tmp_path, show_progress=False)
    assert loaded.path == path
    assert gets(server) == [None]  # model_load found download_model's file in the cache


def test_download_model_resumes_a_cut_download(server, small, tmp_path):
    server.drop_after[SMALL_PATH] = 1_500_000  # the connection closes half-way, once
    path = download_model(small, cache_dir=tmp_path, sha256=SMALL_SHA256, show_progress=False)
    assert gets(server, SMALL_PATH) == [None, "bytes=1500000-"]
    assert path.read_bytes() == SMALL
    assert leftovers(tmp_path) == ["small.gguf"]


def test_download_model_resumes_in_the_next_call(server, small, tmp_path, monkeypatch):
    monkeypatch.setattr(_download, "RETRIES", 0)
    server.drop_after[SMALL_PATH] = 1_000_000
    with pytest.raises(DownloadError, match=r"gave up .* resumes from the partial file\.$"):
        download_model(small, cache_dir=tmp_path, show_progress=False)
    assert leftovers(tmp_path) == ["small.gguf.part"]
    path = download_model(small, cache_dir=tmp_path, sha256=SMALL_SHA256, show_progress=False)
    assert gets(server, SMALL_PATH) == [None, "bytes=1000000-"]
    assert path.read_bytes() == SMALL
    assert leftovers(tmp_path) == ["small.gguf"]


def test_download_model_checksum_mismatch_leaves_no_file(server, small, tmp_path):
    wrong = "ab" * 32
    with pytest.raises(DownloadError) as info:
        download_model(small, cache_dir=tmp_path, sha256=f"sha256:{wrong.upper()}")
    message = str(info.value)
    assert f"has SHA-256 {SMALL_SHA256} but {wrong} was expected" in message
    assert "deleted" in message and "\n" not in message
    assert leftovers(tmp_path) == []
    # the right hash afterwards downloads it whole
    path = download_model(small, cache_dir=tmp_path, sha256=SMALL_SHA256, show_progress=False)
    assert path.read_bytes() == SMALL


def test_download_model_replaces_a_cached_copy_with_the_wrong_hash(server, small, tmp_path):
    dest = _download.url_destination(small, tmp_path)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(SMALL[:-1] + b"X")  # damaged on disk
    assert download_model(small, cache_dir=tmp_path, show_progress=False) == dest.absolute()
    assert gets(server, SMALL_PATH) == []  # without sha256= the cached copy is trusted
    download_model(small, cache_dir=tmp_path, sha256=SMALL_SHA256, show_progress=False)
    assert gets(server, SMALL_PATH) == [None]
    assert dest.read_bytes() == SMALL


def test_download_model_hashes_a_cached_copy_once(server, small, tmp_path):
    path = download_model(small, cache_dir=tmp_path, sha256=SMALL_SHA256, show_progress=False)
    memo = path.with_name(path.name + ".sha256")
    stat = path.stat()
    assert memo.read_text() == f"{SMALL_SHA256} {stat.st_size} {stat.st_mtime_ns}"
    # While size and mtime are unchanged, the remembered hash stands for the file ...
    memo.write_text(f"{'1' * 64} {stat.st_size} {stat.st_mtime_ns}")
    assert download_model(small, cache_dir=tmp_path, sha256="1" * 64) == path
    assert gets(server, SMALL_PATH) == [None]
    # ... and once the file is touched it is hashed again.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert download_model(small, cache_dir=tmp_path, sha256=SMALL_SHA256) == path
    assert gets(server, SMALL_PATH) == [None]
    assert memo.read_text().startswith(SMALL_SHA256)


def test_download_model_force_redownload(server, small, tmp_path):
    first = download_model(small, cache_dir=tmp_path, show_progress=False)
    server.files[SMALL_PATH] = GGUF_MAGIC + b"a newer upload"
    assert download_model(small, cache_dir=tmp_path, show_progress=False) == first
    assert first.read_bytes() == SMALL
    again = download_model(small, cache_dir=tmp_path, force_redownload=True, show_progress=False)
    assert again == first and again.read_bytes() == GGUF_MAGIC + b"a newer upload"
    assert gets(server, SMALL_PATH) == [None, None]


_FETCH = """
import sys
from jupyter_localllm.models.download import download_model
print(download_model(sys.argv[1], cache_dir=sys.argv[2], show_progress=False))
"""


def test_two_processes_download_one_file_once(server, small, tmp_path):
    server.delay = 1.0  # the first download is still running when the second process asks
    command = [sys.executable, "-c", textwrap.dedent(_FETCH), small, str(tmp_path)]
    kernels = [
        subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [k.communicate(timeout=50) for k in kernels]
    assert [k.returncode for k in kernels] == [0, 0], outputs
    paths = {out.decode().strip() for out, _ in outputs}
    assert paths == {str(_download.url_destination(small, tmp_path).absolute())}
    assert Path(paths.pop()).read_bytes() == SMALL
    assert gets(server, SMALL_PATH) == [None]  # the second waited on the lock, then reused it
    assert leftovers(tmp_path) == ["small.gguf"]


@pytest.fixture
def closed_port():
    """A loopback port with nothing listening (kept bound so that nothing else takes it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


OFFLINE = [
    ("refused", "http://127.0.0.1:{port}/m/small.gguf", r"Cannot connect to .* \(connection refused\)"),  # noqa: E501
    ("unknown-host", "https://no-such-host.invalid/m/small.gguf", r"Cannot look up the host of"),
]  # fmt: skip


@pytest.mark.parametrize(("url", "cause"), [c[1:] for c in OFFLINE], ids=[c[0] for c in OFFLINE])
def test_download_model_offline_says_where_to_put_the_file(
    no_proxy, closed_port, tmp_path, monkeypatch, url, cause
):
    monkeypatch.setattr(_download, "RETRY_BACKOFF_S", 0.0)
    url = url.format(port=closed_port)
    dest = _download.url_destination(url, tmp_path)
    with pytest.raises(DownloadError, match=cause) as info:
        download_model(url, cache_dir=tmp_path, show_progress=False)
    message = str(info.value)
    assert "\n" not in message and "gave up" not in message  # at once, not after retries
    assert "small.gguf is not in the model cache" in message
    assert f"save it in {dest.parent} as small.gguf" in message
    # Saved there by hand, the file is found without the network, and checked.
    dest.write_bytes(SMALL)
    assert download_model(url, cache_dir=tmp_path, sha256=SMALL_SHA256) == dest.absolute()
    # Asked to download it again while offline: the cached copy stays.
    with pytest.raises(DownloadError, match=f"the cached copy {dest} is unchanged"):
        download_model(url, cache_dir=tmp_path, force_redownload=True, show_progress=False)
    assert dest.read_bytes() == SMALL


@pytest.mark.parametrize(
    ("ref", "phrase"),
    [
        ("ftp://example.org/m.gguf", "only https://, http:// and hf://"),
        ("model.gguf", r"write it as 'hf://owner/repo/file\.gguf'"),
        ("owner/repo/README.md", r"write it as 'hf://owner/repo/file\.gguf'"),
    ],
)
def test_download_model_malformed_reference(ref, phrase, tmp_path):
    with pytest.raises(InvalidParameterError, match=phrase):
        download_model(ref, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sha256", ["abc", "g" * 64, 12])
def test_download_model_malformed_sha256(sha256, tmp_path):
    with pytest.raises(InvalidParameterError, match="is not a SHA-256 digest"):
        download_model("https://example.org/m.gguf", cache_dir=tmp_path, sha256=sha256)


# --- Hugging Face ------------------------------------------------------------------------------


@pytest.fixture
def hub_endpoint(no_proxy, monkeypatch):
    """A reachable Hub endpoint on the loopback (it accepts connections, nothing more), so the
    reachability check passes without the network."""
    from huggingface_hub import constants

    sock = socket.create_server(("127.0.0.1", 0))
    endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    yield endpoint
    sock.close()


@pytest.fixture
def fake_hub(monkeypatch, model, hub_endpoint):
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


def test_download_model_hf_reference_with_checksum(fake_hub, tmp_path, model_bytes):
    digest = hashlib.sha256(model_bytes).hexdigest()
    path = download_model(
        "TheOwner/Repo-GGUF/smol.gguf", cache_dir=tmp_path, sha256=digest, hf_token="hf_x"
    )
    assert path == tmp_path / "hf" / "TheOwner" / "Repo-GGUF" / "smol.gguf"
    (call,) = fake_hub
    assert (call["repo_id"], call["filename"], call["token"]) == (
        "TheOwner/Repo-GGUF",
        "smol.gguf",
        "hf_x",
    )
    with pytest.raises(DownloadError, match=f"has SHA-256 {digest} but {'0' * 64} was expected"):
        download_model("hf://TheOwner/Repo-GGUF/smol.gguf", cache_dir=tmp_path, sha256="0" * 64)
    assert not path.exists()  # a cached copy with the wrong hash was fetched again, then deleted


def test_download_model_hf_offline_says_where_to_put_the_file(
    no_proxy, closed_port, tmp_path, monkeypatch
):
    from huggingface_hub import constants

    endpoint = f"http://127.0.0.1:{closed_port}"  # the real Hub client, with nothing to reach
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    dest = tmp_path / "hf" / "o" / "r" / "sub" / "f.gguf"
    with pytest.raises(DownloadError) as info:
        download_model("hf://o/r/sub/f.gguf@v2", cache_dir=tmp_path, show_progress=False)
    message = str(info.value)
    assert message.startswith("Cannot reach the Hugging Face Hub (cannot connect to 127.0.0.1")
    assert "no copy is cached" in message and "\n" not in message
    # (hf_hub_url builds the address from the Hub address set at import, huggingface.co here)
    assert f"/o/r/resolve/v2/sub/f.gguf by hand and save it as {dest}." in message
    dest.write_bytes(SMALL)  # saved by hand: found offline
    assert download_model("o/r/sub/f.gguf@v2", cache_dir=tmp_path, sha256=SMALL_SHA256) == dest
    with pytest.raises(DownloadError, match=f"the cached copy {dest} is unchanged"):
        download_model("o/r/sub/f.gguf@v2", cache_dir=tmp_path, force_redownload=True)
    assert dest.read_bytes() == SMALL
