"""Model cascades: a cheap proxy model labels every row, the classify call's own model (the
oracle) only the rows the proxy is unsure of, with a stated guarantee on the answer's quality
measured against the oracle's own answers (as SUPG and BARGAIN define it).

How one cascade runs (three label-scoring requests of one :class:`Plan`, through the pipeline):

1. the proxy scores every row (label probabilities);
2. the oracle labels a uniform random sample of the rows the proxy scored (``label_budget``
   rows, drawn with ``seed``); these rows keep the oracle's labels;
3. a threshold on the proxy's confidence is learned from the sample; the oracle
   labels every other row below it (and every row the proxy could not score).

The guarantees and the tests behind them are in :mod:`~jupyter_localllm.tasks.thresholds`.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import defaults
from ..engine.runner import GenerationContext
from ..errors import BatchInterrupted, InvalidParameterError
from ..session.cache import cache_enabled
from ..session.executors import Plan
from ..session.ledger import RunLedger
from ..session.pipeline import BatchRequest
from ..types import Result, Results
from .classification import LabelSpec, label_frame, label_record, label_request
from .options import check_count, checked_names, field_names
from .prompts import as_texts
from .thresholds import (
    PRECISION_CANDIDATES,
    Bound,
    agreement_scores,
    learn_accuracy,
    learn_precision,
    learn_ranked_accuracy,
    learn_recall,
)

__all__ = [
    "PILOT_SHARE",
    "PRECISION_CANDIDATES",
    "RANKINGS",
    "Bound",
    "CascadeSpec",
    "agreement_scores",
    "cascade_plan",
    "draw_pilot",
    "learn_accuracy",
    "learn_precision",
    "learn_ranked_accuracy",
    "learn_recall",
    "run_cascade",
]

RANKINGS = ("label", "confidence")
"""What an accuracy target's threshold is on (:attr:`CascadeSpec.ranking`)."""

PILOT_SHARE = 0.2
"""Share of the oracle's sample that fits the label-aware ranking (``ranking="label"``); the
rest of the sample tests the threshold."""


def draw_pilot(rng: np.random.Generator, size: int) -> list[int]:
    """The positions, in a sample of ``size`` rows, that fit the label-aware ranking: a
    random :data:`PILOT_SHARE` of them (rounded up), in order."""
    return sorted(rng.permutation(size)[: math.ceil(PILOT_SHARE * size)].tolist())


@dataclass(frozen=True)
class CascadeSpec:
    """What a cascade guarantees, checked once when built. Give ``target_accuracy`` or
    ``target_precision``/``target_recall`` (with ``positive``), not both kinds."""

    target_accuracy: float | None = None
    """Share of rows answered as the oracle would (any number of labels)."""
    target_precision: float | None = None
    """Share of the rows labelled ``positive`` that the oracle labels ``positive``."""
    target_recall: float | None = None
    """Share of the oracle's ``positive`` rows that are labelled ``positive``."""
    positive: str | None = None
    """The label that precision and recall are about (one of the labels)."""
    delta: float = defaults.DELTA
    """The guarantee holds with probability at least ``1 - delta``."""
    label_budget: int = defaults.LABEL_BUDGET
    """Rows the oracle labels in the random sample (at most; all rows when fewer)."""
    seed: int = defaults.SEED
    """Seed of the random sample."""
    ranking: str = defaults.CASCADE_RANKING
    """What the ``target_accuracy`` threshold is on: ``"label"``, the proxy's chance of
    agreeing with the oracle given its label and top probability, fitted on
    :data:`PILOT_SHARE` of the sample (small models are far surer of some labels than of
    others); ``"confidence"``, its top probability, with all of the sample testing.
    Precision and recall targets threshold the ``positive`` label's probability."""

    def __post_init__(self) -> None:
        for name in ("target_accuracy", "target_precision", "target_recall", "delta"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1
            ):
                raise InvalidParameterError(f"{name} must be a number in (0, 1), got {value!r}.")
        pr = self.target_precision is not None or self.target_recall is not None
        if (self.target_accuracy is None) == (not pr):
            raise InvalidParameterError(
                "A cascade needs target_accuracy=, or target_precision=/target_recall= with "
                "positive=; give one kind."
            )
        if pr != (self.positive is not None):
            raise InvalidParameterError(
                "positive= names the label of target_precision=/target_recall= and goes with them."
            )
        check_count("label_budget", self.label_budget)
        if self.ranking not in RANKINGS:
            raise InvalidParameterError(
                f"ranking must be one of {', '.join(map(repr, RANKINGS))}, got {self.ranking!r}."
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InvalidParameterError(f"seed must be an integer, got {self.seed!r}.")

    @classmethod
    def from_kwargs(cls, **options: Any) -> CascadeSpec:
        """The spec of ``options`` by name; an unknown one is an :class:`InvalidParameterError`."""
        return cls(**checked_names("cascade", field_names(cls), options))

    def check_labels(self, labels: Sequence[str]) -> None:
        """Raise :class:`InvalidParameterError` unless ``positive`` is one of ``labels``."""
        if self.positive is not None and str(self.positive) not in labels:
            raise InvalidParameterError(
                f"positive={self.positive!r} is not one of the labels ({', '.join(labels)})."
            )


# -- the cascade over label scoring --------------------------------------------------------------
class _Cascade:
    """One cascade's state: the rows each request holds, the learned bounds, the final
    answers (so an interrupt can give every finished row by its input row)."""

    def __init__(self, texts: list[Any], spec: LabelSpec, cascade: CascadeSpec, cache: bool):
        self.texts, self.spec, self.cascade, self.cache = texts, spec, cascade, cache
        self.n = len(texts)
        self.parts: list[list[int]] = []  # input rows of each request, in plan order
        self.final: dict[int, Result] = {}
        self.source: dict[int, str] = {}
        self.bounds: list[Bound] = []
        self.scores: dict[int, float] = {}  # input row -> what the accuracy threshold is on

    def request(self, context: GenerationContext, rows: list[int], stage: str, errors) -> Any:
        """The label-scoring request of ``rows`` (seeded by their input rows)."""
        request = label_request(
            context,
            [self.texts[i] for i in rows],
            self.spec,
            errors={k: errors[i] for k, i in enumerate(rows) if i in errors},
            cache=self.cache,
        )
        request.seed_rows, request.tag = list(rows), {**request.tag, "stage": stage, "rows": rows}
        self.parts.append(list(rows))
        return request

    def learn(
        self, proxy: Results, sample: list[int], oracle: Results, draw: float, pilot: list[int]
    ) -> dict[int, Result]:
        """The bounds from the sample (``draw``: the accuracy test's randomisation; ``pilot``:
        the positions in ``sample`` that fit the label-aware ranking), and the proxy's answers
        the cascade keeps."""
        ok = [i for i, r in enumerate(proxy) if r.ok]
        where = {i: k for k, i in enumerate(ok)}
        spot = [where[i] for i in sample]
        labels, c = list(self.spec.labels), self.cascade
        probs = np.array([[proxy[i].probs[lab] for lab in labels] for i in ok]).reshape(
            -1, len(labels)
        )
        said = [str(oracle[k]) if oracle[k].ok else None for k in range(len(sample))]
        if c.target_accuracy is None:
            return self._learn_binary(proxy, ok, probs, spot, said, draw)
        agree = [said[k] == str(proxy[i]) for k, i in enumerate(sample)]
        target = c.target_accuracy
        if c.ranking == "label":
            bound, score = learn_ranked_accuracy(
                probs, spot, agree, target, c.delta, pilot=pilot, draw=draw
            )
        else:
            score = probs.max(axis=1)
            bound = learn_accuracy(score, spot, agree, target, c.delta, draw=draw)
        self.bounds = [bound]
        self.scores = dict(zip(ok, map(float, score), strict=True))
        return {i: proxy[i] for i in ok if self.scores[i] >= bound.threshold}

    def _learn_binary(self, proxy, ok, probs, spot, said, draw) -> dict[int, Result]:
        labels, c = list(self.spec.labels), self.cascade
        p = labels.index(str(c.positive))
        score = probs[:, p]
        pos = [s == c.positive for s in said]
        delta = c.delta / 2 if c.target_precision and c.target_recall else c.delta
        high, low = math.inf, -math.inf
        self.bounds = []
        if c.target_precision is not None:
            self.bounds.append(learn_precision(score, spot, pos, c.target_precision, delta))
            high = self.bounds[-1].threshold
        if c.target_recall is not None:
            self.bounds.append(learn_recall(score, spot, pos, c.target_recall, delta, draw=draw))
            low = self.bounds[-1].threshold
        others = probs.copy()
        others[:, p] = -1.0
        kept = {}
        for k, i in enumerate(ok):
            yes, no = score[k] >= high, score[k] < low
            if yes != no:  # both or neither: the oracle decides
                label = labels[p] if yes else labels[int(others[k].argmax())]
                kept[i] = proxy[i].replace(text=label)
        return kept

    def keep(self, rows: Sequence[int], results: Sequence[Result], source: str) -> None:
        """Final answers of ``rows`` (a request's results, numbered within it)."""
        for k, res in enumerate(results):
            if res.finish_reason != "cancelled":
                self.final[rows[k]] = res.replace(row=rows[k])
                self.source[rows[k]] = source if res.ok else None

    def interrupted(self, exc: BatchInterrupted) -> BatchInterrupted:
        """``exc`` (rows numbered across the plan's requests) as one result per input row:
        the finished final answers, ``"cancelled"`` for the rest."""
        start = len(self.parts[0]) if self.parts else 0
        for rows in self.parts[1:]:
            self.keep(rows, exc.results[start : start + len(rows)], "oracle")
            start += len(rows)
        ledger = RunLedger(self.n)  # the one builder of BatchInterrupted
        ledger.record_all(self.final.values())
        return ledger.interrupted()

    def info(self, proxy: GenerationContext, oracle: GenerationContext, m: int) -> dict:
        """The cascade's details for ``attrs["llm"]``."""
        source = [self.source.get(i) for i in range(self.n)]
        return {
            "task": "classify",
            "proxy": proxy.model.name,
            "oracle": oracle.model.name,
            "rows": self.n,
            "sampled": m,
            "oracle_rows": sum(s == "oracle" for s in source),
            "proxy_rows": sum(s == "proxy" for s in source),
            "threshold": {b.metric: b.threshold for b in self.bounds},
            "estimate": {b.metric: b.estimate for b in self.bounds},
            "bound": {b.metric: b.bound for b in self.bounds},
            "delta": self.cascade.delta,
            "bounds": [asdict(b) for b in self.bounds],
            "ranking": self.cascade.ranking if self.cascade.target_accuracy else None,
            "score": [self.scores.get(i) for i in range(self.n)],
            "source": source,
        }


def cascade_plan(
    oracle: GenerationContext,
    proxy: GenerationContext,
    texts: Sequence[Any],
    spec: LabelSpec,
    cascade: CascadeSpec,
    *,
    errors: Mapping[int, str] | None = None,
    cache: bool | None = None,
) -> Plan[pd.DataFrame]:
    """The plan of a cascade (see the module notes): its value is :func:`classify`'s
    DataFrame (``label``, probabilities of the model that answered, ``error``) with the
    cascade's details in ``attrs["llm"]``: ``oracle_rows`` (rows the oracle labelled:
    sampled and escalated), ``proxy_rows``, ``sampled``, ``threshold``, ``estimate`` and
    ``bound`` (per metric: the sample's estimate and its lower confidence bound), ``ranking``
    and per row the ``score`` the accuracy threshold is on (``None`` for precision and
    recall targets, whose thresholds are on the ``positive`` label's probability), ``source``
    (per row ``"proxy"``, ``"oracle"``, or ``None`` for a row that failed in both). Its rows
    are numbered across its three requests (``view`` records carry the input ``row``);
    ``cache`` (``None``: ``$LOCALLLM_RESULT_CACHE``) keeps every row's scores in the result
    cache, so a re-run scores nothing it scored before. :func:`run_cascade` turns an
    interrupt into one result per input row."""
    return _plan(oracle, proxy, texts, spec, cascade, errors, cache)[0]


def _plan(
    oracle, proxy, texts, spec, cascade, errors, cache
) -> tuple[Plan[pd.DataFrame], _Cascade]:
    texts = as_texts(texts)
    cascade.check_labels(spec.labels)
    errors = dict(errors or {})
    state = _Cascade(texts, spec, cascade, cache_enabled(cache))

    def steps() -> Generator[BatchRequest, Results, pd.DataFrame]:
        everyone = list(range(state.n))
        first = state.request(proxy, everyone, "proxy", errors)
        scored = yield first
        ok = [i for i, r in enumerate(scored) if r.ok]
        rng = np.random.default_rng(cascade.seed)
        size = min(cascade.label_budget, len(ok))
        sample = sorted(int(i) for i in rng.choice(ok, size, replace=False)) if size else []
        draw = float(rng.random())  # the randomised test's, apart from the sample
        pilot = draw_pilot(rng, size)
        labelled = yield state.request(oracle, sample, "sample", errors)
        state.keep(sample, labelled, "oracle")
        for i, res in state.learn(scored, sample, labelled, draw, pilot).items():
            if i not in state.final:  # sampled rows keep the oracle's answer
                state.keep([i], [res], "proxy")
        rest = [i for i in everyone if i not in state.final]
        escalated = yield state.request(oracle, rest, "escalated", errors)
        state.keep(rest, escalated, "oracle")
        hashes = {
            f"{stage}_{key}": value
            for stage, done in (("proxy", scored), ("sample", labelled), ("escalated", escalated))
            for key, value in done.hashes.items()
        }
        frame = label_frame(first, Results([state.final[i] for i in everyone], hashes=hashes))
        frame.attrs["llm"] = state.info(proxy, oracle, len(sample))
        return frame

    def view(request: BatchRequest, result: Result) -> dict[str, Any]:
        row, stage = request.tag["rows"][result.row], request.tag["stage"]
        return {"row": row, "stage": stage, **label_record(result, request.labels)}

    plan = Plan(steps(), total=2 * len(texts), desc="cascade", context=oracle, view=view)
    return plan, state


def run_cascade(
    oracle: GenerationContext,
    proxy: GenerationContext,
    texts: Sequence[Any],
    spec: LabelSpec,
    cascade: CascadeSpec,
    *,
    errors: Mapping[int, str] | None = None,
    cache: bool | None = None,
    **run: Any,
) -> Any:
    """Run :func:`cascade_plan` with :func:`~jupyter_localllm.session.executors.execute`'s
    keywords (``progress``, ``cancel``, ``background``, ``cluster``). In the foreground an
    interrupt raises :class:`BatchInterrupted` with one result per input row: every final
    answer so far (sampled and escalated rows the oracle finished, and once the threshold is
    learned the rows the proxy keeps) and ``"cancelled"`` for the rest."""
    from ..session.executors import execute

    plan, state = _plan(oracle, proxy, texts, spec, cascade, errors, cache)
    try:
        return execute(plan, **run)
    except BatchInterrupted as exc:
        raise state.interrupted(exc) from exc
