"""Executors: where and how a :class:`Plan` of batch requests runs.

A plan is a generator of :class:`~jupyter_localllm.session.pipeline.BatchRequest` objects: it
yields a request, receives that request's :class:`~jupyter_localllm.types.Results`, and
returns the value the caller gets (a list, a DataFrame, an exploration). One request is the
common case (:func:`single`); ``explore`` yields one per model and chunk.

The executor contract (what a new executor, e.g. on Dask, implements):

- ``submit(plan, progress=..., cancel=...)`` runs every request of the plan through
  :func:`~jupyter_localllm.session.pipeline.run_batch` (or the same steps elsewhere) and
  returns the plan's value, or a handle to it (a :class:`~jupyter_localllm.session.jobs.Job`);
- progress events count the plan's rows (``plan.total``) and go to the sink that
  :func:`~jupyter_localllm.session.sinks.make_sink` makes of ``progress``;
- each finished row is reported once, numbered across the plan's requests, as
  ``plan.view(request, result)`` to ``plan.on_result(row, value)`` (and kept by a job for
  ``job.partial()``);
- a cancel (the event, or Ctrl-C in the foreground) stops the run between steps and ends it
  with :class:`~jupyter_localllm.errors.BatchInterrupted` whose ``results`` hold one result
  per row of the plan: every finished row, and ``"cancelled"`` results for the rest.

The foreground and background executors take the function that runs one request
(``run_batch`` by default, with its signature and its promises); the Dask executor
(:mod:`~jupyter_localllm.session.cluster`) gives them one that runs the request's partitions
on a cluster's workers.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ..errors import BatchInterrupted
from ..types import Progress, Result, Results
from . import activity
from .jobs import Job, start_job
from .ledger import RunLedger
from .pipeline import BatchRequest, run_batch
from .runlog import RunRecorder
from .sinks import ProgressArg, ProgressSink, make_sink

BatchRunner = Callable[..., Results]
"""Runs one request as :func:`run_batch` does (``on_result``, ``on_progress``, ``cancel``)."""

if TYPE_CHECKING:
    from ..engine.runner import GenerationContext

__all__ = [
    "BackgroundExecutor",
    "Executor",
    "ForegroundExecutor",
    "Plan",
    "execute",
    "single",
]

T = TypeVar("T")
U = TypeVar("U")
Steps = Generator[BatchRequest, Results, T]


def _as_is(request: BatchRequest, result: Result) -> Any:
    return result


@dataclass
class Plan(Generic[T]):
    """Batch requests to run, and how their rows look to the caller."""

    steps: Steps
    """Yields each request, receives its results, returns the plan's value."""
    total: int
    """Rows over all requests (for progress before the first event); a plan whose requests
    depend on earlier answers gives its estimate, and the run's count grows past it."""
    desc: str = "llm"
    """What the run is called in progress displays."""
    context: GenerationContext | None = None
    """The one context every request runs on, if any: background jobs on it queue."""
    view: Callable[[BatchRequest, Result], Any] = _as_is
    """A finished row as the caller sees it (``on_result``, ``job.partial()``)."""
    on_result: Callable[[int, Any], Any] | None = None
    """Called with ``(row, view)`` for each finished row, rows numbered across requests."""

    def then(self, finish: Callable[[T], U]) -> Plan[U]:
        """The same plan, its value passed through ``finish``."""

        def steps() -> Generator[BatchRequest, Results, U]:
            return finish((yield from self.steps))

        return dataclasses.replace(self, steps=steps())

    def also_on_result(self, callback: Callable[[int, Any], Any]) -> Plan[T]:
        """The same plan, ``callback(row, view)`` called after its own ``on_result``."""
        first = self.on_result

        def both(row: int, value: Any) -> None:
            if first is not None:
                first(row, value)
            callback(row, value)

        return dataclasses.replace(self, on_result=both)


def single(
    request: BatchRequest, finish: Callable[[Results], T] | None = None, **plan: Any
) -> Plan[T]:
    """A plan of one request whose value is ``finish(results)`` (the results by default);
    ``plan`` sets the other :class:`Plan` fields."""

    def steps() -> Generator[BatchRequest, Results, T]:
        results = yield request
        return finish(results) if finish is not None else results

    plan.setdefault("context", request.context)
    return Plan(steps(), total=len(request.rows), **plan)


class _Driver:
    """Runs a plan's requests one after the other, keeping their rows in one ledger
    (numbered across the requests) and counting progress across them."""

    def __init__(
        self,
        plan: Plan[Any],
        report: Callable[[Progress], Any] | None,
        cancel: threading.Event | None,
        keep: Callable[[int, Any], Any] | None,
        run: BatchRunner = run_batch,
    ):
        self.plan, self.report, self.cancel, self.keep = plan, report, cancel, keep
        self.run_request = run
        self.ledger = RunLedger(plan.total)
        self.done = self.errors = self.tokens = 0  # over the requests done so far
        self.request_tokens = 0  # generated by the running request, as its last event said
        self.t_start = time.perf_counter()
        self.log = RunRecorder(plan.desc, run)

    def run(self) -> Any:
        """The plan's value, after every request ran; the run is logged however it ends."""
        try:
            value = self._steps()
        except BaseException as exc:
            self.log.end(self.ledger, exc)
            raise
        self.log.end(self.ledger)
        return value

    def _steps(self) -> Any:
        steps = self.plan.steps
        try:
            request = next(steps)
            while True:
                results = self._run(request)
                self.done += len(results)
                self.errors += sum(r.error is not None for r in results)
                self.tokens, self.request_tokens = self.tokens + self.request_tokens, 0
                try:
                    request = steps.send(results)
                except KeyboardInterrupt as exc:  # Ctrl-C between two requests
                    if isinstance(exc, BatchInterrupted):
                        raise
                    raise self.ledger.interrupted() from exc
        except StopIteration as stop:
            self._finished()
            return stop.value

    def _finished(self) -> None:
        """A plan that ran fewer rows than it foresaw (a cascade that escalated few) ends at
        its own count: the last progress event shows every row done, not a bar stuck short."""
        if self.done < self.ledger.n:
            self.ledger.n = self.done
            self._progress(Progress(0, self.done, 0, 0, 0.0))  # done, errors, tokens counted

    def _run(self, request: BatchRequest) -> Results:
        """One request's results; its rows go into the ledger after the requests before."""
        rows = range(self.done, self.done + len(request.rows))
        # a plan of rounds (the semantic operators) may ask more rows than it foresaw
        self.ledger.n = max(self.ledger.n, rows.stop)
        record = self.ledger.mapped(rows)
        self.log.request(request, self.done)

        def on_result(result: Result) -> None:
            if record(result) is not None and self.keep is not None:
                self.keep(rows[result.row], self.plan.view(request, result))

        try:
            results = self.run_request(
                request, on_result=on_result, on_progress=self._progress, cancel=self.cancel
            )
        except BatchInterrupted as exc:  # the request's finished rows, if not reported yet
            self.ledger.record_all(exc.results, rows)
            raise self.ledger.interrupted() from exc
        self.ledger.record_all(results, rows)
        return results

    def _progress(self, event: Progress) -> None:
        self.request_tokens = event.generated_tokens
        if self.report is None:
            return
        self.report(
            Progress(
                self.done + event.done,
                self.ledger.n,
                self.errors + event.errors,
                self.tokens + event.generated_tokens,
                time.perf_counter() - self.t_start,
            )
        )


class Executor(Protocol):
    """Runs plans (see the module notes for the contract)."""

    def submit(
        self, plan: Plan[T], *, progress: ProgressArg = None, cancel: threading.Event | None = None
    ) -> Any:
        """Run ``plan``; return its value or a handle to it."""


class ForegroundExecutor:
    """Runs a plan in the calling thread and returns its value; Ctrl-C raises
    :class:`BatchInterrupted` with the finished rows. ``run`` runs each request."""

    def __init__(self, run: BatchRunner = run_batch):
        self.run = run

    def submit(
        self, plan: Plan[T], *, progress: ProgressArg = None, cancel: threading.Event | None = None
    ) -> T:
        """Run ``plan`` now, drawing its progress on the sink made of ``progress``."""
        sink: ProgressSink | None = make_sink(progress, plan.total, plan.desc)
        run = activity.start_foreground(plan.desc, plan.total, plan.context)
        status = "failed"
        try:
            driver = _Driver(plan, _reporting(run, sink), cancel, plan.on_result, self.run)
            value = driver.run()
            status = "finished"
            return value
        except KeyboardInterrupt:
            status = "cancelled"
            raise
        finally:
            if sink is not None:
                sink.close(status)
            run.end(status)


def _reporting(
    run: activity.ForegroundRun, sink: ProgressSink | None
) -> Callable[[Progress], None]:
    """Progress events to the session's activity, then to ``sink``."""

    def report(event: Progress) -> None:
        run.report(event)
        if sink is not None:
            sink(event)

    return report


class BackgroundExecutor:
    """Runs a plan in a background :class:`Job` (the kernel stays free); jobs on one
    context run one after the other. ``run`` runs each request; ``on_context=False`` starts
    the job at once, holding no context (its requests run elsewhere)."""

    def __init__(self, run: BatchRunner = run_batch, *, on_context: bool = True):
        self.run, self.on_context = run, on_context

    def submit(
        self, plan: Plan[T], *, progress: ProgressArg = None, cancel: threading.Event | None = None
    ) -> Job:
        """Start ``plan`` in a job and return the job at once."""

        def work(
            cancel_event: threading.Event, deliver: Callable[..., None], report: Callable
        ) -> T:
            def keep(row: int, value: Any) -> None:
                deliver(value, row)
                if plan.on_result is not None:
                    plan.on_result(row, value)

            return _Driver(plan, report, cancel_event, keep, self.run).run()

        return start_job(
            work,
            total=plan.total,
            desc=plan.desc,
            context=plan.context if self.on_context else None,
            progress=progress,
            cancel=cancel,
        )


FOREGROUND = ForegroundExecutor()
BACKGROUND = BackgroundExecutor()


def execute(
    plan: Plan[T],
    *,
    background: bool = False,
    progress: ProgressArg = None,
    cancel: threading.Event | None = None,
    cluster: Any = None,
) -> T | Job:
    """Run ``plan`` in the foreground (its value) or in the background (a :class:`Job`);
    with ``cluster`` (a ``distributed.Client`` or a scheduler address) its requests run in
    partitions on the cluster's workers (see :mod:`~jupyter_localllm.session.cluster`)."""
    executor: Executor = BACKGROUND if background else FOREGROUND
    if cluster is not None:
        from .cluster import DaskExecutor

        executor = DaskExecutor(cluster, background=background)
    return executor.submit(plan, progress=progress, cancel=cancel)
