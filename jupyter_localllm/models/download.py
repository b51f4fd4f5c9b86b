"""Downloading GGUF files: plain http(s) URLs and Hugging Face references.

:func:`download_model` is the one entry point (``model_load`` and ``resolve_model`` use it too).
It holds a file lock beside the destination so two kernels never download the same file at once
(the second waits, then finds the file complete). A URL download streams into ``<name>.part``,
resumes a ``.part`` left by an earlier try with an HTTP Range request, retries dropped connections
and server errors, and renames the file into place only once it is complete, starts like a GGUF
file and matches ``sha256=`` when given, so a file at the final path is always whole. Hugging
Face references go through ``huggingface_hub`` (its own resume and revision checks) into the
same cache.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import inspect
import os
import re
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import DownloadError, InvalidParameterError
from .gguf import GGUF_MAGIC
from .paths import expand_path, model_cache_dir

__all__ = ["download_model", "parse_hf_ref", "url_destination"]

CHUNK_BYTES = 1 << 20
RETRIES = 5  # retries after failures in a row (dropped connections, 5xx/408/429 answers)
RETRY_BACKOFF_S = 1.0  # doubled after each failure, reset when bytes arrived
TIMEOUT_S = 30.0  # per socket operation, not for the whole file
LOCK_WAIT_S = 24 * 3600.0  # how long to wait for another process downloading the same file
_USER_AGENT = "jupyter-localllm"
HUB_CHECK_TIMEOUT_S = 5.0  # to open a connection to the Hub before handing it the download
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}
_SHA256 = re.compile(r"(?:sha256:)?([0-9a-fA-F]{64})")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class _Retryable(Exception):
    """A failure worth another attempt (resuming from what is on disk)."""


class _NoNetwork(Exception):
    """The server could not be reached at all (no answer, unknown host, no route, refused)."""


def download_model(
    url_or_hf_ref: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    force_redownload: bool = False,
    hf_token: str | None = None,
    show_progress: bool | None = None,
    timeout: float | None = None,
) -> Path:
    """Download a GGUF model into the model cache once and return its local path.

    ``url_or_hf_ref`` is an ``https://`` (or ``http://``) URL of a ``.gguf`` file, stored as
    ``<cache>/downloads/<url hash>/<file name>``, or a Hugging Face reference
    ``hf://owner/repo/path/file.gguf[@revision]`` (``hf://`` may be left out), stored as
    ``<cache>/hf/owner/repo/path/file.gguf``; ``hf_token`` is passed to the Hub for private or
    gated repositories. ``cache_dir`` defaults to ``model_cache_dir()``.

    A finished file is reused unless ``force_redownload``. A lock file beside it makes a second
    process downloading the same file wait and then reuse it; an interrupted URL download
    resumes from its ``.part`` file. The file must start with the GGUF magic, and with
    ``sha256=`` (hex, optionally ``"sha256:"``-prefixed) its SHA-256 must match: a cached copy
    that does not is downloaded again, a fresh one that does not is deleted and
    :class:`DownloadError` names both hashes. ``show_progress`` (default: when interactive)
    shows a progress bar; ``timeout`` is the seconds a server may stay silent (default 30).

    Offline, a file not in the cache raises a one-line :class:`DownloadError` naming where to
    save it by hand. Raises :class:`InvalidParameterError` for a malformed reference or hash.
    """
    ref, expected = _check_ref(url_or_hf_ref), _expected_sha256(sha256)
    cache = expand_path(cache_dir) if cache_dir is not None else model_cache_dir()
    show = _interactive() if show_progress is None else bool(show_progress)
    wait = TIMEOUT_S if timeout is None else float(timeout)
    url = ref if ref.lower().startswith(("https://", "http://")) else None
    if url is not None:
        dest = url_destination(url, cache)
    else:
        repo_id, filename, _ = parse_hf_ref(ref)
        dest = cache / "hf" / repo_id / filename
    with _locked(dest, url or ref):
        if expected and not force_redownload and dest.is_file() and _sha256(dest, dest) != expected:
            dest.unlink()  # a damaged or different cached copy: download it again
        if url is not None:
            verify = (lambda part: _verify(part, expected, url, dest)) if expected else None
            return _fetch_url(
                url, dest, force=force_redownload, show=show, timeout=wait, verify=verify
            ).absolute()
        path = _fetch_hf(
            ref, cache, token=hf_token, force=force_redownload, show=show, timeout=wait
        )
        _check_magic(ref, path)
        if expected:
            _verify(path, expected, ref, path)
        return path


def _check_ref(ref: object) -> str:
    if not isinstance(ref, str):
        raise InvalidParameterError(
            f"download_model takes a URL or a Hugging Face reference as a string, got "
            f"{type(ref).__name__}; pass e.g. 'https://host/file.gguf' or 'owner/repo/file.gguf'."
        )
    ref = ref.strip()
    lowered = ref.lower()
    if lowered.startswith(("https://", "http://", "hf://")):
        return ref
    if _SCHEME.match(ref):
        raise InvalidParameterError(
            f"Cannot download {ref!r}: only https://, http:// and hf:// addresses are supported; "
            "pass e.g. 'https://host/file.gguf' or 'owner/repo/file.gguf'."
        )
    return "hf://" + ref  # 'owner/repo/file.gguf' (parse_hf_ref explains a malformed one)


def _expected_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    match = _SHA256.fullmatch(sha256.strip()) if isinstance(sha256, str) else None
    if match is None:
        raise InvalidParameterError(
            f"sha256={sha256!r} is not a SHA-256 digest; pass the 64 hexadecimal characters the "
            "model page lists (optionally prefixed with 'sha256:')."
        )
    return match.group(1).lower()


def _interactive() -> bool:
    """Whether a person is likely watching: a terminal, or a Jupyter kernel."""
    stream = sys.stderr
    return "ipykernel" in sys.modules or bool(stream and stream.isatty())


@contextlib.contextmanager
def _locked(dest: Path, what: str) -> Iterator[None]:
    """Hold ``<dest>.lock``: another process downloading the same file holds it until done."""
    from filelock import FileLock, Timeout

    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(dest) + ".lock", timeout=LOCK_WAIT_S)
    try:
        lock.acquire()
    except Timeout as exc:  # pragma: no cover - a day-long wait on another process
        raise DownloadError(
            f"Another process has been downloading {what} for {LOCK_WAIT_S / 3600:g} h; delete "
            f"{dest}.lock if no download is running and try again."
        ) from exc
    try:
        yield
    finally:
        lock.release()


def _sha256(path: Path, dest: Path) -> str:
    """The SHA-256 of ``path``, remembered in ``<dest>.sha256`` with the file's size and mtime,
    so a cached multi-GB model is hashed once, not on every call (``path`` is ``dest`` or its
    ``.part`` file, whose size and mtime the rename keeps)."""
    stat = path.stat()
    stamp, memo = f"{stat.st_size} {stat.st_mtime_ns}", dest.with_name(dest.name + ".sha256")
    try:
        known, seen = memo.read_text(encoding="ascii").split(" ", 1)
        if seen == stamp:
            return known
    except (OSError, ValueError):  # no memo yet, or an unreadable one: hash the file
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    with contextlib.suppress(OSError):  # a read-only cache still works, hashing every time
        memo.write_text(f"{digest.hexdigest()} {stamp}", encoding="ascii")
    return digest.hexdigest()


def _verify(path: Path, expected: str, source: str, dest: Path) -> None:
    """Delete ``path`` and raise unless its SHA-256 is ``expected``."""
    actual = _sha256(path, dest)
    if actual != expected:
        path.unlink()
        raise DownloadError(
            f"The file downloaded from {source} has SHA-256 {actual} but {expected} was expected, "
            "so it was deleted; check the sha256= value and the address, then call again."
        )


def url_destination(url: str, cache_dir: Path) -> Path:
    """Where ``url`` is stored in ``cache_dir``: ``downloads/<url hash>/<file name>``.

    The hash keeps two URLs that end in the same file name apart; the file name stays readable so
    that cache lookups by name find it.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed [IPv6] host
        raise InvalidParameterError(
            f"Cannot read the URL {url!r} ({exc}); pass the full URL of a .gguf file."
        ) from exc
    name = Path(urllib.parse.unquote(parts.path)).name
    if not name:
        raise InvalidParameterError(
            f"URL {url!r} names no file; pass the full URL of a .gguf file."
        )
    if not name.lower().endswith(".gguf"):
        name += ".gguf"  # so the cache scan, which looks for *.gguf, finds it
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return cache_dir / "downloads" / digest / name


def _fetch_url(
    url: str,
    dest: Path,
    *,
    force: bool,
    show: bool,
    timeout: float,
    verify: Callable[[Path], None] | None,
) -> Path:
    """Download ``url`` to ``dest`` (reusing a finished file unless ``force``); the caller holds
    the lock. ``verify`` checks the complete ``.part`` file before it is renamed into place."""
    if dest.is_file() and not force:
        return dest
    part = dest.with_name(dest.name + ".part")
    if force:
        part.unlink(missing_ok=True)
    try:
        _download_with_retries(url, part, show, timeout)
    except _NoNetwork as exc:
        cached = dest.is_file()
        kept = (
            f"the cached copy {dest} is unchanged"
            if cached
            else f"{dest.name} is not in the model cache"
        )
        raise DownloadError(
            f"{exc}, and {kept}; check the URL and the network (or proxy), then call again, or "
            f"download the file by hand and save it in {dest.parent} as {dest.name}."
        ) from exc.__cause__
    _check_magic(url, part)
    if verify is not None:
        verify(part)
    os.replace(part, dest)
    return dest


def _download_with_retries(url: str, part: Path, show: bool, timeout: float) -> None:
    failures, delay, reached = 0, RETRY_BACKOFF_S, False
    while True:
        before = _size(part)
        try:
            _download_once(url, part, show, timeout)
            return
        except (_Retryable, _NoNetwork) as exc:
            if isinstance(exc, _NoNetwork) and not reached:
                raise  # never reached the server in this call: offline, say so at once
            # The server answered before, so the network is there and dropped: try again.
            reached = True
            if _size(part) >= before + CHUNK_BYTES:
                # A megabyte arrived before it failed: a flaky link, not a dead one; keep going.
                # (Less does not count, or a server trickling bytes would never be given up on.)
                failures, delay = 0, RETRY_BACKOFF_S
            failures += 1
            if failures > RETRIES:
                raise DownloadError(
                    f"Downloading {url} gave up after {failures} failed attempts in a row "
                    f"(last: {exc}); check the network and call again, which resumes from the "
                    "partial file."
                ) from exc
            time.sleep(delay)
            delay *= 2


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _download_once(url: str, part: Path, show: bool, timeout: float) -> None:
    have = _size(part)
    headers = {"User-Agent": _USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:
            # Nothing left to send: the partial file is complete if the server's size matches
            # (a run stopped just before renaming it), otherwise it is bad and we start over.
            if exc.headers.get("Content-Range", "") == f"bytes */{have}":
                return
            part.unlink()
            raise _Retryable("the server rejected resuming the partial file") from exc
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from exc
        raise DownloadError(
            f"Downloading {url} failed with HTTP {exc.code} {exc.reason}; check that the URL is "
            "right and the file is public."
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise _connect_failure(url, getattr(exc, "reason", exc), timeout) from exc
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored the Range header and sends the whole file
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as out, _bar(url, have, total, show) as bar:
            _stream(response, out, bar, url, timeout)
    got = part.stat().st_size
    if total is not None and got != total:
        raise _Retryable(f"the connection closed after {got:,} of {total:,} bytes")


def _connect_failure(url: str, reason: object, timeout: float) -> Exception:
    """What to raise when no answer came: :class:`_NoNetwork` when the server cannot be reached
    (no answer, unknown host, no route, refused), :class:`DownloadError` for a certificate that
    does not verify, :class:`_Retryable` for the rest (a reset, a dropped connection)."""
    if isinstance(reason, TimeoutError):
        return _NoNetwork(f"{url} did not answer within {timeout:g} s")
    if isinstance(reason, socket.gaierror):
        return _NoNetwork(f"Cannot look up the host of {url} ({reason})")
    if isinstance(reason, ConnectionRefusedError):
        return _NoNetwork(f"Cannot connect to {url} (connection refused)")
    if isinstance(reason, OSError) and reason.errno in _UNREACHABLE:
        return _NoNetwork(f"Cannot reach {url} ({reason})")
    if isinstance(reason, ssl.SSLCertVerificationError):
        return DownloadError(
            f"Cannot reach {url} ({reason}); check the URL and any proxy or certificate "
            "settings (SSL_CERT_FILE), then try again."
        )
    return _Retryable(str(reason))


def _bar(url: str, have: int, total: int | None, show: bool) -> Any:
    from tqdm.auto import tqdm

    name = Path(urllib.parse.urlsplit(url).path).name
    return tqdm(
        total=total,
        initial=have,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        disable=not show,
    )


def _stream(response: BinaryIO, out: BinaryIO, bar: Any, url: str, timeout: float) -> None:
    got = 0
    while True:
        try:
            chunk = response.read(CHUNK_BYTES)
        except TimeoutError as exc:
            if not got:  # answered, then silence: as dead as no answer
                raise DownloadError(
                    f"{url} answered but sent no data within {timeout:g} s; check the URL "
                    "and the network, then try again."
                ) from exc
            raise _Retryable(f"no data for {timeout:g} s") from exc
        except OSError as exc:  # includes http.client.IncompleteRead
            raise _Retryable(str(exc) or type(exc).__name__) from exc
        got += len(chunk)
        if not chunk:
            return
        out.write(chunk)
        bar.update(len(chunk))


def _check_magic(url: str, part: Path) -> None:
    with open(part, "rb") as f:
        head = f.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        part.unlink()
        raise DownloadError(
            f"{url} did not return a GGUF file (it starts with {head!r}); check that the URL "
            "points at the .gguf file itself, not a web page about it."
        )


def parse_hf_ref(ref: str) -> tuple[str, str, str | None]:
    """Split ``hf://owner/repo/path/file.gguf[@revision]`` into (repo_id, filename, revision)."""
    body = ref[len("hf://") :]
    revision = None
    if "@" in body:
        body, revision = body.rsplit("@", 1)
        revision = revision or None
    parts = [p for p in body.split("/") if p]
    if len(parts) < 3 or not parts[-1].lower().endswith(".gguf"):
        raise InvalidParameterError(
            f"Cannot read Hugging Face reference {ref!r}; write it as "
            "'hf://owner/repo/file.gguf' or 'hf://owner/repo/file.gguf@revision'."
        )
    return f"{parts[0]}/{parts[1]}", "/".join(parts[2:]), revision


def _fetch_hf(
    ref: str, cache_dir: Path, *, token: str | None, force: bool, show: bool, timeout: float
) -> Path:
    """Download an ``hf://`` reference into ``cache_dir/hf/<owner>/<repo>/`` and return its path.

    ``huggingface_hub`` does the work (resume, etag checks, offline reuse); the file lands as a
    plain file under the model cache, so name lookups and listings find it.
    """
    import huggingface_hub

    repo_id, filename, revision = parse_hf_ref(ref)
    download = huggingface_hub.hf_hub_download
    accepted = inspect.signature(download).parameters
    options = {"token": token, "force_download": force}
    # tqdm_class arrived in later huggingface_hub releases; older ones always show their bar.
    if not show and "tqdm_class" in accepted:
        options["tqdm_class"] = _silent_tqdm_class()
    if "etag_timeout" in accepted:
        options["etag_timeout"] = timeout
    local_dir = cache_dir / "hf" / repo_id
    where = {
        "repo_id": repo_id,
        "filename": filename,
        "revision": revision,
        "url": huggingface_hub.hf_hub_url(repo_id, filename, revision=revision),
        "dest": local_dir / filename,
    }
    problem = _hub_problem()
    if problem is not None:  # only a copy already here can do; say so at once
        where["why"] = f" ({problem})"
        if force:  # the Hub would refuse force_download with local_files_only
            kept = f"the cached copy {where['dest']} is unchanged"
            cached = kept if where["dest"].is_file() else "no copy is cached"
            raise DownloadError(_OFFLINE_HF.format(**where, cached=cached))
        options["local_files_only"] = True
    try:
        path = download(
            repo_id=repo_id, filename=filename, revision=revision, local_dir=local_dir, **options
        )
    except Exception as exc:  # network, disk, validation: one message, cause attached
        raise _hf_download_error(exc, {"why": "", **where}) from exc
    return Path(path).absolute()


def _hub_problem() -> str | None:
    """Why the Hugging Face Hub cannot be reached from here (its host has no address, or no
    route leads to it), or ``None``: reachable, slow (the Hub client retries timeouts and
    server errors itself), offline mode, or behind a proxy, which decides instead."""
    from huggingface_hub import constants

    parts = urllib.parse.urlsplit(constants.ENDPOINT)
    host = parts.hostname
    if getattr(constants, "HF_HUB_OFFLINE", False) or not host or _proxied(parts.scheme, host):
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_CHECK_TIMEOUT_S).close()
    except socket.gaierror as exc:
        return f"cannot look up {host}: {exc.strerror or exc}"
    except TimeoutError:
        return None
    except OSError as exc:
        return f"cannot connect to {host}: {exc.strerror or exc}"
    return None


def _proxied(scheme: str, host: str) -> bool:
    proxies = urllib.request.getproxies()
    return bool(proxies.get(scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host)


_OFFLINE_HF = (
    "Cannot reach the Hugging Face Hub{why} for {filename!r} in {repo_id!r}, and {cached}; "
    "connect to the network and call again, or download {url} by hand and save it as {dest}."
)

# (huggingface_hub.utils class name, message) in the order to test them: a subclass comes before
# its base (GatedRepoError is a RepositoryNotFoundError, LocalEntryNotFoundError an
# EntryNotFoundError). The messages are formatted with repo_id, filename and revision.
_HF_ERROR_MESSAGES = (
    (
        "GatedRepoError",
        "Hugging Face repository {repo_id!r} is gated; accept its terms on the Hub and "
        "pass hf_token= (or run `hf auth login`).",
    ),
    (
        "RepositoryNotFoundError",
        "Hugging Face repository {repo_id!r} was not found; check the name, or pass "
        "hf_token= if it is private.",
    ),
    (
        "RevisionNotFoundError",
        "Revision {revision!r} of Hugging Face repository {repo_id!r} was not found; check "
        "the branch, tag or commit after '@'.",
    ),
    ("LocalEntryNotFoundError", _OFFLINE_HF),
    (
        "EntryNotFoundError",
        "File {filename!r} was not found in Hugging Face repository {repo_id!r}; check "
        "the file name and folder in the repository's file list.",
    ),
)


def _hf_download_error(exc: Exception, where: dict[str, object]) -> DownloadError:
    """The :class:`DownloadError` that names the fix for ``exc`` raised by ``hf_hub_download``."""
    # huggingface_hub.utils re-exports these in every release since 0.23 (.errors came later).
    from huggingface_hub import utils as hf_errors

    for name, message in _HF_ERROR_MESSAGES:
        if isinstance(exc, getattr(hf_errors, name)):
            return DownloadError(message.format(cached="no copy is cached", **where))
    return DownloadError(
        f"Downloading {where['filename']!r} from Hugging Face repository {where['repo_id']!r} "
        f"failed ({exc}); check the network and the reference, then try again."
    )


def _silent_tqdm_class() -> type:
    from tqdm.auto import tqdm

    class SilentTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentTqdm
