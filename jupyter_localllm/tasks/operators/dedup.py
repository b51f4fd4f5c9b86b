"""``sem_dedup``: which rows of a frame are the same thing (entity resolution). Candidate
pairs come from embeddings (a similarity join of the frame with itself), each is confirmed by
label scoring of yes/no in one batched request, and the confirmed pairs' connected
components (``scipy.sparse.csgraph``) are the clusters."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ...session.executors import Plan, execute, single
from ..rows import FrameRows, frame_rows
from .common import check_threshold, operator_info, resolve, scored_request, yes_no_spec, yes_probs
from .join import candidate_pairs, unique_index

if TYPE_CHECKING:
    from ...engine.runner import GenerationContext
    from ...session.jobs import Job
    from ...types import Results
    from ..classification import LabelSpec

__all__ = ["DEDUP_INSTRUCTION", "dedup_plan", "self_pairs", "sem_dedup"]

DEDUP_INSTRUCTION = "Do records A and B refer to the same thing? Answer yes or no."


def self_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Pairs of a frame with itself as ``(i, j)`` with ``i < j``, once each."""
    lo = np.minimum(pairs["left"], pairs["right"])
    hi = np.maximum(pairs["left"], pairs["right"])
    out = pd.DataFrame({"left": lo, "right": hi})
    if "similarity" in pairs:
        out["similarity"] = pairs["similarity"].to_numpy()
    out = out[out["left"] != out["right"]]
    return out.drop_duplicates(["left", "right"], ignore_index=True)


def clusters(n: int, edges: np.ndarray, failed: set[int]) -> pd.array:
    """Cluster ids of ``n`` rows joined by ``edges`` (pairs of positions): numbered from 0 in
    order of each cluster's first row; ``<NA>`` for rows that could not run."""
    graph = coo_matrix(
        (np.ones(len(edges)), (edges[:, 0], edges[:, 1])) if len(edges) else ([], ([], [])),
        shape=(n, n),
    )
    _, labels = connected_components(graph, directed=False)
    renumbered: dict[int, int] = {}
    ids = [
        None if i in failed else renumbered.setdefault(int(c), len(renumbered))
        for i, c in enumerate(labels)
    ]
    return pd.array(ids, dtype="Int64")


def dedup_plan(
    context: GenerationContext,
    rows: FrameRows,
    pairs: pd.DataFrame,
    spec: LabelSpec,
    *,
    threshold: float = 0.5,
    cache: bool | None = None,
) -> Plan[pd.Series]:
    """The run of :func:`sem_dedup` over candidate ``pairs`` (positions ``i < j`` of the
    rendered ``rows``): one yes/no request; its value is the Series of cluster ids."""
    texts, errors = [], {}
    for n, (i, j) in enumerate(zip(pairs["left"], pairs["right"], strict=True)):
        a, b = rows.texts[i], rows.texts[j]
        if a is None or b is None:
            errors[n] = rows.errors.get(i) or rows.errors.get(j)
        texts.append(f"A: {a}\nB: {b}" if a is not None and b is not None else None)
    request = scored_request(context, texts, spec, errors=errors, function="dedup", cache=cache)

    def finish(results: Results) -> pd.Series:
        same = np.nan_to_num(yes_probs(results), nan=0.0) >= threshold
        edges = pairs[["left", "right"]].to_numpy()[same]
        ids = clusters(len(rows.texts), edges.reshape(-1, 2), set(rows.errors))
        out = pd.Series(ids, index=rows.index, name="cluster")
        info = operator_info(
            "dedup",
            context,
            rows,
            pairs_scored=len(pairs),
            all_pairs=len(rows.texts) * (len(rows.texts) - 1) // 2,
            confirmed=int(same.sum()),
            clusters=int(out.nunique()),
            threshold=threshold,
        )
        info["pairs"] = [
            (rows.index[i], rows.index[j]) for i, j in pairs[["left", "right"]].to_numpy()[same]
        ]
        info["hashes"] = results.hashes
        out.attrs["llm"] = info
        return out

    return single(request, finish, desc="dedup")


def sem_dedup(
    frame: pd.DataFrame,
    template: str,
    *,
    blocking: Any = "embedding",
    candidates: int = 5,
    min_similarity: float | None = None,
    embed_model: Any = None,
    model: Any = None,
    n_seq_max: int | None = None,
    threshold: float = 0.5,
    cache: bool | None = None,
    progress: Any = None,
    cancel: threading.Event | None = None,
    background: bool = False,
    cluster: Any = None,
    **options: Any,
) -> pd.Series | Job:
    """Cluster ids of ``frame``'s rows: rows with the same id are the same thing.

    ``template`` renders each row (``"{name}, {city}"``). Candidate pairs are each row's
    ``candidates`` nearest rows by embeddings of that text (``blocking="embedding"``,
    ``embed_model``: ``model`` by default, ``min_similarity``), or every pair
    (``blocking=None``), or the pairs of a DataFrame with ``left`` and ``right`` index
    labels; each is confirmed by a yes/no question (:data:`DEDUP_INSTRUCTION`, ``threshold``
    on the probability of "yes"), and the clusters are the connected components of the
    confirmed pairs. Returns an ``Int64`` Series named ``cluster`` aligned to the index (ids
    from 0, in order of first row; ``<NA>`` for a row that could not run). ``attrs["llm"]``
    counts ``pairs_scored`` and ``confirmed`` and
    lists the confirmed ``pairs``. The other keywords as for
    :func:`~jupyter_localllm.sem_filter`.
    """
    spec = yes_no_spec(DEDUP_INSTRUCTION, options)
    threshold = check_threshold(threshold)
    unique_index(frame, "")
    rows = frame_rows(frame, template)
    # embeddings run on the operator's model unless told: a bad blocking frame loads nothing
    context = resolve(model, n_seq_max) if isinstance(blocking, str) else None
    pairs = self_pairs(
        candidate_pairs(
            frame,
            frame,
            (template, template),
            blocking,
            candidates=candidates + 1,  # each row finds itself first
            min_similarity=min_similarity,
            embed_model=embed_model if embed_model is not None else context,
            cache=cache,
            progress=progress,
            cancel=cancel,
        )
    )
    context = context or resolve(model, n_seq_max)
    plan = dedup_plan(context, rows, pairs, spec, threshold=threshold, cache=cache)
    return execute(plan, background=background, progress=progress, cancel=cancel, cluster=cluster)
