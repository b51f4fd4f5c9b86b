"""The messages of the JupyterLab extension's comm, both ways (docs/labextension.md).

``comm_schema.json`` next to this module is the one description of them: the kernel's
messages (``state``, ``models_available``, ``done``, ``error``) and the front-end's requests
(``state``, ``cancel``, ``cancel_all``, ``discover``, ``load``, ``unload``). This module turns
the session's dataclasses into those messages and checks each request against the schema;
:mod:`~jupyter_localllm.notebook.comm` carries them. The extension (labextension/src/
protocol.ts) and both test suites read the same file. Every message carries :data:`PROTOCOL`;
every request a ``request_id`` that its reply echoes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidParameterError
from ..session.activity import ModelState, RunState, Snapshot

__all__ = [
    "ACTIONS",
    "PROTOCOL",
    "SCHEMA_PATH",
    "AvailableModel",
    "Request",
    "RequestError",
    "done_message",
    "error_message",
    "models_available_message",
    "parse_request",
    "schema",
    "short_repr",
    "state_message",
]

SCHEMA_PATH = Path(__file__).with_name("comm_schema.json")
"""The JSON schema of every message (shipped in the package)."""


@functools.cache
def schema() -> dict[str, Any]:
    """The parsed schema (read once)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


PROTOCOL: int = schema()["definitions"]["protocol"]["const"]
"""The protocol version every message carries (the schema's ``protocol`` constant)."""
ACTIONS: tuple[str, ...] = tuple(
    name.removeprefix("request_")
    for name in schema()["definitions"]
    if name.startswith("request_") and name != "request_id"
)
"""The actions a front-end may request, in the schema's order."""

MAX_NAME_CHARS = 256
"""Longest model name a state carries: a file's own name can be any length, and the state is
sent up to 4 times a second."""
MAX_MESSAGE_CHARS = 2000
"""Longest text of an ``error`` reply: it names what was wrong, never echoes a whole input."""


# -- kernel -> front-end ---------------------------------------------------------------------
def state_message(snapshot: Snapshot, request_id: str | None = None) -> dict[str, Any]:
    """The ``state`` message of ``snapshot`` (answering the ``state`` request ``request_id``,
    or none)."""
    return {
        "type": "state",
        "protocol": PROTOCOL,
        "request_id": request_id,
        "models": [_model(m) for m in snapshot.models],
        "jobs": [_job(r) for r in snapshot.runs],
    }


def _model(model: ModelState) -> dict[str, Any]:
    return {
        "alias": model.alias,
        "name": _cut(model.name, MAX_NAME_CHARS),
        "file": Path(model.path).name,
        "size_mb": round(model.size_bytes / 2**20, 1),
        "n_ctx": model.n_ctx,
        "default": model.default,
    }


def _job(run: RunState) -> dict[str, Any]:
    return {
        "id": run.id,
        "desc": run.desc,
        "model": run.model,
        "status": run.status,
        "background": run.background,
        "done": run.done,
        "total": run.total,
        "errors": run.errors,
        "tokens_per_s": round(max(run.tokens_per_s, 0.0), 1),
        "eta_s": round(max(run.eta_s, 0.0), 1) if run.eta_s is not None else None,
    }


@dataclass(frozen=True)
class AvailableModel:
    """A model the kernel can load, as ``models_available`` lists it."""

    ref: str
    source: str
    size_mb: float
    path: str


def models_available_message(request_id: str, models: Iterable[AvailableModel]) -> dict[str, Any]:
    """The reply to ``discover``."""
    return {
        "type": "models_available",
        "protocol": PROTOCOL,
        "request_id": request_id,
        "models": [
            {"ref": m.ref, "source": m.source, "size_mb": float(m.size_mb), "path": m.path}
            for m in models
        ],
    }


def done_message(request: Request, message: str) -> dict[str, Any]:
    """The reply to a request that succeeded."""
    return {
        "type": "done",
        "protocol": PROTOCOL,
        "request_id": request.request_id,
        "action": request.action,
        "message": message,
    }


def error_message(request_id: str | None, action: str | None, message: str) -> dict[str, Any]:
    """The reply to a request that failed or was malformed (its text cut to
    :data:`MAX_MESSAGE_CHARS`)."""
    return {
        "type": "error",
        "protocol": PROTOCOL,
        "request_id": request_id,
        "action": action,
        "message": _cut(message or "The request failed.", MAX_MESSAGE_CHARS),
    }


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- front-end -> kernel ---------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """A front-end request that matches the schema."""

    action: str
    request_id: str
    fields: Mapping[str, Any]
    """Its other fields (``job``, ``ref``, ``alias``)."""


class RequestError(InvalidParameterError):
    """A request the schema refuses; ``request_id`` and ``action`` are what the reply can
    echo (None where the request had no valid one)."""

    def __init__(self, message: str, request_id: str | None, action: str | None):
        super().__init__(message)
        self.request_id, self.action = request_id, action


def parse_request(data: Any) -> Request:
    """``data`` (a comm message's data) as a :class:`Request`; raises :class:`RequestError`
    with one sentence naming what is wrong (a bad value named, never echoed whole)."""
    if not isinstance(data, dict):
        raise RequestError(
            "A jupyter_localllm request must be a JSON object with an 'action'; got "
            f"{short_repr(data)}.",
            None,
            None,
        )
    action = data.get("action") if data.get("action") in ACTIONS else None
    request_id = data.get("request_id")
    if not _valid(("request_id",), request_id):
        request_id = None
    if data.get("protocol") != PROTOCOL:
        raise RequestError(
            f"This kernel's jupyter-localllm speaks comm protocol {PROTOCOL} and the request "
            f"has protocol {short_repr(data.get('protocol'))}: install the same "
            "jupyter-localllm version in the kernel's environment and JupyterLab's, then "
            "restart both.",
            request_id,
            action,
        )
    if action is None:
        raise RequestError(
            f"Unknown action {short_repr(data.get('action'))}; use one of {', '.join(ACTIONS)}.",
            request_id,
            None,
        )
    problem = _problem(action, data)
    if problem is not None:
        raise RequestError(problem, request_id, action)
    fields = {k: v for k, v in data.items() if k not in ("action", "protocol", "request_id")}
    return Request(action, data["request_id"], fields)


def _problem(action: str, data: dict[str, Any]) -> str | None:
    """What is wrong with ``data`` as the schema's ``request_<action>``, in one sentence
    naming the field and what it must be (its ``description`` in the schema); None when
    nothing is. Field by field, so the sentence names the first bad field."""
    spec = schema()["definitions"][f"request_{action}"]
    props = spec["properties"]
    extra = [key for key in data if key not in props]
    if extra:
        return f"The {action} request takes no {short_repr(extra[0])}; it takes {', '.join(props)}."
    for name in props:
        if name not in data and name in spec["required"]:
            got = "nothing"
        elif name in data and not _valid(("request_" + action, "properties", name), data[name]):
            got = short_repr(data[name])
        else:
            continue
        return f"The {action} request needs {name!r} as {_wanted(props[name])}; got {got}."
    return None


def _wanted(spec: dict[str, Any]) -> str:
    """What a field must be: its description, or that of the definition it refers to."""
    ref = spec.get("$ref", "").rsplit("/", 1)[-1]
    return spec.get("description") or schema()["definitions"][ref]["description"]


def _valid(where: tuple[str, ...], value: Any) -> bool:
    """Whether ``value`` matches the schema at ``definitions/<where...>``."""
    spec: Any = schema()["definitions"]
    for key in where:
        spec = spec[key]
    return _matches(spec, value)


# The keywords the requests' fields use, read here without jsonschema: importing it and
# building its validators takes seconds on a busy machine, and the first request is often a
# Cancel click that must act at once. tests/test_comm.py holds this to jsonschema's verdicts.
_TYPES = {
    "string": lambda v: isinstance(v, str),
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}
_KEYWORDS = {"$ref", "anyOf", "const", "type", "minLength", "maxLength", "description"}


def _matches(spec: dict[str, Any], value: Any) -> bool:
    """``value`` against ``spec``, a field's schema made of :data:`_KEYWORDS` only."""
    if not spec.keys() <= _KEYWORDS:
        raise NotImplementedError(f"protocol.py cannot read {sorted(spec.keys() - _KEYWORDS)}")
    if "$ref" in spec:
        return _matches(schema()["definitions"][spec["$ref"].rsplit("/", 1)[-1]], value)
    if "anyOf" in spec and not any(_matches(option, value) for option in spec["anyOf"]):
        return False
    if "const" in spec and not (value == spec["const"] and _same_kind(value, spec["const"])):
        return False
    kinds = spec.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_TYPES[kind](value) for kind in kinds):
            return False
    if isinstance(value, str):
        return spec.get("minLength", 0) <= len(value) <= spec.get("maxLength", len(value))
    return True


def _same_kind(a: Any, b: Any) -> bool:
    return isinstance(a, bool) == isinstance(b, bool)


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a reply names a bad value, never echoes a
    megabyte of it."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4300-digit limit for str()
        return "a number too long to show" if isinstance(value, int) else "a value too big to show"
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text):,} characters)"
