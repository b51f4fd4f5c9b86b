"""The threshold learners of model cascades (:mod:`~jupyter_localllm.tasks.cascade`): given a
proxy's scores on every row and the oracle's answers on a uniform random sample of them, the
threshold above which the proxy may answer, with a stated guarantee on the final answer's
quality measured against the oracle's own answers (as SUPG and BARGAIN define it). Pure numpy
and scipy: no model runs here.

The guarantees, each with probability at least ``1 - delta`` over the random sample (``N``
rows scored by the proxy, ``m`` sampled; all tests are exact hypergeometric ones, so they hold
for any ``N`` and ``m`` — small samples only make them cautious). Every test counts only the
errors the final answer keeps: a sampled row keeps the oracle's answer, so a sampled
disagreement is one error fewer, not evidence of one more. With ``k`` sampled disagreements
among the rows the proxy would answer, the final answer holds ``B - k`` errors (``B``: all
disagreeing rows there); it has more than ``allowed`` of them only if ``B >= allowed + 1 + k``,
so the null is rejected when a hypergeometric draw of ``m`` from ``N`` rows, ``allowed + 1 + k``
of them bad, holds ``<= k`` bad rows with probability ``<= delta`` (more bad rows make a small
count rarer, so on the bad event the chance is at most that of the true ``B``: valid).

- ``target_accuracy=a``: at least ``a·N`` rows get the oracle's label. The proxy answers the
  rows whose confidence (below: ``ranking``) is at least ``t``. Candidate thresholds are the
  confidences themselves (known before any oracle label); the test above, with ``allowed =
  (1-a)·N``, passes up to a critical count ``k*`` of sampled disagreements (its chance grows
  with ``k``), and ``t`` is the lowest confidence with at most ``k*`` sampled disagreements at
  or above it (fixed-sequence testing from the top, a BARGAIN-like accuracy bound, Zeighami et
  al.). The whole procedure is valid, not only each test: it fails only if, going down the
  disagreeing rows by confidence, ``allowed + 1`` unsampled ones come before the ``k* + 1``-th
  sampled one, i.e. only if the first ``allowed + 1 + k*`` disagreeing rows hold ``<= k*``
  sampled ones: probability ``<= delta``. The counts are whole numbers, so that chance ``p(k*)``
  is often well below ``delta`` on small tables (at ``delta`` 0.05, 100 rows, a 40-row sample
  and target 0.97, ``k* = -1``: the test can pass nothing, where ``p(0)`` is 0.12; 300 rows, 120
  sampled, target 0.97: ``p(k*)`` 0.028, ``p(k* + 1)`` 0.079). The cascade randomises the count,
  as exact discrete tests do: ``k* + 1`` with chance ``q = (delta - p(k*)) / (p(k* + 1) -
  p(k*))``, drawn with the sample's seed apart from it; the procedure then fails with chance
  ``(1 - q)·p(k*) + q·p(k* + 1) = delta`` at most, exactly the level asked for. A lower
  threshold with at most ``allowed`` unsampled rows at or above it is taken instead when there
  is one: it cannot miss the target (on small tables, where the test passes little, the proxy
  still answers the rows the target tolerates).
- What the threshold is on (``ranking``). A small model is far surer of some labels than of
  others (on 300 tweets SmolLM2-135M agrees with the 0.5B oracle on 97% of its "negative" rows
  and 12% of its "positive" ones), so its top probability ranks rows poorly across labels. With
  ``ranking="label"`` (the default) a random :data:`~jupyter_localllm.tasks.cascade.PILOT_SHARE`
  of the sampled rows fits the proxy's chance of agreeing given its label and confidence
  (:func:`agreement_scores`), and the threshold is on that chance. Still valid: given the pilot,
  the ranking is fixed and the other sampled rows are a uniform sample of the rows outside the
  pilot, so the test above runs there as it stands, with the ``allowed`` errors of the whole
  table (pilot rows keep the oracle's answer). The pilot's rows no longer test: where the top
  probability already ranks well the proxy answers somewhat fewer rows (``ranking="confidence"``
  keeps the whole sample for the test).
- ``target_recall=r`` (with ``positive=``): the proxy answers "not positive" below ``t_low`` on
  its probability of ``positive``; at least ``r`` of the rows the oracle calls positive are
  labelled positive (a sampled positive keeps the oracle's label). Given the sampled
  positives, they are a uniform sample of all positives; the same test on the misses,
  maximised over the unknown number of positives, randomised the same way (each count fails
  with chance at most its largest p-value, so the mixture fails with chance at most delta).
- ``target_precision=p`` (with ``positive=``): the proxy answers "positive" at or above
  ``t_high``; at least ``p`` of the rows labelled positive are positive for the oracle (a
  sampled row there keeps the oracle's label: its negatives are no false positives and leave
  the positives). The share of oracle negatives above each of 20 candidate thresholds
  (quantiles of the proxy's scores) is tested with a union bound (``delta/20`` each), and the
  lowest passing one is kept (SUPG's precision target, Kang et al. 2020, with uniform
  sampling).

Both precision and recall split ``delta`` in two. A proxy whose confidence says nothing about
agreement leaves the tests unrejected at all but the top: almost every row is escalated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.stats import hypergeom

__all__ = [
    "PRECISION_CANDIDATES",
    "Bound",
    "agreement_scores",
    "learn_accuracy",
    "learn_precision",
    "learn_ranked_accuracy",
    "learn_recall",
]

PRECISION_CANDIDATES = 20
"""Candidate thresholds of the precision target (its union bound divides ``delta`` by it)."""


@dataclass(frozen=True)
class Bound:
    """A learned threshold and what it guarantees."""

    metric: str
    """``"accuracy"``, ``"precision"`` or ``"recall"``, against the oracle's answers."""
    target: float
    """The target the threshold was learned for."""
    delta: float
    """The error probability this bound was learned with."""
    threshold: float
    """accuracy: the proxy answers at top probability ``>= threshold``; precision: it says
    positive at ``>= threshold``; recall: it says not positive at ``< threshold``."""
    estimate: float
    """The final answer's quality estimated from the sample (sampled rows keep the oracle's
    answer; unbiased for accuracy)."""
    bound: float
    """Lower confidence bound (level ``1 - delta``; precision: ``delta`` over the candidates)
    on the final answer's quality at this threshold, by the same test as the threshold: at
    least ``target`` whenever a threshold was learned."""


def _largest_k(p_value: Any, delta: float, k_max: int) -> int:
    """The largest ``k <= k_max`` whose ``p_value(k)`` (non-decreasing in ``k``) is at most
    ``delta``; -1 when none is."""
    lo, hi = -1, k_max  # p_value(lo) <= delta (or lo == -1); the answer is in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if p_value(mid) <= delta else (lo, mid - 1)
    return lo


def _tolerated(share: float, n: int | np.ndarray) -> Any:
    """The most rows of ``n`` that may be wrong when ``share`` of them must be right."""
    return np.floor((1.0 - share) * np.asarray(n) + 1e-9).astype(int)


def _upper_count(k: int, n: int, m: int, delta: float) -> int:
    """Upper confidence bound (level ``1-delta``) on the bad rows among ``n`` when a uniform
    sample of ``m`` holds ``k``: the largest count whose chance of ``<= k`` exceeds ``delta``."""
    # the chance falls as the count grows (bisection); at count k it is 1
    return k + _largest_k(lambda u: float(hypergeom.cdf(k, n, k + u, m) <= delta), 0.5, n - k)


def _kept_errors_p(k: int | np.ndarray, n: Any, allowed: Any, m: int) -> Any:
    """The chance that a uniform sample of ``m`` of ``n`` rows holds ``<= k`` bad ones when
    ``allowed + 1 + k`` are bad: the p-value of "more than ``allowed`` bad rows stay unsampled"
    after ``k`` sampled ones (see the module notes); 0 where ``n`` cannot hold that many."""
    k, n, allowed = np.broadcast_arrays(np.asarray(k), np.asarray(n), np.asarray(allowed))
    bad = allowed + 1 + k
    fits = bad <= n
    p = np.zeros(bad.shape)
    if fits.any():
        p[fits] = hypergeom.cdf(k[fits], n[fits], bad[fits], m)
    return p if p.ndim else float(p)


def _critical_count(
    n: int, m: int, allowed: int, delta: float, fixes: bool = True, draw: float | None = None
) -> int:
    """The most sampled disagreements (of ``m`` from ``n`` rows) at which "more than
    ``allowed`` rows disagree" is still rejected at level ``delta``; -1 when none. ``fixes``:
    the oracle's answers of the sampled rows are kept (the test above); False: the earlier
    test that counts them as kept errors (``allowed + 1`` bad rows, more cautious). ``draw``
    (uniform in [0, 1)): one more with the chance that brings the failure chance to
    ``delta`` exactly (a randomised test; see the module notes)."""
    last = n - allowed - 1  # a sample cannot hold more unsampled-error witnesses than this
    if last < 0:
        return m  # the target allows every row to be wrong
    if not fixes:
        return _largest_k(lambda k: hypergeom.cdf(k, n, allowed + 1, m), delta, m)
    k = _largest_k(lambda k: _kept_errors_p(k, n, allowed, m), delta, min(m, last))
    if k >= last:  # allowed + 1 unsampled errors cannot come before k + 1 sampled ones
        return m
    return _randomised(k, lambda j: _kept_errors_p(j, n, allowed, m), delta, draw, m)


def _randomised(k: int, p_value: Any, delta: float, draw: float | None, k_max: int) -> int:
    """``k`` (a critical count: ``p_value(k) <= delta``, -1 for none) or, given ``draw``
    (uniform in [0, 1)), ``k + 1`` with the chance ``q`` that makes ``(1 - q)·p_value(k) +
    q·p_value(k + 1)`` equal ``delta``: a randomised exact test (``p_value(-1)`` is 0)."""
    if draw is None or k + 1 > k_max:
        return k
    low = p_value(k) if k >= 0 else 0.0
    high = p_value(k + 1)
    return k + 1 if draw * (high - low) < delta - low else k


def learn_accuracy(
    confidence: Sequence[float],
    sample: Sequence[int],
    agree: Sequence[bool],
    target: float,
    delta: float,
    *,
    draw: float | None = None,
    oracle_keeps_sample: bool = True,
) -> Bound:
    """The lowest threshold on the proxy's ``confidence`` (one per row) at which at least
    ``target`` of the rows get the oracle's answer with probability ``>= 1 - delta`` (see the
    module notes): ``sample`` are the rows the oracle labelled (they keep its answer),
    ``agree`` whether the proxy's answer was the oracle's on each. ``draw``: a uniform number
    in [0, 1), drawn apart from the sample, that randomises the test so that its failure
    chance is ``delta`` exactly (``None``: the unrandomised test, at most ``delta``, often
    well below on small tables). ``oracle_keeps_sample=False`` runs the earlier, more
    cautious learner that counts sampled disagreements as kept errors and has no
    outright-safe threshold (valid too; kept to measure the difference)."""
    conf = np.asarray(confidence, dtype=float)
    sample, agree = np.asarray(sample, dtype=int), np.asarray(agree, dtype=bool)
    n, m = len(conf), len(sample)
    allowed = int(_tolerated(target, n))
    k_star = _critical_count(n, m, allowed, delta, oracle_keeps_sample, draw)
    bad = np.sort(conf[sample][~agree])[::-1]
    threshold = _lowest_with(conf, bad, k_star)
    # Any threshold with at most `allowed` unsampled rows at or above it is safe outright.
    unsampled = np.ones(n, bool)
    unsampled[sample] = False
    if oracle_keeps_sample:
        threshold = min(threshold, _lowest_with(conf, np.sort(conf[unsampled])[::-1], allowed))
    if math.isinf(threshold):
        return Bound("accuracy", target, delta, threshold, 1.0, 1.0)
    k, free = int((bad >= threshold).sum()), int((conf[unsampled] >= threshold).sum())
    # errors kept: unsampled disagreements at or above the threshold (B - k), at most `free`
    estimate = 1.0 - min(k * (n - m) / m if m else free, free) / n
    bound = 1.0 - min(_upper_count(k, n, m, delta) - k, free) / n
    # one sampled disagreement past the unrandomised count, that test may say less than the
    # whole procedure guarantees (the target, with probability >= 1 - delta)
    bound = max(bound, 1.0 - allowed / n)
    return Bound("accuracy", target, delta, threshold, estimate, bound)


def _lowest_with(conf: np.ndarray, ranked: np.ndarray, count: int) -> float:
    """The lowest threshold on ``conf`` with at most ``count`` of ``ranked`` (a subset of
    ``conf``, highest first) at or above it; ``inf`` when ``count < 0`` or no rows."""
    if count < 0 or not conf.size:
        return math.inf
    if len(ranked) <= count:
        return float(conf.min())
    above = conf[conf > ranked[count]]
    return float(above.min()) if above.size else math.inf


def agreement_scores(probs: np.ndarray, pilot: Sequence[int], agree: Sequence[bool]) -> np.ndarray:
    """The proxy's chance of agreeing with the oracle on each row (``probs``: its label
    probabilities, one row each), by a logistic regression fitted on the ``pilot`` rows
    (``agree``: whether it agreed there) over its label (one-hot) and the log-odds of its top
    probability; the top probability itself when the pilot shows only one kind of answer."""
    probs = np.asarray(probs, dtype=float)
    top = probs.max(axis=1) if probs.size else np.zeros(len(probs))
    agree = np.asarray(agree, dtype=bool)
    if agree.all() or not agree.any():
        return top
    from sklearn.linear_model import LogisticRegression  # a second's import: only here

    odds = np.log(np.clip(top, 1e-9, 1.0) / np.clip(1.0 - top, 1e-9, 1.0))
    features = np.c_[np.eye(probs.shape[1])[probs.argmax(axis=1)], odds]
    fit = LogisticRegression(C=10.0, max_iter=1000).fit(features[np.asarray(pilot)], agree)
    return fit.predict_proba(features)[:, 1]


def learn_ranked_accuracy(
    probs: np.ndarray,
    sample: Sequence[int],
    agree: Sequence[bool],
    target: float,
    delta: float,
    *,
    pilot: Sequence[int],
    draw: float | None = None,
) -> tuple[Bound, np.ndarray]:
    """:func:`learn_accuracy` on the label-aware ranking: the sampled rows at positions
    ``pilot`` of ``sample`` fit :func:`agreement_scores`, the other sampled rows test a
    threshold on those scores among the rows outside the pilot, which may hold the errors
    the target allows over all rows (pilot rows keep the oracle's answer). Returns the bound
    (its threshold on the scores) and the score of every row."""
    probs = np.asarray(probs, dtype=float)
    sample, agree = np.asarray(sample, dtype=int), np.asarray(agree, dtype=bool)
    n = len(probs)
    piloted = np.zeros(len(sample), bool)
    piloted[np.asarray(pilot, dtype=int)] = True
    score = agreement_scores(probs, sample[piloted], agree[piloted])
    rest = np.setdiff1d(np.arange(n), sample[piloted])
    if not rest.size:
        return Bound("accuracy", target, delta, math.inf, 1.0, 1.0), score
    where = np.full(n, -1)
    where[rest] = np.arange(rest.size)
    allowed = int(_tolerated(target, n))
    inner = learn_accuracy(
        score[rest],
        where[sample[~piloted]],
        agree[~piloted],
        max(0.0, 1.0 - allowed / rest.size),
        delta,
        draw=draw,
    )
    scale = rest.size / n  # errors over the rest, as a share of every row
    bound = 1.0 - (1.0 - inner.bound) * scale
    if not math.isinf(inner.threshold):  # as learn_accuracy: what the procedure guarantees
        bound = max(bound, 1.0 - allowed / n)
    return replace(
        inner, target=target, estimate=1.0 - (1.0 - inner.estimate) * scale, bound=bound
    ), score


def _miss_p_value(k: int, m_pos: int, totals: np.ndarray, share: float) -> float:
    """The largest chance, over the possible numbers of positives ``totals``, that ``m_pos``
    sampled positives hold ``<= k`` misses when more than ``1 - share`` of all positives are
    unsampled misses (``allowed + 1 + k`` misses in all)."""
    if not totals.size:
        return 0.0
    allowed = _tolerated(share, totals)
    # While the misses allowed stay the same, more positives make a sample with few misses
    # likelier: only the last total of each step can give the largest chance.
    last = np.r_[allowed[1:] != allowed[:-1], True]
    return float(np.max(_kept_errors_p(k, totals[last], allowed[last], m_pos), initial=0.0))


def learn_recall(
    score: Sequence[float],
    sample: Sequence[int],
    positive: Sequence[bool],
    target: float,
    delta: float,
    *,
    draw: float | None = None,
) -> Bound:
    """The highest threshold on the proxy's probability of the positive label (``score``,
    one per row) below which the proxy may answer "not positive" while at least ``target`` of
    the oracle's positive rows stay positive, with probability ``>= 1 - delta``: ``sample``
    are the rows the oracle labelled (they keep its answer), ``positive`` its answers there;
    ``draw`` randomises the test as :func:`learn_accuracy`'s (``None``: unrandomised)."""
    s = np.asarray(score, dtype=float)
    sample, positive = np.asarray(sample, dtype=int), np.asarray(positive, dtype=bool)
    pos = np.sort(s[sample][positive])
    m_pos, m_neg = len(pos), len(sample) - len(pos)
    totals = np.arange(max(m_pos, 1), len(s) - m_neg + 1)

    def p_value(k: int) -> float:
        return _miss_p_value(k, m_pos, totals, target)

    # k <= m_pos - 1: the threshold is a sampled positive's score, so at most the k sampled
    # positives below it; any k whose p-value passes is valid (no monotonicity needed)
    k_star = _randomised(_largest_k(p_value, delta, m_pos - 1), p_value, delta, draw, m_pos - 1)
    if k_star < 0:
        return Bound("recall", target, delta, -math.inf, 1.0, 1.0)
    threshold = float(pos[k_star])
    k = int((pos < threshold).sum())
    lo, hi = 0.0, 1.0  # the lowest recall the test would still reject below (bisection to 2^-14)
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _miss_p_value(k, m_pos, totals, mid) > delta else (mid, hi)
    # unsampled misses: k of m_pos sampled positives, scaled to the unsampled share
    estimate = 1.0 - k / m_pos * (1.0 - len(sample) / len(s))
    # past the unrandomised count that test says less than the procedure guarantees
    return Bound("recall", target, delta, threshold, estimate, max(lo, target))


def _candidates(s: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` thresholds, highest first: the scores whose rows at or above them are
    1/count, 2/count, ... of all rows."""
    ranked = np.sort(s)[::-1]
    places = np.ceil(len(s) * np.arange(1, count + 1) / count).astype(int) - 1
    return np.unique(ranked[places])[::-1]


def learn_precision(
    score: Sequence[float],
    sample: Sequence[int],
    positive: Sequence[bool],
    target: float,
    delta: float,
    candidates: int = PRECISION_CANDIDATES,
) -> Bound:
    """The lowest of ``candidates`` thresholds on the proxy's probability of the positive
    label (``score``, one per row) at and above which at least ``target`` of the rows are
    positive for the oracle, with probability ``>= 1 - delta`` (a union bound over the
    candidates): ``sample`` are the rows the oracle labelled (they keep its answer, so a
    sampled negative is no false positive), ``positive`` its answers."""
    s = np.asarray(score, dtype=float)
    sample, positive = np.asarray(sample, dtype=int), np.asarray(positive, dtype=bool)
    level = delta / candidates
    best = Bound("precision", target, delta, math.inf, 1.0, 1.0)
    for t in _candidates(s, candidates) if len(s) else []:
        n_t = int((s >= t).sum())
        inside = s[sample] >= t
        m_t, k = int(inside.sum()), int((inside & ~positive).sum())
        # the rows labelled positive here: all but the k sampled negatives (the oracle's)
        said = n_t - k
        p = _kept_errors_p(k, n_t, int(_tolerated(target, said)), m_t) if m_t else 1.0
        if p <= level:
            kept = k * (n_t - m_t) / max(m_t, 1)  # estimated unsampled negatives
            upper = _upper_count(k, n_t, m_t, level) - k
            estimate, bound = (1.0 - kept / said, 1.0 - upper / said) if said else (1.0, 1.0)
            best = Bound("precision", target, delta, float(t), estimate, bound)
    return best
