"""ΔDP, ΔEO, Err against an independent computation: fairlearn's MetricFrame and scikit-learn."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import f1_score

from fairtune.errors import UndefinedMetricError
from fairtune.metrics import delta_dp, delta_eo, err, evaluate


def _random_predictions(seed: int, n: int = 400, groups=("a", "b")):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, n), rng.integers(0, 2, n), rng.choice(list(groups), n)


def _rates(y_true, y_pred, s) -> MetricFrame:
    return MetricFrame(
        metrics={"sr": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate},
        y_true=y_true, y_pred=y_pred, sensitive_features=s,
    )


@pytest.mark.parametrize("seed", range(5))
def test_two_groups_match_fairlearn(seed: int) -> None:
    y_true, y_pred, s = _random_predictions(seed)
    frame = _rates(y_true, y_pred, s)
    gaps = frame.difference()

    assert delta_dp(y_pred, s) == pytest.approx(demographic_parity_difference(y_true, y_pred, sensitive_features=s))
    assert delta_dp(y_pred, s) == pytest.approx(gaps["sr"])
    assert delta_eo(y_true, y_pred, s) == pytest.approx(gaps["tpr"] + gaps["fpr"])
    # the paper's sum is never below fairlearn's default (the max of the two gaps)
    assert delta_eo(y_true, y_pred, s) >= equalized_odds_difference(y_true, y_pred, sensitive_features=s) - 1e-12
    assert err(y_true, y_pred) == pytest.approx(100 * (1 - f1_score(y_true, y_pred, average="weighted")))


def test_sum_differs_from_fairlearn_max_when_both_gaps_are_positive() -> None:
    # group a: TPR 1.0, FPR 0.5; group b: TPR 0.5, FPR 0.0  -> ΔTPR = ΔFPR = 0.5
    y_true = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    y_pred = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    s = np.array(["a"] * 4 + ["b"] * 4)

    fairlearn_max = equalized_odds_difference(y_true, y_pred, sensitive_features=s)

    assert fairlearn_max == pytest.approx(0.5)
    assert delta_eo(y_true, y_pred, s) == pytest.approx(1.0)
    assert delta_dp(y_pred, s) == pytest.approx(0.75 - 0.25)


@pytest.mark.parametrize("seed", range(3))
def test_three_groups_take_the_max_pairwise_gap(seed: int) -> None:
    y_true, y_pred, s = _random_predictions(seed, n=600, groups=("a", "b", "c"))
    by_group = _rates(y_true, y_pred, s).by_group

    assert delta_dp(y_pred, s) == pytest.approx(demographic_parity_difference(y_true, y_pred, sensitive_features=s))
    expected_eo = max(
        abs(by_group.loc[g, "tpr"] - by_group.loc[h, "tpr"]) + abs(by_group.loc[g, "fpr"] - by_group.loc[h, "fpr"])
        for g, h in combinations(by_group.index, 2)
    )
    assert delta_eo(y_true, y_pred, s) == pytest.approx(expected_eo)
    # the max pairwise sum can be below the sum of the two separate max gaps
    assert delta_eo(y_true, y_pred, s) <= by_group["tpr"].max() - by_group["tpr"].min() + by_group["fpr"].max() - by_group["fpr"].min() + 1e-12


def test_evaluate_returns_the_three_metrics() -> None:
    y_true, y_pred, s = _random_predictions(11)
    assert evaluate(y_true, y_pred, s) == {
        "err": pytest.approx(err(y_true, y_pred)),
        "delta_dp": pytest.approx(delta_dp(y_pred, s)),
        "delta_eo": pytest.approx(delta_eo(y_true, y_pred, s)),
    }


def test_err_is_in_percent() -> None:
    y = np.array([0, 1, 0, 1])
    assert err(y, y) == 0.0
    assert err(y, 1 - y) == 100.0


def test_group_without_positives_makes_eo_undefined() -> None:
    y_true = np.array([1, 0, 1, 0, 0, 0])
    y_pred = np.array([1, 0, 0, 1, 0, 1])
    s = np.array([0, 0, 0, 1, 1, 1])  # group 1 has no Y=1
    with pytest.raises(UndefinedMetricError, match="group 1 has no sample"):
        delta_eo(y_true, y_pred, s)
    assert delta_dp(y_pred, s) == pytest.approx(2 / 3 - 1 / 3)  # ΔDP needs no labels: still defined


def test_group_without_negatives_makes_eo_undefined() -> None:
    y_true = np.array([1, 0, 1, 1])
    y_pred = np.array([1, 0, 0, 1])
    s = np.array([0, 0, 1, 1])
    with pytest.raises(UndefinedMetricError, match="false positive rate"):
        delta_eo(y_true, y_pred, s)


def test_a_single_group_is_undefined() -> None:
    with pytest.raises(UndefinedMetricError, match="at least 2 sensitive groups"):
        delta_dp(np.array([0, 1]), np.array([0, 0]))


def test_inputs_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="different lengths"):
        delta_eo(np.array([0, 1]), np.array([0, 1, 1]), np.array([0, 1]))


def test_binary_err_is_scikit_learns_float_exactly() -> None:
    """The confusion-count path gives the very float f1_score gives, on every split shape we meet."""
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 50, 3000):
        for trial in range(300):
            y_true = (rng.random(n) < rng.random()).astype(np.int64)
            y_pred = (rng.random(n) < rng.random()).astype(np.int64)
            if trial % 5 == 0:
                y_pred[:] = trial % 2  # one predicted class only
            if trial % 7 == 0:
                y_true[:] = 1
            expected = float(100.0 * (1.0 - f1_score(y_true, y_pred, average="weighted", zero_division=0)))
            assert err(y_true, y_pred) == expected
    labels = np.array(["a", "b", "b"])  # not 0/1: scikit-learn itself
    assert err(labels, labels) == 0.0
