"""The kernel end of the JupyterLab extension's comm (docs/labextension.md).

:func:`open_comm` (run by ``%load_ext jupyter_localllm``) opens a comm with target
``jupyter_localllm`` whose open data is the ``state`` message of the session's
:func:`~jupyter_localllm.session.activity.snapshot`. A :class:`Channel` then pushes the state
whenever :mod:`~jupyter_localllm.session.activity` announces a change, at most one message per
:data:`MIN_INTERVAL_S` (changes in between are merged into the next message, the last one is
always sent, nothing is sent when the state did not change), and answers the front-end's
requests. What the messages hold is :mod:`~jupyter_localllm.notebook.protocol`'s business
(one JSON schema); this module only carries them. Outside a kernel (plain IPython, a script)
nothing is opened.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import InvalidParameterError
from ..session import activity
from . import protocol
from .protocol import AvailableModel, Request, RequestError

__all__ = ["MIN_INTERVAL_S", "TARGET", "Channel", "close_comms", "open_comm"]

TARGET = "jupyter_localllm"
"""Target name of the comm."""
MIN_INTERVAL_S = 0.25
"""Least time between two state messages on one comm (at most 4 a second)."""

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
        state = protocol.state_message(activity.snapshot())
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
        self._asked: str | None = None  # the latest `state` request the next state answers
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
            asked, self._asked = self._asked, None
        sent = False
        try:
            state = protocol.state_message(activity.snapshot())
            if force or asked is not None or state != self._sent:
                self.comm.send({**state, "request_id": asked})
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

    # -- the front-end's requests -------------------------------------------------------------
    def _on_msg(self, msg: Any) -> None:
        """A message from the front-end: whatever it holds (a ``null`` content or data, a
        list, another protocol, an unknown action, ill-typed or huge fields), the kernel
        answers with an ``error`` reply and never raises."""
        content = msg.get("content") if isinstance(msg, dict) else None
        data = content.get("data") if isinstance(content, dict) else None
        request_id = action = None
        try:
            request = protocol.parse_request(data)
            request_id, action = request.request_id, request.action
            self._handlers()[request.action](request)
        except RequestError as exc:
            self._error(exc.request_id, exc.action, exc)
        except Exception as exc:  # never raise in the kernel: answer instead
            self._error(request_id, action, exc)

    def _handlers(self) -> dict[str, Callable[[Request], None]]:
        return {
            "state": self._state,
            "cancel": self._cancel,
            "cancel_all": self._cancel_all,
            "discover": lambda r: self._in_thread(r, _discover),
            "load": lambda r: self._in_thread(
                r, lambda: _load(r.fields["ref"], r.fields.get("alias"))
            ),
            "unload": lambda r: self._in_thread(r, lambda: _unload(r.fields["alias"])),
        }

    def _state(self, request: Request) -> None:
        """Answer with the state within :data:`MIN_INTERVAL_S`, even when it did not change."""
        with self._lock:
            self._asked = request.request_id
        self.push(force=True)

    def _cancel(self, request: Request) -> None:
        job = request.fields["job"]
        if not activity.cancel(job):
            raise InvalidParameterError(
                f"No background job {protocol.short_repr(job)} is running; foreground runs stop "
                "when the kernel is interrupted."
            )
        self._done(request, f"Cancelling job {job!r}; its finished rows are kept.")

    def _cancel_all(self, request: Request) -> None:
        count = activity.cancel_all()
        self._done(request, f"Cancelling {count} background job(s).")

    def _in_thread(self, request: Request, work: Callable[[], list[AvailableModel] | str]) -> None:
        """Run ``work`` in a daemon thread (the comm keeps answering); reply with its result
        (the models for ``discover``, the text of a ``done`` otherwise) or an ``error``."""

        def run() -> None:
            try:
                reply = work()
            except Exception as exc:
                self._error(request.request_id, request.action, exc)
                return
            if isinstance(reply, str):
                self._done(request, reply)
            else:
                self._send(protocol.models_available_message(request.request_id, reply))

        name = f"localllm-comm-{request.action}"
        threading.Thread(target=run, name=name, daemon=True).start()

    # -- replies -------------------------------------------------------------------------------
    def _done(self, request: Request, message: str) -> None:
        self._send(protocol.done_message(request, message))

    def _error(self, request_id: str | None, action: str | None, exc: BaseException) -> None:
        self._send(protocol.error_message(request_id, action, str(exc) or type(exc).__name__))

    def _send(self, data: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self.comm.send(data)
        except Exception:
            _log.debug("could not send a reply", exc_info=True)


def _discover() -> list[AvailableModel]:
    from .. import models

    return [
        AvailableModel(str(r.ref), str(r.source), float(r.size_mb), str(r.path))
        for r in models.discover_models().itertuples()
    ]


def _load(ref: str, alias: str | None) -> str:
    from ..session.manager import get_manager
    from .config import get_settings

    get_manager().load(ref, alias=alias, **get_settings().load_options())
    return f"Loaded {ref!r}." if alias in (None, ref) else f"Loaded {ref!r} as {alias!r}."


def _unload(alias: str) -> str:
    from ..session.manager import get_manager

    get_manager().unload(alias)
    return f"Unloaded {alias!r}."
