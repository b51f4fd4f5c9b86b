"""The run log: every run, and every row it finished, in an SQLite database beside the
result cache (``$LOCALLLM_CACHE_DIR/runs.sqlite``, else the user cache folder), so a run can
be looked up, exported or replayed after the kernel is gone.

The plan driver (:mod:`~jupyter_localllm.session.executors`) writes one run when a plan ends
(finished, interrupted with its finished rows, or failed), so every entry point is logged:
the task functions, ``df.llm``, the magics, the command, runs on a Dask cluster (logged in
the kernel, as one run; a ``ddf.llm`` partition is logged by the worker that ran it). One
transaction per run. ``$LOCALLLM_RUN_LOG=0`` or :func:`run_log` ``(False)`` turns it off;
``$LOCALLLM_RUN_LOG_MAX_RUNS`` (default 1000) runs are kept, the oldest deleted first.

Like the result cache the log is never fatal: a folder or file that cannot be written, a
corrupt database or a full disk warns once (:class:`RunLogWarning`) and the run goes on.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import os
import sqlite3
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..analysis.repro import canonical_json, file_sha256, note_run, sha256_json
from ..engine.determinism import prompt_stream
from ..engine.sampling import derive_seed
from ..errors import InvalidParameterError
from ..types import Result
from .cache import default_results_dir

if TYPE_CHECKING:
    import pandas as pd

    from .pipeline import BatchRequest

__all__ = [
    "RunLog",
    "RunLogWarning",
    "RunRecorder",
    "default_log_path",
    "front_end",
    "get_log",
    "replay",
    "run",
    "run_log",
    "runs",
    "runs_clear",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT UNIQUE NOT NULL, time TEXT,
    front_end TEXT, function TEXT, description TEXT, status TEXT, model TEXT,
    model_path TEXT, model_sha256 TEXT, options TEXT, n_rows INTEGER, n_done INTEGER,
    n_errors INTEGER, error TEXT, n_prompt_tokens INTEGER, n_tokens INTEGER, seconds REAL,
    cluster TEXT, package_version TEXT);
CREATE TABLE IF NOT EXISTS rows (
    run_id TEXT NOT NULL, row INTEGER NOT NULL, request INTEGER, prompt_sha256 TEXT,
    prompt TEXT, output TEXT, error TEXT, finish_reason TEXT, seed INTEGER,
    n_prompt_tokens INTEGER, n_tokens INTEGER, PRIMARY KEY (run_id, row));
"""
RUN_COLUMNS = (
    "run_id", "time", "front_end", "function", "description", "status", "model",
    "model_path", "model_sha256", "options", "n_rows", "n_done", "n_errors", "error",
    "n_prompt_tokens", "n_tokens", "seconds", "cluster", "package_version",
)  # fmt: skip
ROW_COLUMNS = (
    "row", "request", "prompt_sha256", "prompt", "output", "error", "finish_reason", "seed",
    "n_prompt_tokens", "n_tokens",
)  # fmt: skip
_REQUEST_FIELDS = ("kind", "function", "labels", "label_prefix", "scoring", "calibration")
_REQUEST_FIELDS += ("schema", "clean", "what", "log_params", "pooling")

_enabled: bool | None = None  # run_log(): None follows $LOCALLLM_RUN_LOG
_front_end = threading.local()
_logs: dict[Path, RunLog] = {}
_logs_lock = threading.Lock()


class RunLogWarning(RuntimeWarning):
    """The run log failed; the run went on without being logged."""


def default_log_path() -> Path:
    """``runs.sqlite`` beside the result cache's ``results`` folder."""
    return default_results_dir().parent / "runs.sqlite"


def run_log(enabled: bool | None = None) -> bool:
    """Turn the run log on or off for this process (``None``: follow ``$LOCALLLM_RUN_LOG``,
    where ``0`` turns it off); returns whether runs are logged now."""
    global _enabled
    _enabled = None if enabled is None else bool(enabled)
    return log_enabled()


def log_enabled() -> bool:
    """Whether runs are logged (see :func:`run_log`)."""
    if _enabled is not None:
        return _enabled
    return os.environ.get("LOCALLLM_RUN_LOG", "1").lower() not in ("0", "false", "no", "off")


@contextlib.contextmanager
def front_end(name: str) -> Any:
    """Runs started in this thread inside the block are logged as coming from ``name``
    (``"cli"``, ``"magic"``)."""
    previous = getattr(_front_end, "name", None)
    _front_end.name = name
    try:
        yield
    finally:
        _front_end.name = previous


def _detected_front_end() -> str:
    named = getattr(_front_end, "name", None)
    if named:
        return named
    if "distributed" in sys.modules:
        with contextlib.suppress(Exception):
            from distributed import get_worker

            get_worker()
            return "dask-worker"
    if "IPython" in sys.modules:
        from IPython import get_ipython

        if get_ipython() is not None:
            return "notebook"
    return "python"


def _max_runs() -> int:
    try:
        return max(1, int(os.environ.get("LOCALLLM_RUN_LOG_MAX_RUNS", "1000")))
    except ValueError:
        return 1000


class RunLog:
    """The database at ``path``: writes are one transaction each; every fault warns once per
    message (:class:`RunLogWarning`) and is otherwise ignored by the writers."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._warned: set[str] = set()  # messages warned about (each once per process)
        self._local = threading.local()

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        """This thread's connection (kept: opening one costs more than a run's write), a
        new one when the file went away; ``None`` when there is no log and ``create`` is
        false."""
        if not self.path.exists():
            self._drop()
            if not create:
                return None
            self.path.parent.mkdir(parents=True, exist_ok=True)
        con = getattr(self._local, "con", None)
        if getattr(self._local, "pid", None) != os.getpid():  # a forked child: its own
            con = None
        if con is None:
            con = sqlite3.connect(self.path, timeout=30)
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")  # WAL: durable but for power loss
                con.executescript(_SCHEMA)
            except Exception:
                con.close()
                raise
            self._local.con, self._local.pid = con, os.getpid()
        return con

    def _drop(self) -> None:
        """Close this thread's connection (after a fault, or when the file went away)."""
        con, self._local.con = getattr(self._local, "con", None), None
        if con is not None:
            with contextlib.suppress(Exception):
                con.close()

    def write(self, run: dict[str, Any], rows: list[tuple]) -> bool:
        """Add one run and its rows, then delete the oldest runs beyond the bound; returns
        whether the run was written."""
        try:
            with self._lock, self._connect(create=True) as con:
                names = ", ".join(RUN_COLUMNS)
                marks = ", ".join("?" * len(RUN_COLUMNS))
                con.execute(f"INSERT INTO runs ({names}) VALUES ({marks})", _values(run))
                marks = ", ".join("?" * (len(ROW_COLUMNS) + 1))
                con.executemany(
                    f"INSERT INTO rows VALUES ({marks})", ([_text(v) for v in r] for r in rows)
                )
                old = con.execute(
                    "SELECT run_id FROM runs ORDER BY seq DESC LIMIT -1 OFFSET ?", (_max_runs(),)
                ).fetchall()  # beyond the bound: deleted by key (rows: their index's prefix)
                con.executemany("DELETE FROM rows WHERE run_id = ?", old)
                con.executemany("DELETE FROM runs WHERE run_id = ?", old)
        except Exception as exc:  # never fatal: the run's results are the user's already
            self.fault(exc)
            return False
        return True

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """The rows of a read (none when the log does not exist or fails, with a warning)."""
        try:
            con = self._connect(create=False)
            return [] if con is None else con.execute(sql, args).fetchall()
        except Exception as exc:
            self.fault(exc)
            return []

    def clear(self) -> int:
        """Delete every run; returns how many there were."""
        try:
            with self._lock, self._connect(create=True) as con:
                n = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
                con.execute("DELETE FROM rows")
                con.execute("DELETE FROM runs")
            return n
        except Exception as exc:
            self.fault(exc, f"delete the file {self.path} to empty it")
            return 0

    def fault(self, exc: Exception, fix: str = "runs go on without being logged") -> None:
        """Warn about a fault, once per message."""
        self._drop()
        message = f"{type(exc).__name__}: {exc}"
        if message in self._warned:
            return
        self._warned.add(message)
        warnings.warn(
            f"The run log {self.path} failed ({message}); {fix}.", RunLogWarning, stacklevel=3
        )


def _values(run: dict[str, Any]) -> tuple:
    return tuple(_text(run.get(name)) for name in RUN_COLUMNS)


def _text(value: Any) -> Any:
    """``value``, a text with lone surrogates (a bad row) escaped: SQLite keeps UTF-8."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def get_log() -> RunLog:
    """The run log at :func:`default_log_path` (one object per path in this process)."""
    path = default_log_path()
    with _logs_lock:
        log = _logs.get(path)
        if log is None:
            log = _logs[path] = RunLog(path)
        return log


class RunRecorder:
    """Collects one plan's requests while it runs and writes the run when it ends
    (:meth:`end`); ``runner`` is the function running each request (a Dask runner names
    its cluster). Does nothing while the log is off."""

    def __init__(self, description: str, runner: Any = None):
        self.enabled = log_enabled()
        self.description, self.runner = description, runner
        self.requests: list[tuple[int, BatchRequest]] = []
        self.time = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.t_start = time.perf_counter()

    def request(self, request: BatchRequest, first_row: int) -> None:
        """A request of the plan starts, its rows numbered from ``first_row``."""
        if self.enabled:
            self.requests.append((first_row, request))

    def end(self, ledger: Any, exc: BaseException | None = None) -> None:
        """Write the run: its rows kept in ``ledger`` (a ``RunLedger``), ``exc`` what ended
        it early (``None``: finished). Never raises."""
        if not self.enabled or not self.requests:
            return
        try:
            log = get_log()
        except Exception as fault:  # no cache folder to name: as a log that cannot be written
            warnings.warn(f"The run log failed ({fault}).", RunLogWarning, stacklevel=2)
            return
        try:
            run, rows = self._record(ledger, exc)
        except Exception as fault:  # a model without a file, say: the run itself is fine
            log.fault(fault)
            return
        if log.write(run, rows):
            note_run(run["run_id"])  # document_start()'s file names the runs logged meanwhile

    def _record(self, ledger: Any, exc: BaseException | None) -> tuple[dict, list[tuple]]:
        run_id = uuid.uuid4().hex[:12]
        rows, specs = [], []
        for k, (start, request) in enumerate(self.requests):
            specs.append(_request_spec(request, start))
            for i, prompt in enumerate(request.rows):
                result = ledger.get(start + i)
                if isinstance(result, Result):
                    rows.append((run_id, *_row(request, k, start, i, prompt, result)))
        model = self.requests[0][1].context.model
        from .. import __version__

        status = "finished" if exc is None else "failed"
        if isinstance(exc, KeyboardInterrupt):
            status = "interrupted"
        run = {
            "run_id": run_id,
            "time": self.time,
            "front_end": _detected_front_end(),
            "function": self.requests[0][1].function,
            "description": self.description,
            "status": status,
            "model": ", ".join(dict.fromkeys(s["model"] for s in specs)),
            "model_path": str(model.path),
            "model_sha256": specs[0]["model_sha256"],
            "options": canonical_json(specs),
            "n_rows": ledger.n,
            "n_done": len(rows),
            "n_errors": sum(row[6] is not None for row in rows),
            "error": None if exc is None else f"{type(exc).__name__}: {exc}"[:2000],
            "n_prompt_tokens": sum(row[9] for row in rows),
            "n_tokens": sum(row[10] for row in rows),
            "seconds": round(time.perf_counter() - self.t_start, 3),
            "cluster": _cluster_of(self.runner),
            "package_version": __version__,
        }
        return run, rows


def _model_sha256(path: Any) -> str | None:
    """The model file's SHA-256, or None when the file is gone (moved after loading, or on a
    Dask worker only): the run is still logged."""
    try:
        return file_sha256(path)
    except OSError:
        return None


def _request_spec(request: BatchRequest, start: int) -> dict[str, Any]:
    """What a replay needs of a request besides its rows' prompts."""
    ctx, model = request.context, request.context.model
    sampling = request.sampling
    spec = {name: getattr(request, name) for name in _REQUEST_FIELDS}
    spec.update(
        first_row=start,
        n_rows=len(request.rows),
        seed_rows=request.seed_rows,
        model=getattr(model, "name", str(model.path)),
        model_path=str(model.path),
        model_sha256=_model_sha256(model.path),
        calibrate=_function_name(request.calibrate),
        sampling=[p.as_dict() for p in sampling]
        if isinstance(sampling, list)
        else sampling.as_dict(),
        context={
            "n_ctx": ctx.fixed_n_ctx,
            "n_seq_max": ctx.n_seq_max,
            "n_threads": ctx.n_threads,
            "kv_unified": ctx.kv_layout,
            "flash_attn": ctx.flash_attn,
            "deterministic": bool(getattr(ctx, "deterministic", False)),
        },
    )
    return spec


def _function_name(fn: Any) -> str | None:
    """``module:qualname`` of a request's function (its ``calibrate``), for a replay."""
    return None if fn is None else f"{fn.__module__}:{fn.__qualname__}"


def _function_of(name: str | None) -> Any:
    """The function :func:`_function_name` named; only the package's own are imported (the
    log is a file anyone could edit)."""
    if name is None:
        return None
    module, _, qualname = name.partition(":")
    if not module.startswith("jupyter_localllm.") or not qualname.isidentifier():
        raise InvalidParameterError(
            f"The run log names an unknown function {name!r}; it cannot be replayed."
        )
    return getattr(importlib.import_module(module), qualname)


def _row(request: BatchRequest, k: int, start: int, i: int, prompt: Any, res: Result) -> tuple:
    seed_row = request.seed_rows[i] if request.seed_rows is not None else i
    text = prompt if isinstance(prompt, str) else None
    if text is not None and res.error is None and _seeds_from_prompts(request):
        from .pipeline import prompt_tokens  # (the pipeline imports this module)

        seed_row = prompt_stream(prompt_tokens(request.context.model, text))  # as the engine
    return (
        start + i,
        k,
        sha256_json(prompt) if text is not None else None,
        text,
        _output_text(res) if res.error is None else None,
        res.error,
        getattr(res.finish_reason, "value", res.finish_reason),
        derive_seed(request.params_of(i).seed, seed_row),
        int(res.n_prompt_tokens or 0),
        int(res.n_tokens or 0),
    )


def _seeds_from_prompts(request: BatchRequest) -> bool:
    """Whether the engine derived the request's row seeds from their prompts (generation on
    a deterministic context), not from their places."""
    deterministic = getattr(request.context, "deterministic", False)
    return bool(deterministic) and request.kind in ("generate", "extract")


def _output_text(res: Result) -> str:
    """What the log keeps of a finished row: its text, and for a vector (an ``embed`` row,
    whose text only names its size) the SHA-256 of its exact values, so a replay compares
    the vectors themselves."""
    if isinstance(res.value, list) and str(res).startswith("<embedding"):
        return f"{res} sha256:{sha256_json(res.value)}"
    return str(res)


def _cluster_of(runner: Any) -> str | None:
    client = getattr(runner, "client", None)
    if client is None:
        return None
    try:
        return str(client.scheduler.address)
    except Exception:
        return repr(client)


# -- reading ---------------------------------------------------------------------------------
def runs(limit: int | None = 100) -> pd.DataFrame:
    """The logged runs, newest first (at most ``limit``; ``None``: all), one row per run:
    ``run_id``, ``time``, ``front_end``, ``function``, ``status``, ``model``,
    ``model_sha256``, ``n_rows``, ``n_done``, ``n_errors``, tokens, ``seconds``, ``cluster``,
    ``options`` (JSON) and the rest of :data:`RUN_COLUMNS`."""
    import pandas as pd

    sql = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs ORDER BY seq DESC"
    args: tuple = ()
    if limit is not None:
        sql, args = sql + " LIMIT ?", (int(limit),)
    return pd.DataFrame(get_log().query(sql, args), columns=list(RUN_COLUMNS))


def run(run_id: str) -> pd.DataFrame:
    """The finished rows of the logged run ``run_id`` (a unique prefix will do), one row
    each: ``row``, ``prompt``, ``output``, ``error``, ``finish_reason``, ``seed``, tokens,
    ``prompt_sha256`` and ``request``; ``attrs["run"]`` holds the run's own record."""
    import pandas as pd

    record = _run_record(run_id)
    found = get_log().query(
        f"SELECT {', '.join(ROW_COLUMNS)} FROM rows WHERE run_id = ? ORDER BY row",
        (record["run_id"],),
    )
    frame = pd.DataFrame(found, columns=list(ROW_COLUMNS))
    frame.attrs["run"] = record
    return frame


def _run_record(run_id: str) -> dict[str, Any]:
    log = get_log()
    found = log.query(
        f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE run_id LIKE ? ORDER BY seq DESC",
        (str(run_id).replace("%", "").replace("_", "") + "%",),
    )
    if len(found) != 1:
        what = "No run" if not found else f"{len(found)} runs match"
        raise InvalidParameterError(
            f"{what} {run_id!r} in the run log {log.path}; give a whole run id as "
            "ll.runs() or the command 'jupyter-localllm log' lists them."
        )
    return dict(zip(RUN_COLUMNS, found[0], strict=True))


def runs_clear() -> int:
    """Delete every logged run; returns how many there were."""
    return get_log().clear()


# -- replay ----------------------------------------------------------------------------------
def replay(run_id: str, *, progress: Any = False) -> pd.DataFrame:
    """Run the logged run ``run_id`` again (its model file, context settings, sampling, seeds
    and prompts; the result cache off) and compare each finished row: a DataFrame of ``row``,
    ``logged``, ``replayed`` (outputs, or the error) and ``match``; ``attrs["matches"]`` and
    ``attrs["rows"]`` count them. The replay is itself a logged run."""
    import pandas as pd

    logged = run(run_id)
    specs = json.loads(logged.attrs["run"]["options"])
    out = []
    for k, spec in enumerate(specs):
        part = logged[(logged["request"] == k) & logged["prompt"].notna()]
        if len(part):
            replayed = _replay_request(spec, part, progress)
            for row, old, new in zip(part["row"], part.itertuples(), replayed, strict=True):
                was = old.output if old.error is None else f"error: {old.error}"
                now = _output_text(new) if new.error is None else f"error: {new.error}"
                out.append((int(row), was, now, was == now))
    frame = pd.DataFrame(out, columns=["row", "logged", "replayed", "match"])
    frame.attrs.update(run_id=logged.attrs["run"]["run_id"], rows=len(frame))
    frame.attrs["matches"] = int(frame["match"].sum())
    return frame


def _replay_request(spec: dict[str, Any], part: pd.DataFrame, progress: Any) -> list[Result]:
    from ..engine.sampling import SamplingParams
    from .executors import execute, single
    from .manager import model_load, open_context
    from .pipeline import BatchRequest

    if file_sha256(spec["model_path"]) != spec["model_sha256"]:
        warnings.warn(
            f"The model file {spec['model_path']} changed since the run was logged; the "
            "replay uses it as it is now.",
            RunLogWarning,
            stacklevel=3,
        )
    local = [int(r) - spec["first_row"] for r in part["row"]]
    sampling = spec["sampling"]
    if isinstance(sampling, list):
        sampling = [SamplingParams.from_kwargs(None, **sampling[i]) for i in local]
    else:
        sampling = SamplingParams.from_kwargs(None, **sampling)
    seed_rows = [_seed_row(spec, i) for i in local]
    load = {"use_extra_bufts": False} if spec["context"].get("deterministic") else {}
    model = model_load(spec["model_path"], show_progress=False, **load)  # unrepacked: see
    # engine/determinism.py
    try:
        context = open_context(model, **spec["context"])
        # a run logged before a field existed replays with that field's default
        fields = {name: spec[name] for name in _REQUEST_FIELDS if name in spec}
        request = BatchRequest(
            context, list(part["prompt"]), sampling=sampling, cache=False,
            seed_rows=seed_rows, calibrate=_function_of(spec.get("calibrate")), **fields,
        )  # fmt: skip
        results = execute(single(request, desc="replay"), progress=progress)
        context.close()
        return list(results)
    finally:
        with contextlib.suppress(Exception):
            model.close()


def _seed_row(spec: dict[str, Any], i: int) -> int:
    seeds = spec.get("seed_rows")
    return seeds[i] if seeds is not None else i
