"""Established peers on the same frozen features: scikit-learn and fairlearn, their own code.

Every peer is fitted on the target layer's inputs (the features that TL, f+SVD and WIN
fine-tune on) of the same train split, selected on the same validation split and scored on
the same test split, so the comparison differs only in the learning method.

==================  ===================================================================
``logreg``          ``sklearn.linear_model.LogisticRegression`` (a new linear head)
``fairlearn-eg-*``  ``fairlearn.reductions.ExponentiatedGradient`` around that
                    LogisticRegression, constraint ``EqualizedOdds`` (eo) or
                    ``DemographicParity`` (dp); ``eps`` ∈ {0.01, 0.05} chosen on validation
``fairlearn-to-*``  ``fairlearn.postprocessing.ThresholdOptimizer`` (``prefit=False``,
                    ``predict_method="predict_proba"``) with constraints
                    ``"equalized_odds"`` or ``"demographic_parity"``
==================  ===================================================================

Randomized predictions (ExponentiatedGradient's mixture, ThresholdOptimizer's
interpolation) use ``random_state=seed``. Trainable parameters: a logistic regression
counts ``coef_.size + intercept_.size`` = d + 1; ExponentiatedGradient counts that for
every predictor of its mixture with a nonzero weight; ThresholdOptimizer counts its
logistic regression plus the numbers of its per-group threshold rule (mixing
probabilities, thresholds, and for equalized odds the shared constant and p_ignore).
"""

from __future__ import annotations

import numbers
from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from sklearn.linear_model import LogisticRegression
from torch import Tensor, nn

from ..config import FinetuneGrid
from ..training import TrainingData
from .base import Fitted, HeadMethod, OnEpoch

if TYPE_CHECKING:  # fairlearn is imported where a peer is fitted: a run without peers does not load it
    from fairlearn.postprocessing import ThresholdOptimizer
    from fairlearn.reductions import ExponentiatedGradient

#: The regularization of every peer's logistic regression (scikit-learn's default C).
LOGREG_C = 1.0
#: ExponentiatedGradient's constraint slack, chosen on validation.
EG_EPS = (0.01, 0.05)
SENSITIVE_NEEDED = "{kind} needs the sensitive attribute to predict; pass s"


def as_float64(x: Tensor) -> np.ndarray:
    """Features as a float64 array: fairlearn's ThresholdOptimizer fails on float32 scores
    (it writes float64 interpolations into a float32 pandas Series), so every peer gets float64."""
    return x.double().numpy()


@dataclass(frozen=True)
class PeerParams:
    """The logistic regression's inverse regularization C; ExponentiatedGradient's slack eps."""

    C: float
    eps: float | None = None


def logistic_regression(params: PeerParams, seed: int) -> LogisticRegression:
    """The peers' base learner: L2 logistic regression, lbfgs, enough iterations to converge."""
    return LogisticRegression(C=params.C, max_iter=1000, random_state=seed)


def logreg_size(model: LogisticRegression) -> int:
    """``coef_.size + intercept_.size``: d + 1 for a binary problem."""
    return int(model.coef_.size + model.intercept_.size)


def threshold_rule_size(optimizer: ThresholdOptimizer) -> int:
    """Numbers in the fitted per-group rule: each numeric entry, and each operation's threshold."""
    rules = optimizer.interpolated_thresholder_.interpolation_dict.values()
    return sum(
        1 for rule in rules for value in rule.values()
        if isinstance(value, numbers.Real) or hasattr(value, "threshold")
    )


@dataclass
class FittedPeer:
    """A fitted scikit-learn / fairlearn model on features; ``predict(x, s)`` -> labels ``(n,)``."""

    estimator: LogisticRegression | ExponentiatedGradient | ThresholdOptimizer
    trainable_params: int
    random_state: int

    def predict(self, x: Tensor, s: Tensor | None = None) -> np.ndarray:
        from fairlearn.postprocessing import ThresholdOptimizer
        from fairlearn.reductions import ExponentiatedGradient

        features = as_float64(x)
        if isinstance(self.estimator, ThresholdOptimizer):
            if s is None:
                raise ValueError(SENSITIVE_NEEDED.format(kind="ThresholdOptimizer"))
            labels = self.estimator.predict(features, sensitive_features=s.numpy(), random_state=self.random_state)
        elif isinstance(self.estimator, ExponentiatedGradient):
            labels = self.estimator.predict(features, random_state=self.random_state)
        else:
            labels = self.estimator.predict(features)
        return np.asarray(labels).astype(np.int64)


class Peer(HeadMethod):
    """A non-iterative peer fitted once per candidate on the train split's features."""

    trains_by_epoch = False

    def candidates(self, target: nn.Linear, grid: FinetuneGrid) -> list[PeerParams]:
        return [PeerParams(LOGREG_C)]

    @abstractmethod
    def fit_estimator(self, train: TrainingData, params: PeerParams, seed: int) -> FittedPeer:
        """Fit the peer on ``train.x`` (features), ``train.y`` and, where it uses it, ``train.s``."""

    def fit(self, target: nn.Linear, train: TrainingData, context: Any, params: PeerParams, *, epochs: int,
            batch_size: int, seed: int, on_epoch: OnEpoch | None = None) -> Fitted:
        """Fit once (``epochs``, ``batch_size`` and ``on_epoch`` do not apply)."""
        return self.fit_estimator(train, params, seed)


class LogisticRegressionHead(Peer):
    """A plain logistic-regression head on the frozen features (no fairness constraint)."""

    def fit_estimator(self, train: TrainingData, params: PeerParams, seed: int) -> FittedPeer:
        model = logistic_regression(params, seed).fit(as_float64(train.x), train.y.numpy())
        return FittedPeer(model, logreg_size(model), seed)


class ExponentiatedGradientPeer(Peer):
    """fairlearn's ExponentiatedGradient reduction around a logistic regression."""

    #: The name of a ``fairlearn.reductions`` constraint class.
    constraint: ClassVar[str]

    def candidates(self, target: nn.Linear, grid: FinetuneGrid) -> list[PeerParams]:
        return [PeerParams(LOGREG_C, eps) for eps in EG_EPS]

    def fit_estimator(self, train: TrainingData, params: PeerParams, seed: int) -> FittedPeer:
        from fairlearn import reductions

        constraint = getattr(reductions, self.constraint)()
        reduction = reductions.ExponentiatedGradient(logistic_regression(params, seed), constraint, eps=params.eps)
        reduction.fit(as_float64(train.x), train.y.numpy(), sensitive_features=train.s.numpy())
        used = [p for p, w in zip(reduction.predictors_, reduction.weights_) if w > 0]
        return FittedPeer(reduction, sum(logreg_size(p) for p in used), seed)


class ExponentiatedGradientEO(ExponentiatedGradientPeer):
    """ExponentiatedGradient with ``EqualizedOdds``."""

    constraint = "EqualizedOdds"


class ExponentiatedGradientDP(ExponentiatedGradientPeer):
    """ExponentiatedGradient with ``DemographicParity``."""

    constraint = "DemographicParity"


class ThresholdOptimizerPeer(Peer):
    """fairlearn's ThresholdOptimizer post-processing of a logistic regression's probabilities."""

    constraint: ClassVar[str]

    def fit_estimator(self, train: TrainingData, params: PeerParams, seed: int) -> FittedPeer:
        from fairlearn.postprocessing import ThresholdOptimizer

        optimizer = ThresholdOptimizer(
            estimator=logistic_regression(params, seed), constraints=self.constraint,
            prefit=False, predict_method="predict_proba",
        )
        optimizer.fit(as_float64(train.x), train.y.numpy(), sensitive_features=train.s.numpy())
        return FittedPeer(optimizer, logreg_size(optimizer.estimator_) + threshold_rule_size(optimizer), seed)


class ThresholdOptimizerEO(ThresholdOptimizerPeer):
    """ThresholdOptimizer with ``constraints="equalized_odds"``."""

    constraint = "equalized_odds"


class ThresholdOptimizerDP(ThresholdOptimizerPeer):
    """ThresholdOptimizer with ``constraints="demographic_parity"``."""

    constraint = "demographic_parity"

