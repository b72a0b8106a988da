"""Fairness targets (issue 12): the target's rows and noise allowance, group thresholds, selection."""

from __future__ import annotations

from itertools import product

import numpy as np
import pytest
import torch

from fairtune.constraints import FairnessTarget, fit_group_thresholds, fit_randomized_thresholds, select_under_target
from fairtune.constraints.targets import (
    BAD_ESTIMATE,
    BAD_TOLERANCE,
    bounded_gap,
    constraint_rows,
    expected_abs,
    gap_bound,
    rates_and_sizes,
)
from fairtune.constraints.thresholds import err_from_counts
from fairtune.errors import ConfigError, UndefinedMetricError
from fairtune.methods.fairness import BAD_CONSTRAINT
from fairtune.metrics import err, evaluate, false_positive_rates, selection_rates, true_positive_rates
from fairtune.training import TrainingData


def scored_groups(n: int, n_groups: int, seed: int, decimals: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores that favour the higher groups, labels that depend on the score, group codes."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, n_groups, n)
    y = (rng.random(n) < 0.25 + 0.15 * s).astype(np.int64)
    scores = np.clip(0.35 * y + 0.1 * s + 0.5 * rng.random(n), 0, 1).round(decimals)
    return scores, y, s


def biased_task(n: int = 1500, n_groups: int = 2, seed: int = 0) -> TrainingData:
    """Features where the group shifts both a feature and the label: the best unconstrained head is unfair."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, n_groups, n)
    z = rng.normal(size=n)
    y = (z + 0.9 * s + 0.6 * rng.normal(size=n) > 0.6).astype(np.int64)
    x = np.stack([z + 0.5 * s, s.astype(float), rng.normal(size=n)], axis=1)
    return TrainingData.from_arrays(torch.tensor(x, dtype=torch.float32), y, s)


def per_group_predictions(scores: np.ndarray, s: np.ndarray, thresholds: tuple[float, ...]) -> np.ndarray:
    return (scores >= np.asarray(thresholds)[s]).astype(np.int64)


# --- the target's settings ------------------------------------------------------------------

@pytest.mark.parametrize("tolerance", [0, -0.1, 2, 2.5, float("nan"), "wide"])
def test_a_tolerance_outside_0_2_is_a_one_line_config_error(tolerance):
    with pytest.raises(ConfigError) as error:
        FairnessTarget("eo", tolerance)
    assert str(error.value) == BAD_TOLERANCE.format(value=tolerance)
    assert "\n" not in str(error.value)


def test_an_unknown_constraint_or_estimate_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as error:
        FairnessTarget("eop", 0.05)
    assert str(error.value) == BAD_CONSTRAINT.format(kind="eop")
    with pytest.raises(ConfigError) as error:
        FairnessTarget("dp", 0.05, estimate="pessimistic")
    assert str(error.value) == BAD_ESTIMATE.format(value="pessimistic")


# --- the linear rows are the metric -----------------------------------------------------------

@pytest.mark.parametrize("constraint", ["eo", "dp"])
@pytest.mark.parametrize("n_groups", [2, 3, 4])
def test_the_largest_row_is_the_metrics_gap(constraint, n_groups):
    rng = np.random.default_rng(n_groups)
    s = np.arange(200) % n_groups
    y, y_pred = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    if constraint == "eo":
        tpr, fpr = true_positive_rates(y, y_pred, s), false_positive_rates(y, y_pred, s)
        rates = np.array([[tpr[g], fpr[g]] for g in range(n_groups)])
    else:
        rates = np.array([[r] for r in selection_rates(y_pred, s).values()])
    rows = constraint_rows(constraint, n_groups)
    assert rows.shape == ((4 if constraint == "eo" else 2) * n_groups * (n_groups - 1) // 2, n_groups, rates.shape[1])
    gap = np.einsum("kgr,gr->k", rows, rates).max()
    assert gap == pytest.approx(evaluate(y, y_pred, s)["delta_" + constraint])


def test_rates_from_counts_are_tpr_fpr_or_the_selection_rate():
    rates, sizes = rates_and_sizes("eo", np.array(3), np.array(2), np.array(4), np.array(8))
    assert rates.tolist() == [0.75, 0.25] and sizes.tolist() == [4, 8]
    rates, sizes = rates_and_sizes("dp", np.array(3), np.array(2), np.array(4), np.array(6))
    assert rates.tolist() == [0.5] and sizes.tolist() == [10]


def test_expected_abs_is_the_folded_normal_mean():
    z = np.random.default_rng(0).standard_normal(400_000)
    for mean, sd in [(0.0, 0.03), (0.05, 0.03), (-0.02, 0.01), (0.3, 0.05)]:
        assert expected_abs(mean, sd) == pytest.approx(np.abs(mean + sd * z).mean(), abs=2e-4)
    assert expected_abs(-0.04, 0.0) == pytest.approx(0.04)
    assert expected_abs(0.0, 0.03) == pytest.approx(0.03 * np.sqrt(2 / np.pi))


def test_the_expected_estimate_adds_the_noise_of_a_new_split_of_the_reference_size():
    assert FairnessTarget("eo", 0.05, estimate="sample").noise_scale(1000) == 0.0
    assert FairnessTarget("eo", 0.05).noise_scale(1000) == 2.0
    assert FairnessTarget("eo", 0.05, reference_size=500).noise_scale(1000) == 3.0


# --- group thresholds ---------------------------------------------------------------------------

def test_err_from_counts_is_the_metric():
    rng = np.random.default_rng(1)
    for _ in range(20):
        y, y_pred = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
        tp, fp = int(((y == 1) & (y_pred == 1)).sum()), int(((y == 0) & (y_pred == 1)).sum())
        fn, tn = int((y == 1).sum()) - tp, int((y == 0).sum()) - fp
        assert err_from_counts(np.array(tp), np.array(fp), np.array(fn), np.array(tn)) == pytest.approx(err(y, y_pred))
    assert err_from_counts(np.array(0), np.array(0), np.array(0), np.array(5)) == pytest.approx(err(np.zeros(5), np.zeros(5)))


def brute_force(scores, y, s, n_groups, constraint, tolerance):
    """The least Err over every combination of per-group thresholds (distinct scores and +inf)."""
    metric = "delta_" + constraint
    options = [list(np.unique(scores[s == g])) + [np.inf] for g in range(n_groups)]
    best = np.inf
    for thresholds in product(*options):
        metrics = evaluate(y, per_group_predictions(scores, s, thresholds), s)
        if metrics[metric] <= tolerance + 1e-12:
            best = min(best, metrics["err"])
    return best


@pytest.mark.parametrize("constraint, n_groups, tolerance", [("eo", 2, 0.1), ("dp", 2, 0.05), ("eo", 3, 0.15)])
def test_thresholds_meet_the_target_with_the_least_err_of_an_exhaustive_search(constraint, n_groups, tolerance):
    scores, y, s = scored_groups(90 * n_groups, n_groups, seed=n_groups)
    target = FairnessTarget(constraint, tolerance, estimate="sample")
    fitted = fit_group_thresholds(scores, y, s, target)
    metrics = evaluate(y, fitted.predict(scores, s), s)
    assert metrics["delta_" + constraint] <= tolerance + 1e-12
    assert metrics["delta_" + constraint] == pytest.approx(fitted.fit_gap)
    assert metrics["err"] == pytest.approx(fitted.fit_err)
    assert metrics["err"] == pytest.approx(brute_force(scores, y, s, n_groups, constraint, tolerance))
    unconstrained = evaluate(y, (scores >= 0.5).astype(int), s)
    assert unconstrained["delta_" + constraint] > tolerance  # the case is one where the target binds


def test_expected_thresholds_leave_room_for_the_noise_of_a_new_split():
    scores, y, s = scored_groups(600, 2, seed=5, decimals=2)
    sample = fit_group_thresholds(scores, y, s, FairnessTarget("eo", 0.06, estimate="sample"))
    expected = fit_group_thresholds(scores, y, s, FairnessTarget("eo", 0.06))
    assert expected.fit_bound <= 0.06 + 1e-12
    assert expected.fit_gap < expected.fit_bound  # the allowance is positive
    assert expected.fit_gap < sample.fit_gap <= 0.06 + 1e-12
    assert expected.fit_err > sample.fit_err


def test_a_tiny_tolerance_is_met_by_predicting_alike_across_groups():
    scores, y, s = scored_groups(200, 2, seed=3)
    fitted = fit_group_thresholds(scores, y, s, FairnessTarget("eo", 1e-9, estimate="sample"))
    assert evaluate(y, fitted.predict(scores, s), s)["delta_eo"] == pytest.approx(0.0, abs=1e-9)


def test_a_group_without_positives_is_a_one_line_error():
    scores, y, s = np.array([0.2, 0.8, 0.4, 0.6]), np.array([0, 1, 0, 0]), np.array([0, 0, 1, 1])
    with pytest.raises(UndefinedMetricError, match="group 1 has no sample to compute its tpr on"):
        fit_group_thresholds(scores, y, s, FairnessTarget("eo", 0.1))


def expected_rates(probability: np.ndarray, y: np.ndarray, s: np.ndarray, constraint: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-group rates ``(G, R)`` of a randomized rule in expectation (the mean P(Ŷ=1) over each rate's samples), and their sizes."""
    n_groups = int(s.max()) + 1
    tp = np.array([probability[(s == g) & (y == 1)].sum() for g in range(n_groups)])
    fp = np.array([probability[(s == g) & (y == 0)].sum() for g in range(n_groups)])
    n_pos = np.array([((s == g) & (y == 1)).sum() for g in range(n_groups)])
    return rates_and_sizes(constraint, tp, fp, n_pos, np.bincount(s) - n_pos)


@pytest.mark.parametrize("constraint, n_groups, tolerance, estimate", [
    ("eo", 2, 0.1, "sample"), ("dp", 2, 0.05, "sample"), ("eo", 3, 0.15, "sample"), ("eo", 2, 0.12, "expected"),
    ("dp", 3, 0.1, "expected"), ("eo", 2, 0.15, "upper"),
])
def test_randomized_thresholds_meet_the_target_in_expectation_with_less_err_on_a_coarse_grid(constraint, n_groups, tolerance, estimate):
    scores, y, s = scored_groups(300 * n_groups, n_groups, seed=n_groups, decimals=2)
    target = FairnessTarget(constraint, tolerance, estimate=estimate)
    deterministic = fit_group_thresholds(scores, y, s, target, grid=6)
    randomized = fit_randomized_thresholds(scores, y, s, target, grid=6, seed=1)
    probability = randomized.positive_probability(scores, s)
    rates, sizes = expected_rates(probability, y, s, constraint)
    assert gap_bound(rates, sizes, target, len(y)) == pytest.approx(randomized.fit_bound)
    assert randomized.fit_bound <= tolerance
    tp, fp = probability[y == 1].sum(), probability[y == 0].sum()
    assert err_from_counts(tp, fp, (y == 1).sum() - tp, (y == 0).sum() - fp) == pytest.approx(randomized.fit_err)
    assert randomized.fit_err < deterministic.fit_err - 0.5  # the coarse grid's deterministic rule pays for its steps
    assert ((probability > 0) & (probability < 1)).any()  # some group mixes


def test_randomized_thresholds_never_have_more_err_than_the_deterministic_ones_on_the_same_grid():
    for seed in range(4):
        scores, y, s = scored_groups(400, 2, seed=seed, decimals=3)
        for tolerance in (0.02, 0.1, 0.3):
            target = FairnessTarget("eo", tolerance, estimate="sample")
            deterministic = fit_group_thresholds(scores, y, s, target)
            randomized = fit_randomized_thresholds(scores, y, s, target)
            assert randomized.fit_err <= deterministic.fit_err + 1e-9
            assert randomized.fit_bound <= tolerance


def test_randomized_predictions_are_reproducible_from_their_seed():
    scores, y, s = scored_groups(2000, 2, seed=4, decimals=2)
    target = FairnessTarget("eo", 0.05, estimate="sample")
    rule = fit_randomized_thresholds(scores, y, s, target, grid=8, seed=7)
    state = np.random.get_state()
    first = rule.predict(scores, s)
    np.random.seed(123)  # the global RNG plays no part
    assert np.array_equal(first, rule.predict(scores, s))
    np.random.set_state(state)
    again = fit_randomized_thresholds(scores, y, s, target, grid=8, seed=7)
    assert np.array_equal(first, again.predict(scores, s))
    other = fit_randomized_thresholds(scores, y, s, target, grid=8, seed=8).predict(scores, s)
    assert not np.array_equal(first, other)
    probability = rule.positive_probability(scores, s)
    assert np.array_equal(first[probability == 1], np.ones((probability == 1).sum()))
    assert not first[probability == 0].any()
    # the drawn labels follow the probabilities: the rule's gap on 2000 samples is within noise of its expected gap
    assert evaluate(y, first, s)["delta_eo"] <= 0.05 + 0.08


# --- selection under a target --------------------------------------------------------------------

def test_selection_keeps_the_lowest_err_among_those_meeting_the_target():
    target = FairnessTarget("eo", 0.05)
    candidates = [
        {"err": 14.0, "delta_eo": 0.12, "delta_dp": 0.1},
        {"err": 15.5, "delta_eo": 0.05, "delta_dp": 0.1},
        {"err": 15.0, "delta_eo": 0.04, "delta_dp": 0.1},
        {"err": 16.0, "delta_eo": 0.01, "delta_dp": 0.1},
    ]
    assert select_under_target(candidates, target) == (2, True)
    assert select_under_target(candidates, FairnessTarget("dp", 0.2)) == (0, True)


def test_selection_without_a_candidate_meeting_the_target_keeps_the_closest_and_flags_it():
    candidates = [{"err": 14.0, "delta_eo": 0.12}, {"err": 17.0, "delta_eo": 0.07}, {"err": 16.0, "delta_eo": 0.07}]
    assert select_under_target(candidates, FairnessTarget("eo", 0.05)) == (2, False)
    with pytest.raises(ConfigError):
        select_under_target([], FairnessTarget("eo", 0.05))
    with pytest.raises(ConfigError, match="candidate 0 has no 'delta_dp'"):
        select_under_target(candidates, FairnessTarget("dp", 0.05))


def test_the_bounded_gap_is_the_metric_for_sample_and_larger_for_expected():
    scores, y, s = scored_groups(300, 3, seed=8)
    y_pred = (scores >= 0.5).astype(np.int64)
    sample = bounded_gap(y, y_pred, s, FairnessTarget("eo", 0.1, estimate="sample"))
    assert sample == pytest.approx(evaluate(y, y_pred, s)["delta_eo"])
    expected = bounded_gap(y, y_pred, s, FairnessTarget("eo", 0.1))
    assert expected > sample
    assert bounded_gap(y, y_pred, s, FairnessTarget("eo", 0.1, estimate="upper")) > expected  # E|d + n| ≤ |d| + E|n|
    assert bounded_gap(y, y_pred, s, FairnessTarget("dp", 0.1, estimate="sample")) == pytest.approx(evaluate(y, y_pred, s)["delta_dp"])
