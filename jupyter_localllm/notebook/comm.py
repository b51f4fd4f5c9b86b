"""The kernel end of the JupyterLab extension's comm (docs/labextension.md).

:func:`open_comm` (run by ``%load_ext jupyter_localllm``) opens a comm with target
``jupyter_localllm`` whose open data is the session's state
(:func:`~jupyter_localllm.session.activity.snapshot`). A :class:`Channel` then pushes the state
whenever :mod:`~jupyter_localllm.session.activity` announces a change, at most one message per
:data:`MIN_INTERVAL_S` (changes in between are merged into the next message, the last one is
always sent, nothing is sent when the state did not change), and answers the front-end's
actions. Outside a kernel (plain IPython, a script) nothing is opened.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import InvalidParameterError
from ..session import activity

__all__ = ["MIN_INTERVAL_S", "TARGET", "Channel", "close_comms", "open_comm"]

TARGET = "jupyter_localllm"
"""Target name of the comm."""
MIN_INTERVAL_S = 0.25
"""Least time between two state messages on one comm (at most 4 a second)."""
MAX_FIELD_CHARS = 4096
"""Longest text field an action accepts (a path, a ref, an alias, a job id): the front-end
sends short names, and a longer one would only cost time in the model lookup."""
_MAX_REPLY_CHARS = 2000  # an error reply names what was wrong, never echoes a whole input

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_channels: list[Channel] = []  # open channels, the kernel-opened one first


def open_comm(ipython: Any) -> Channel | None:
    """Open the comm to the front-end, sending the state as its open data; returns its
    :class:`Channel`. Safe to call again (the open channel is kept); ``None`` and nothing done
    where ``ipython`` has no kernel. Front-ends may also open a comm with this target
    themselves (e.g. after a page reload): the kernel answers with the state."""
    if getattr(ipython, "kernel", None) is None:
        return None
    import comm

    with _lock:
        mine = next((c for c in _channels if c.primary), None)
        if mine is not None:
            return mine
        comm.get_comm_manager().register_target(TARGET, _opened_by_frontend)
        state = activity.snapshot()
        channel = Channel(comm.create_comm(target_name=TARGET, data=state), sent=state)
        _channels.insert(0, channel)
        return channel


def close_comms() -> None:
    """Close every open comm (``%unload_ext``); the front-end hides what it showed."""
    with _lock:
        channels = list(_channels)
    for channel in channels:
        channel.close()


def _opened_by_frontend(comm: Any, msg: dict[str, Any]) -> None:
    """A front-end opened a comm with our target: serve it, starting with the state."""
    channel = Channel(comm)
    with _lock:
        _channels.append(channel)
    channel.push(force=True)


class Channel:
    """One comm to a front-end: pushes the state on changes (throttled, merged) and answers
    the front-end's actions."""

    def __init__(self, comm: Any, *, sent: dict[str, Any] | None = None):
        self.comm = comm
        self.primary = sent is not None
        """True for the comm the kernel opened (its open data was the state)."""
        self.closed = False
        self._sent = sent  # the state the front-end has
        self._last_sent = time.monotonic() if sent is not None else float("-inf")
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._dirty = self._force = False
        comm.on_msg(self._on_msg)
        comm.on_close(self._on_close)
        self._unwatch = activity.watch(self.push)

    # -- pushing the state -------------------------------------------------------------------
    def push(self, force: bool = False) -> None:
        """Send the state at the end of the current window (now when it is over); ``force``
        sends it even when it did not change. Cheap: called on every change."""
        with self._lock:
            if self.closed:
                return
            self._dirty = True
            self._force = self._force or force
            if self._timer is None:
                self._arm()

    def _arm(self) -> None:
        """Start the timer of the next send (under ``self._lock``)."""
        delay = max(0.0, self._last_sent + MIN_INTERVAL_S - time.monotonic())
        self._timer = threading.Timer(delay, self._flush)
        self._timer.daemon = True
        self._timer.start()

    def _flush(self) -> None:
        """The timer's end: send the latest state if it changed; rearm if it changed again
        while sending. The timer slot stays taken until the send is done, so two state
        messages are always at least :data:`MIN_INTERVAL_S` apart."""
        with self._lock:
            self._dirty = False
            force, self._force = self._force, False
        sent = False
        try:
            state = activity.snapshot()
            if force or state != self._sent:
                self.comm.send(state)
                self._sent, sent = state, True
        except Exception:  # a closing kernel, a broken snapshot: never a traceback in a cell
            _log.debug("could not send the state", exc_info=True)
        finally:
            with self._lock:
                if sent:
                    self._last_sent = time.monotonic()
                self._timer = None
                if self._dirty and not self.closed:
                    self._arm()

    # -- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop watching and close the comm."""
        self._stop()
        try:
            self.comm.close()
        except Exception:
            _log.debug("could not close the comm", exc_info=True)

    def _on_close(self, msg: dict[str, Any]) -> None:
        self._stop()

    def _stop(self) -> None:
        self._unwatch()
        with self._lock:
            self.closed = True
            if self._timer is not None:
                self._timer.cancel()
        with _lock:
            if self in _channels:
                _channels.remove(self)

    # -- the front-end's actions ----------------------------------------------------------------
    def _on_msg(self, msg: Any) -> None:
        """A message from the front-end: whatever it holds (a ``null`` content or data, a
        list, an unknown action, ill-typed or huge fields), the kernel answers with an
        ``error`` reply and never raises."""
        content = msg.get("content") if isinstance(msg, dict) else None
        data = content.get("data") if isinstance(content, dict) else None
        action = data.get("action") if isinstance(data, dict) else None
        action = action if isinstance(action, str) and len(action) <= 64 else None
        try:
            if not isinstance(data, dict):
                raise InvalidParameterError(
                    "A jupyter_localllm message must be a JSON object with an 'action'; got "
                    f"{_short(data)}."
                )
            handler = self._handlers().get(action) if action is not None else None
            if handler is None:
                raise InvalidParameterError(
                    f"Unknown action {_short(data.get('action'))}; use one of "
                    f"{', '.join(self._handlers())}."
                )
            handler(data)
        except Exception as exc:  # never raise in the kernel: answer instead
            self._error(action, exc)

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], None]]:
        return {
            "state": lambda data: self.push(force=True),
            "cancel": self._cancel,
            "cancel_all": self._cancel_all,
            "discover": lambda data: self._in_thread("discover", _discover),
            "load": self._load,
            "unload": self._unload,
        }

    def _cancel(self, data: dict[str, Any]) -> None:
        job = _field(data, "job", (str, int))
        if not activity.cancel(str(job)):
            raise InvalidParameterError(
                f"No background job {str(job)!r} is running; foreground runs stop when the "
                "kernel is interrupted."
            )
        self._done("cancel", f"Cancelling job {str(job)!r}; its finished rows are kept.")

    def _cancel_all(self, data: dict[str, Any]) -> None:
        count = activity.cancel_all()
        self._done("cancel_all", f"Cancelling {count} background job(s).")

    def _load(self, data: dict[str, Any]) -> None:
        ref = _field(data, "ref", (str,))
        alias = _field(data, "alias", (str, type(None)), required=False)
        self._in_thread("load", lambda: _load(ref, alias))

    def _unload(self, data: dict[str, Any]) -> None:
        alias = _field(data, "alias", (str,))
        self._in_thread("unload", lambda: _unload(alias))

    def _in_thread(self, action: str, work: Callable[[], dict[str, Any] | str]) -> None:
        """Run ``work`` in a daemon thread (the comm keeps answering); send its reply (a
        message, or the text of a ``done`` reply) or an ``error``."""

        def run() -> None:
            try:
                reply = work()
            except Exception as exc:
                self._error(action, exc)
                return
            if isinstance(reply, str):
                self._done(action, reply)
            else:
                self._send(reply)

        threading.Thread(target=run, name=f"localllm-comm-{action}", daemon=True).start()

    # -- replies -------------------------------------------------------------------------------
    def _done(self, action: str, message: str) -> None:
        self._send({"type": "done", "action": action, "message": message})

    def _error(self, action: str | None, exc: BaseException) -> None:
        message = str(exc) or type(exc).__name__
        if len(message) > _MAX_REPLY_CHARS:
            message = message[: _MAX_REPLY_CHARS - 1] + "…"
        self._send({"type": "error", "action": action, "message": message})

    def _send(self, data: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self.comm.send(data)
        except Exception:
            _log.debug("could not send a reply", exc_info=True)


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a reply names a bad value, never echoes a
    megabyte of it."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4300-digit limit for str()
        return f"an {type(value).__name__} too long to show"
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text):,} characters)"


def _field(data: dict[str, Any], name: str, types: tuple[type, ...], required: bool = True) -> Any:
    """``data[name]``, checked against ``types`` (a bool is no int; text at most
    :data:`MAX_FIELD_CHARS` long)."""
    if name not in data and not required:
        return None
    value = data.get(name)
    action = _short(data.get("action"))
    if name not in data or not isinstance(value, types) or isinstance(value, bool) or value == "":
        kinds = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise InvalidParameterError(
            f"The {action} action needs {name!r} as a non-empty {kinds}; got {_short(value)}."
        )
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise InvalidParameterError(f"The {action} action's {name!r} is out of range.")
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        raise InvalidParameterError(
            f"The {action} action's {name!r} is {len(value):,} characters long; it takes at "
            f"most {MAX_FIELD_CHARS:,}."
        )
    return value


def _discover() -> dict[str, Any]:
    from .. import models

    table = models.discover_models()
    return {
        "type": "models_available",
        "models": [
            {"ref": str(r.ref), "source": str(r.source), "size_mb": float(r.size_mb),
             "path": str(r.path)}
            for r in table.itertuples()
        ],
    }  # fmt: skip


def _load(ref: str, alias: str | None) -> str:
    from ..session.manager import get_manager
    from .config import get_settings

    get_manager().load(ref, alias=alias, **get_settings().load_options())
    return f"Loaded {ref!r}." if alias in (None, ref) else f"Loaded {ref!r} as {alias!r}."


def _unload(alias: str) -> str:
    from ..session.manager import get_manager

    get_manager().unload(alias)
    return f"Unloaded {alias!r}."
