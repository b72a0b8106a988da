"""What a fine-tuning method is: two protocols, typed parameters, and what a fit returns.

- :class:`HeadMethod` trains a replacement of the target ``nn.Linear`` on its cached input
  features (TL, f+SVD, WIN, the last-layer variants, the peers).
- :class:`ModelMethod` trains (part of) the whole model on its raw inputs (Retrain, the
  hidden-layer and all-layer variants).

Both are driven the same way: ``prepare`` once per seed (e.g. the Fisher information),
``candidates`` lists the settings searched on validation, ``fit`` trains one candidate.
Their first argument, ``target``, is the layer for a head method and the model for a model
method. Names, labels and values live in :mod:`fairtune.catalogue`, not here.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
from torch import Tensor, nn

from ..catalogue import MethodSpec
from ..config import FinetuneGrid
from ..factorization import count_parameters
from ..errors import ConfigError
from ..training import Penalty, TrainingData, predict, predict_proba, train_classifier

if TYPE_CHECKING:
    from ..constraints import FairnessTarget

NO_PENALTY_WITH_TARGET = "a fairness target cannot be combined with a penalty (a regularizer or an anchor)"


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

    def scores(self, x: Tensor) -> np.ndarray:
        """P(Y=1 | x) ``(n,)``, e.g. for per-group decision thresholds."""
        return predict_proba(self.module, x)


def params_record(params: Any) -> dict[str, Any]:
    """The candidate's settings as a plain dict (unset fields left out), for ``selections.json``."""
    return {key: value for key, value in asdict(params).items() if value is not None}


@dataclass(frozen=True)
class TrainParams:
    """Adam's learning rate; the epochs are checkpoints of one run (see ``select_on_validation``)."""

    lr: float


def training_grid(grid: FinetuneGrid) -> list[TrainParams]:
    return [TrainParams(lr) for lr in grid.lrs]


Target = nn.Module
OnEpoch = Callable[[int, Fitted], None]


class Method(ABC):
    """What both protocols share. ``trains_by_epoch = False``: scored once, on what ``fit`` returns."""

    trains_by_epoch: ClassVar[bool] = True
    #: The fairness target training must meet, and the data its gap is measured on (see :meth:`constrain`).
    target: FairnessTarget | None = None
    constraint_data: TrainingData | None = None

    def constrain(self, target: FairnessTarget, constraint_data: TrainingData) -> None:
        """Train subject to ``target``, its gap measured on ``constraint_data`` (:func:`~fairtune.constraints.train_constrained`)."""
        self.target, self.constraint_data = target, constraint_data

    @classmethod
    def from_spec(cls, spec: MethodSpec, grid: FinetuneGrid) -> Method:
        """The catalogue's factory: an instance for ``spec`` (its value, where it takes one)."""
        return cls()

    def prepare(self, target: Target, train: TrainingData, grid: FinetuneGrid) -> Any:
        """Work shared by every candidate of a seed (e.g. the Fisher information)."""
        return None

    @abstractmethod
    def candidates(self, target: Target, grid: FinetuneGrid) -> list[Any]:
        """The settings searched on the validation split."""

    @abstractmethod
    def fit(self, target: Target, train: TrainingData, context: Any, params: Any, *, epochs: int, batch_size: int,
            seed: int, on_epoch: OnEpoch | None = None) -> Fitted:
        """Train one candidate for ``epochs``; ``on_epoch`` sees the result after every epoch."""


class HeadMethod(Method):
    """Fine-tunes a new module in place of the target layer, on the layer's cached input features.

    The default ``fit`` trains :meth:`initial_head` with cross-entropy plus :meth:`penalty`.
    """

    def estimator_params(self, layer: nn.Linear, grid: FinetuneGrid) -> Any:
        """The one setting :class:`~fairtune.FairFineTuner` fits: its grid has one value each."""
        return self.candidates(layer, grid)[0]

    def initial_head(self, layer: nn.Linear, context: Any, params: Any) -> nn.Module:
        """The trainable module that replaces ``layer`` before fine-tuning."""
        raise NotImplementedError(f"{type(self).__name__} does not train a torch head")

    def penalty(self, context: Any, head: nn.Module) -> Penalty | None:
        """A term added to each batch's cross-entropy, e.g. a fairness regularizer."""
        return None

    def fit(self, target: nn.Linear, train: TrainingData, context: Any, params: Any, *, epochs: int, batch_size: int,
            seed: int, on_epoch: OnEpoch | None = None) -> Fitted:
        head = self.initial_head(target, context, params)
        for parameter in head.parameters():
            parameter.requires_grad_(True)
        return train_fitted(head, train, lr=params.lr, epochs=epochs, batch_size=batch_size, seed=seed,
                            penalty=self.penalty(context, head), on_epoch=on_epoch,
                            target=self.target, constraint_data=self.constraint_data)


class ModelMethod(Method):
    """Fine-tunes (part of) a copy of the whole model on its raw inputs (tabular tensors)."""


def train_fitted(
    module: nn.Module,
    train: TrainingData,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    penalty: Penalty | None = None,
    on_epoch: OnEpoch | None = None,
    target: FairnessTarget | None = None,
    constraint_data: TrainingData | None = None,
) -> FittedHead:
    """Train ``module``'s trainable parameters in place; ``on_epoch`` sees the result after every epoch.

    With a fairness ``target``: cross-entropy subject to it (:func:`~fairtune.constraints.train_constrained`,
    the gap measured on ``constraint_data``); without, :func:`~fairtune.training.train_classifier`.
    """
    fitted = FittedHead(module, count_parameters(module))
    each_epoch = None if on_epoch is None else (lambda epoch, _module: on_epoch(epoch, fitted))
    if target is None:
        train_classifier(module, train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, penalty=penalty,
                         on_epoch=each_epoch)
        return fitted
    if penalty is not None:
        raise ConfigError(NO_PENALTY_WITH_TARGET)
    from ..constraints import train_constrained  # the constraints import the fairness gaps of this package

    train_constrained(module, train, target=target, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed,
                      on_epoch=each_epoch, constraint_data=constraint_data)
    return fitted


class Pretrained(HeadMethod):
    """The pre-trained target layer as it is: the reference row of every run."""

    trains_by_epoch = False

    def candidates(self, target: nn.Linear, grid: FinetuneGrid) -> list[Any]:
        return [None]

    def fit(self, target: nn.Linear, train: TrainingData, context: Any, params: Any, *, epochs: int, batch_size: int,
            seed: int, on_epoch: OnEpoch | None = None) -> Fitted:
        return FittedHead(target, count_parameters(target, trainable_only=False))


class TransferLearning(HeadMethod):
    """TL: fine-tune the original last layer, no factorization."""

    def candidates(self, target: nn.Linear, grid: FinetuneGrid) -> list[TrainParams]:
        return training_grid(grid)

    def initial_head(self, layer: nn.Linear, context: Any, params: TrainParams) -> nn.Module:
        return copy.deepcopy(layer)
