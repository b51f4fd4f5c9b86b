"""jupyter-localllm: run local GGUF language models over pandas DataFrames, in parallel,
from Jupyter notebooks and Python.

Quick start::

    import jupyter_localllm as ll
    model = ll.model_load("default")
    ctx = ll.context_create(model, n_seq_max=8)
    prompt = ll.apply_chat_template(model, [{"role": "user", "content": "Capital of France?"}])
    print(ll.generate(ctx, prompt, max_tokens=20))

Names are imported lazily, so ``import jupyter_localllm`` (and ``%load_ext``) is instant.
The ``df.llm`` / ``s.llm`` pandas accessors are registered by ``%load_ext jupyter_localllm``,
at import when pandas is already imported, and on first use of any public name.

In IPython/Jupyter: ``%load_ext jupyter_localllm`` adds the ``%llm``, ``%%llm`` and
``%llm_batch`` magics and the ``%config LocalLLM`` settings.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "apply_chat_template": "tasks.generation",
    "context_create": "tasks.generation",
    "detokenize": "tasks.generation",
    "generate": "tasks.generation",
    "generate_parallel": "tasks.generation",
    "hardware_profile": "tasks.generation",
    "model_load": "tasks.generation",
    "quick_llama": "tasks.generation",
    "tokenize": "tasks.generation",
    "classify": "tasks.classification",
    "embed": "tasks.embedding",
    "embed_frame": "tasks.embedding",
    "search": "tasks.embedding",
    "similarity_join": "tasks.embedding",
    "explore": "tasks.exploration",
    "Exploration": "tasks.exploration",
    "document_start": "analysis.repro",
    "document_end": "analysis.repro",
    "clear_cache": "session.cache",
    "replay": "session.runlog",
    "run": "session.runlog",
    "run_log": "session.runlog",
    "runs": "session.runlog",
    "runs_clear": "session.runlog",
    "annotation_sink_csv": "session.sinks",
    "extract": "tasks.extraction",
    "sem_agg": "tasks.operators.agg",
    "sem_dedup": "tasks.operators.dedup",
    "sem_filter": "tasks.operators.filter",
    "sem_join": "tasks.operators.join",
    "sem_topk": "tasks.operators.topk",
    "compute_confusion_matrices": "analysis.evaluation",
    "intercoder_reliability": "analysis.evaluation",
    "validate": "analysis.evaluation",
    "download_model": "models.download",
    "list_cached_models": "models",
    "list_ollama_models": "models",
    "Result": "types",
    "FinishReason": "types",
    "BatchInterrupted": "errors",
    "SamplingParams": "engine.sampling",
    "Progress": "types",
    "clean": "engine.text",
    "set_verbosity": "engine.factory",
    "Job": "session.jobs",
    "start_job": "session.jobs",
    "confusion_matrix_figure": "analysis.charts",
    "per_class_figure": "analysis.charts",
    "model_comparison_figure": "analysis.charts",
    "AccuracyPanel": "notebook.widgets",
    "HardwarePanel": "notebook.widgets",
    "ModelPanel": "notebook.widgets",
    "ProgressPanel": "notebook.widgets",
    "dashboard": "notebook.widgets",
}
_SUBMODULES = ("datasets", "errors")

__all__ = [
    "AccuracyPanel",
    "BatchInterrupted",
    "Exploration",
    "FinishReason",
    "HardwarePanel",
    "Job",
    "ModelPanel",
    "Progress",
    "ProgressPanel",
    "Result",
    "SamplingParams",
    "annotation_sink_csv",
    "apply_chat_template",
    "classify",
    "clean",
    "clear_cache",
    "compute_confusion_matrices",
    "confusion_matrix_figure",
    "context_create",
    "dashboard",
    "datasets",
    "detokenize",
    "document_end",
    "document_start",
    "download_model",
    "embed",
    "embed_frame",
    "errors",
    "explore",
    "extract",
    "generate",
    "generate_parallel",
    "hardware_profile",
    "intercoder_reliability",
    "list_cached_models",
    "list_ollama_models",
    "model_comparison_figure",
    "model_load",
    "per_class_figure",
    "quick_llama",
    "replay",
    "run",
    "run_log",
    "runs",
    "runs_clear",
    "search",
    "sem_agg",
    "sem_dedup",
    "sem_filter",
    "sem_join",
    "sem_topk",
    "set_verbosity",
    "similarity_join",
    "start_job",
    "tokenize",
    "validate",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        _register_accessors()
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _register_accessors() -> None:
    """Register ``df.llm``/``s.llm`` once pandas is loaded, and ``ddf.llm``/``dds.llm`` once
    dask.dataframe is (importing either here would make ``import jupyter_localllm`` slow)."""
    if "pandas" in sys.modules and "jupyter_localllm.notebook.accessor" not in sys.modules:
        importlib.import_module(".notebook.accessor", __name__)
    if (
        "dask.dataframe" in sys.modules
        and "jupyter_localllm.notebook.dask_accessor" not in sys.modules
    ):
        importlib.import_module(".notebook.dask_accessor", __name__)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where the prebuilt JupyterLab extension lies in this package (for
    ``jupyter labextension develop``; wheels install it into ``share/jupyter/labextensions``)."""
    return [{"src": "labextension", "dest": "jupyter-localllm"}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_localllm``: the magics, ``%config LocalLLM``, the accessors and,
    in a kernel, the comm that shows the session in JupyterLab (safe to run again)."""
    from .notebook import accessor, comm, config, magics  # noqa: F401  (accessor registers df.llm)

    _register_accessors()  # ddf.llm when dask.dataframe is loaded
    config.attach(ipython)
    ipython.register_magics(magics.LLMMagics)
    comm.open_comm(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext jupyter_localllm``: remove the magics and close the comm (models stay
    loaded)."""
    from .notebook import comm, magics

    comm.close_comms()

    table = ipython.magics_manager.magics
    for kind, names in (("line", ("llm", "llm_batch")), ("cell", ("llm",))):
        for name in names:
            owner = getattr(table[kind].get(name), "__self__", None)
            if isinstance(owner, magics.LLMMagics):
                del table[kind][name]


_register_accessors()
# The notebook draws progress as widget panels; the session imports it only when a run needs it.
from .session.sinks import register_frontend  # noqa: E402

register_frontend("jupyter_localllm.notebook.progress")


if TYPE_CHECKING:  # for type checkers and IDEs
    from . import datasets, errors
    from .analysis.charts import confusion_matrix_figure, model_comparison_figure, per_class_figure
    from .analysis.evaluation import compute_confusion_matrices, intercoder_reliability, validate
    from .analysis.repro import document_end, document_start
    from .engine.factory import set_verbosity
    from .engine.sampling import SamplingParams
    from .engine.text import clean
    from .errors import BatchInterrupted
    from .models import list_cached_models, list_ollama_models
    from .models.download import download_model
    from .notebook.widgets import AccuracyPanel, HardwarePanel, ModelPanel, ProgressPanel, dashboard
    from .session.cache import clear_cache
    from .session.jobs import Job, start_job
    from .session.runlog import replay, run, run_log, runs, runs_clear
    from .session.sinks import annotation_sink_csv
    from .tasks.classification import classify
    from .tasks.embedding import embed, embed_frame, search, similarity_join
    from .tasks.exploration import Exploration, explore
    from .tasks.extraction import extract
    from .tasks.generation import (
        apply_chat_template,
        context_create,
        detokenize,
        generate,
        generate_parallel,
        hardware_profile,
        model_load,
        quick_llama,
        tokenize,
    )
    from .tasks.operators import sem_agg, sem_dedup, sem_filter, sem_join, sem_topk
    from .types import FinishReason, Progress, Result
