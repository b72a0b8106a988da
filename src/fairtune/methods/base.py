"""What a fine-tuning method is: candidate settings, and a fit on the target layer's features."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn

from ..config import FinetuneGrid
from ..factorization import count_parameters
from ..training import TrainingData, predict, train_classifier


@dataclass
class FittedHead:
    """A fine-tuned replacement of the target layer."""

    module: nn.Module
    trainable_params: int

    def predict(self, features: Tensor) -> np.ndarray:
        return predict(self.module, features)


class FineTuningMethod(ABC):
    """A way to fine-tune a pre-trained model's target linear layer on frozen features.

    ``prepare`` runs once per seed (e.g. the Fisher information); ``fit`` once per candidate.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    description: ClassVar[str]

    def prepare(self, layer: nn.Linear, train: TrainingData, grid: FinetuneGrid) -> Any:
        return None

    @abstractmethod
    def candidates(self, layer: nn.Linear, grid: FinetuneGrid) -> list[dict[str, Any]]:
        """The settings searched on the validation split."""

    @abstractmethod
    def initial_head(self, layer: nn.Linear, context: Any, params: dict[str, Any]) -> nn.Module:
        """The trainable module that replaces ``layer`` before fine-tuning."""

    def fit(
        self,
        layer: nn.Linear,
        train: TrainingData,
        context: Any,
        params: dict[str, Any],
        *,
        epochs: int,
        batch_size: int,
        seed: int,
        on_epoch: Callable[[int, FittedHead], None] | None = None,
    ) -> FittedHead:
        """Fine-tune a fresh head for ``epochs``; ``on_epoch`` sees it after every epoch."""
        head = self.initial_head(layer, context, params)
        for parameter in head.parameters():
            parameter.requires_grad_(True)
        fitted = FittedHead(head, count_parameters(head))
        train_classifier(
            head, train, epochs=epochs, lr=params["lr"], batch_size=batch_size, seed=seed,
            on_epoch=None if on_epoch is None else (lambda epoch, _module: on_epoch(epoch, fitted)),
        )
        return fitted


def training_grid(grid: FinetuneGrid) -> list[dict[str, Any]]:
    """Learning rates; the epochs are checkpoints of one run (see ``compare_on_features``)."""
    return [{"lr": lr} for lr in grid.lrs]


class TransferLearning(FineTuningMethod):
    """TL: fine-tune the original last layer, no factorization."""

    name = "tl"
    label = "TL"
    description = "fine-tune the original target layer (transfer learning)"

    def candidates(self, layer: nn.Linear, grid: FinetuneGrid) -> list[dict[str, Any]]:
        return training_grid(grid)

    def initial_head(self, layer: nn.Linear, context: Any, params: dict[str, Any]) -> nn.Module:
        return copy.deepcopy(layer)
