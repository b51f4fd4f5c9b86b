"""Turning a model reference into the path of a local GGUF file (see :mod:`..models`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import AmbiguousModelError, InvalidParameterError, ModelNotFoundError
from . import download as _download
from . import paths
from .ollama import resolve_ollama
from .paths import cached_files, expand_path, model_cache_dir

__all__ = ["resolve_model"]

_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_ACCEPTED = (
    "a path to a .gguf file, 'default', part of a cached model's file name, "
    "'ollama:NAME[:TAG]', 'hf://owner/repo/file.gguf' or an https:// URL of a .gguf file"
)


def resolve_model(
    ref: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    hf_token: str | None = None,
    force_redownload: bool = False,
    show_progress: bool = True,
) -> Path:
    """Turn a model reference into the absolute path of a local GGUF file.

    See the module docstring for the accepted forms. Downloads (``hf://``, URLs) go to
    ``cache_dir`` (default :func:`model_cache_dir`) and are reused on later calls unless
    ``force_redownload``; ``show_progress`` shows a tqdm bar while downloading. ``hf_token`` is
    passed to the Hugging Face Hub for private or gated repositories.

    The file's contents are not checked here; call :func:`validate_model_file` for that.

    Raises :class:`ModelNotFoundError`, :class:`AmbiguousModelError` (several cached files match
    a fragment), :class:`DownloadError` or :class:`InvalidParameterError` (a malformed reference).
    """
    if isinstance(ref, os.PathLike):
        return _local_file(expand_path(ref))
    if not isinstance(ref, str):
        raise InvalidParameterError(
            f"A model reference must be a string or a path, got {type(ref).__name__}; pass "
            f"{_ACCEPTED}."
        )
    ref = ref.strip()
    if not ref:
        raise InvalidParameterError(f"The model reference is empty; pass {_ACCEPTED}.")
    cache = expand_path(cache_dir) if cache_dir is not None else model_cache_dir()
    lowered = ref.lower()
    if lowered == "default":
        return paths.default_model_path()
    if lowered == paths.GEMMA_REF:
        return paths.gemma_model_path(cache)
    if lowered.startswith("ollama:"):
        return resolve_ollama(ref[len("ollama:") :])
    if lowered.startswith(("hf://", "https://", "http://")):
        return _download.download_model(
            ref,
            cache_dir=cache,
            hf_token=hf_token,
            force_redownload=force_redownload,
            show_progress=show_progress,
        )
    if _URL_SCHEME.match(ref):
        raise InvalidParameterError(
            f"Cannot download {ref!r}: only https://, http:// and hf:// addresses are "
            f"supported; pass {_ACCEPTED}."
        )
    path = expand_path(ref)
    if path.is_file():
        return path.absolute()
    if _has_folder_part(ref):
        # Clearly meant as a path (or a folder, which validate_model_file explains).
        return _local_file(path)
    return _resolve_cached(ref, cache)


def _has_folder_part(ref: str) -> bool:
    return ref.startswith(("~", ".")) or "/" in ref or os.sep in ref


def _local_file(path: Path) -> Path:
    if not path.exists():
        raise ModelNotFoundError(
            f"No model file at {path}; check the path, or pass 'default' for the packaged "
            "SmolLM2 model."
        )
    return path.absolute()


def _resolve_cached(fragment: str, cache: Path) -> Path:
    files = cached_files(cache)
    needle = fragment.lower()
    # Most specific first: exact name, then exact name ignoring case (or without .gguf), then
    # a substring; a fragment that names one file exactly never counts as ambiguous.
    tiers = (
        [p for p in files if p.name == fragment],
        [p for p in files if needle in (p.name.lower(), p.stem.lower())],
        [p for p in files if needle in p.name.lower()],
    )
    matches = next((tier for tier in tiers if tier), [])
    if len(matches) == 1:
        return matches[0].absolute()
    if matches:
        candidates = [str(p.absolute()) for p in matches]
        names = ", ".join(str(p.relative_to(cache)) for p in matches)
        raise AmbiguousModelError(
            f"{fragment!r} matches {len(matches)} cached models ({names}); pass more of the "
            "file name or the full path.",
            candidates,
        )
    where = str(cache) if cache.is_dir() else f"{cache} (which does not exist yet)"
    local = f" no file {fragment!r} in {Path.cwd()} and" if needle.endswith(".gguf") else ""
    raise ModelNotFoundError(
        f"Found{local} no cached model matching {fragment!r} in {where}; pass {_ACCEPTED}."
    )
