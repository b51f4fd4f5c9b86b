"""The cascade's threshold learners (``tasks/thresholds.py``) on synthetic proxy scores: over
many random samples the stated guarantee holds in at least ``1 - delta`` of them (for the
accuracy target: as often as the module notes' proof says, exactly), an informative proxy lets
many rows through, more than the earlier test did, and a proxy whose confidence says nothing
about agreement escalates almost every row."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import hypergeom

from jupyter_localllm.errors import InvalidParameterError
from jupyter_localllm.tasks.cascade import (
    CascadeSpec,
    draw_pilot,
    learn_accuracy,
    learn_precision,
    learn_ranked_accuracy,
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


def accuracy_runs(conf, agree, target, m, trials, seed=0, randomised=False, **options):
    """Over ``trials`` random samples of ``m`` rows: the share of samples whose final answer
    misses the target, the mean share of rows the proxy answers, and the thresholds
    (``randomised``: each sample with its own draw for the randomised test)."""
    rng = np.random.default_rng(seed)
    n, failed, shares, thresholds = len(conf), 0, [], []
    for _ in range(trials):
        sample = rng.choice(n, m, replace=False)
        draw = rng.random()
        if randomised:
            options["draw"] = draw
        bound = learn_accuracy(conf, sample, agree[sample], target, DELTA, **options)
        failed += cascade_accuracy(conf, agree, bound.threshold, sample) < target
        answered = conf >= bound.threshold
        answered[sample] = False
        shares.append(answered.mean())
        thresholds.append(bound.threshold)
    return failed / trials, float(np.mean(shares)), np.array(thresholds)


def exact_failure(conf, agree, target, m, randomised=False):
    """The proof's failure chance (module notes): the first ``allowed + 1 + k*`` disagreeing
    rows by confidence hold at most ``k*`` sampled ones, ``k*`` the critical count;
    ``randomised``: ``k* + 1`` instead with the chance that makes it ``DELTA``."""
    n = len(conf)
    allowed = int(np.floor((1 - target) * n + 1e-9))
    k = np.arange(m + 1)
    fits = allowed + 1 + k <= min(n, (~agree).sum())
    p = hypergeom.cdf(k[fits], n, allowed + 1 + k[fits], m)
    passing = np.nonzero(p <= DELTA)[0]
    low = float(p[passing.max()]) if passing.size else 0.0
    if not randomised:
        return low
    high = float(p[passing.max() + 1]) if passing.size else float(p[0])
    q = (DELTA - low) / (high - low)
    return (1 - q) * low + q * high


def adversarial_proxy(rng, n):
    """A proxy whose disagreements sit at its highest confidences (20% of the rows): a
    threshold too low is punished at once."""
    conf = rng.permutation(np.linspace(0.3, 1.0, n))
    return conf, conf < np.quantile(conf, 0.8)


@pytest.mark.parametrize("randomised", [False, True])
@pytest.mark.parametrize(
    ("n", "m", "target", "make"),
    [
        (N, BUDGET, 0.9, informative_proxy),
        (N, BUDGET, 0.95, informative_proxy),
        (150, 60, 0.95, informative_proxy),  # bench_operators' size
        (100, 40, 0.9, adversarial_proxy),
        (400, 100, 0.97, adversarial_proxy),
        (150, 60, 0.97, adversarial_proxy),
    ],
)
def test_accuracy_fails_in_at_most_delta_of_samples_as_the_proof_says(
    n, m, target, make, randomised
):
    conf, agree = make(np.random.default_rng(1), n)
    trials = 1500
    failed, _, _ = accuracy_runs(conf, agree, target, m, trials, randomised=randomised)
    exact = exact_failure(conf, agree, target, m, randomised)
    se = math.sqrt(DELTA * (1 - DELTA) / trials)
    # the procedure fails exactly when the proof says (no ties here), at most delta; the
    # randomised count uses all of it
    assert exact <= DELTA + 1e-12
    if randomised:
        assert exact == pytest.approx(DELTA)
    assert abs(failed - exact) <= 4 * se + 1e-9, (failed, exact)
    assert failed <= DELTA + 3 * se, failed


@pytest.mark.parametrize("make", [adversarial_proxy, informative_proxy])
def test_the_randomised_test_answers_more_rows_on_the_same_samples(make):
    conf, agree = make(np.random.default_rng(1), 150)
    plain_failed, plain_share, plain_t = accuracy_runs(conf, agree, 0.97, 60, 1500)
    failed, share, thresholds = accuracy_runs(conf, agree, 0.97, 60, 1500, randomised=True)
    assert exact_failure(conf, agree, 0.97, 60) < DELTA  # level the unrandomised test leaves
    assert failed > plain_failed
    # never a higher threshold, sometimes a lower one, more rows answered
    assert (thresholds <= plain_t).all() and (thresholds < plain_t).any()
    assert share > plain_share, (share, plain_share)


@pytest.mark.parametrize("target", [0.9, 0.95])
def test_accuracy_guarantee_is_not_vacuous(target):
    conf, agree = informative_proxy(np.random.default_rng(1))
    runs = trials(
        (conf, agree),
        lambda s: learn_accuracy(conf, s, agree[s], target, DELTA),
        lambda b, s: cascade_accuracy(conf, agree, b.threshold, s),
        target,
    )
    # the proxy answers a good share of the rows on average
    share = np.mean([(conf >= b.threshold).mean() for b, _ in runs])
    best = (conf >= np.quantile(conf[~agree], 1 - (1 - target) * N / (~agree).sum())).mean()
    assert share > 0.5 * best, (share, best)
    for bound, quality in runs[:50]:
        assert bound.bound >= target - 1e-9 or math.isinf(bound.threshold)
        assert 0 <= bound.estimate <= 1
        assert quality >= bound.bound - 0.05  # the bound is a bound, not an estimate


@pytest.mark.parametrize(("n", "m", "target"), [(N, BUDGET, 0.9), (150, 60, 0.9)])
def test_the_oracle_keeping_the_sample_lets_the_proxy_answer_more_rows(n, m, target):
    conf, agree = informative_proxy(np.random.default_rng(3), n)
    new_failed, new_share, new_t = accuracy_runs(conf, agree, target, m, 300, seed=4)
    old_failed, old_share, old_t = accuracy_runs(
        conf, agree, target, m, 300, seed=4, oracle_keeps_sample=False
    )
    # on every sample the new threshold is at most the old one, and lower on many
    assert (new_t <= old_t).all()
    assert (new_t < old_t).mean() > 0.3, (new_t < old_t).mean()
    assert new_share > old_share, (new_share, old_share)
    assert max(new_failed, old_failed) <= DELTA + 3 * math.sqrt(DELTA * (1 - DELTA) / 300)


def test_a_useless_proxy_escalates_almost_every_row():
    rng = np.random.default_rng(2)
    conf = rng.uniform(0.25, 1.0, N)
    agree = rng.random(N) < 0.6  # 60% agreement whatever the confidence says
    shares = []
    for _ in range(50):
        sample = rng.choice(N, BUDGET, replace=False)
        bound = learn_accuracy(conf, sample, agree[sample], 0.95, DELTA)
        answered = conf >= bound.threshold
        answered[sample] = False
        shares.append(answered.mean())
        assert cascade_accuracy(conf, agree, bound.threshold, sample) >= 0.95 - 0.02
    # Rows the proxy answers are wrong 40% of the time whatever its confidence, so at most
    # (1 - 0.95) / 0.4 = 12.5% of them can be given to it; it gets no more than that.
    assert np.mean(shares) <= 0.05 / 0.4, np.mean(shares)
    assert max(shares) <= 0.15


def test_without_evidence_the_proxy_answers_only_what_the_target_tolerates():
    conf = np.linspace(0.3, 1, 50)
    # no sample: only the 5 most confident rows (10% of 50 may be wrong whatever they say)
    bound = learn_accuracy(conf, [], [], 0.9, 0.05)
    assert (conf >= bound.threshold).sum() == 5 and bound.bound == pytest.approx(0.9)
    assert math.isinf(learn_accuracy([], [], [], 0.9, 0.05).threshold)
    assert math.isinf(learn_accuracy(conf, [], [], 0.99, 0.05).threshold)  # none tolerated
    # every sampled row disagrees: the test passes nothing, 5 unsampled rows still may go
    sample = np.arange(0, 50, 2)
    worst = learn_accuracy(conf, sample, np.zeros(25, bool), 0.9, 0.05)
    answered = (conf >= worst.threshold) & ~np.isin(np.arange(50), sample)
    assert answered.sum() == 5 and worst.bound >= 0.9
    old = learn_accuracy(conf, sample, np.zeros(25, bool), 0.9, 0.05, oracle_keeps_sample=False)
    assert (conf >= old.threshold).sum() == 1  # only the row above every sampled one
    # a sample where the proxy always agrees lets the whole population through
    everything = learn_accuracy(conf, sample, np.ones(25, bool), 0.5, 0.05)
    assert everything.threshold == pytest.approx(0.3)
    # a sample of every row: the oracle answers all of them, whatever the proxy said
    every = learn_accuracy(conf, np.arange(50), np.zeros(50, bool), 0.9, 0.05)
    assert every.threshold == pytest.approx(0.3) and every.bound == 1.0


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
        # the final answer: sampled and escalated rows have the oracle's label
        sampled = np.zeros(N, bool)
        sampled[sample] = True
        said = np.where((score >= bound.threshold) & ~sampled, True, truth)
        return truth[said].mean()

    runs = trials(
        None, lambda s: learn_precision(score, s, truth[s], target, DELTA), precision, target, 6
    )
    assert np.mean([q >= target for _, q in runs]) >= 1 - DELTA
    # not vacuous where the sample can show it: the union bound over 20 thresholds needs
    # many sampled rows above a threshold to prove 90% there
    answered = np.mean([(score >= b.threshold).mean() for b, _ in runs])
    assert answered > (0.1 if target == 0.8 else 0.0), answered


@pytest.mark.parametrize(("n", "m", "target"), [(150, 60, 0.8), (400, 100, 0.9), (100, 40, 0.7)])
def test_recall_and_precision_hold_on_small_tables(n, m, target):
    rng = np.random.default_rng(8)
    score, truth = binary_population(rng, n)
    trials, failed, answered = 400, np.zeros(2), np.zeros(2)
    for _ in range(trials):
        sample = rng.choice(n, m, replace=False)
        sampled = np.isin(np.arange(n), sample)
        low = learn_recall(score, sample, truth[sample], target, DELTA).threshold
        missed = truth & (score < low) & ~sampled  # the final answer's misses
        high = learn_precision(score, sample, truth[sample], target, DELTA).threshold
        said = np.where((score >= high) & ~sampled, True, truth)  # the final positives
        failed += [1 - missed.sum() / truth.sum() < target, truth[said].mean() < target]
        answered += [((score < low) & ~sampled).mean(), ((score >= high) & ~sampled).mean()]
    assert (failed / trials <= DELTA + 3 * math.sqrt(DELTA * (1 - DELTA) / trials)).all()
    assert answered[0] / trials > 0.15  # the proxy answers "not positive" on many rows


@pytest.mark.parametrize(("n", "m", "target"), [(150, 60, 0.8), (400, 100, 0.9)])
def test_the_randomised_recall_test_holds_and_answers_more(n, m, target):
    score, truth = binary_population(np.random.default_rng(8), n)
    rng = np.random.default_rng(11)
    trials, failed, answered, lower = 800, np.zeros(2), np.zeros(2), 0
    for _ in range(trials):
        sample, draw = rng.choice(n, m, replace=False), rng.random()
        sampled = np.isin(np.arange(n), sample)
        plain = learn_recall(score, sample, truth[sample], target, DELTA).threshold
        low = learn_recall(score, sample, truth[sample], target, DELTA, draw=draw).threshold
        assert low >= plain  # never fewer rows answered "not positive"
        lower += low > plain
        for j, threshold in enumerate((plain, low)):
            missed = truth & (score < threshold) & ~sampled
            failed[j] += 1 - missed.sum() / truth.sum() < target
            answered[j] += ((score < threshold) & ~sampled).mean()
    se = math.sqrt(DELTA * (1 - DELTA) / trials)
    assert failed[1] / trials <= DELTA + 3 * se, failed / trials
    assert failed[1] >= failed[0] and lower > 0 and answered[1] > answered[0], answered


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
        ({"target_accuracy": 0.9, "ranking": "labels"}, "ranking must be one of 'label'"),
    ],
)
def test_bad_cascade_options_are_refused(options, phrase):
    with pytest.raises(InvalidParameterError, match=phrase):
        CascadeSpec.from_kwargs(**options)


def labelled_proxy(rng, n):
    """Two labels, one reliable (95% agreement) and one not (30%), whose confidences say the
    opposite (the unreliable label is the surer one): label probabilities, agreement."""
    second = rng.random(n) < 0.5
    top = np.where(second, rng.uniform(0.7, 1.0, n), rng.uniform(0.5, 0.9, n))
    probs = np.where(second[:, None], np.c_[1 - top, top], np.c_[top, 1 - top])
    return probs, rng.random(n) < np.where(second, 0.3, 0.95)


def ranked_runs(probs, agree, target, m, trials, ranking, seed=0):
    """As :func:`accuracy_runs`, through the cascade's learner for ``ranking`` (a pilot of
    ``PILOT_SHARE`` of each sample for ``"label"``), each sample with its own draw."""
    rng = np.random.default_rng(seed)
    n, failed, shares = len(probs), 0, []
    for _ in range(trials):
        sample = rng.choice(n, m, replace=False)
        draw, pilot = rng.random(), draw_pilot(rng, m)
        if ranking == "label":
            bound, score = learn_ranked_accuracy(
                probs, sample, agree[sample], target, DELTA, pilot=pilot, draw=draw
            )
        else:
            score = probs.max(axis=1)
            bound = learn_accuracy(score, sample, agree[sample], target, DELTA, draw=draw)
        assert bound.target == target and (bound.bound >= target - 1e-9 or bound.bound == 1)
        failed += cascade_accuracy(score, agree, bound.threshold, sample) < target
        answered = score >= bound.threshold
        answered[sample] = False
        shares.append(answered.mean())
    return failed / trials, float(np.mean(shares))


@pytest.mark.parametrize(("n", "m", "target"), [(400, 120, 0.9), (2000, 200, 0.95)])
def test_the_label_ranking_keeps_the_guarantee_and_answers_far_more(n, m, target):
    probs, agree = labelled_proxy(np.random.default_rng(9), n)
    trials = 600
    failed, share = ranked_runs(probs, agree, target, m, trials, "label")
    plain_failed, plain_share = ranked_runs(probs, agree, target, m, trials, "confidence")
    se = math.sqrt(DELTA * (1 - DELTA) / trials)
    assert max(failed, plain_failed) <= DELTA + 3 * se, (failed, plain_failed)
    # the reliable label's rows are the less confident ones: only the label ranking finds them
    assert share > 2 * plain_share, (share, plain_share)


def test_the_label_ranking_costs_little_where_confidence_already_ranks_well():
    rng = np.random.default_rng(1)
    top = rng.uniform(0.5, 1.0, N)
    probs = np.c_[top, 1 - top]  # one label, calibrated: nothing for the ranking to learn
    agree = rng.random(N) < top
    failed, share = ranked_runs(probs, agree, 0.9, 300, 200, "label")
    _, plain_share = ranked_runs(probs, agree, 0.9, 300, 200, "confidence")
    assert failed <= DELTA + 3 * math.sqrt(DELTA * (1 - DELTA) / 200)
    assert 0.8 * plain_share < share <= plain_share + 0.01, (share, plain_share)


def test_a_useless_proxy_escalates_almost_every_row_with_the_label_ranking():
    rng = np.random.default_rng(2)
    top = rng.uniform(0.5, 1.0, N)
    probs = np.c_[top, 1 - top]
    flip = rng.random(N) < 0.5  # labels at random, agreement 60% whatever they are
    probs[flip] = probs[flip][:, ::-1]
    agree = rng.random(N) < 0.6
    failed, share = ranked_runs(probs, agree, 0.95, BUDGET, 100, "label")
    # as with the confidence ranking: at most (1 - 0.95) / 0.4 of the rows can go to the proxy
    assert share <= 0.05 / 0.4, share
    assert failed <= DELTA + 3 * math.sqrt(DELTA * (1 - DELTA) / 100)
