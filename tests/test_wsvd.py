"""Eq. (4): the weighted SVD against exact reconstruction, plain SVD, and the weighted low-rank optimum."""

from __future__ import annotations

import pytest
import torch

from fairtune import errors
from fairtune.errors import ConfigError
from fairtune.factorization import weighted_error, weighted_svd

K, D = 5, 8  # nn.Linear(8, 5): weight is k x d


def _weight(seed: int = 0) -> torch.Tensor:
    return torch.randn(K, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _importance(seed: int) -> torch.Tensor:
    """A positive row importance spanning three orders of magnitude."""
    return 10 ** (3 * torch.rand(D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) - 1.5)


def _product(factors) -> torch.Tensor:
    return factors.second @ factors.first  # (k, r) @ (r, d) = (k, d)


@pytest.mark.parametrize("importance", [None, _importance(1), _importance(2), torch.full((D,), 1e-4, dtype=torch.float64)])
def test_full_rank_reproduces_the_weight(importance) -> None:
    weight = _weight()
    factors = weighted_svd(weight, min(K, D), importance)
    assert factors.first.shape == (K, D) and factors.second.shape == (K, K)
    torch.testing.assert_close(_product(factors), weight, rtol=1e-10, atol=1e-10)


def test_binary_head_full_rank_2_is_exact_for_any_importance() -> None:
    weight = torch.randn(2, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    importance = torch.rand(16, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) + 1e-3
    torch.testing.assert_close(_product(weighted_svd(weight, 2, importance)), weight)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_unit_importance_is_the_plain_truncated_svd(rank: int) -> None:
    weight = _weight()
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    expected = u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]
    torch.testing.assert_close(_product(weighted_svd(weight, rank, torch.ones(D, dtype=torch.float64))), expected)
    torch.testing.assert_close(_product(weighted_svd(weight, rank)), expected)


def _frobenius_weighted_error(weight, approximation, importance) -> float:
    """‖Î (W − AB)‖_F in the paper's layout (W is d x k): scale row i of Wᵀ by ι_i."""
    return float(torch.linalg.norm(importance[:, None] * (weight - approximation).T))


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_weighted_svd_has_the_lowest_weighted_error_of_rank_r(rank: int) -> None:
    weight, importance = _weight(), _importance(5)
    best = _frobenius_weighted_error(weight, _product(weighted_svd(weight, rank, importance)), importance)
    assert float(weighted_error(weight, _product(weighted_svd(weight, rank, importance)), importance)) == pytest.approx(best)

    others = {
        "plain svd": _product(weighted_svd(weight, rank)),
        "weighted svd of another importance": _product(weighted_svd(weight, rank, _importance(6))),
    }
    generator = torch.Generator().manual_seed(7)
    for i in range(20):
        others[f"random {i}"] = torch.randn(K, rank, generator=generator, dtype=torch.float64) @ torch.randn(rank, D, generator=generator, dtype=torch.float64)
    for name, approximation in others.items():
        assert torch.linalg.matrix_rank(approximation) <= rank
        assert best < _frobenius_weighted_error(weight, approximation, importance), name


def test_weighted_svd_beats_small_perturbations_of_its_own_factors() -> None:
    """A local check of optimality: nudging A or B in any random direction increases the error."""
    weight, importance = _weight(8), _importance(9)
    factors = weighted_svd(weight, 2, importance)
    best = _frobenius_weighted_error(weight, _product(factors), importance)
    generator = torch.Generator().manual_seed(10)
    for _ in range(20):
        first = factors.first + 1e-3 * torch.randn(factors.first.shape, generator=generator, dtype=torch.float64)
        second = factors.second + 1e-3 * torch.randn(factors.second.shape, generator=generator, dtype=torch.float64)
        assert best < _frobenius_weighted_error(weight, second @ first, importance)


def test_output_keeps_the_weight_dtype() -> None:
    factors = weighted_svd(_weight().float(), 2, _importance(1).float())
    assert factors.first.dtype == factors.second.dtype == torch.float32


@pytest.mark.parametrize("rank", [K + 1, 100])
def test_rank_larger_than_min_dim_is_a_config_error(rank: int) -> None:
    expected = errors.RANK_TOO_LARGE.format(rank=rank, rows=D, cols=K, max_rank=K)
    with pytest.raises(ConfigError) as info:
        weighted_svd(_weight(), rank)
    assert str(info.value) == expected


@pytest.mark.parametrize("rank", [0, -1])
def test_rank_below_one_is_a_config_error(rank: int) -> None:
    with pytest.raises(ConfigError) as info:
        weighted_svd(_weight(), rank)
    assert str(info.value) == errors.RANK_TOO_SMALL.format(rank=rank)


def test_binary_head_rank_3_message() -> None:
    with pytest.raises(ConfigError) as info:
        weighted_svd(torch.randn(2, 32), 3)
    assert str(info.value) == "rank 3 is larger than allowed for a 32x2 layer (max 2)"


@pytest.mark.parametrize("importance", [torch.zeros(D), -torch.ones(D), torch.ones(D - 1)])
def test_non_positive_or_misshaped_importance_is_refused(importance) -> None:
    with pytest.raises(ValueError, match="positive vector of length 8"):
        weighted_svd(_weight(), 2, importance)


def test_win_head_is_eq_1_2_4_computed_by_hand() -> None:
    """WIN's initial head: autograd Fisher per group -> normalize, mean -> sqrt row sums -> SVD of Î W."""
    from fairtune.config import FinetuneGrid
    from fairtune.methods import build_method
    from fairtune.methods.lowrank import LowRankParams, WinParams
    from fairtune.training import TrainingData

    generator = torch.Generator().manual_seed(11)
    layer = torch.nn.Linear(6, 2)
    x = torch.randn(80, 6, generator=generator)
    y = (x[:, 0] > 0).long()
    s = (x[:, 1] > 0).long()
    train = TrainingData(x, y, s)

    per_group = torch.zeros(2, 2, 6, dtype=torch.float64)
    for xi, yi, si in zip(x, y, s):
        (grad,) = torch.autograd.grad(torch.log_softmax(layer(xi[None]), dim=1)[0, yi], layer.weight)
        per_group[si] += grad.double() ** 2
    per_group /= torch.bincount(s, minlength=2).double()[:, None, None]
    neutral = (per_group[0] / per_group[0].sum() + per_group[1] / per_group[1].sum()) / 2
    iota = neutral.sum(dim=0).sqrt()  # (d,)
    u, sv, vh = torch.linalg.svd(iota[:, None] * layer.weight.detach().double().T, full_matrices=False)
    expected = ((u[:, :1] * sv[:1]) / iota[:, None] @ vh[:1]).T  # A B in nn.Linear layout, (k, d)

    win = build_method("win")
    grid = FinetuneGrid(ranks=(1,), operators=("mean",))
    head = win.initial_head(layer, win.prepare(layer, train, grid), WinParams(1, "mean", 0.01))

    torch.testing.assert_close((head.second.weight @ head.first.weight).double(), expected, rtol=1e-4, atol=1e-6)
    plain = build_method("svd").initial_head(layer, None, LowRankParams(1, 0.01))
    assert not torch.allclose(head.second.weight @ head.first.weight, plain.second.weight @ plain.first.weight, atol=1e-3)
