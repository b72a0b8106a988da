"""f+SVD and WIN: factorize the target layer (Eq. 4) and fine-tune the two factors."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..config import FinetuneGrid, Operator
from ..factorization import FactorizedLinear, check_rank
from ..importance import (
    GroupFisher,
    feature_batches,
    group_fisher,
    neutralized_fisher,
    row_importance,
)
from ..training import TrainingData
from .base import HeadMethod, training_grid


@dataclass(frozen=True)
class LowRankParams:
    """A rank r of the factorization and Adam's learning rate."""

    rank: int
    lr: float


@dataclass(frozen=True)
class WinParams:
    """WIN's rank, neutralization operator (Eq. 2) and learning rate."""

    rank: int
    operator: Operator
    lr: float


def usable_ranks(layer: nn.Linear, grid: FinetuneGrid) -> list[int]:
    """The grid's ranks, each checked against the layer (1 <= r <= min(d, k))."""
    for rank in grid.ranks:
        check_rank(rank, layer.weight)
    return sorted(set(grid.ranks))


class PlainSVD(HeadMethod):
    """f+SVD: plain truncated SVD of the layer (Î = I), then fine-tune l̂1 and l̂2."""

    def candidates(self, layer: nn.Linear, grid: FinetuneGrid) -> list[LowRankParams]:
        return [LowRankParams(r, t.lr) for r, t in itertools.product(usable_ranks(layer, grid), training_grid(grid))]

    def initial_head(self, layer: nn.Linear, context: Any, params: LowRankParams) -> nn.Module:
        return FactorizedLinear.from_linear(layer, params.rank)


class WeightImportanceNeutralization(HeadMethod):
    """WIN (Algorithm 1): Fisher-weighted SVD with the neutralized importance Î_N, then fine-tune."""

    def prepare(self, layer: nn.Linear, train: TrainingData, grid: FinetuneGrid) -> GroupFisher:
        n_groups = int(train.s.max()) + 1
        return group_fisher(layer, feature_batches(train.x, train.y, train.s), n_groups, kind=grid.fisher)

    def candidates(self, layer: nn.Linear, grid: FinetuneGrid) -> list[WinParams]:
        return [
            WinParams(r, op, t.lr)
            for r, op, t in itertools.product(usable_ranks(layer, grid), grid.operators, training_grid(grid))
        ]

    def initial_head(self, layer: nn.Linear, context: GroupFisher, params: WinParams) -> nn.Module:
        importance = row_importance(neutralized_fisher(context, params.operator))
        return FactorizedLinear.from_linear(layer, params.rank, importance)
