"""The Dask executor: each request of a plan split into partitions that run on a Dask
cluster's workers, through the same pipeline as in the kernel.

``execute(plan, cluster=...)`` (and every batch entry point's ``cluster=``) picks
:class:`DaskExecutor`; ``cluster`` is a ``distributed.Client``, a cluster object with a
``scheduler_address`` (``LocalCluster``) or a scheduler address string. For each request:

- the rows are cut into partitions (about four per worker, at least two rows per slot); each
  keeps the seeds of its rows' places in the whole input (``BatchRequest.seed_rows``), so a
  row's output does not depend on the partitioning;
- each partition is a Dask task (:func:`~jupyter_localllm.session.cluster_worker.run_part`)
  sent with a :class:`~jupyter_localllm.session.cluster_worker.WorkerSpec`, never a model:
  the worker loads the model from its file once and keeps it and its contexts;
- rows come back as their partitions finish, numbered in the whole request, and reach
  ``on_result`` once each; progress counts them, and rows within running partitions (the
  workers send Dask events a few times a second);
- Ctrl-C or the cancel event cancels the tasks (the workers stop between decode steps) and
  raises :class:`~jupyter_localllm.errors.BatchInterrupted` with every finished row;
- a task whose worker dies runs again on another (``retries``); its rows are taken once,
  from the run that finished. Workers sharing a result-cache folder redo only missing rows.

The run log and the hashes are computed in the kernel over the whole request, as for a run
in the kernel. The kernel keeps its own copy of the model for prompt templates (it decodes
nothing): ``model`` arguments work as without a cluster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from .. import defaults, models
from ..engine.backend import MAX_SEQUENCES, BackendModel, check_int
from ..engine.runner import GenerationContext
from ..errors import ClusterError
from ..types import Progress, Result, Results
from .cache import cache_enabled
from .cluster_worker import PROGRESS_TOPIC, PartResult, WorkerSpec, run_part
from .executors import BackgroundExecutor, ForegroundExecutor, Plan
from .ledger import RunLedger
from .manager import first_given, get_manager
from .pipeline import BatchRequest, record_run
from .sinks import ProgressArg

__all__ = ["DaskExecutor", "DaskRunner", "dask_client", "model_spec", "partitions", "spec_of"]

PARTS_PER_WORKER = 4
"""Partitions per worker when the partition size is automatic (finer progress, balance)."""
LOAD_OPTIONS = ("n_gpu_layers", "use_mmap", "use_mlock", "use_extra_bufts", "check_memory")
"""The :func:`~jupyter_localllm.model_load` options a worker's load repeats."""
_POLL = 0.05  # seconds between looks at the partitions
_LOST = ("KilledWorker", "CancelledError", "FutureCancelledError")  # Dask gave the task up

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def dask_client(cluster: Any) -> Any:
    """The ``distributed.Client`` for ``cluster``: the client itself, or one connected to
    the address (kept for later calls)."""
    try:
        from distributed import Client
    except ImportError as exc:
        raise ClusterError(
            "cluster= needs Dask; install it with pip install 'jupyter-localllm[dask]'."
        ) from exc
    if isinstance(cluster, Client):
        return cluster
    address = getattr(cluster, "scheduler_address", cluster)
    if not isinstance(address, str):
        raise ClusterError(
            "cluster must be a distributed.Client or a scheduler address like "
            f"'tcp://127.0.0.1:8786', got {type(cluster).__name__}."
        )
    with _clients_lock:
        client = _clients.get(address)
        if client is None or client.status not in ("running", "connecting"):
            try:
                client = Client(address, timeout="10s", set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise ClusterError(
                    f"Could not reach the Dask scheduler at {address} ({exc}); start it "
                    "(dask scheduler) or check the address."
                ) from exc
            _clients[address] = client
        return client


def _load_options(model: BackendModel) -> tuple[tuple[str, Any], ...]:
    """The load options the session's model manager used for ``model`` (none if it did
    not load it: the defaults)."""
    for entry in get_manager().loaded():
        if entry.model is model:
            return _options(entry.load_options)
    return ()


def _options(options: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, v) for k, v in (options or {}).items() if k in LOAD_OPTIONS))


def spec_of(context: GenerationContext) -> WorkerSpec:
    """What a worker needs to open a context like ``context``."""
    deterministic = context.deterministic
    return WorkerSpec(
        os.path.abspath(context.model.path),
        _deterministic_load(_load_options(context.model), deterministic),
        context.fixed_n_ctx,
        context.n_seq_max,
        context.n_batch,
        context.kv_layout,
        deterministic,
    )


def _deterministic_load(
    options: tuple[tuple[str, Any], ...], deterministic: bool
) -> tuple[tuple[str, Any], ...]:
    """``options``, with weights not repacked when the run is deterministic."""
    if not deterministic:
        return options
    return _options({**dict(options), "use_extra_bufts": False})


def model_spec(
    model: Any = None,
    *,
    n_seq_max: int | None = None,
    n_ctx: int | None = None,
    default_model: str = "default",
    default_n_seq_max: int = 1,
    load_options: dict[str, Any] | None = None,
    deterministic: bool | None = None,
) -> WorkerSpec:
    """The :class:`WorkerSpec` of a model argument, resolved here without loading it: a
    context, a loaded model, an alias of the session's model manager, a reference
    (``"default"``, a path, ...), or ``None`` for the session's default model (else
    ``default_model``). Arguments as for
    :func:`~jupyter_localllm.session.manager.resolve_context`."""
    if isinstance(model, GenerationContext):
        return spec_of(model)
    manager = get_manager()
    alias = manager.default_alias if model is None else model
    if isinstance(model, BackendModel):
        path, options = model.path, _load_options(model)
    elif isinstance(alias, str) and alias in manager.aliases:
        entry = manager.entry(alias)
        path, options = entry.model.path, _options(entry.load_options)
        n_seq_max, n_ctx = first_given(n_seq_max, entry.n_seq_max), first_given(entry.n_ctx, n_ctx)
    else:
        path = models.validate_model_file(models.resolve_model(model or default_model))
        options = _options(load_options)
    slots = first_given(n_seq_max, default_n_seq_max)
    check_int("n_seq_max", slots, 1, MAX_SEQUENCES)  # before any worker sees it
    det = bool(first_given(deterministic, defaults.DETERMINISTIC))
    options = _deterministic_load(options, det)
    return WorkerSpec(os.path.abspath(path), options, n_ctx, slots, max(512, slots), None, det)


def partitions(request: BatchRequest, size: int) -> list[tuple[int, BatchRequest]]:
    """``request`` cut into requests of ``size`` rows, each with its first row's place: no
    context, no stream, the seeds and the known errors of its rows, the cache resolved."""
    n = len(request.rows)
    seeds = request.seed_rows if request.seed_rows is not None else list(range(n))
    cache = request.kind != "score" and cache_enabled(request.cache)
    parts = []
    for start in range(0, n, size):
        end = min(n, start + size)
        sampling = request.sampling
        if isinstance(sampling, list):
            sampling = sampling[start:end]
        part = dataclasses.replace(
            request,
            context=None,
            stream=None,
            rows=request.rows[start:end],
            sampling=sampling,
            errors={i - start: m for i, m in request.errors.items() if start <= i < end},
            seed_rows=list(seeds[start:end]),
            cache=cache,
            tag={},
        )
        parts.append((start, part))
    return parts


# -- progress events from the workers ------------------------------------------------------
_listeners: dict[str, Callable[[dict], None]] = {}
_subscribed: set[str] = set()
_listen_lock = threading.Lock()


def _dispatch(event: tuple[float, Any]) -> None:
    message = event[1]
    listener = _listeners.get(message.get("run")) if isinstance(message, dict) else None
    if listener is not None:
        listener(message)


def _listen(client: Any, run_id: str, callback: Callable[[dict], None]) -> None:
    with _listen_lock:
        _listeners[run_id] = callback
        if client.id not in _subscribed:
            client.subscribe_topic(PROGRESS_TOPIC, _dispatch)
            _subscribed.add(client.id)


class DaskRunner:
    """Runs one request as :func:`~jupyter_localllm.session.pipeline.run_batch` does, in
    partitions on ``client``'s workers (see the module notes)."""

    def __init__(self, client: Any, *, partition_size: int | None = None, retries: int = 2):
        self.client, self.partition_size, self.retries = client, partition_size, retries

    def size(self, request: BatchRequest) -> int:
        """Rows per partition for ``request``."""
        if self.partition_size:
            return self.partition_size
        workers = max(1, len(self.client.nthreads()))
        share = math.ceil(len(request.rows) / (PARTS_PER_WORKER * workers))
        return max(1, 2 * request.context.n_seq_max, share)

    def __call__(
        self,
        request: BatchRequest,
        *,
        on_result: Callable[[Result], Any] | None = None,
        on_progress: Callable[[Progress], Any] | None = None,
        cancel: threading.Event | None = None,
    ) -> Results:
        run = _DaskRun(self.client, request, on_result, on_progress)
        try:
            run.submit(spec_of(request.context), partitions(request, self.size(request)), self)
            run.wait(cancel)
        except KeyboardInterrupt as exc:
            run.cancel()
            raise run.ledger.interrupted() from exc
        except BaseException:
            run.cancel()
            raise
        finally:
            _listeners.pop(run.run_id, None)
        return run.finish()


class _DaskRun:
    """One request on the cluster: its tasks, the ledger of rows back so far, the live
    counts."""

    def __init__(self, client: Any, request: BatchRequest, on_result: Any, on_progress: Any):
        self.client, self.request = client, request
        self.on_result, self.on_progress = on_result, on_progress
        self.n = len(request.rows)
        self.run_id = uuid.uuid4().hex
        self.ledger = RunLedger(self.n, on_result=on_result)
        self.pending: dict[int, Any] = {}  # part -> future
        self.starts: dict[int, int] = {}
        self.live: dict[int, tuple[int, int, int]] = {}  # part -> (done, errors, tokens)
        self.events: queue.SimpleQueue[dict] = queue.SimpleQueue()
        self.t_start = time.perf_counter()

    def submit(self, spec: WorkerSpec, parts: list, runner: DaskRunner) -> None:
        """Send every partition as a task."""
        _listen(self.client, self.run_id, self.events.put)
        for k, (start, part) in enumerate(parts):
            self.starts[k] = start
            self.pending[k] = self.client.submit(
                run_part,
                spec,
                part,
                k,
                self.run_id,
                key=f"localllm-{part.function}-{self.run_id}-{k}",
                retries=runner.retries,
                pure=False,
            )
        self.emit()

    def wait(self, cancel: threading.Event | None) -> None:
        """Take each partition's rows as it finishes, and the live counts, until none is
        left; a set ``cancel`` raises KeyboardInterrupt."""
        while self.pending:
            if cancel is not None and cancel.is_set():
                raise KeyboardInterrupt
            self._drain()
            for k in [k for k, future in self.pending.items() if future.done()]:
                self._collect(k, self._result(k, self.pending.pop(k)))

    def _result(self, part: int, future: Any) -> PartResult:
        """A finished task's value; its error re-raised (a task the cluster lost, e.g. after
        its workers died again and again, as a :class:`ClusterError`)."""
        try:
            return future.result()
        except BaseException as exc:
            if type(exc).__name__ not in _LOST:
                raise
            raise ClusterError(
                f"Partition {part} of the {self.request.function} run was lost on the cluster "
                f"({type(exc).__name__}: {exc}); check the workers (memory, logs) and run again."
            ) from exc

    def _drain(self) -> None:
        """Wait a moment for progress events; apply those that came."""
        try:
            message = self.events.get(timeout=_POLL)
        except queue.Empty:
            return
        while True:
            if message["part"] in self.pending:
                self.live[message["part"]] = (message["done"], message["errors"], message["tokens"])
            try:
                message = self.events.get_nowait()
            except queue.Empty:
                break
        self.emit()

    def _collect(self, part: int, done: PartResult) -> None:
        self.live.pop(part, None)
        start = self.starts[part]  # the ledger numbers the rows in the request, keeps each once
        self.ledger.record_all(done.results, range(start, start + len(done.results)))
        self.emit()
        if done.interrupted:  # the task was cancelled on the worker, not by this run
            raise KeyboardInterrupt

    def emit(self) -> None:
        """A progress event: the rows back, plus those done in running partitions."""
        if self.on_progress is None:
            return
        ledger = self.ledger
        done = len(ledger) + sum(d for d, _, _ in self.live.values())
        errors = ledger.errors + sum(e for _, e, _ in self.live.values())
        tokens = ledger.tokens + sum(t for _, _, t in self.live.values())
        elapsed = time.perf_counter() - self.t_start
        self.on_progress(Progress(min(done, self.n), self.n, errors, tokens, elapsed))

    def cancel(self) -> None:
        """Cancel the tasks still out (their workers stop between decode steps)."""
        futures = list(self.pending.values())
        if futures:
            with contextlib.suppress(Exception):  # a closed client: nothing left to stop
                self.client.cancel(futures)

    def finish(self) -> Results:
        """The rows in order, hashed and logged here as one call."""
        results = self.ledger.complete()
        results.hashes = record_run(self.request, results, time.perf_counter() - self.t_start)
        self.emit()
        return results


class DaskExecutor:
    """Runs plans on a Dask cluster (``cluster``: a client, a cluster object or a scheduler
    address), in the foreground or, with ``background=True``, in a :class:`Job` that holds
    no context of the kernel's. ``partition_size`` fixes the rows per task; ``retries``: how
    often a failed task runs again."""

    def __init__(
        self,
        cluster: Any,
        *,
        background: bool = False,
        partition_size: int | None = None,
        retries: int = 2,
    ):
        self.cluster, self.background = cluster, background
        self.partition_size, self.retries = partition_size, retries

    def submit(
        self,
        plan: Plan[Any],
        *,
        progress: ProgressArg = None,
        cancel: threading.Event | None = None,
    ) -> Any:
        """Run ``plan`` on the cluster: its value, or a :class:`Job` in the background."""
        runner = DaskRunner(
            dask_client(self.cluster), partition_size=self.partition_size, retries=self.retries
        )
        if self.background:
            executor: Any = BackgroundExecutor(runner, on_context=False)
        else:
            executor = ForegroundExecutor(runner)
        return executor.submit(plan, progress=progress, cancel=cancel)
