"""The lock of a generation context: runs from other threads queue on it, and a run's own
callbacks cannot use the context under the run (no llama_cpp here)."""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ContextBusyError

__all__ = ["RunLock"]


class RunLock:
    """The lock of a :class:`GenerationContext`. Other threads wait for it (runs queue);
    its holder may take it again (a background job holds it around its runs) — except while
    that thread is inside a run on the context (:meth:`running`): then a callback of the run
    (``progress=``, ``on_result=``) that uses the context again (a run, ``close()``, closing
    its model) gets :class:`ContextBusyError` instead of a context changed under the run."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._runner: int | None = None  # the thread inside a run, if any
        self.refused: ContextBusyError | None = None
        """The last error given to a callback of the running run (the run goes on past it)."""

    def check(self) -> None:
        """Raise :class:`ContextBusyError` when the calling thread is inside a run here."""
        if self._runner == threading.get_ident():
            self.refused = ContextBusyError(
                "This context is busy with the run whose callback (progress=, on_result=, "
                "stream=) made this call; use another context (context_create on the same "
                "model) or make the call after the run returns."
            )
            raise self.refused

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock (as ``threading.RLock``); raise :class:`ContextBusyError` in the
        thread that runs on the context."""
        self.check()
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        """Release the lock once."""
        self._lock.release()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Mark the calling thread (which holds the lock) as inside a run until the end."""
        self._runner, self.refused = threading.get_ident(), None
        try:
            yield
        finally:
            self._runner = None

    def shield(self, callback: Callable[..., Any] | None) -> Callable[..., Any] | None:
        """``callback``, except that the :class:`ContextBusyError` this lock gave a call it
        made is a warning: the call was refused before it touched anything, so the run goes
        on whole."""
        if callback is None:
            return None

        def call(*args: Any) -> Any:
            try:
                return callback(*args)
            except ContextBusyError as exc:
                if exc is not self.refused:
                    raise
                warnings.warn(f"{exc} The run goes on.", RuntimeWarning, stacklevel=2)
                return None

        return call
