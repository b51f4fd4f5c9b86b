"""Embeddings: texts and DataFrame rows as vectors, semantic search, and a similarity join.

Every vector comes from one ``"embed"`` request of the pipeline
(:class:`~jupyter_localllm.session.pipeline.BatchRequest`): llama.cpp's embedding mode pools
the model's last hidden states per text (pooling from the GGUF metadata, or ``pooling=``;
mean for a chat model such as the default), many texts per decode, with progress, Ctrl-C
keeping finished rows (:class:`~jupyter_localllm.BatchInterrupted`), errors in place, the
result cache (raw vectors, keyed by model file, pooling and text) and the run log.

Vectors come back as float32 rows, L2-normalised unless ``normalize=False``, so a dot
product is the cosine similarity. A row that cannot be embedded (empty, not text, too long)
is a row of NaN: :func:`embed` warns with the list of them (or raises with
``on_error="raise"``), :func:`embed_frame` keeps the messages in ``attrs["llm"]["row_errors"]``,
and :func:`search` and :func:`similarity_join` leave such rows out.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import defaults
from ..errors import InvalidParameterError, PromptError
from ..session.executors import Plan, execute, single
from ..session.manager import resolve_context
from ..session.pipeline import BatchRequest, input_problem
from ..types import Progress, Results
from .options import check_count
from .prompts import as_texts
from .rows import FrameRows, frame_rows

if TYPE_CHECKING:
    import pandas as pd

    from ..engine.runner import GenerationContext

__all__ = [
    "embed",
    "embed_frame",
    "embed_plan",
    "embed_request",
    "embed_rows",
    "embedding_matrix",
    "search",
    "similarity_join",
    "top_pairs",
]

_BLOCK = 1024  # left rows per block of a similarity join: bounds its memory at 1024 x m


def embed_request(
    context: GenerationContext,
    texts: Sequence[Any],
    *,
    pooling: str | None = None,
    cache: bool | None = None,
    errors: Mapping[int, str] | None = None,
) -> BatchRequest:
    """The ``"embed"`` request of ``texts`` on ``context`` (``errors``: rows known to be bad,
    with their messages)."""
    texts = as_texts(texts, "texts")
    return BatchRequest(
        context,
        texts,
        kind="embed",
        pooling=pooling,
        cache=cache,
        errors=dict(errors or {}),
        what="text",
        function="embed",
        log_params={"pooling": pooling, "n_seq_max": context.n_seq_max},
    )


def embedding_matrix(results: Sequence[Any], *, normalize: bool = True) -> np.ndarray:
    """The vectors of an ``"embed"`` request's results (also a
    :class:`~jupyter_localllm.BatchInterrupted`'s ``results``) as an ``(n, d)`` float32
    array, L2-normalised rows when ``normalize``; a row without a vector is NaN."""
    width = next((len(r.value) for r in results if _has_vector(r)), 0)
    out = np.full((len(results), width), np.nan, dtype=np.float32)
    for i, r in enumerate(results):
        if _has_vector(r):
            out[i] = r.value
    if normalize and width:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
    return out


def _has_vector(result: Any) -> bool:
    return getattr(result, "error", "") is None and isinstance(getattr(result, "value", None), list)


def embed_plan(
    context: GenerationContext,
    texts: Sequence[Any],
    *,
    normalize: bool = True,
    pooling: str | None = None,
    cache: bool | None = None,
    errors: Mapping[int, str] | None = None,
) -> Plan[tuple[np.ndarray, Results]]:
    """The plan of :func:`embed` (for front-ends that run it their own way): its value is the
    matrix and the results (each row's ``error``)."""
    _check_bool("normalize", normalize)
    request = embed_request(context, texts, pooling=pooling, cache=cache, errors=errors)
    return single(
        request,
        lambda results: (embedding_matrix(results, normalize=normalize), results),
        desc="embed",
    )


def embed(
    model: Any,
    texts: Sequence[str],
    *,
    normalize: bool = True,
    pooling: str | None = None,
    n_seq_max: int | None = None,
    cache: bool | None = None,
    progress: bool | Callable[[Progress], Any] | None = None,
    cancel: threading.Event | None = None,
    on_error: str = "nan",
) -> np.ndarray:
    """The embedding of each text: an ``(n, d)`` float32 array in input order.

    ``model``: a context, a loaded model, a model reference (``"default"``, a path, an alias)
    or ``None`` for the session's model; any GGUF model works, an embedding model best.
    ``pooling``: ``"mean"``, ``"cls"`` or ``"last"`` (default: the model file's own, mean when
    it names none). Rows are L2-normalised unless ``normalize=False``, so ``a @ b.T`` is the
    cosine similarity. ``n_seq_max`` texts share a decode (default
    ``defaults.N_SEQ_MAX``, or the context's). ``cache`` as in ``generate_parallel``: a re-run
    embeds only texts it has not seen with this model and pooling. A text that cannot be
    embedded (empty, not a string, too long) gives a row of NaN and one ``RuntimeWarning``
    listing them; ``on_error="raise"`` raises :class:`~jupyter_localllm.errors.PromptError`
    instead. Ctrl-C (or ``cancel``) raises :class:`~jupyter_localllm.BatchInterrupted`;
    :func:`embedding_matrix` of its ``results`` gives the finished rows' vectors.
    """
    if on_error not in ("nan", "raise"):
        raise InvalidParameterError(f'on_error must be "nan" or "raise", got {on_error!r}.')
    context = _context(model, n_seq_max)
    plan = embed_plan(context, texts, normalize=normalize, pooling=pooling, cache=cache)
    matrix, results = execute(plan, progress=progress, cancel=cancel)
    failed = [r for r in results if r.error is not None]
    if failed and on_error == "raise":
        raise PromptError(f"Text {failed[0].row} could not be embedded: {failed[0].error}.")
    if failed:
        listed = "; ".join(f"row {r.row}: {r.error}" for r in failed[:5])
        more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
        warnings.warn(
            f"{len(failed)} of {len(results)} texts could not be embedded and are NaN rows "
            f"({listed}{more}).",
            RuntimeWarning,
            stacklevel=2,
        )
    return matrix


def _context(model: Any, n_seq_max: int | None) -> GenerationContext:
    if n_seq_max is not None:  # refused before a model loads, never replaced by a default
        check_count("n_seq_max", n_seq_max)
    return resolve_context(model, n_seq_max=n_seq_max, default_n_seq_max=defaults.N_SEQ_MAX)


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InvalidParameterError(f"{name} must be True or False, got {value!r}.")


# -- DataFrames ------------------------------------------------------------------------------
def embed_rows(
    context: GenerationContext,
    rows: FrameRows,
    *,
    name: Hashable = None,
    normalize: bool = True,
    pooling: str | None = None,
    cache: bool | None = None,
) -> Plan[pd.Series]:
    """The run embedding a frame's rendered ``rows`` (:func:`~.rows.frame_rows`): its value
    is a Series (named ``name``, default ``"embedding"``) of float32 vectors aligned to the
    frame's index, NaN vectors for rows that could not run; ``attrs["llm"]`` holds the run's
    details, ``row_errors`` ({index label: message}) among them."""
    import pandas as pd

    from .frames import run_info

    plan = embed_plan(
        context, rows.texts, normalize=normalize, pooling=pooling, cache=cache, errors=rows.errors
    )

    def finish(value: tuple[np.ndarray, Results]) -> pd.Series:
        matrix, results = value
        series = pd.Series(list(matrix), index=rows.index, dtype=object)
        series.name = "embedding" if name is None else name
        errors = pd.Series([r.error for r in results], index=rows.index, dtype=object)
        info = run_info("embed", context, rows, errors)
        info.update(
            pooling=plan_pooling(context, pooling),
            dim=int(matrix.shape[1]),
            row_errors={label: e for label, e in errors.items() if e is not None},
            hashes=results.hashes,
        )
        series.attrs["llm"] = info
        return series

    return plan.then(finish)


def plan_pooling(context: GenerationContext, pooling: str | None) -> str:
    """The pooling a run on ``context`` uses for ``pooling=`` (``None``: the model file's)."""
    from ..engine.embedding import resolve_pooling

    return resolve_pooling(context.model.metadata, pooling)


def embed_frame(
    df: pd.DataFrame,
    template: str = "{text}",
    *,
    model: Any = None,
    name: Hashable = None,
    normalize: bool = True,
    pooling: str | None = None,
    n_seq_max: int | None = None,
    cache: bool | None = None,
    progress: bool | Callable[[Progress], Any] | None = None,
    cancel: threading.Event | None = None,
) -> pd.Series:
    """Embed every row of ``df`` as ``template`` renders it (``{column}`` placeholders, as
    in ``df.llm.generate``): a Series of float32 vectors aligned to ``df``'s index (see
    :func:`embed_rows`; the other keywords as in :func:`embed`)."""
    rows = frame_rows(df, template)  # a bad template is refused before a model loads
    context = _context(model, n_seq_max)
    plan = embed_rows(context, rows, name=name, normalize=normalize, pooling=pooling, cache=cache)
    return execute(plan, progress=progress, cancel=cancel)


def _embed_frames(
    context: GenerationContext,
    parts: Sequence[tuple[pd.DataFrame, str]],
    extra: Sequence[str],
    **run: Any,
) -> tuple[np.ndarray, Results]:
    """The rows of each ``(frame, template)`` of ``parts`` and then the ``extra`` texts,
    embedded in one run (``run``: ``pooling``, ``cache``, ``progress``, ``cancel``)."""
    texts: list[Any] = []
    errors: dict[int, str] = {}
    for frame, template in parts:  # each template is checked before anything runs
        rows = frame_rows(frame, template)
        errors.update({len(texts) + pos: message for pos, message in rows.errors.items()})
        texts += rows.texts
    plan = embed_plan(
        context, [*texts, *extra], errors=errors, pooling=run["pooling"], cache=run["cache"]
    )
    return execute(plan, progress=run["progress"], cancel=run["cancel"])


def search(
    df: pd.DataFrame,
    query: str,
    k: int = 10,
    *,
    template: str = "{text}",
    model: Any = None,
    pooling: str | None = None,
    n_seq_max: int | None = None,
    cache: bool | None = None,
    progress: bool | Callable[[Progress], Any] | None = None,
    cancel: threading.Event | None = None,
) -> pd.DataFrame:
    """The ``k`` rows of ``df`` most similar to ``query`` (cosine of their embeddings, rows
    rendered by ``template``): a copy of those rows, most similar first (ties in frame
    order), with a ``similarity`` column. Rows that cannot be embedded are left out; fewer
    than ``k`` rows give them all. The rows' vectors come from the result cache when it is on
    (so a second query embeds only itself)."""
    check_count("k", k)
    problem = input_problem(query, "query")
    if problem is not None:
        raise InvalidParameterError(f"{problem[0].upper()}{problem[1:]}.")
    context = _context(model, n_seq_max)
    run = {"pooling": pooling, "cache": cache, "progress": progress, "cancel": cancel}
    matrix, results = _embed_frames(context, [(df, template)], [query], **run)
    if results[-1].error is not None:
        raise PromptError(f"The query could not be embedded: {results[-1].error}.")
    sims = matrix[:-1] @ matrix[-1]
    order = [i for i in np.argsort(-sims, kind="stable") if not np.isnan(sims[i])][:k]
    out = df.iloc[order].copy()
    out["similarity"] = sims[order].astype(float)
    out.attrs["llm"] = {"task": "search", "query": query, "model": context.model.name}
    return out


def top_pairs(
    a: np.ndarray,
    b: np.ndarray,
    *,
    k: int | None = None,
    threshold: float | None = None,
    exclude_diagonal: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of rows ``(i, j, similarity)`` of two matrices of normalised vectors: for each
    row of ``a`` its ``k`` most similar rows of ``b`` (all when ``k`` is None), keeping those
    at least ``threshold`` similar; NaN rows pair with nothing; ``exclude_diagonal`` drops
    ``i == j`` (a matrix against itself). Computed in blocks of rows of ``a``, so memory stays
    at a block times ``len(b)``; pairs sorted by ``i``, then most similar first."""
    if k is None and threshold is None:
        raise InvalidParameterError(
            "Give k (the k most similar right rows per left row), threshold (pairs at least "
            "this similar), or both: without them every pair would be scored."
        )
    if k is not None:
        check_count("k", k)
    if threshold is not None and not isinstance(threshold, (int, float)):
        raise InvalidParameterError(f"threshold must be a number, got {threshold!r}.")
    found: list[tuple[np.ndarray, ...]] = []
    for start in range(0, len(a), _BLOCK):
        sims = a[start : start + _BLOCK] @ b.T
        sims[np.isnan(sims)] = -np.inf
        if exclude_diagonal:
            rows = np.arange(sims.shape[0])
            cols = rows + start
            inside = cols < sims.shape[1]
            sims[rows[inside], cols[inside]] = -np.inf
        order = np.argsort(-sims, axis=1, kind="stable")[:, : k or sims.shape[1]]
        top = np.take_along_axis(sims, order, axis=1)
        keep = top > -np.inf if threshold is None else top >= threshold
        i, col = np.nonzero(keep)
        found.append((i + start, order[i, col], top[i, col]))
    if not found:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, np.float32)
    i, j, s = (np.concatenate(parts) for parts in zip(*found, strict=True))
    return i, j, s


def similarity_join(
    left: pd.DataFrame,
    right: pd.DataFrame,
    *,
    left_template: str = "{text}",
    right_template: str = "{text}",
    k: int | None = None,
    threshold: float | None = None,
    model: Any = None,
    pooling: str | None = None,
    n_seq_max: int | None = None,
    cache: bool | None = None,
    progress: bool | Callable[[Progress], Any] | None = None,
    cancel: threading.Event | None = None,
) -> pd.DataFrame:
    """Pairs of rows of ``left`` and ``right`` with similar embeddings (for blocking a join):
    for each left row its ``k`` most similar right rows, those at least ``threshold`` similar
    (cosine), or both. A DataFrame with columns ``left`` and ``right`` (index labels) and
    ``similarity``, ordered by left row, most similar first; ``attrs["llm"]`` counts the
    pairs compared (``len(left) * len(right)`` dot products, no model calls) and kept. Both
    frames are embedded in one run (rows that cannot be embedded pair with nothing)."""
    import pandas as pd

    if k is None and threshold is None:
        top_pairs(np.zeros((0, 1)), np.zeros((0, 1)))  # raises: the same message
    context = _context(model, n_seq_max)
    run = {"pooling": pooling, "cache": cache, "progress": progress, "cancel": cancel}
    parts = [(left, left_template), (right, right_template)]
    matrix, results = _embed_frames(context, parts, [], **run)
    n = len(left)
    i, j, s = top_pairs(matrix[:n], matrix[n:], k=k, threshold=threshold)
    out = pd.DataFrame(
        {"left": left.index[i], "right": right.index[j], "similarity": s.astype(float)}
    )
    out.attrs["llm"] = {
        "task": "similarity_join",
        "model": context.model.name,
        "pairs_compared": n * len(right),
        "pairs": len(out),
        "left_errors": sum(r.error is not None for r in results[:n]),
        "right_errors": sum(r.error is not None for r in results[n:]),
    }
    return out
