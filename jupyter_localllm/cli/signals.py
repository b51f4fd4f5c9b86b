"""The signals that end a run: Ctrl-C (SIGINT), SIGTERM (``timeout``, ``docker stop``,
SLURM) and SIGHUP (a closed terminal) all stop the batch the same way, so the finished rows
are written; the exit code is the shell's for the signal (128 + its number: 130, 143, 129).

While the batch runs a signal raises :class:`KeyboardInterrupt` (the batch turns it into
:class:`~jupyter_localllm.errors.BatchInterrupted` with the finished rows). Once the batch
has ended (:meth:`StopSignals.hold`), signals are only recorded, so OUTPUT is written whole.
A signal that was ignored when the command started (``nohup`` ignores SIGHUP) stays ignored.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

__all__ = ["StopSignals", "Stopped"]

_NAMES = ("SIGINT", "SIGTERM", "SIGHUP")


class Stopped(KeyboardInterrupt):
    """A stop signal arrived; ``exit_code`` is 128 + its number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


class StopSignals:
    """A context manager installing the stop handlers (main thread only) and restoring the
    previous ones on exit."""

    def __init__(self) -> None:
        self.received: int | None = None
        """The first stop signal's number, once one arrived."""
        self._holding = False
        self._previous: dict[int, object] = {}

    @property
    def exit_code(self) -> int:
        """128 + the signal's number (130, Ctrl-C's, when none was recorded)."""
        return 128 + (self.received or signal.SIGINT)

    def hold(self) -> None:
        """From now on record signals without raising (the results are being written)."""
        self._holding = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.received is None
        if first:
            self.received = signum
        if first and not self._holding:  # a second signal must not cut the clean-up short
            raise Stopped(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in _NAMES:
            signum = getattr(signal, name, None)
            if signum is None or signal.getsignal(signum) == signal.SIG_IGN:
                continue
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]
        self._previous.clear()
