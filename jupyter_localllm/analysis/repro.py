"""Reproducibility: SHA-256 hashes of what went into a call and what came out, and a run log.

Hashes are taken over canonical JSON (sorted keys, no whitespace, UTF-8): the input hash
covers the model file's own SHA-256, the function name, the parameters and the inputs; the
output hash covers the outputs. Same file + same inputs + same parameters give the same input
hash on any machine, in any process.

Run log (``document_start(path)`` … ``document_end()``): a JSON-lines file. The first line is
``{"event": "start", "time", "package_version", "python", "platform", "hardware"}``; each call
of a logged function adds ``{"event": "call", "time", "function", "model", "model_sha256",
"params", "n_inputs", "input_sha256", "output_sha256", "wall_s"}``; ``document_end()`` writes
``{"event": "end", "time", "n_calls", "run_ids"}``: ``run_ids`` names the runs of the run log
(:mod:`~jupyter_localllm.session.runlog`) made meanwhile, each row of which
``ll.run(run_id)`` or ``jupyter-localllm log export`` gives back.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = [
    "canonical_json",
    "document_end",
    "document_start",
    "file_sha256",
    "log_call",
    "note_run",
    "sha256_json",
]

_digests: dict[tuple[str, int, int], str] = {}
_log_lock = threading.Lock()
_log: dict[str, Any] = {"path": None, "n_calls": 0, "run_ids": []}


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON (sorted keys, compact, non-JSON values as strings)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_json(value: Any) -> str:
    """SHA-256 hex digest of ``canonical_json(value)``."""
    # surrogatepass: a row holding a lone surrogate (an error row) still hashes
    return hashlib.sha256(canonical_json(value).encode("utf-8", "surrogatepass")).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, remembered per (path, size, mtime) for this process."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    digest = _digests.get(key)
    if digest is None:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = _digests[key] = h.hexdigest()
    return digest


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _append(record: dict[str, Any]) -> None:
    with Path(_log["path"]).open("a", encoding="utf-8") as f:
        f.write(canonical_json(record) + "\n")


def document_start(path: str | os.PathLike) -> Path:
    """Start a run log at ``path`` (JSON lines, appended to if it exists): every later call
    of ``generate``, ``generate_parallel``, ``classify``, ``extract`` and ``explore`` is
    recorded with its hashes until :func:`document_end`."""
    from .. import __version__
    from ..hardware import hardware_profile

    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    hw = hardware_profile()
    with _log_lock:
        _log.update(path=str(p), n_calls=0, run_ids=[])
        _append(
            {
                "event": "start",
                "time": _now(),
                "package_version": __version__,
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "hardware": {k: hw.get(k) for k in ("cpu_model", "cores_physical", "ram_total")},
            }
        )
    return p


def document_end() -> Path | None:
    """Close the run log; returns its path (``None`` when no log was open)."""
    with _log_lock:
        if _log["path"] is None:
            return None
        end = {"event": "end", "time": _now(), "n_calls": _log["n_calls"]}
        _append({**end, "run_ids": _log["run_ids"]})
        path, _log["path"] = Path(_log["path"]), None
    return path


def note_run(run_id: str) -> None:
    """A run was written to the run log: the open document (if any) names it at its end."""
    with _log_lock:
        if _log["path"] is not None:
            _log["run_ids"].append(run_id)


def log_call(
    function: str,
    model: Any,
    params: dict[str, Any],
    inputs: list[Any],
    outputs: list[Any],
    wall_s: float,
) -> dict[str, str]:
    """The hashes of one call (``input_sha256``, ``output_sha256``, ``model_sha256``),
    appended to the run log when one is open."""
    model_digest = file_sha256(model.path)
    hashes = {
        "model_sha256": model_digest,
        "input_sha256": sha256_json(
            {"model": model_digest, "function": function, "params": params, "inputs": inputs}
        ),
        "output_sha256": sha256_json(outputs),
    }
    with _log_lock:
        if _log["path"] is not None:
            _log["n_calls"] += 1
            _append(
                {
                    "event": "call",
                    "time": _now(),
                    "function": function,
                    "model": model.name,
                    "params": params,
                    "n_inputs": len(inputs),
                    "wall_s": round(wall_s, 3),
                    **hashes,
                }
            )
    return hashes
