"""Decision rules without the sensitive attribute at prediction time: groups inferred from x, a rule per cell."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fairtune import FairFineTuner
from fairtune.catalogue import CATALOGUE, MethodSpec
from fairtune.config import FinetuneGrid
from fairtune.constraints import (FairnessTarget, fit_inferred_groups, fit_proxy_thresholds, fit_randomized_thresholds,
                                  fit_threshold_rule)
from fairtune.constraints.targets import gap_bound, rates_and_sizes
from fairtune.constraints.thresholds import err_from_counts
from fairtune.errors import ConfigError
from fairtune.experiments import compare_on_features
from fairtune.experiments.tradeoff import WITHOUT_S, setting
from fairtune.metrics import evaluate
from fairtune.training import TrainingData


def proxied_task(n: int, n_groups: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inputs x whose first column reveals the group (with noise), scores that favour the higher groups, labels, groups."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, n_groups, n)
    x = np.column_stack([s + 0.35 * rng.normal(size=n), rng.normal(size=(n, 2))])
    y = (rng.random(n) < 0.2 + 0.2 * s).astype(np.int64)
    scores = np.clip(0.3 * y + 0.12 * s + 0.5 * rng.random(n), 0, 1).round(2)
    return x, scores, y, s


def expected_gap_and_err(probability: np.ndarray, y: np.ndarray, s: np.ndarray, target: FairnessTarget) -> tuple[float, float]:
    """The bounded gap and Err of a randomized rule in expectation, computed from its P(Ŷ=1) per sample."""
    n_groups = int(s.max()) + 1
    tp = np.array([probability[(s == g) & (y == 1)].sum() for g in range(n_groups)])
    fp = np.array([probability[(s == g) & (y == 0)].sum() for g in range(n_groups)])
    n_pos = np.bincount(s[y == 1], minlength=n_groups)
    rates, sizes = rates_and_sizes(target.constraint, tp, fp, n_pos, np.bincount(s) - n_pos)
    err = err_from_counts(tp.sum(), fp.sum(), n_pos.sum() - tp.sum(), (y == 0).sum() - fp.sum())
    return gap_bound(rates, sizes, target, len(y)), float(err)


@pytest.mark.parametrize("constraint, n_groups, estimate", [("eo", 2, "sample"), ("dp", 2, "upper"), ("eo", 3, "sample")])
def test_the_proxy_rule_meets_the_target_on_the_true_groups_from_x_alone(constraint, n_groups, estimate):
    x, scores, y, s = proxied_task(1500 * n_groups, n_groups, seed=n_groups)
    target = FairnessTarget(constraint, 0.05, estimate=estimate)
    plain = evaluate(y, (scores >= 0.5).astype(np.int64), s)
    assert plain[target.metric] > 0.15  # the task's unconstrained rule misses the target
    rule = fit_proxy_thresholds(scores, x, y, s, target, seed=3, grid=20)
    probability = rule.rule.positive_probability(scores, rule.groups.cells(x))
    gap, err = expected_gap_and_err(probability, y, s, target)
    assert gap == pytest.approx(rule.fit_bound) and gap <= 0.05
    assert err == pytest.approx(rule.fit_err)
    labels = rule.predict(scores, x)  # no s
    assert np.array_equal(labels, rule.predict(scores, x)) and set(np.unique(labels)) <= {0, 1}
    assert evaluate(y, labels, s)[target.metric] <= 0.05 + 0.06  # drawn labels: their own noise around the expectation
    assert len(rule.record()["thresholds"]) == n_groups * 4  # cells: inferred group × 4 bins


def test_cells_equal_to_the_groups_solve_the_per_group_program():
    """Deciding by cells that are the groups themselves is the per-group randomized rule (one linear program)."""
    _, scores, y, s = proxied_task(1200, 2, seed=5)
    target = FairnessTarget("eo", 0.04, estimate="sample")
    by_group = fit_randomized_thresholds(scores, y, s, target, grid=12)
    by_cell = fit_randomized_thresholds(scores, y, s, target, grid=12, cells=s)
    assert by_cell.fit_err == pytest.approx(by_group.fit_err, abs=1e-6)
    assert by_cell.fit_bound <= 0.04 + 1e-9


def test_inferred_groups_find_the_group_and_split_it_into_quantile_bins():
    x, _, _, s = proxied_task(3000, 2, seed=1)
    groups = fit_inferred_groups(x, s, bins=3)
    cells = groups.cells(x)
    assert set(np.unique(cells)) == set(range(6))
    assert np.mean(cells // 3 == s) > 0.9  # the inferred group is mostly right
    for g in range(2):  # bins of one inferred group hold about a third of it each
        counts = np.bincount(cells[cells // 3 == g] % 3, minlength=3)
        assert counts.min() > 0.3 * counts.sum()


def test_the_proxy_rule_needs_the_inputs_and_matching_lengths():
    x, scores, y, s = proxied_task(600, 2, seed=2)
    target = FairnessTarget("eo", 0.1)
    with pytest.raises(ConfigError, match="infers the groups from the inputs"):
        fit_threshold_rule(scores, y, s, target, "proxy")
    with pytest.raises(ConfigError, match="the inputs have 599 rows but the scores have 600"):
        fit_proxy_thresholds(scores, x[:-1], y, s, target)
    rule = fit_threshold_rule(scores, y, s, target, "proxy", x=x)
    with pytest.raises(ConfigError, match="rows"):
        rule.predict(scores, x[:10])


def test_the_pthr_form_is_a_target_without_s_at_prediction():
    info = CATALOGUE["tl-eo-pthr"]
    assert info.thresholds == "proxy" and not info.constrained and not info.sensitive_at_prediction
    assert setting(MethodSpec.parse("win-dp-pthr:0.1")) == WITHOUT_S


def test_engine_pthr_keeps_the_plain_candidate_and_decides_from_the_inputs():
    """On features: -pthr keeps plain TL's candidate, fits the rule on train+val and meets ε's scale on test."""
    rng = np.random.default_rng(0)

    def split(n: int) -> TrainingData:
        s = rng.integers(0, 2, n)
        signal = rng.normal(size=n)
        y = (signal + 0.8 * s + 0.5 * rng.normal(size=n) > 0.4).astype(np.int64)
        x = np.column_stack([signal, s + 0.3 * rng.normal(size=n), rng.normal(size=n)]).astype(np.float32)
        return TrainingData.from_arrays(torch.from_numpy(x), y, s)

    features = {name: split(2500) for name in ("train", "val", "test")}
    torch.manual_seed(0)  # the head's initial weights
    layer = torch.nn.Linear(3, 2)
    grid = FinetuneGrid(lrs=(1e-2,), epochs=(2,))
    [_, plain, proxied] = compare_on_features(layer, features, ["tl", "tl-eo-pthr:0.1"], grid, seed=0, keep_predictions=True)
    assert plain.selection["params"] == proxied.selection["params"]
    assert plain.row["delta_eo"] > 0.2
    assert proxied.row["delta_eo"] <= 0.1 + 0.06 and proxied.row["target_met"] == (proxied.row["delta_eo"] <= 0.1)
    assert "thresholds" in proxied.selection and "probabilities" in proxied.selection
    [_, again] = compare_on_features(layer, features, ["tl-eo-pthr:0.1"], grid, seed=0, keep_predictions=True)
    assert again.predictions["y_pred"].tolist() == proxied.predictions["y_pred"].tolist()


def test_estimator_with_the_proxy_rule_predicts_without_sensitive_features():
    rng = np.random.default_rng(1)
    n = 3000
    s = rng.integers(0, 2, n)
    signal = rng.normal(size=n)
    y = (signal + 0.8 * s + 0.5 * rng.normal(size=n) > 0.4).astype(np.int64)
    X = np.column_stack([signal, s + 0.3 * rng.normal(size=n), rng.normal(size=n)]).astype(np.float32)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    tuner = FairFineTuner(model, method="tl", constraint="eo", tolerance=0.1, thresholds="proxy", epochs=3).fit(
        X, y, sensitive_features=s)
    labels = tuner.predict(X)  # no sensitive_features needed
    assert np.array_equal(labels, tuner.predict(X))
    plain = FairFineTuner(model, method="tl", epochs=3).fit(X, y, sensitive_features=s).predict(X)
    assert evaluate(y, labels, s)["delta_eo"] < evaluate(y, plain, s)["delta_eo"]
    assert evaluate(y, labels, s)["delta_eo"] <= 0.1 + 0.06


def test_a_rule_that_can_only_predict_no_positive_is_stated(caplog):
    """ε below a new split's noise: the only rule meeting it is the constant one, and the run says so."""
    caplog.set_level("WARNING", logger="fairtune")
    rng = np.random.default_rng(3)

    def split(n: int) -> TrainingData:
        s = rng.integers(0, 2, n)
        y = (rng.random(n) < 0.3).astype(np.int64)
        x = np.column_stack([y + rng.normal(size=n), s + 0.3 * rng.normal(size=n)]).astype(np.float32)
        return TrainingData.from_arrays(torch.from_numpy(x), y, s)

    features = {name: split(300) for name in ("train", "val", "test")}
    torch.manual_seed(0)
    [_, result] = compare_on_features(torch.nn.Linear(2, 2), features, ["tl-eo-pthr:0.01"], FinetuneGrid(epochs=(1,)), seed=0)
    assert result.row["delta_eo"] == 0.0
    assert "tl-eo-pthr:0.01, seed 0: the only rule meeting delta_eo <= 0.01 with a new split's noise predicts no positive" in caplog.text


def test_small_groups_still_get_a_rule_that_predicts_when_one_meets_the_bound():
    """Few samples: the noise at the starting rates alone exceeds ε, yet rules with rates near 0 and 1 (little noise)
    meet the "upper" bound; the rates-following noise finds one instead of the constant model."""
    rng = np.random.default_rng(0)
    n = 300
    s = rng.integers(0, 2, n)
    y = rng.integers(0, 2, n)
    scores = np.clip(y + 0.25 * rng.normal(size=n), 0, 1)  # separable enough for TPR ≈ 1, FPR ≈ 0
    x = np.column_stack([s + 0.3 * rng.normal(size=n), rng.normal(size=n)])
    target = FairnessTarget("eo", 0.05, estimate="upper")
    rule = fit_proxy_thresholds(scores, x, y, s, target, grid=30)
    # the constant model has about 70 % Err here (weighted F1 of all-negative), which the fixed noise alone ends at
    assert rule.fit_bound <= 0.05 and rule.fit_err < 5
    probability = rule.rule.positive_probability(scores, rule.groups.cells(x))
    gap, err = expected_gap_and_err(probability, y, s, target)
    assert gap == pytest.approx(rule.fit_bound) and err == pytest.approx(rule.fit_err)
