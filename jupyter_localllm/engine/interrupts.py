"""Ctrl-C held back while llama.cpp runs a call that must not be cut short from Python."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["HeldInterrupts", "held_call", "interrupt_pending"]

_held: list[HeldInterrupts] = []  # the calls holding Ctrl-C now (main thread: at most one)


def interrupt_pending() -> bool:
    """True when Ctrl-C arrived during a call that holds it (a load's progress callback then
    asks llama.cpp to stop)."""
    return any(h.pending for h in _held)


class HeldInterrupts:
    """Ctrl-C held back while llama.cpp loads a model or creates a context.

    A KeyboardInterrupt raised inside llama.cpp's callbacks is dropped by ctypes, and one
    raised just after the call returns would leak the fresh handle. So in the main thread
    SIGINT is only recorded for the call's duration: the load's progress callback then cancels
    the load, the caller frees what was made and raises KeyboardInterrupt itself.
    """

    def __init__(self) -> None:
        self.pending = False
        self.previous: Any = None

    def _record(self, signum: int, frame: Any) -> None:
        self.pending = True

    def __enter__(self) -> HeldInterrupts:
        # Only a Python-level handler is replaced: SIG_IGN and SIG_DFL keep their meaning.
        main = threading.current_thread() is threading.main_thread()
        if main and callable(signal.getsignal(signal.SIGINT)):
            self.previous = signal.signal(signal.SIGINT, self._record)
            _held.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            _held.remove(self)

    def raise_pending(self) -> None:
        """Deliver a Ctrl-C recorded during the call, the way the caller's handler would."""
        if not self.pending:
            return
        if self.previous is not signal.default_int_handler:
            self.previous(signal.SIGINT, None)
        raise KeyboardInterrupt  # the load was cancelled either way


def held_call(create: Callable[[], Any], free: Callable[[Any], None]) -> Any:
    """``create()`` (a llama.cpp load or init) with Ctrl-C held; a Ctrl-C that came meanwhile
    frees what it made, if anything, and is raised then. Returns the handle (NULL: failed)."""
    with HeldInterrupts() as interrupts:
        handle = create()
    if interrupts.pending:
        if handle:
            free(handle)
        interrupts.raise_pending()
    return handle
