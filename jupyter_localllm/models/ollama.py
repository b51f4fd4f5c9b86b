"""Models pulled with Ollama, read from its blob store (``ollama:NAME[:TAG]``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import InvalidModelFileError, InvalidParameterError, ModelNotFoundError
from .paths import ollama_models_dir

__all__ = ["ollama_entries", "resolve_ollama"]

_OLLAMA_REGISTRY = "registry.ollama.ai"
_OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


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


def ollama_entries(root: Path) -> list[dict[str, Any]]:
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


def resolve_ollama(name: str) -> Path:
    """The weights blob of Ollama model ``name`` (``NAME[:TAG]``, as after ``ollama:``)."""
    host, namespace, model, tag = _parse_ollama_ref(name)
    display = _ollama_name(host, namespace, model, tag)
    root = ollama_models_dir()
    manifest = root / "manifests" / host / namespace / model / tag
    if not manifest.is_file():
        # Ollama treats names case-insensitively; so do we.
        entries = ollama_entries(root)
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
