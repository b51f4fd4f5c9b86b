"""``sem_topk``: the k rows that best meet a criterion, by pairwise comparisons scored with
label scoring ("A" or "B") in a partial quicksort (LOTUS's ``sem_topk``).

Each round picks a pivot in every group of rows whose order still matters (a group that
reaches into the first k places) and compares each other row of the group with it; every
comparison of the round is one batched label request. Rows that beat the pivot go before it,
the others after; groups wholly past place k are dropped. That is quickselect and quicksort
at once: about ``2n + k log k`` comparisons expected, against ``n(n-1)/2`` for all pairs.
Each pair is asked in both orders, (A, B) and (B, A), and the two answers averaged: a small
model's strong preference for one letter cancels out. ``seed_with="score"`` first scores
every row alone (one yes/no request) and takes pivots by that score, so the first split
already falls near place k.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ...errors import InvalidParameterError
from ...session.executors import Plan, execute
from ..options import check_count
from ..rows import FrameRows
from .common import columns_rows, operator_info, resolve, scored_request, yes_no_spec, yes_probs
from .filter import frame_part

if TYPE_CHECKING:
    from collections.abc import Generator

    from ...engine.runner import GenerationContext
    from ...session.jobs import Job
    from ...session.pipeline import BatchRequest
    from ...types import Results

__all__ = ["COMPARE_INSTRUCTION", "TopkOptions", "sem_topk", "topk_plan"]

COMPARE_INSTRUCTION = "Which of these two better meets the criterion: A or B? Answer with A or B."
"""The question after each pair (the criterion and the two texts come before it)."""

SEED_INSTRUCTION = "Does the text meet the criterion? Answer yes or no."


@dataclass(frozen=True)
class TopkOptions:
    """How :func:`topk_plan` compares rows."""

    k: int
    """How many rows to return, best first."""
    seed_with: str | None = None
    """``"score"``: a one-pass yes/no score picks the pivots; ``None``: random pivots."""
    both_orders: bool = True
    """Ask each pair as (A, B) and (B, A) and average (cancels a preference for one letter);
    ``False`` halves the prompts."""
    seed: int = 1234
    """Seeds the random pivots, so a re-run asks the same comparisons (and hits the cache)."""
    question: str = COMPARE_INSTRUCTION
    """The question after each pair."""

    def __post_init__(self) -> None:
        check_count("k", self.k)
        if self.seed_with not in (None, "score"):
            raise InvalidParameterError(
                f'seed_with must be None or "score", got {self.seed_with!r}.'
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InvalidParameterError(f"seed must be an integer, got {self.seed!r}.")


def _pair_text(criterion: str, a: str, b: str, question: str) -> str:
    """A comparison's prompt text: the criterion first (shared by every prompt of the run,
    decoded once), the question last (the small model follows it better there)."""
    return f"Criterion: {criterion}\n\nA: {a}\n\nB: {b}\n\n{question}"


class _Tournament:
    """The state of a partial quicksort: groups of row positions, best group first."""

    def __init__(self, valid: list[int], options: TopkOptions, seed_scores: np.ndarray | None):
        self.k, self.options, self.seed_scores = options.k, options, seed_scores
        self.groups: list[list[int]] = [valid] if valid else []
        self.rng = np.random.default_rng(options.seed)
        self.log: list[tuple[int, int, float]] = []  # (row, pivot, P(row beats pivot))
        self.failed: dict[int, str] = {}
        self.rounds = 0

    def open_groups(self) -> list[tuple[int, list[int]]]:
        """The groups still to split, with their first place: more than one row, and
        starting before place k."""
        out, start = [], 0
        for group in self.groups:
            if start < self.k and len(group) > 1:
                out.append((start, group))
            start += len(group)
        return out

    def pivot(self, start: int, group: list[int]) -> int:
        """A random row, or with seed scores the row whose score rank puts the split at
        place k (or mid-group when the whole group is inside the first k places)."""
        if self.seed_scores is None:
            return group[int(self.rng.integers(len(group)))]
        by_score = sorted(group, key=lambda i: (-self.seed_scores[i], i))
        wanted = self.k - start
        at = wanted if wanted < len(group) else len(group) // 2
        return by_score[min(at, len(group) - 1)]

    def split(self, decided: dict[int, tuple[int, float | str]]) -> None:
        """Each open group cut at its pivot by the round's outcomes (row -> (pivot, P(row
        beats pivot)) or an error message); groups past place k are dropped."""
        pivots = {p for p, _ in decided.values()}
        groups, start = [], 0
        for group in self.groups:
            pivot = next((p for p in group if p in pivots), None)
            parts = [group] if pivot is None else self._cut(group, pivot, decided)
            for part in parts:
                if part and start < self.k:
                    groups.append(part)
                start += len(part)
        self.groups = groups
        self.rounds += 1

    def _cut(self, group: list[int], pivot: int, decided: dict) -> list[list[int]]:
        better, worse = [], []
        for i in group:
            if i == pivot:
                continue
            _, p = decided[i]
            if isinstance(p, str):
                self.failed[i] = p
                continue
            self.log.append((i, pivot, p))
            (better if p > 0.5 else worse).append(i)
        return [better, [pivot], worse]

    def order(self) -> list[int]:
        """The first k rows, best first."""
        return [i for group in self.groups for i in group][: self.k]


def _comparisons(
    context: GenerationContext,
    criterion: str,
    rows: FrameRows,
    pairs: list[tuple[int, int]],
    options: TopkOptions,
    spec: Any,
    cache: bool | None,
) -> BatchRequest:
    """One request asking every pair (row, pivot), in both orders when asked."""
    texts, question = [], options.question
    for i, p in pairs:
        texts.append(_pair_text(criterion, rows.texts[i], rows.texts[p], question))
        if options.both_orders:
            texts.append(_pair_text(criterion, rows.texts[p], rows.texts[i], question))
    return scored_request(context, texts, spec, errors=None, function="topk", cache=cache)


def _outcomes(
    pairs: list[tuple[int, int]], results: Results, both: bool
) -> dict[int, tuple[int, float | str]]:
    """Each row's pivot and P(row beats pivot): the mean of "A" as the first text and "B" as
    the second; an error message where a comparison failed."""
    step = 2 if both else 1
    out: dict[int, tuple[int, float | str]] = {}
    for n, (i, p) in enumerate(pairs):
        answers = results[n * step : n * step + step]
        bad = next((r.error for r in answers if not r.ok), None)
        if bad is not None:
            out[i] = (p, f"a comparison failed: {bad}")
            continue
        wins = [answers[0].probs["A"]] + ([answers[1].probs["B"]] if both else [])
        out[i] = (p, float(np.mean(wins)))
    return out


def topk_plan(
    context: GenerationContext,
    frame: pd.DataFrame,
    criterion: str,
    options: TopkOptions,
    *,
    cache: bool | None = None,
    **label_options: Any,
) -> Plan[pd.DataFrame]:
    """The run of :func:`sem_topk`: an optional seeding request, then one request per round
    of the tournament. Its value is the k best rows, best first, with ``attrs["llm"]``:
    ``comparisons`` (pairs compared), ``prompts`` (scored), ``rounds``, ``all_pairs``
    (n(n-1)/2) and ``comparison_log`` (``(row, pivot, P(row beats pivot))`` by index label)."""
    from ..classification import LabelSpec

    shown, rows = columns_rows(frame, criterion, "criterion")
    spec = LabelSpec.from_kwargs(["A", "B"], instruction="", **label_options)
    valid = [i for i in range(len(rows.texts)) if i not in rows.errors]
    n = len(valid)
    per_pair = 2 if options.both_orders else 1
    total = per_pair * 2 * n + (n if options.seed_with else 0)  # expected, for progress

    def steps() -> Generator[BatchRequest, Results, pd.DataFrame]:
        scores = None
        if options.seed_with == "score" and valid:
            seed_spec = yes_no_spec("", label_options)
            texts = [_pair_seed(shown, t) for t in rows.texts]
            request = scored_request(
                context, texts, seed_spec, errors=rows.errors, function="topk", cache=cache
            )
            scores = yes_probs((yield request))
        game = _Tournament(valid, options, scores)
        while open_groups := game.open_groups():
            pivots = [(game.pivot(start, group), group) for start, group in open_groups]
            pairs = [(i, p) for p, group in pivots for i in group if i != p]
            results = yield _comparisons(context, shown, rows, pairs, options, spec, cache)
            game.split(_outcomes(pairs, results, options.both_orders))
        return _ranked(frame, rows, game, context, n, per_pair)

    return Plan(steps(), total=total, desc="topk", context=context)


def _pair_seed(criterion: str, text: str | None) -> str | None:
    if text is None:
        return None
    return f"Criterion: {criterion}\n\nText: {text}\n\n{SEED_INSTRUCTION}"


def _ranked(
    frame: pd.DataFrame,
    rows: FrameRows,
    game: _Tournament,
    context: GenerationContext,
    n: int,
    per_pair: int,
) -> pd.DataFrame:
    out = frame_part(frame, rows, game.order())
    label = rows.index
    info = operator_info(
        "topk",
        context,
        rows,
        k=game.k,
        comparisons=len(game.log) + len(game.failed),
        prompts=(len(game.log) + len(game.failed)) * per_pair,
        rounds=game.rounds,
        all_pairs=n * (n - 1) // 2,
        comparison_log=[(label[i], label[p], round(q, 4)) for i, p, q in game.log],
    )
    info["failed"].update({label[i]: why for i, why in game.failed.items()})
    info["errors"] = len(info["failed"])
    out.attrs["llm"] = info
    return out


def sem_topk(
    frame: pd.DataFrame,
    criterion: str,
    k: int,
    *,
    model: Any = None,
    n_seq_max: int | None = None,
    seed_with: str | None = None,
    both_orders: bool = True,
    seed: int = 1234,
    question: str = COMPARE_INSTRUCTION,
    cache: bool | None = None,
    progress: Any = None,
    cancel: threading.Event | None = None,
    background: bool = False,
    cluster: Any = None,
    **options: Any,
) -> pd.DataFrame | Job:
    """The ``k`` rows of ``frame`` that best meet ``criterion``, best first.

    ``criterion`` names the columns it reads in braces (``"Which {title} is most about
    sports?"``); rows are compared two at a time ("Which of these two better meets the
    criterion: A or B?", label scoring) in a partial quicksort needing about ``2n + k log k``
    comparisons, each round's comparisons batched in one request (see the module notes).
    ``seed_with="score"`` scores every row alone first and takes pivots by that score;
    ``both_orders=False`` asks each pair once (half the prompts, exposed to the model's
    preference for one letter); ``seed`` seeds the random pivots; ``question`` replaces
    :data:`COMPARE_INSTRUCTION`. Rows that cannot run (a
    missing cell) or whose comparison failed are left out and listed in
    ``attrs["llm"]["failed"]``; ``attrs["llm"]`` also counts ``comparisons`` and ``rounds``.
    ``model``, ``cache``, ``progress``, ``cancel``, ``background``, ``cluster`` and the
    label-scoring keywords (``calibrate``, ``system_prompt``, ...) as for
    :func:`~jupyter_localllm.sem_filter`.
    """
    settings = TopkOptions(k, seed_with, both_orders, seed, question)
    context = resolve(model, n_seq_max)
    plan = topk_plan(context, frame, criterion, settings, cache=cache, **options)
    return execute(plan, background=background, progress=progress, cancel=cancel, cluster=cluster)
