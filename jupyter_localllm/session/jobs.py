"""Background jobs: a batch run in its own thread, so the kernel stays free while it works.

A :class:`Job` holds the state of one run (status, last :class:`Progress` event, the rows
finished so far, the result or the error); widgets only draw it. One generation context is
driven by one thread at a time: jobs on the same context wait in a first-come queue, and
hold the context's lock while they run, so a foreground call on that context waits too.
llama.cpp's ctypes calls release the GIL, so the kernel answers while a job decodes.

The batch functions start jobs with ``background=True`` (through
:mod:`~jupyter_localllm.session.executors`); any function can run as one with
:func:`start_job`. How a job looks is the front-end's business: it draws the job's progress
events through a sink (see :mod:`~jupyter_localllm.session.sinks`).
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import BatchInterrupted, InvalidParameterError, JobTimeoutError
from ..types import Progress
from . import activity
from .ledger import RunLedger
from .sinks import CallbackSink, ProgressArg, ProgressSink, TqdmSink, frontend

if TYPE_CHECKING:
    from ..engine.runner import GenerationContext

__all__ = ["Job", "start_job", "stop_jobs"]

JobFunction = Callable[
    [threading.Event, Callable[..., None], Callable[[Progress], None]],
    Any,
]


class _ContextQueue:
    """First-come, first-served turns on one context (a plain lock wakes waiters in any
    order). A waiter gives up its place when its job is cancelled."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._owner: Job | None = None

    def acquire(self, job: Job, cancel: threading.Event, on_wait: Callable[[int], Any]) -> bool:
        """Wait for ``job``'s turn (calling ``on_wait(jobs_ahead)`` once if it must wait);
        False if ``cancel`` was set first."""
        with self._cond:
            self._waiting.append(job)
            if self._owner is not None or self._waiting[0] is not job:
                on_wait(len(self._waiting) - 1 + (self._owner is not None))
            while self._owner is not None or self._waiting[0] is not job:
                if cancel.is_set():
                    self._waiting.remove(job)
                    self._cond.notify_all()
                    return False
                self._cond.wait(0.1)  # also polls cancel
            self._waiting.popleft()
            self._owner = job
            return True

    def release(self) -> None:
        with self._cond:
            self._owner = None
            self._cond.notify_all()


_queues: weakref.WeakKeyDictionary[GenerationContext, _ContextQueue] = weakref.WeakKeyDictionary()
_queues_lock = threading.Lock()
_jobs: weakref.WeakSet[Job] = weakref.WeakSet()  # unfinished jobs, cancelled at exit


def _queue_for(context: GenerationContext) -> _ContextQueue:
    with _queues_lock:
        queue = _queues.get(context)
        if queue is None:
            queue = _queues[context] = _ContextQueue()
        return queue


class Job:
    """A batch run in a background thread. Start one with :func:`start_job` or with
    ``background=True`` on :func:`~jupyter_localllm.generate_parallel`,
    :func:`~jupyter_localllm.classify`, :func:`~jupyter_localllm.extract` or
    :func:`~jupyter_localllm.explore`.

    ``status`` is ``"queued"`` (waiting for its context), ``"running"``, ``"finished"``,
    ``"failed"`` or ``"cancelled"``. In a notebook the job shows a :class:`ProgressPanel`
    with a Cancel button (``job.panel``).
    """

    def __init__(
        self,
        fn: JobFunction,
        *,
        total: int,
        desc: str = "job",
        context: GenerationContext | None = None,
        cancel: threading.Event | None = None,
    ):
        self.desc = desc
        self.total = int(total)
        self.context = context
        self.status = "queued" if context is not None else "running"
        self.progress: Progress | None = None
        """The last progress event."""
        self.error: BaseException | None = None
        """What the run raised (``None`` while running or after success)."""
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._fn = fn
        self._cancel = cancel if cancel is not None else threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._rows: dict[int, Any] = {}
        self._value: Any = None
        self._views: list[ProgressSink] = []
        self._sink: ProgressSink | None = None  # the front-end's panel, once made
        self._ended = False
        self.id: str | None = None
        """The job's id in the session's activity (front-ends cancel it by id); set when it
        starts."""
        self.shown_in: Any = None
        """Where a front-end displayed the job when it started (a notebook: the cell's
        execution count), so showing the cell's value does not draw it twice."""
        self._queue = _queue_for(context) if context is not None else None
        self._thread = threading.Thread(target=self._run, name=f"localllm-{desc}", daemon=True)

    # -- the public face -----------------------------------------------------------------
    def done(self) -> bool:
        """True once the run has ended (finished, failed or cancelled)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ends or ``timeout`` seconds pass; True if it ended."""
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The run's return value, waiting for it (at most ``timeout`` seconds).

        Re-raises what the run raised; a cancelled run raises :class:`BatchInterrupted`
        whose ``results`` hold the finished rows (also in :meth:`partial`).
        """
        if not self._done.wait(timeout):
            raise JobTimeoutError(
                f"The {self.desc} job is still running after {timeout:g} s; wait longer, or "
                "check job.done() before asking for the result."
            )
        if self.error is not None:
            raise self.error
        return self._value

    def partial(self) -> dict[int, Any]:
        """The rows finished so far, ``{row: value}`` in row order (the value is what the
        run delivered: a :class:`Result` for generation, a dict for extract and classify)."""
        with self._lock:
            return dict(sorted(self._rows.items()))

    def cancel(self) -> None:
        """Ask the run to stop after the current step; finished rows are kept."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        """True once cancel was asked for."""
        return self._cancel.is_set()

    @property
    def elapsed(self) -> float:
        """Seconds the job has been running (0 while queued)."""
        if self.started_at is None:
            return 0.0
        return (self.ended_at or time.monotonic()) - self.started_at

    @property
    def panel(self) -> Any:
        """The front-end's drawing of this job (in a notebook a
        :class:`~jupyter_localllm.notebook.widgets.ProgressPanel` with a working Cancel
        button), made on first use; ``None`` where no front-end can make one."""
        with self._lock:
            if self._sink is not None:
                return getattr(self._sink, "panel", self._sink)
            front = frontend()
            sink = front.new_panel(self.total, self.desc, self.cancel) if front else None
            if sink is None:
                return None
            self._sink = sink
            self._views.append(sink)
            ended = self._ended
        if self.progress is not None:
            sink(self.progress)
        if ended:  # the run ended before anyone looked: draw its end
            sink.close(self.status, self._end_note())
        elif self.status == "queued":
            self._note("queued")
        return getattr(sink, "panel", sink)

    def add_view(self, sink: ProgressSink) -> None:
        """Send this job's progress events to ``sink`` and close it at the end (for
        front-ends drawing the job their own way)."""
        with self._lock:
            self._views.append(sink)

    def __repr__(self) -> str:
        done = self.progress.done if self.progress is not None else len(self._rows)
        return f"<Job {self.desc}: {self.status}, {done}/{self.total} rows>"

    def _ipython_display_(self) -> None:
        front = frontend()
        if front is not None:
            front.show_job(self)

    # -- the thread ----------------------------------------------------------------------
    def _start(self, show: bool) -> None:
        _jobs.add(self)
        self.id = activity.track_job(self)
        front = frontend() if show else None
        if front is not None:
            front.show_job(self, started=True)
        self._thread.start()

    def _deliver(self, value: Any, row: int | None = None) -> None:
        """``on_result`` of the run: keep a finished row (``row`` defaults to ``value.row``)."""
        if row is None:
            row = value.row
        with self._lock:
            self._rows[int(row)] = value

    def _report(self, event: Progress) -> None:
        self.progress = event
        for sink in list(self._views):
            sink(event)
        activity.changed()

    def _note(self, text: str) -> None:
        set_note = getattr(self._sink, "set_note", None)
        if set_note is not None:
            set_note(text)

    def _run(self) -> None:
        queue = self._queue
        try:
            if queue is not None and not queue.acquire(self, self._cancel, self._queued):
                raise self._interrupted(
                    f"The {self.desc} job was cancelled before it started; nothing ran."
                )
            try:
                lock = self.context.lock if self.context is not None else contextlib.nullcontext()
                with lock:
                    self.status = "running"
                    activity.changed()
                    self._note("")
                    self.started_at = time.monotonic()
                    try:
                        self._value = self._fn(self._cancel, self._deliver, self._report)
                    finally:  # before the next job in the queue gets the context
                        self.ended_at = time.monotonic()
            finally:
                if queue is not None:
                    queue.release()
            self.status = "finished"
        except BaseException as exc:  # the thread's end: keep it for result()
            if isinstance(exc, KeyboardInterrupt) and self._cancel.is_set():
                self.status = "cancelled"
                if not isinstance(exc, BatchInterrupted):  # a job function's bare one
                    exc = self._interrupted(
                        f"The {self.desc} job was cancelled after {len(self.partial())} of "
                        f"{self.total} rows; the finished rows are in job.partial()."
                    )
            else:
                self.status = "failed"
            self.error = exc
        finally:
            if self.ended_at is None:
                self.ended_at = time.monotonic()
            if self.started_at is None:
                self.started_at = self.ended_at
            note = self._end_note()
            with self._lock:
                self._ended = True
                views = list(self._views)
            for sink in views:
                with contextlib.suppress(Exception):  # a broken view must not hide the result
                    sink.close(self.status, note)
            _jobs.discard(self)
            self._done.set()
            activity.run_ended(self)

    def _interrupted(self, message: str) -> BatchInterrupted:
        """The end of a job cancelled outside a batch run: the rows it delivered, kept in a
        ledger of the job's rows, the others cancelled."""
        rows = {row: value for row, value in self.partial().items() if row >= 0}
        ledger = RunLedger(max([self.total, *(row + 1 for row in rows)]))
        for row, value in rows.items():
            ledger.record(value, row)
        return ledger.interrupted(message)

    def _queued(self, ahead: int) -> None:
        self._note(f"queued behind {ahead} job(s) on this context")

    def _end_note(self) -> str:
        if self.status == "failed" and self.error is not None:
            return f"{type(self.error).__name__}: {self.error}"
        return ""


def start_job(
    fn: JobFunction,
    *,
    total: int,
    desc: str = "job",
    context: GenerationContext | None = None,
    progress: ProgressArg = None,
    cancel: threading.Event | None = None,
) -> Job:
    """Run ``fn(cancel, on_result, on_progress)`` in a background thread; return its
    :class:`Job` at once.

    ``fn`` runs the batch and returns its result (what ``job.result()`` gives). It must
    stop soon after ``cancel`` (a :class:`threading.Event`) is set, by raising
    :class:`BatchInterrupted` (the batch functions do this when given ``cancel=``), call
    ``on_result(value, row=None)`` for each finished row (``row`` defaults to
    ``value.row``; these make ``job.partial()``), and may call ``on_progress(event)`` with
    :class:`Progress` events. Exceptions are kept and re-raised by ``job.result()``.

    ``total`` is the number of rows (for the bar before the first event). ``context``: the
    :class:`GenerationContext` the run drives; jobs on the same context run one after the
    other in the order they were started. ``progress``: ``None`` shows the job's
    :class:`ProgressPanel` (with a Cancel button) in a notebook and nothing elsewhere,
    ``True`` also a text bar outside notebooks, ``False`` nothing (``job.panel`` can still be
    displayed), a callable receives the events. ``cancel``: an event of the caller's to use
    as the job's cancel flag.

    Example (what ``generate_parallel(..., background=True)`` does)::

        job = start_job(
            lambda cancel, on_result, on_progress: generate_parallel(
                ctx, prompts, cancel=cancel, on_result=on_result, progress=on_progress
            ),
            total=len(prompts), desc="generate", context=ctx,
        )
        job.partial()   # {row: Result} finished so far
        job.cancel()    # stop; job.result() then raises BatchInterrupted
    """
    job = Job(fn, total=total, desc=desc, context=context, cancel=cancel)
    if callable(progress):
        job.add_view(CallbackSink(progress))
    front = frontend()
    in_notebook = progress is not False and not callable(progress) and front and front.live()
    if progress is True and not in_notebook:
        job.add_view(TqdmSink(total, desc))
    job._start(show=bool(in_notebook))
    return job


def stop_jobs(match: Callable[[Job], bool], *, timeout: float = 60.0) -> list[Job]:
    """Cancel the unfinished jobs for which ``match(job)`` is true and wait for them to end
    (each stops after its current step); returns them. Raises
    :class:`InvalidParameterError` when one is still running after ``timeout`` seconds."""
    jobs = [job for job in list(_jobs) if not job.done() and match(job)]
    for job in jobs:
        job.cancel()
    end = time.monotonic() + timeout
    for job in jobs:
        if not job.wait(max(0.0, end - time.monotonic())):
            raise InvalidParameterError(
                f"The {job.desc} job did not stop within {timeout:g} s of being cancelled; "
                "wait for it (job.wait()) and try again."
            )
    return jobs


@atexit.register
def _cancel_all() -> None:
    """At interpreter exit, stop running jobs before the models they use are freed."""
    jobs = list(_jobs)
    for job in jobs:
        job.cancel()
    for job in jobs:
        job.wait(5.0)
