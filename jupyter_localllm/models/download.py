"""Downloading GGUF files: plain http(s) URLs and ``hf://`` Hugging Face references.

A URL download streams into ``<name>.part`` beside its destination, resumes a ``.part`` left by
an earlier try with an HTTP Range request, retries dropped connections and server errors, holds a
file lock so two processes never download the same file at once, and renames the file into place
only once it is complete and starts like a GGUF file, so a file at the final path is always whole.
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from ..errors import DownloadError, InvalidParameterError
from .gguf import GGUF_MAGIC

__all__ = ["download_hf", "download_url", "parse_hf_ref", "url_destination"]

CHUNK_BYTES = 1 << 20
RETRIES = 5  # retries after failures in a row (dropped connections, 5xx/408/429 answers)
RETRY_BACKOFF_S = 1.0  # doubled after each failure, reset when bytes arrived
TIMEOUT_S = 30.0  # per socket operation, not for the whole file
_USER_AGENT = "jupyter-localllm"
HUB_CHECK_TIMEOUT_S = 5.0  # to open a connection to the Hub before handing it the download
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}


class _Retryable(Exception):
    """A failure worth another attempt (resuming from what is on disk)."""


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


def download_url(url: str, dest: Path, *, force: bool = False, show_progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (reusing a finished file unless ``force``) and return it."""
    from filelock import FileLock, Timeout

    if dest.is_file() and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        # Another process downloading the same URL holds this lock: we wait for it, then find
        # its finished file below.
        with FileLock(str(dest) + ".lock", timeout=24 * 3600):
            if dest.is_file() and not force:
                return dest
            if force:
                part.unlink(missing_ok=True)
            _download_with_retries(url, part, show_progress)
            _check_magic(url, part)
            os.replace(part, dest)
    except Timeout as exc:  # pragma: no cover - a day-long wait on another process
        raise DownloadError(
            f"Another process has been downloading {url} for a day; delete {dest}.lock if no "
            "download is running and try again."
        ) from exc
    return dest


def _download_with_retries(url: str, part: Path, show_progress: bool) -> None:
    failures, delay = 0, RETRY_BACKOFF_S
    while True:
        before = _size(part)
        try:
            _download_once(url, part, show_progress)
            return
        except _Retryable as exc:
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


def _download_once(url: str, part: Path, show_progress: bool) -> None:
    have = _size(part)
    headers = {"User-Agent": _USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
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
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):  # a server that never answers will not on retry
            raise DownloadError(
                f"{url} did not answer within {TIMEOUT_S:g} s; check the URL and the network (a "
                "firewall or proxy may hold the connection), then try again."
            ) from exc
        if isinstance(reason, socket.gaierror):  # an unknown host does not come back on retry
            raise DownloadError(
                f"Cannot look up the host of {url} ({reason}); check the URL and that this "
                "machine is online."
            ) from exc
        if _is_permanent(reason):
            raise DownloadError(
                f"Cannot reach {url} ({reason}); check the URL, the network and any proxy or "
                "certificate settings, then try again."
            ) from exc
        raise _Retryable(str(reason)) from exc
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored the Range header and sends the whole file
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as out:
            _stream(response, out, have, total, url, show_progress)
    got = part.stat().st_size
    if total is not None and got != total:
        raise _Retryable(f"the connection closed after {got:,} of {total:,} bytes")


def _is_permanent(reason: object) -> bool:
    """Whether a connection failure will not pass by waiting: no route to the network or host,
    or a TLS certificate that does not verify (timeouts, resets and refusals are retried)."""
    if isinstance(reason, ssl.SSLCertVerificationError):
        return True
    return isinstance(reason, OSError) and reason.errno in _UNREACHABLE


def _stream(
    response: BinaryIO, out: BinaryIO, have: int, total: int | None, url: str, show: bool
) -> None:
    from tqdm.auto import tqdm

    name = Path(urllib.parse.urlsplit(url).path).name
    with tqdm(
        total=total,
        initial=have,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        disable=not show,
    ) as bar:
        got = 0
        while True:
            try:
                chunk = response.read(CHUNK_BYTES)
            except TimeoutError as exc:
                if not got:  # answered, then silence: as dead as no answer
                    raise DownloadError(
                        f"{url} answered but sent no data within {TIMEOUT_S:g} s; check the URL "
                        "and the network, then try again."
                    ) from exc
                raise _Retryable(f"no data for {TIMEOUT_S:g} s") from exc
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


def download_hf(
    ref: str,
    cache_dir: Path,
    *,
    token: str | None = None,
    force: bool = False,
    show_progress: bool = True,
) -> Path:
    """Download an ``hf://`` reference into ``cache_dir/hf/<owner>/<repo>/`` and return its path.

    ``huggingface_hub`` does the work (resume, locking, etag checks, offline reuse); the file
    lands as a plain file under the model cache, so name lookups and listings find it.
    """
    import huggingface_hub

    repo_id, filename, revision = parse_hf_ref(ref)
    download = huggingface_hub.hf_hub_download
    options = {"token": token, "force_download": force}
    # tqdm_class arrived in later huggingface_hub releases; older ones always show their bar.
    if not show_progress and "tqdm_class" in inspect.signature(download).parameters:
        options["tqdm_class"] = _silent_tqdm_class()
    problem = _hub_problem()
    if problem is not None:  # only a copy already here can do; say so at once
        options["local_files_only"] = True
    where = {"repo_id": repo_id, "filename": filename, "revision": revision}
    try:
        path = download(**where, local_dir=cache_dir / "hf" / repo_id, **options)
    except Exception as exc:  # network, disk, validation: one message, cause attached
        raise _hf_download_error(exc, {**where, "why": f" ({problem})" if problem else ""}) from exc
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
    (
        "LocalEntryNotFoundError",
        "Cannot reach the Hugging Face Hub{why} for {filename!r} in {repo_id!r} and no copy "
        "is cached; connect to the network and try again.",
    ),
    (
        "EntryNotFoundError",
        "File {filename!r} was not found in Hugging Face repository {repo_id!r}; check "
        "the file name and folder in the repository's file list.",
    ),
)


def _hf_download_error(exc: Exception, where: dict[str, str | None]) -> DownloadError:
    """The :class:`DownloadError` that names the fix for ``exc`` raised by ``hf_hub_download``."""
    # huggingface_hub.utils re-exports these in every release since 0.23 (.errors came later).
    from huggingface_hub import utils as hf_errors

    for name, message in _HF_ERROR_MESSAGES:
        if isinstance(exc, getattr(hf_errors, name)):
            return DownloadError(message.format(**where))
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
