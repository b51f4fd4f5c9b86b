"""The worker side of the Dask executor: one model per worker process, loaded once from its
file and kept with its contexts for later calls, and the function each partition runs.

Nothing native crosses the wire. The client sends a :class:`WorkerSpec` (the model file's
path, its load options, the context's size and slots) and the partition's
:class:`~jupyter_localllm.session.pipeline.BatchRequest` with ``context=None``; the worker
opens (or reuses) its own model and context from the spec and runs the request through the
same :func:`~jupyter_localllm.session.pipeline.run_batch` as the kernel does. The caches are
module-level, so they live as long as the worker process; a restarted worker loads again.

llama.cpp runs with the worker's Dask thread count as its threads (``threads_per_worker``):
give each worker its share of the machine's cores, e.g. ``LocalCluster(n_workers=4,
threads_per_worker=2)`` on 8 cores, or ``threads_per_worker=1`` for one core each.

Dask is imported only inside these functions: the module loads without it (a run outside a
worker uses the machine's cores and reports no progress events).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import hardware
from ..errors import BatchInterrupted, ClusterError, ModelNotFoundError
from ..types import Progress, Results
from .manager import model_load, open_context
from .pipeline import BatchRequest, run_batch

if TYPE_CHECKING:
    from ..engine.backend import BackendModel
    from ..engine.runner import GenerationContext
    from .executors import Plan

__all__ = [
    "PROGRESS_TOPIC",
    "PartResult",
    "WorkerSpec",
    "run_part",
    "run_plan_here",
    "worker_context",
    "worker_stats",
]

PROGRESS_TOPIC = "jupyter_localllm.progress"
"""The Dask event topic partitions send their progress on."""
_PROGRESS_INTERVAL = 0.25  # seconds between a partition's progress events


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to open the model and context a request runs on (picklable)."""

    model_path: str
    """The model file, as the client resolved it (the same path must hold it on workers)."""
    load_options: tuple[tuple[str, Any], ...] = ()
    """Keywords of :func:`~jupyter_localllm.model_load` (``n_gpu_layers``, ``use_mmap``, ...),
    as sorted pairs."""
    n_ctx: int | None = None
    """The context size (``None``: sized from the work, as in the kernel)."""
    n_seq_max: int = 1
    """Rows decoded in parallel on each worker."""
    n_batch: int = 512
    kv_unified: bool | None = None
    deterministic: bool = False
    """Batch-invariant decoding (the model is then loaded without repacked weights)."""

    @property
    def model_key(self) -> tuple[str, tuple[tuple[str, Any], ...]]:
        """The key of the worker's model cache."""
        return (self.model_path, self.load_options)


@dataclass
class PartResult:
    """What a partition sends back: its results (rows numbered within the partition)."""

    part: int
    results: Results = field(default_factory=Results)
    interrupted: bool = False
    """The worker stopped the partition early (its task was cancelled)."""
    worker: str = ""


_lock = threading.Lock()
_models: dict[tuple, BackendModel] = {}
_contexts: dict[tuple, GenerationContext] = {}
_loads = 0  # models loaded by this process (read with worker_stats)


def _worker() -> Any:
    """The Dask worker running this code, or ``None`` outside one (or without Dask)."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def worker_name() -> str:
    """This worker's address (``"this process"`` outside a Dask worker)."""
    worker = _worker()
    return worker.address if worker is not None else "this process"


def worker_threads() -> int:
    """llama.cpp threads for this worker: its Dask threads (outside a worker: the cores)."""
    worker = _worker()
    if worker is None:
        return hardware.physical_cores()
    return max(1, int(worker.state.nthreads))


def _load(spec: WorkerSpec) -> BackendModel:
    global _loads
    path = Path(spec.model_path)
    if not path.is_file():
        raise ModelNotFoundError(
            f"Worker {worker_name()} cannot find the model file {path}; put the model at that "
            "path on every worker (or on a disk they share) and run again."
        )
    model = model_load(path, show_progress=False, **dict(spec.load_options))
    _loads += 1
    return model


def worker_context(spec: WorkerSpec) -> GenerationContext:
    """The context ``spec`` describes, on this process's copy of the model: both made on
    first use and kept for later calls."""
    key = (spec.model_key, spec.n_ctx, spec.n_seq_max, spec.n_batch, spec.kv_unified)
    key += (spec.deterministic,)
    with _lock:
        model = _models.get(spec.model_key)
        if model is None:
            model = _models[spec.model_key] = _load(spec)
        ctx = _contexts.get(key)
        if ctx is None:
            ctx = _contexts[key] = open_context(
                model,
                n_ctx=spec.n_ctx,
                n_seq_max=spec.n_seq_max,
                n_batch=max(spec.n_batch, spec.n_seq_max),
                kv_unified=spec.kv_unified,
                n_threads=worker_threads(),
                deterministic=spec.deterministic,
            )
        return ctx


def worker_stats() -> dict[str, Any]:
    """This process's model cache: ``loads`` (models loaded so far), ``models`` (their
    files) and ``contexts`` (for ``client.run(worker_stats)``)."""
    with _lock:
        return {
            "loads": _loads,
            "models": [key[0] for key in _models],
            "contexts": len(_contexts),
        }


class _Publisher:
    """Sends a partition's progress to the client as Dask events, a few a second."""

    def __init__(self, run_id: str, part: int):
        self.worker, self.run_id, self.part = _worker(), run_id, part
        self.last = 0.0

    def __call__(self, event: Progress) -> None:
        now = time.monotonic()
        if self.worker is None or now - self.last < _PROGRESS_INTERVAL:
            return
        self.last = now
        message = {
            "run": self.run_id,
            "part": self.part,
            "done": event.done,
            "errors": event.errors,
            "tokens": event.generated_tokens,
        }
        try:
            self.worker.log_event(PROGRESS_TOPIC, message)
        except Exception:  # progress is a courtesy: never fail the partition for it
            self.worker = None


class _TaskCancelled:
    """Set once the client cancelled the Dask task running this code (the worker then
    marks it cancelled), so the decode loop stops between steps."""

    def __init__(self) -> None:
        self.worker = _worker()
        self.key = None
        if self.worker is not None:
            from distributed.worker import thread_state

            self.key = getattr(thread_state, "key", None)

    def is_set(self) -> bool:
        if self.worker is None or self.key is None:
            return False
        task = self.worker.state.tasks.get(self.key)
        return task is None or task.state == "cancelled"


def run_part(spec: WorkerSpec, request: BatchRequest, part: int, run_id: str) -> PartResult:
    """Run one partition on this worker's context for ``spec`` (the task the client
    submits); a cancelled task returns the rows it finished."""
    ctx = worker_context(spec)
    req = dataclasses.replace(request, context=ctx)
    try:
        results = run_batch(req, on_progress=_Publisher(run_id, part), cancel=_TaskCancelled())
    except KeyboardInterrupt as exc:  # never let a KeyboardInterrupt out of a Dask task
        rows = exc.results if isinstance(exc, BatchInterrupted) else []
        return PartResult(part, Results(rows), interrupted=True, worker=worker_name())
    return PartResult(part, results, worker=worker_name())


def run_plan_here(plan: Plan[Any], row_offset: int = 0) -> Any:
    """Run ``plan`` in this process through the foreground executor (the session's run
    ledger, its activity) and return its value; each request's rows take their seeds from
    their place in the whole input (``row_offset`` onwards), as if the partition were part
    of one run. A cancelled Dask task stops between decode steps with a
    :class:`ClusterError` (never a KeyboardInterrupt out of a task)."""
    from .executors import ForegroundExecutor

    def run(request: BatchRequest, **options: Any) -> Results:
        seeds = request.seed_rows if request.seed_rows is not None else range(len(request.rows))
        shifted = dataclasses.replace(request, seed_rows=[row_offset + s for s in seeds])
        return run_batch(shifted, **options)

    try:
        return ForegroundExecutor(run).submit(plan, progress=False, cancel=_TaskCancelled())
    except KeyboardInterrupt as exc:
        raise ClusterError(
            f"The partition's task was cancelled on worker {worker_name()}; its rows did not "
            "finish. Compute the frame again for them."
        ) from exc
