"""The cascade's threshold learners (``tasks/cascade.py``) on synthetic proxy scores: over
many random samples the stated guarantee holds in at least ``1 - delta`` of them, an
informative proxy lets many rows through, and a proxy whose confidence says nothing about
agreement escalates almost every row."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jupyter_localllm.errors import InvalidParameterError
from jupyter_localllm.tasks.cascade import (
    CascadeSpec,
    learn_accuracy,
    learn_precision,
    learn_recall,
)

N, BUDGET, TRIALS, DELTA = 2000, 300, 200, 0.1


def informative_proxy(rng, n=N):
    """Confidences in (1/4, 1) and whether the proxy agrees with the oracle: the more
    confident, the likelier to agree (a calibrated proxy)."""
    conf = rng.uniform(0.25, 1.0, n)
    return conf, rng.random(n) < conf


def trials(population, learn, quality, target, seed=0):
    """Per trial: the learned bound and the true quality it reaches on the population."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(TRIALS):
        sample = rng.choice(N, BUDGET, replace=False)
        bound = learn(sample)
        out.append((bound, quality(bound, sample)))
    return out


def cascade_accuracy(conf, agree, threshold, sample):
    """Share of rows answered as the oracle would: proxy rows above the threshold that
    disagree are wrong; sampled and escalated rows have the oracle's answer."""
    sampled = np.zeros(len(conf), bool)
    sampled[sample] = True
    wrong = (conf >= threshold) & ~agree & ~sampled
    return 1 - wrong.sum() / len(conf)


@pytest.mark.parametrize("target", [0.9, 0.95])
def test_accuracy_guarantee_holds_in_at_least_one_minus_delta_of_samples(target):
    conf, agree = informative_proxy(np.random.default_rng(1))
    runs = trials(
        (conf, agree),
        lambda s: learn_accuracy(conf, s, agree[s], target, DELTA),
        lambda b, s: cascade_accuracy(conf, agree, b.threshold, s),
        target,
    )
    held = np.mean([q >= target for _, q in runs])
    assert held >= 1 - DELTA, held
    # and it is not vacuous: the proxy answers a good share of the rows on average
    share = np.mean([(conf >= b.threshold).mean() for b, _ in runs])
    best = (conf >= np.quantile(conf[~agree], 1 - (1 - target) * N / (~agree).sum())).mean()
    assert share > 0.5 * best, (share, best)
    for bound, _ in runs[:20]:
        assert bound.bound >= target - 1e-9 or math.isinf(bound.threshold)
        assert 0 <= bound.estimate <= 1


def test_a_useless_proxy_escalates_almost_every_row():
    rng = np.random.default_rng(2)
    conf = rng.uniform(0.25, 1.0, N)
    agree = rng.random(N) < 0.6  # 60% agreement whatever the confidence says
    shares = []
    for _ in range(50):
        sample = rng.choice(N, BUDGET, replace=False)
        bound = learn_accuracy(conf, sample, agree[sample], 0.95, DELTA)
        shares.append((conf >= bound.threshold).mean())
        assert cascade_accuracy(conf, agree, bound.threshold, sample) >= 0.95 - 0.02
    # Rows the proxy answers are wrong 40% of the time whatever its confidence, so at most
    # (1 - 0.95) / 0.4 = 12.5% of them can be given to it; it gets no more than that.
    assert np.mean(shares) <= 0.05 / 0.4, np.mean(shares)
    assert max(shares) <= 0.15


def test_no_sample_or_no_rows_means_the_oracle_answers_everything():
    conf = np.linspace(0.3, 1, 50)
    bound = learn_accuracy(conf, [], [], 0.9, 0.05)
    assert math.isinf(bound.threshold) and bound.bound == 1.0
    assert math.isinf(learn_accuracy([], [], [], 0.9, 0.05).threshold)
    # a sample where the proxy always agrees lets the whole population through
    everything = learn_accuracy(conf, np.arange(0, 50, 2), np.ones(25, bool), 0.5, 0.05)
    assert everything.threshold == pytest.approx(0.3)


def binary_population(rng, n=N):
    """A proxy score for the positive label and the oracle's answer (positive with that
    probability: calibrated)."""
    score = rng.beta(0.6, 0.6, n)
    return score, rng.random(n) < score


@pytest.mark.parametrize("target", [0.8, 0.9])
def test_recall_guarantee_holds(target):
    score, truth = binary_population(np.random.default_rng(3))

    def recall(bound, sample):
        sampled = np.zeros(N, bool)
        sampled[sample] = True
        missed = truth & (score < bound.threshold) & ~sampled
        return 1 - missed.sum() / truth.sum()

    runs = trials(
        None, lambda s: learn_recall(score, s, truth[s], target, DELTA), recall, target, seed=4
    )
    assert np.mean([q >= target for _, q in runs]) >= 1 - DELTA
    assert np.mean([(score < b.threshold).mean() for b, _ in runs]) > 0.2  # not vacuous


@pytest.mark.parametrize("target", [0.8, 0.9])
def test_precision_guarantee_holds(target):
    score, truth = binary_population(np.random.default_rng(5))

    def precision(bound, sample):
        said = score >= bound.threshold
        return 1.0 if not said.any() else truth[said].mean()

    runs = trials(
        None, lambda s: learn_precision(score, s, truth[s], target, DELTA), precision, target, 6
    )
    assert np.mean([q >= target for _, q in runs]) >= 1 - DELTA
    # not vacuous where the sample can show it: the union bound over 20 thresholds needs
    # many sampled rows above a threshold to prove 90% there
    answered = np.mean([(score >= b.threshold).mean() for b, _ in runs])
    assert answered > (0.1 if target == 0.8 else 0.0), answered


def test_a_useless_binary_proxy_answers_few_rows():
    rng = np.random.default_rng(7)
    score = rng.uniform(0, 1, N)
    truth = rng.random(N) < 0.5  # unrelated to the score
    sample = rng.choice(N, BUDGET, replace=False)
    assert math.isinf(learn_precision(score, sample, truth[sample], 0.9, DELTA).threshold)
    low = learn_recall(score, sample, truth[sample], 0.9, DELTA).threshold
    assert (score < low).mean() < 0.1


@pytest.mark.parametrize(
    ("options", "phrase"),
    [
        ({}, "needs target_accuracy"),
        ({"target_accuracy": 0.9, "target_recall": 0.9, "positive": "a"}, "give one kind"),
        ({"target_recall": 0.9}, "positive= names"),
        ({"target_accuracy": 0.9, "positive": "a"}, "positive= names"),
        ({"target_accuracy": 1.0}, r"target_accuracy must be a number in \(0, 1\)"),
        ({"target_accuracy": 0.9, "delta": 0}, "delta must be"),
        ({"target_accuracy": 0.9, "label_budget": 0}, "label_budget must be a positive"),
        ({"target_accuracy": 0.9, "proxy_budget": 3}, "Unknown cascade option"),
    ],
)
def test_bad_cascade_options_are_refused(options, phrase):
    with pytest.raises(InvalidParameterError, match=phrase):
        CascadeSpec.from_kwargs(**options)
