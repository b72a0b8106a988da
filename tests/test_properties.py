"""Property-based tests (hypothesis): the metrics' ranges and symmetries, the weighted SVD on random shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from hypothesis import given, settings
from hypothesis import strategies as st

from fairtune.factorization import FactorizedLinear, weighted_svd
from fairtune.factorization.wsvd import weighted_error
from fairtune.metrics import delta_dp, delta_eo, err

PROPERTY = settings(max_examples=60, deadline=None)
binary = st.integers(0, 1)


@st.composite
def labelled_groups(draw: st.DrawFn, max_groups: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y_true, y_pred, s)`` where every group has at least one positive and one negative label."""
    n_groups = draw(st.integers(2, max_groups))
    y_true, y_pred, s = [], [], []
    for group in range(n_groups):
        pairs = draw(st.lists(st.tuples(binary, binary), max_size=15))
        pairs += [(1, draw(binary)), (0, draw(binary))]
        y_true += [y for y, _ in pairs]
        y_pred += [p for _, p in pairs]
        s += [group] * len(pairs)
    order = np.random.default_rng(draw(st.integers(0, 2**16))).permutation(len(s))
    return np.array(y_true)[order], np.array(y_pred)[order], np.array(s)[order]


@PROPERTY
@given(labelled_groups())
def test_metrics_lie_in_their_ranges_and_bracket_fairlearn(data) -> None:
    y_true, y_pred, s = data
    dp, eo = delta_dp(y_pred, s), delta_eo(y_true, y_pred, s)
    assert 0 <= dp <= 1 and 0 <= eo <= 2 and 0 <= err(y_true, y_pred) <= 100
    assert dp == pytest.approx(demographic_parity_difference(y_true, y_pred, sensitive_features=s))
    fairlearn_max = equalized_odds_difference(y_true, y_pred, sensitive_features=s)  # max(ΔTPR, ΔFPR)
    assert fairlearn_max - 1e-12 <= eo <= 2 * fairlearn_max + 1e-12  # the paper's sum of the two


@PROPERTY
@given(labelled_groups(), st.randoms(use_true_random=False))
def test_metrics_do_not_depend_on_group_names_or_sample_order(data, random) -> None:
    y_true, y_pred, s = data
    names = [f"group-{i}" for i in range(s.max() + 1)]
    random.shuffle(names)
    renamed = np.array(names)[s]
    order = np.array(random.sample(range(len(s)), len(s)))
    assert delta_dp(y_pred, renamed) == pytest.approx(delta_dp(y_pred, s))
    assert delta_eo(y_true, y_pred, renamed) == pytest.approx(delta_eo(y_true, y_pred, s))
    assert delta_eo(y_true[order], y_pred[order], s[order]) == pytest.approx(delta_eo(y_true, y_pred, s))


@PROPERTY
@given(st.lists(st.tuples(binary, binary), min_size=1, max_size=20), st.integers(2, 4))
def test_gaps_are_zero_when_predictions_are_independent_of_the_group(pairs, n_groups) -> None:
    pairs = pairs + [(1, 0), (0, 1)]  # each group: the same joint distribution of (y, ŷ), both labels present
    y_true = np.array([y for y, _ in pairs] * n_groups)
    y_pred = np.array([p for _, p in pairs] * n_groups)
    s = np.repeat(np.arange(n_groups), len(pairs))
    assert delta_dp(y_pred, s) == 0
    assert delta_eo(y_true, y_pred, s) == 0


@st.composite
def weights_and_importance(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``k x d`` weight and a positive row importance of length ``d`` spanning up to 6 orders of magnitude."""
    d, k = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    weight = torch.randn(k, d, generator=generator, dtype=torch.float64)
    importance = 10 ** (6 * torch.rand(d, generator=generator, dtype=torch.float64) - 3)
    return weight, importance


@PROPERTY
@given(weights_and_importance())
def test_full_rank_weighted_svd_reproduces_the_weight(case) -> None:
    weight, importance = case
    rank = min(weight.shape)
    first, second = weighted_svd(weight, rank, importance)
    assert first.shape == (rank, weight.shape[1]) and second.shape == (weight.shape[0], rank)
    torch.testing.assert_close(second @ first, weight, rtol=1e-9, atol=1e-9)
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(weight)
    x = torch.randn(5, weight.shape[1], dtype=torch.float64)
    torch.testing.assert_close(FactorizedLinear.from_linear(layer, rank, importance)(x), layer(x), rtol=1e-9, atol=1e-9)


@PROPERTY
@given(weights_and_importance())
def test_weighted_error_is_the_svd_tail_and_does_not_increase_with_rank(case) -> None:
    """Eckart–Young on Î W: the rank-r error is sqrt(Σ_{i>r} σ_i²) of Î W, so it cannot grow with r."""
    weight, importance = case
    sigma = torch.linalg.svdvals(importance[:, None] * weight.T)
    errors = []
    for rank in range(1, min(weight.shape) + 1):
        first, second = weighted_svd(weight, rank, importance)
        errors.append(float(weighted_error(weight, second @ first, importance)))
        assert errors[-1] == pytest.approx(float(sigma[rank:].square().sum().sqrt()), rel=1e-7, abs=1e-9 * float(sigma[0]))
    assert all(later <= earlier + 1e-9 * float(sigma[0]) for earlier, later in zip(errors, errors[1:]))
    assert errors[-1] <= 1e-9 * float(sigma[0])
