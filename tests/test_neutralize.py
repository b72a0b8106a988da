"""Eq. (2): normalization, the combination operators and the FWSVD row importance, on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from fairtune.importance import (
    OPERATORS,
    GroupFisher,
    combine_groups,
    feature_batches,
    group_fisher,
    neutralized_fisher,
    normalize_groups,
    row_importance,
)

# Two groups' Fisher of a 2x3 layer (k=2 outputs, d=3 inputs); group 1 is 10x larger overall.
F1 = [[1.0, 2.0, 3.0], [4.0, 0.0, 10.0]]  # sums to 20
F2 = [[50.0, 100.0, 10.0], [20.0, 10.0, 10.0]]  # sums to 200
FISHER = torch.tensor([F1, F2], dtype=torch.float64)
COUNTS = torch.tensor([3.0, 1.0], dtype=torch.float64)


def _normalized_by_hand() -> list[list[list[float]]]:
    return [[[v / 20 for v in row] for row in F1], [[v / 200 for v in row] for row in F2]]


def _elementwise(fn) -> torch.Tensor:
    """Apply ``fn(a, b)`` to each pair of normalized entries, in plain Python floats."""
    n1, n2 = _normalized_by_hand()
    return torch.tensor([[fn(a, b) for a, b in zip(r1, r2)] for r1, r2 in zip(n1, n2)], dtype=torch.float64)


def test_normalize_divides_each_group_by_its_total() -> None:
    normalized = normalize_groups(FISHER)
    torch.testing.assert_close(normalized, torch.tensor(_normalized_by_hand(), dtype=torch.float64))
    torch.testing.assert_close(normalized.sum(dim=(1, 2)), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize(
    ("operator", "formula"),
    [
        ("mean", lambda a, b: (a + b) / 2),
        ("geometric", lambda a, b: math.sqrt(a * b)),
        ("min", min),
        ("harmonic", lambda a, b: 0.0 if a == 0 or b == 0 else 2 / (1 / a + 1 / b)),
    ],
)
def test_operators_match_their_formulas(operator: str, formula) -> None:
    combined = neutralized_fisher(GroupFisher(FISHER, torch.zeros(2, 2), COUNTS), operator)
    torch.testing.assert_close(combined, _elementwise(formula))
    torch.testing.assert_close(combine_groups(normalize_groups(FISHER), operator), _elementwise(formula))


def test_operators_on_three_groups() -> None:
    fisher = torch.rand(3, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.1
    n = fisher / fisher.sum(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(combine_groups(n, "mean"), (n[0] + n[1] + n[2]) / 3)
    torch.testing.assert_close(combine_groups(n, "geometric"), (n[0] * n[1] * n[2]) ** (1 / 3))
    torch.testing.assert_close(combine_groups(n, "min"), torch.minimum(torch.minimum(n[0], n[1]), n[2]))
    torch.testing.assert_close(combine_groups(n, "harmonic"), 3 / (1 / n[0] + 1 / n[1] + 1 / n[2]))
    # the classical ordering of the means, elementwise
    assert bool((combine_groups(n, "min") <= combine_groups(n, "harmonic") + 1e-15).all())
    assert bool((combine_groups(n, "harmonic") <= combine_groups(n, "geometric") + 1e-15).all())
    assert bool((combine_groups(n, "geometric") <= combine_groups(n, "mean") + 1e-15).all())


def test_normalization_removes_group_scale() -> None:
    rescaled = FISHER * torch.tensor([7.0, 0.01], dtype=torch.float64)[:, None, None]
    for operator in ("mean", "geometric", "min", "harmonic"):
        torch.testing.assert_close(
            neutralized_fisher(GroupFisher(rescaled, torch.zeros(2, 2), COUNTS), operator),
            neutralized_fisher(GroupFisher(FISHER, torch.zeros(2, 2), COUNTS), operator),
        )


def test_group_size_does_not_decide_but_does_for_pooled() -> None:
    """Repeating one group's samples 5 times changes the pooled Fisher, not the neutralized one."""
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(4, 2).double()
    x = torch.randn(30, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 2, (30,), generator=generator)
    groups = torch.arange(30) % 2
    minority = groups == 1
    x_big = torch.cat([x] + [x[minority]] * 4)
    y_big = torch.cat([y] + [y[minority]] * 4)
    g_big = torch.cat([groups] + [groups[minority]] * 4)

    small = group_fisher(layer, feature_batches(x, y, groups), 2)
    big = group_fisher(layer, feature_batches(x_big, y_big, g_big), 2)

    assert big.counts.tolist() == [15.0, 75.0]
    for operator in ("mean", "geometric", "min", "harmonic"):
        torch.testing.assert_close(neutralized_fisher(big, operator), neutralized_fisher(small, operator))
    assert not torch.allclose(neutralized_fisher(big, "pooled"), neutralized_fisher(small, "pooled"))


def test_pooled_is_the_fisher_of_all_samples_pooled() -> None:
    generator = torch.Generator().manual_seed(1)
    layer = torch.nn.Linear(5, 2).double()
    x = torch.randn(40, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 2, (40,), generator=generator)
    groups = torch.randint(0, 3, (40,), generator=generator)
    groups[:3] = torch.arange(3)

    per_group = group_fisher(layer, feature_batches(x, y, groups), 3)
    # pooled by definition: mean over all samples of the squared gradient
    residual = torch.softmax(layer(x), dim=1).detach() - torch.nn.functional.one_hot(y, 2).double()
    expected = (residual**2).T @ (x**2) / 40

    torch.testing.assert_close(neutralized_fisher(per_group, "pooled"), expected)


def test_every_configured_operator_is_implemented() -> None:
    fisher = GroupFisher(FISHER, torch.zeros(2, 2), COUNTS)
    for operator in OPERATORS:
        assert neutralized_fisher(fisher, operator).shape == (2, 3)
    with pytest.raises(ValueError, match="unknown operator"):
        neutralized_fisher(fisher, "median")


def test_row_importance_is_sqrt_of_sum_over_outputs() -> None:
    fisher = torch.tensor([[1.0, 4.0, 0.5], [3.0, 5.0, 0.5]], dtype=torch.float64)  # (k=2, d=3)
    torch.testing.assert_close(row_importance(fisher), torch.tensor([2.0, 3.0, 1.0], dtype=torch.float64))


def test_row_importance_is_floored_above_zero() -> None:
    fisher = torch.tensor([[4.0, 0.0], [5.0, 0.0]], dtype=torch.float64)
    importance = row_importance(fisher, eps=1e-3)
    assert importance[0].item() == pytest.approx(3.0)
    assert importance[1].item() == pytest.approx(3e-3)
    assert bool((row_importance(torch.zeros(2, 3)) > 0).all())


def test_operators_with_a_zero_entry_give_zero_not_nan() -> None:
    combined = {op: combine_groups(normalize_groups(FISHER), op) for op in ("geometric", "min", "harmonic")}
    for operator, value in combined.items():
        assert value[1, 1].item() == 0.0, operator  # F1[1][1] == 0
        assert bool(torch.isfinite(value).all()), operator
