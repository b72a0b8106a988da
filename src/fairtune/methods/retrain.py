"""Retrain+EO / Retrain+DP: fine-tuning with a relaxed fairness regularizer of intensity λ.

The loss of each batch is ``cross_entropy + λ · gap`` with the relaxed gap of
:mod:`fairtune.methods.fairness` (EO or DP; for EO sharpened, τ = 0.3, and signed by its
average over batches, momentum 0.95: ``RETRAIN_SURROGATE``, chosen by measurement).
λ is part of the method, not searched on validation: ``retrain-eo:0.1``, ``retrain-eo:0.5`` and ``retrain-eo:0.9`` are three methods
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
from collections.abc import Callable
from typing import Any, ClassVar

from torch import nn

from ..config import FinetuneGrid
from ..training import Penalty, TrainingData
from .base import FineTuningMethod, Fitted, train_fitted, training_grid
from .fairness import RETRAIN_SURROGATE, Constraint, check_intensity, fairness_penalty

#: λ of a bare ``retrain-eo`` / ``retrain-dp``.
DEFAULT_INTENSITY = 0.5


class Retrain(FineTuningMethod):
    """Fine-tune with ``cross_entropy + λ · relaxed gap``; see the module docstring."""

    constraint: ClassVar[Constraint]
    takes_value = True

    def __init__(self, lam: float | str = DEFAULT_INTENSITY) -> None:
        self.lam = check_intensity(lam)

    def needs_model(self, grid: FinetuneGrid) -> bool:
        return grid.retrain_scope == "all"

    def penalty(self) -> Penalty:
        return fairness_penalty(self.constraint, self.lam, **RETRAIN_SURROGATE[self.constraint])

    def candidates(self, layer: nn.Linear, grid: FinetuneGrid) -> list[dict[str, Any]]:
        return training_grid(grid)

    def initial_head(self, layer: nn.Linear, context: Any, params: dict[str, Any]) -> nn.Module:
        return copy.deepcopy(layer)

    def fit_model(
        self,
        model: nn.Module,
        train: TrainingData,
        params: dict[str, Any],
        *,
        epochs: int,
        batch_size: int,
        seed: int,
        grid: FinetuneGrid,
        on_epoch: Callable[[int, Fitted], None] | None = None,
    ) -> Fitted:
        """Fine-tune every parameter of a copy of ``model`` on its inputs ``train.x``."""
        tuned = copy.deepcopy(model)
        for parameter in tuned.parameters():
            parameter.requires_grad_(True)
        return train_fitted(tuned, train, lr=params["lr"], epochs=epochs, batch_size=batch_size, seed=seed,
                            penalty=self.penalty(), on_epoch=on_epoch)


class RetrainEO(Retrain):
    """Retrain+EO: the relaxed equalized-odds gap (TPR gap + FPR gap of P(Ŷ=1|x))."""

    name = "retrain-eo"
    label = "Retrain+EO"
    description = "fine-tune with an equalized-odds regularizer of intensity λ (retrain-eo:λ, default 0.5)"
    constraint = "eo"


class RetrainDP(Retrain):
    """Retrain+DP: the relaxed demographic-parity gap (of P(Ŷ=1|x))."""

    name = "retrain-dp"
    label = "Retrain+DP"
    description = "fine-tune with a demographic-parity regularizer of intensity λ (retrain-dp:λ, default 0.5)"
    constraint = "dp"
