"""``sem_join``: the pairs of rows of two frames for which a predicate holds, each candidate
pair decided by label scoring of yes/no in one batched request.

The predicate names each side's columns as ``{left.title}`` and ``{right.description}``.
Blocking keeps it from scoring all n×m pairs: ``blocking="embedding"`` takes each left row's
``candidates`` most similar right rows by embeddings
(:func:`~jupyter_localllm.tasks.embedding.similarity_join`), a DataFrame of ``left`` and
``right`` index labels gives the candidates itself (an equi-join key, a cheap rule), and
``blocking=None`` scores every pair.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ...errors import InvalidParameterError, PlaceholderError
from ...session.executors import Plan, execute, single
from ..options import check_count
from ..rows import frame_rows, template_fields
from .common import check_threshold, operator_info, resolve, scored_request, yes_no_spec, yes_probs

if TYPE_CHECKING:
    from ...engine.runner import GenerationContext
    from ...session.jobs import Job
    from ...types import Results
    from ..classification import LabelSpec

__all__ = ["JOIN_INSTRUCTION", "candidate_pairs", "join_plan", "sem_join"]

JOIN_INSTRUCTION = "Is the following claim true? Answer yes or no."
SIDES = ("left", "right")


def predicate_sides(predicate: str) -> dict[str, list[str]]:
    """The columns ``predicate`` reads on each side (``{left.x}``, ``{right.y}``)."""
    sides: dict[str, list[str]] = {"left": [], "right": []}
    for name in template_fields(predicate):
        side, dot, column = name.partition(".")
        if not dot or side not in sides or not column:
            raise PlaceholderError(
                f"The join predicate's {{{name}}} names no side; write {{left.column}} or "
                "{right.column}, like '{left.title} is about {right.topic}'."
            )
        sides[side].append(column)
    return sides


def unique_index(frame: pd.DataFrame, side: str) -> None:
    """Refuse a frame whose index repeats a label: a pair names its rows by label."""
    if not frame.index.is_unique:
        where = f"{side} frame" if side else "frame"
        raise InvalidParameterError(
            f"The {where}'s index has repeated labels, so pairs cannot name rows; "
            "call .reset_index() first."
        )


def _positions(frame: pd.DataFrame, labels: Any, side: str) -> np.ndarray:
    pos = frame.index.get_indexer(pd.Index(labels))
    if (pos < 0).any():
        missing = pd.Index(labels)[pos < 0][0]
        raise InvalidParameterError(f"Blocking names {side} row {missing!r}, which is not there.")
    return pos


def candidate_pairs(
    left: pd.DataFrame,
    right: pd.DataFrame,
    templates: tuple[str, str],
    blocking: Any,
    *,
    candidates: int = 5,
    min_similarity: float | None = None,
    embed_model: Any = None,
    **run: Any,
) -> pd.DataFrame:
    """The pairs to score as positions (``left``, ``right``, and ``similarity`` from
    embeddings): all pairs for ``blocking=None``, the given labels for a DataFrame, each left
    row's ``candidates`` nearest right rows (rendered by ``templates``) for ``"embedding"``
    (``run``: the embedding run's ``cache``, ``progress`` and ``cancel``)."""
    if blocking is None:
        lpos, rpos = np.divmod(np.arange(len(left) * len(right)), len(right))
        return pd.DataFrame({"left": lpos, "right": rpos})
    if isinstance(blocking, pd.DataFrame):
        if not {"left", "right"} <= set(blocking.columns):
            raise InvalidParameterError("A blocking DataFrame needs columns 'left' and 'right'.")
        return pd.DataFrame(
            {
                "left": _positions(left, blocking["left"], "left"),
                "right": _positions(right, blocking["right"], "right"),
            }
        ).drop_duplicates(ignore_index=True)
    if blocking != "embedding":
        raise InvalidParameterError(
            f'blocking must be "embedding", None or a DataFrame of pairs, got {blocking!r}.'
        )
    check_count("candidates", candidates)
    from ..embedding import similarity_join

    near = similarity_join(
        left,
        right,
        left_template=templates[0],
        right_template=templates[1],
        k=candidates,
        threshold=min_similarity,
        model=embed_model,
        **run,
    )
    return pd.DataFrame(
        {
            "left": _positions(left, near.iloc[:, 0], "left"),
            "right": _positions(right, near.iloc[:, 1], "right"),
            "similarity": near.iloc[:, 2].to_numpy(dtype=float),
        }
    )


def check_join(left: pd.DataFrame, right: pd.DataFrame, predicate: str, blocking: Any) -> None:
    """Refuse a join whose rows cannot be named or whose blocking cannot work."""
    sides = predicate_sides(predicate)
    unique_index(left, "left")
    unique_index(right, "right")
    if isinstance(blocking, str) and not (sides["left"] and sides["right"]):
        raise InvalidParameterError(
            "Embedding blocking compares the columns the predicate reads on both sides; name "
            "a column of each, or pass blocking=None."
        )


def side_template(columns: list[str]) -> str:
    """A side's text for embedding: the columns the predicate reads, one per line."""
    return "\n".join("{" + c + "}" for c in columns)


def pair_frame(left: pd.DataFrame, right: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per pair: every column of both frames, named ``left.<column>`` and
    ``right.<column>``."""
    parts = []
    for side, frame in zip(SIDES, (left, right), strict=True):
        part = frame.iloc[pairs[side].to_numpy()].reset_index(drop=True)
        part.columns = [f"{side}.{c}" for c in frame.columns]
        parts.append(part)
    return pd.concat(parts, axis=1)


def join_plan(
    context: GenerationContext,
    left: pd.DataFrame,
    right: pd.DataFrame,
    predicate: str,
    pairs: pd.DataFrame,
    spec: LabelSpec,
    *,
    threshold: float = 0.5,
    probs: bool = False,
    cache: bool | None = None,
) -> Plan[pd.DataFrame]:
    """The run of :func:`sem_join` over the candidate ``pairs`` (positions): one yes/no
    request. Its value: the pairs that hold, ``left`` and ``right`` index labels first."""
    joined = pair_frame(left, right, pairs)
    rows = frame_rows(joined, predicate)
    request = scored_request(
        context, rows.texts, spec, errors=rows.errors, function="join", cache=cache
    )

    def finish(results: Results) -> pd.DataFrame:
        prob = yes_probs(results)
        keep = np.flatnonzero(np.nan_to_num(prob, nan=0.0) >= threshold)
        out = pd.DataFrame(
            {
                "left": left.index[pairs["left"].to_numpy()[keep]],
                "right": right.index[pairs["right"].to_numpy()[keep]],
            }
        )
        if "similarity" in pairs:
            out["similarity"] = pairs["similarity"].to_numpy()[keep]
        if probs:
            out["prob"] = prob[keep]
        out = pd.concat([out, joined.iloc[keep].reset_index(drop=True)], axis=1)
        failed = {
            (left.index[pairs["left"].iat[i]], right.index[pairs["right"].iat[i]]): r.error
            for i, r in enumerate(results)
            if not r.ok
        }
        info = operator_info(
            "join",
            context,
            rows,
            pairs_scored=len(pairs),
            all_pairs=len(left) * len(right),
            kept=len(out),
            threshold=threshold,
        )
        info.update(failed=failed, errors=len(failed), hashes=results.hashes)
        out.attrs["llm"] = info
        return out

    return single(request, finish, desc="join")


def sem_join(
    left: pd.DataFrame,
    right: pd.DataFrame,
    predicate: str,
    *,
    blocking: Any = "embedding",
    candidates: int = 5,
    min_similarity: float | None = None,
    embed_model: Any = None,
    model: Any = None,
    n_seq_max: int | None = None,
    threshold: float = 0.5,
    probs: bool = False,
    cache: bool | None = None,
    progress: Any = None,
    cancel: threading.Event | None = None,
    background: bool = False,
    cluster: Any = None,
    **options: Any,
) -> pd.DataFrame | Job:
    """The pairs of rows of ``left`` and ``right`` for which ``predicate`` holds.

    ``predicate`` names columns by side: ``"{left.title} is the headline of
    {right.description}"``. Each candidate pair is put to the model as a yes/no question and
    decided by label scoring (``threshold`` on the probability of "yes", as in
    :func:`~jupyter_localllm.sem_filter`). Candidates come from ``blocking`` (see the module
    notes): by default each left row's ``candidates`` nearest right rows by embeddings of the
    columns the predicate reads (``embed_model``, by default ``model``; ``min_similarity``
    drops weaker ones), so it does not score all n×m pairs; ``blocking=None`` scores them all.

    Returns a DataFrame with ``left`` and ``right`` (index labels), ``similarity`` (with
    embedding blocking), ``prob`` (``probs=True``), then every column of both frames as
    ``left.<column>`` and ``right.<column>``. ``attrs["llm"]`` counts ``pairs_scored`` against
    ``all_pairs`` (n×m) and lists failed pairs. The other keywords as for
    :func:`~jupyter_localllm.sem_filter`.
    """
    check_join(left, right, predicate, blocking)
    spec = yes_no_spec(JOIN_INSTRUCTION, options)
    threshold = check_threshold(threshold)
    sides = predicate_sides(predicate)
    templates = (side_template(sides["left"]), side_template(sides["right"]))
    # embeddings run on the operator's model unless told: a bad blocking frame loads nothing
    context = resolve(model, n_seq_max) if isinstance(blocking, str) else None
    embedding = {"candidates": candidates, "min_similarity": min_similarity}
    embedding["embed_model"] = embed_model if embed_model is not None else context
    run = {"cache": cache, "progress": progress, "cancel": cancel}
    pairs = candidate_pairs(left, right, templates, blocking, **embedding, **run)
    context = context or resolve(model, n_seq_max)
    plan = join_plan(
        context, left, right, predicate, pairs, spec, threshold=threshold, probs=probs, cache=cache
    )
    return execute(plan, background=background, progress=progress, cancel=cancel, cluster=cluster)
