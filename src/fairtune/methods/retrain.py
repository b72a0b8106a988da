"""Retrain+EO / Retrain+DP: fine-tuning with a relaxed fairness regularizer of intensity λ.

The loss of each batch is ``cross_entropy + λ · gap`` with the relaxed gap of
:mod:`fairtune.methods.fairness` (EO or DP; for EO sharpened, τ = 0.3, and signed by its
average over batches, momentum 0.95: ``RETRAIN_SURROGATE``, chosen by measurement so that
raising λ lowers the measured ΔEO). λ is part of the method, not searched on validation:
``retrain-eo:0.1``, ``retrain-eo:0.5`` and ``retrain-eo:0.9`` are three methods
(the paper's λ ∈ {0.1, 0.5, 0.9}); a bare ``retrain-eo`` uses λ = 0.5.

Which parameters "Retrain" updates is ``FinetuneGrid.retrain_scope`` (``--retrain-scope``):

- ``"all"`` (default): every parameter of the pre-trained model, starting from its
  pre-trained weights, trained on the raw inputs. The paper contrasts Retrain's trainable
  parameter count with WIN's (Table 3), so it updates more than the last layer.
- ``"last"``: only the target layer, on the cached features (TL plus the regularizer).

The learning rate and epochs are chosen on validation like every other method.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..catalogue import MethodSpec
from ..config import FinetuneGrid
from ..training import Penalty, TrainingData
from .base import HeadMethod, Method, ModelMethod, OnEpoch, Fitted, TrainParams, train_fitted, training_grid
from .fairness import RETRAIN_SURROGATE, Constraint, check_intensity, fairness_penalty


class RetrainLastLayer(HeadMethod):
    """Retrain on the target layer only (``retrain_scope="last"``): TL plus ``λ · relaxed gap``."""

    def __init__(self, constraint: Constraint, lam: float) -> None:
        self.constraint, self.lam = constraint, check_intensity(lam)

    def candidates(self, target: nn.Linear, grid: FinetuneGrid) -> list[TrainParams]:
        return training_grid(grid)

    def initial_head(self, layer: nn.Linear, context: Any, params: TrainParams) -> nn.Module:
        return copy.deepcopy(layer)

    def penalty(self, context: Any, head: nn.Module) -> Penalty:
        return fairness_penalty(self.constraint, self.lam, **RETRAIN_SURROGATE[self.constraint])


class RetrainModel(ModelMethod):
    """Retrain every parameter of the pre-trained model (``retrain_scope="all"``) with ``λ · relaxed gap``."""

    def __init__(self, constraint: Constraint, lam: float) -> None:
        self.constraint, self.lam = constraint, check_intensity(lam)

    def candidates(self, target: nn.Module, grid: FinetuneGrid) -> list[TrainParams]:
        return training_grid(grid)

    def fit(self, target: nn.Module, train: TrainingData, context: Any, params: TrainParams, *, epochs: int,
            batch_size: int, seed: int, on_epoch: OnEpoch | None = None) -> Fitted:
        """Fine-tune every parameter of a copy of ``target`` on its inputs ``train.x``."""
        tuned = copy.deepcopy(target)
        for parameter in tuned.parameters():
            parameter.requires_grad_(True)
        return train_fitted(tuned, train, lr=params.lr, epochs=epochs, batch_size=batch_size, seed=seed,
                            penalty=fairness_penalty(self.constraint, self.lam, **RETRAIN_SURROGATE[self.constraint]),
                            on_epoch=on_epoch)


def _retrain(constraint: Constraint, spec: MethodSpec, grid: FinetuneGrid) -> Method:
    lam = spec.info.value.default if spec.value is None else spec.value
    return (RetrainModel if grid.retrain_scope == "all" else RetrainLastLayer)(constraint, lam)


def retrain_eo(spec: MethodSpec, grid: FinetuneGrid) -> Method:
    """Retrain+EO: the relaxed equalized-odds gap (TPR gap + FPR gap of P(Ŷ=1|x))."""
    return _retrain("eo", spec, grid)


def retrain_dp(spec: MethodSpec, grid: FinetuneGrid) -> Method:
    """Retrain+DP: the relaxed demographic-parity gap (of P(Ŷ=1|x))."""
    return _retrain("dp", spec, grid)
