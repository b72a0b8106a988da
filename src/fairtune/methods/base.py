"""What a fine-tuning method is: candidate settings, and a fit on the target layer's features."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
from torch import Tensor, nn

from ..config import FinetuneGrid
from ..factorization import count_parameters
from ..training import Penalty, TrainingData, predict, train_classifier


class Fitted(Protocol):
    """What a method's fit returns: something that predicts labels, and its size.

    ``predict(x, s)`` maps inputs ``(n, d)`` (and group codes ``(n,)``, needed by
    post-processing peers such as fairlearn's ThresholdOptimizer) to labels in {0, 1}.
    ``trainable_params`` counts the parameters the method actually updated.
    """

    trainable_params: int

    def predict(self, x: Tensor, s: Tensor | None = None) -> np.ndarray: ...


@dataclass
class FittedHead:
    """A fine-tuned torch module: a replacement of the target layer, or a whole model."""

    module: nn.Module
    trainable_params: int

    def predict(self, x: Tensor, s: Tensor | None = None) -> np.ndarray:
        return predict(self.module, x)


class FineTuningMethod(ABC):
    """A way to fine-tune a pre-trained model's target linear layer on frozen features.

    ``prepare`` runs once per seed (e.g. the Fisher information); ``fit`` once per candidate.
    A method that trains more than the target layer answers ``needs_model`` with True and
    implements ``fit_model`` on the whole model's inputs instead. A method that does not
    train by epochs (``trains_by_epoch = False``) is scored once, on what ``fit`` returns.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    description: ClassVar[str]
    trains_by_epoch: ClassVar[bool] = True
    #: Whether a ``:value`` suffix of the method spec is passed to ``__init__`` (λ, μ).
    takes_value: ClassVar[bool] = False

    def needs_model(self, grid: FinetuneGrid) -> bool:
        """Whether ``fit_model`` (whole model, raw inputs) is used instead of ``fit`` (target layer, features)."""
        return False

    def penalty(self) -> Penalty | None:
        """A term added to each batch's cross-entropy, e.g. a fairness regularizer."""
        return None

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
        """Fine-tune a copy of the whole ``model`` on its inputs (only where ``needs_model``)."""
        raise NotImplementedError(f"method {self.name!r} fine-tunes the target layer only")

    def prepare(self, layer: nn.Linear, train: TrainingData, grid: FinetuneGrid) -> Any:
        return None

    @abstractmethod
    def candidates(self, layer: nn.Linear, grid: FinetuneGrid) -> list[dict[str, Any]]:
        """The settings searched on the validation split."""

    def initial_head(self, layer: nn.Linear, context: Any, params: dict[str, Any]) -> nn.Module:
        """The trainable module that replaces ``layer`` before fine-tuning (used by the default ``fit``)."""
        raise NotImplementedError(f"method {self.name!r} does not train a torch head")

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
        on_epoch: Callable[[int, Fitted], None] | None = None,
    ) -> Fitted:
        """Fine-tune a fresh head for ``epochs``; ``on_epoch`` sees it after every epoch."""
        head = self.initial_head(layer, context, params)
        for parameter in head.parameters():
            parameter.requires_grad_(True)
        return train_fitted(head, train, lr=params["lr"], epochs=epochs, batch_size=batch_size, seed=seed,
                            penalty=self.penalty(), on_epoch=on_epoch)


def train_fitted(
    module: nn.Module,
    train: TrainingData,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    penalty: Penalty | None = None,
    on_epoch: Callable[[int, Fitted], None] | None = None,
) -> FittedHead:
    """Train ``module``'s trainable parameters in place; ``on_epoch`` sees the result after every epoch."""
    fitted = FittedHead(module, count_parameters(module))
    train_classifier(
        module, train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, penalty=penalty,
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
