"""What produced OUTPUT, recorded beside it in ``OUTPUT.localllm.json``: the task, the prompt
template, the labels or schema, the sampling options and the model file (name, size,
SHA-256). A re-run resumes only when its own recipe is the same; otherwise every row is
computed again (and the run says why). ``--n-seq-max`` and ``--cluster`` change where and how
fast rows run, not what they are, so they are not part of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .output import replace_file
from .spec import RunSpec

__all__ = ["changes", "make_recipe", "read_recipe", "recipe_path", "write_recipe"]

FORMAT = 1

# Recipe keys as the options that set them, for the line that says what changed.
_OPTIONS = {
    "task": "the task (--labels/--schema)",
    "template": "--template/--column",
    "labels": "--labels",
    "schema": "--schema",
    "max_tokens": "--max-tokens",
    "seed": "--seed",
    "model": "--model (another model file)",
}


def recipe_path(out: Path) -> Path:
    """The record beside ``out``: ``out.csv`` -> ``out.csv.localllm.json``."""
    return out.with_name(out.name + ".localllm.json")


def make_recipe(spec: RunSpec) -> dict[str, Any]:
    """``spec``'s recipe, with the model file it names found (downloaded if need be) and
    hashed."""
    from ..analysis.repro import file_sha256
    from ..models import resolve_model

    path = Path(resolve_model(spec.model))
    return {
        "format": FORMAT,
        "task": spec.task,
        "template": spec.template,
        "labels": list(spec.labels) if spec.labels is not None else None,
        "schema": spec.schema,
        "max_tokens": spec.max_tokens,
        "seed": spec.seed,
        "model": {
            "file": path.name,
            "size": path.stat().st_size,
            "sha256": file_sha256(path),
        },
    }


def read_recipe(out: Path) -> dict[str, Any] | None:
    """The recipe recorded beside ``out`` (``None`` when there is none or it is unreadable)."""
    try:
        recipe = json.loads(recipe_path(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recipe if isinstance(recipe, dict) else None


def changes(before: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """The options whose values differ between ``before`` and ``now`` (all of them, named
    as one entry, when nothing was recorded)."""
    if before is None or before.get("format") != FORMAT:
        return ["no record"]
    model_changed = (before.get("model") or {}).get("sha256") != now["model"]["sha256"]
    keys = [k for k in _OPTIONS if k != "model" and before.get(k) != now[k]]
    return [_OPTIONS[k] for k in keys] + ([_OPTIONS["model"]] if model_changed else [])


def write_recipe(out: Path, recipe: dict[str, Any]) -> None:
    """Record ``recipe`` beside ``out`` (whole, by rename)."""
    text = json.dumps(recipe, indent=1, ensure_ascii=False) + "\n"
    replace_file(recipe_path(out), lambda f: f.write(text.encode("utf-8")))
