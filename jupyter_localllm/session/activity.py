"""What the session is doing, for front-ends that show it live (the JupyterLab status bar).

The session calls :func:`changed` whenever something a front-end could show changed: a model
was loaded, used or unloaded, a run started, made progress or ended. A front-end registers a
callback with :func:`watch` and reads the whole state with :func:`snapshot` (plain
dataclasses: :class:`Snapshot` of :class:`ModelState` and :class:`RunState`) when it decides
to draw; :func:`changed` only calls the callbacks, so it is cheap enough for every progress
event and throttling is the watcher's business. Callbacks may be called from any thread (a
job's, a model load's); one that raises is ignored. How a front-end puts the snapshot on a
wire is its own business (notebook/protocol.py for the JupyterLab extension).

Runs are background :class:`~jupyter_localllm.session.jobs.Job` objects and foreground runs
of :class:`~jupyter_localllm.session.executors.ForegroundExecutor`; both get an id here. A
finished run stays in the snapshot for :data:`KEEP_FINISHED_S` seconds, and a change is
announced when it drops out.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..types import Progress

if TYPE_CHECKING:
    from .jobs import Job

__all__ = [
    "KEEP_FINISHED_S",
    "ForegroundRun",
    "ModelState",
    "RunState",
    "Snapshot",
    "cancel",
    "cancel_all",
    "changed",
    "run_ended",
    "snapshot",
    "start_foreground",
    "track_job",
    "watch",
]

KEEP_FINISHED_S = 30.0
"""Seconds a finished run stays in the snapshot."""

Watcher = Callable[[], Any]

_watchers: tuple[Watcher, ...] = ()  # replaced, never mutated: changed() reads it without a lock
_lock = threading.Lock()
_ids = itertools.count(1)
_runs: dict[str, Any] = {}  # id -> Job or ForegroundRun, in start order
_expiry: threading.Timer | None = None  # announces the next finished run dropping out
_expiry_at = 0.0  # when (time.monotonic())


# -- watching ----------------------------------------------------------------------------------
def watch(callback: Watcher) -> Callable[[], None]:
    """Call ``callback()`` (no arguments, from any thread) after every change; returns the
    function that stops it."""
    global _watchers
    with _lock:
        _watchers = (*_watchers, callback)

    def unwatch() -> None:
        global _watchers
        with _lock:
            _watchers = tuple(w for w in _watchers if w is not callback)

    return unwatch


def changed() -> None:
    """Tell the watchers that something changed (cheap: they decide when to look)."""
    for callback in _watchers:
        with contextlib.suppress(Exception):  # a broken front-end must not break a run
            callback()


# -- runs ----------------------------------------------------------------------------------------
class ForegroundRun:
    """A run in the calling thread (a cell that is executing), as the snapshot shows it."""

    background = False

    def __init__(self, desc: str, total: int, context: Any = None):
        self.desc, self.total = desc, int(total)
        # Weakly: a finished run stays listed for KEEP_FINISHED_S and must not keep its context
        # (and the context's KV memory) alive when the user drops or recreates it.
        self._context = weakref.ref(context) if context is not None else None
        self.status = "running"
        self.progress: Progress | None = None
        self.ended_at: float | None = None
        self.id = _register(self)

    @property
    def context(self) -> Any:
        """The context the run uses, or None once the user's program has let go of it."""
        return self._context() if self._context is not None else None

    def report(self, event: Progress) -> None:
        """A progress event of the run."""
        self.progress = event
        changed()

    def end(self, status: str) -> None:
        """The run ended: ``status`` is ``"finished"``, ``"failed"`` or ``"cancelled"``."""
        self.status = status
        self.ended_at = time.monotonic()
        run_ended(self)

    def done(self) -> bool:
        """True once the run has ended."""
        return self.ended_at is not None


def start_foreground(desc: str, total: int, context: Any = None) -> ForegroundRun:
    """Register a foreground run (announced at once); call its ``report`` with each progress
    event and ``end(status)`` at its end."""
    return ForegroundRun(desc, total, context)


def track_job(job: Job) -> str:
    """Register a background job as it starts (announced at once); returns its id. The job
    calls :func:`changed` itself as its status and progress change."""
    return _register(job)


def _register(run: Any) -> str:
    with _lock:
        run_id = str(next(_ids))
        _runs[run_id] = run
    changed()
    return run_id


class _EndedRun:
    """What the snapshot shows of a run that ended. The run itself (its context, its rows)
    is not kept: a loop of runs must not hold their contexts for :data:`KEEP_FINISHED_S`."""

    def __init__(self, state: RunState, ended_at: float):
        self.state, self.ended_at = state, ended_at
        self.background = state.background
        self.cancelled = True  # nothing to cancel

    def done(self) -> bool:
        return True


def run_ended(run: Any) -> None:
    """``run`` (a job or a foreground run) ended: keep only its last state, announce it, and
    (later) its dropping out of the snapshot."""
    entries = _model_entries()
    with _lock:
        run_id = next((i for i, r in _runs.items() if r is run), None)
        if run_id is not None:
            ended_at = run.ended_at if run.ended_at is not None else time.monotonic()
            _runs[run_id] = _EndedRun(_run_state(run_id, run, entries), ended_at)
    changed()
    _schedule_expiry()


def _schedule_expiry() -> None:
    """Set the one timer that announces the next finished run dropping out (none when
    nothing has finished; moved earlier when a run is due before it)."""
    global _expiry, _expiry_at
    with _lock:
        ends = [r.ended_at for r in _runs.values() if r.done() and r.ended_at is not None]
        if not ends:
            return
        due = min(ends) + KEEP_FINISHED_S + 0.05
        if _expiry is not None:
            if _expiry_at <= due:
                return
            _expiry.cancel()
        _expiry, _expiry_at = threading.Timer(max(0.0, due - time.monotonic()), _expire), due
        _expiry.args = (due,)
        _expiry.daemon = True
        _expiry.start()


def _expire(due: float) -> None:
    global _expiry
    with _lock:
        if _expiry_at == due:
            _expiry = None
    _prune()
    changed()
    _schedule_expiry()


def _prune() -> list[Any]:
    """Forget runs that finished more than :data:`KEEP_FINISHED_S` ago; the others, in
    start order."""
    cutoff = time.monotonic() - KEEP_FINISHED_S
    with _lock:
        for run_id, run in list(_runs.items()):
            if run.done() and run.ended_at is not None and run.ended_at < cutoff:
                del _runs[run_id]
        return list(_runs.items())


def _is_job(run: Any) -> bool:
    return getattr(run, "background", True)


def cancel(run_id: str) -> bool:
    """Cancel the background job ``run_id`` (it stops after its current step and keeps its
    finished rows); False when no such job is running. Foreground runs are stopped by
    interrupting the kernel."""
    with _lock:
        run = _runs.get(str(run_id))
    if run is None or not _is_job(run) or run.done():
        return False
    run.cancel()
    changed()
    return True


def cancel_all() -> int:
    """Cancel every unfinished background job; returns how many."""
    with _lock:
        jobs = [r for r in _runs.values() if _is_job(r) and not r.done() and not r.cancelled]
    for job in jobs:
        job.cancel()
    if jobs:
        changed()
    return len(jobs)


# -- the state -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelState:
    """A model the session holds."""

    alias: str
    name: str
    """The model's own name (GGUF metadata), whole."""
    path: str
    size_bytes: int
    n_ctx: int | None
    """Its contexts' size; None when contexts are sized from the work."""
    default: bool
    """True for the model calls use when they name none."""


@dataclass(frozen=True)
class RunState:
    """A run in progress, or one that ended less than :data:`KEEP_FINISHED_S` ago. Before
    its first progress event ``done`` and ``errors`` are 0, ``tokens_per_s`` is 0.0 and
    ``total`` is its row count."""

    id: str
    desc: str
    model: str | None
    """The alias of the model it runs on; None when not known."""
    status: str
    """``"queued"``, ``"running"``, ``"finished"``, ``"failed"`` or ``"cancelled"``."""
    background: bool
    """False for a foreground run (a cell that is executing): a kernel interrupt stops it."""
    done: int
    total: int
    errors: int
    tokens_per_s: float
    eta_s: float | None
    """Seconds left; None before the rate is known."""


@dataclass(frozen=True)
class Snapshot:
    """The session's whole state: its models, and its runs in start order."""

    models: tuple[ModelState, ...]
    runs: tuple[RunState, ...]


def snapshot() -> Snapshot:
    """The session's state now."""
    entries = _model_entries()
    return Snapshot(
        models=tuple(_model_state(entry, default) for entry, default in entries),
        runs=tuple(
            run.state if isinstance(run, _EndedRun) else _run_state(run_id, run, entries)
            for run_id, run in _prune()
        ),
    )


def _model_entries() -> list[tuple[Any, bool]]:
    """The manager's loaded models with their default flag (none when nothing imported the
    manager: no model can be loaded then, and importing it would load the engine)."""
    manager_module = sys.modules.get(f"{__package__}.manager")
    if manager_module is None:
        return []
    manager = manager_module.get_manager()
    default = manager.default_alias
    return [(entry, entry.alias == default) for entry in manager.loaded()]


def _model_state(entry: Any, default: bool) -> ModelState:
    model = entry.model
    return ModelState(
        alias=entry.alias,
        name=str(model.name),
        path=str(model.path),
        size_bytes=int(model.size_bytes),
        n_ctx=entry.n_ctx,
        default=default,
    )


def _run_state(run_id: str, run: Any, entries: list[tuple[Any, bool]]) -> RunState:
    event: Progress | None = run.progress
    return RunState(
        id=run_id,
        desc=run.desc,
        model=_alias_of(run.context, entries),
        status=run.status,
        background=_is_job(run),
        done=event.done if event is not None else 0,
        total=event.total if event is not None else run.total,
        errors=event.errors if event is not None else 0,
        tokens_per_s=float(event.tokens_per_s) if event is not None else 0.0,
        eta_s=event.eta if event is not None else None,
    )


def _alias_of(context: Any, entries: list[tuple[Any, bool]]) -> str | None:
    """The alias of the loaded model ``context`` runs on (None when unknown)."""
    model = getattr(context, "model", None)
    if model is None:
        return None
    return next((entry.alias for entry, _ in entries if entry.model is model), None)
