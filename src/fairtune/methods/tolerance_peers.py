"""Peers that take a fairness tolerance ε, on the same frozen features and splits as fairtune's methods.

- :class:`RelaxedThresholdPeer`: error-parity's ``RelaxedThresholdOptimizer`` (Cruz & Hardt,
  2023) on a logistic regression's probabilities: group-specific, possibly randomized thresholds
  whose group ROC points lie within an ℓ1 distance ε (``l_p_norm=1``: ``|ΔTPR| + |ΔFPR| ≤ ε``, our
  ΔEO) or whose selection rates differ by at most ε (DP). Needs the sensitive attribute at
  prediction time. In the catalogue: ``errorparity-eo:ε``, ``errorparity-dp:ε``.
- :class:`FairretNormLossPeer`: fairret's ``NormLoss`` (Buyl et al., 2024) added to the
  cross-entropy of a copy of the target layer (as TL): the ℓ1 norm of the groups' relative
  deviations from the overall TPR and FPR (EO) or positive rate (DP), with a strength; it takes
  no ε, so the strength is a hyperparameter chosen on validation under the target
  (:func:`fairtune.constraints.select_under_target`). No sensitive attribute at prediction time.
  fairret's projection losses normalize wrongly unless ``force_proj_normalized`` is set;
  NormLoss is not one. In the catalogue: ``fairret-eo:ε``, ``fairret-dp:ε``.

Both are optional: ``pip install 'fairtune[peers]'`` (error-parity pins ``numpy<2`` in its
metadata but runs on numpy 2; install it with ``pip install --no-deps error-parity`` plus
``cvxpy``, as that extra's comment says). error-parity's randomized predictions draw from
the global ``np.random`` and from generators that advance with every call:
:meth:`RelaxedThresholdPeer.predict` predicts with a copy of the fitted optimizer and the
global generator seeded with the peer's seed (the caller's state restored after), so the same
inputs always get the same labels.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from ..constraints.targets import FairnessTarget
from ..errors import ConfigError
from ..factorization import count_parameters
from ..training import TrainingData, predict, train_classifier
from ..config import FinetuneGrid
from .base import Fitted, FittedHead, HeadMethod, OnEpoch
from .peers import LOGREG_C, SENSITIVE_NEEDED, PeerParams, as_float64, logistic_regression, logreg_size

NEEDS_PACKAGE = "the {peer} peer needs the package {package}: pip install 'fairtune[peers]'"
NOT_FITTED = "{peer} is not fitted: call fit first"
#: The error-parity constraint for each fairtune constraint.
ERROR_PARITY_CONSTRAINTS = {"eo": "equalized_odds", "dp": "demographic_parity"}
#: NormLoss strengths searched on validation (on Adult, strength 1 already costs 17 Err points).
FAIRRET_STRENGTHS = (0.003, 0.01, 0.03, 0.1, 0.3)


class RelaxedThresholdPeer:
    """error-parity's ``RelaxedThresholdOptimizer`` at ``target``'s tolerance, on a logistic regression.

    ``fit(train)`` fits the logistic regression on ``train.x`` and the thresholds on its
    probabilities for the same rows; ``predict(x, s)`` needs the groups. ``seed`` seeds the
    logistic regression and the randomized predictions.
    """

    def __init__(self, target: FairnessTarget, *, C: float = LOGREG_C, seed: int = 0) -> None:
        self.target = target
        self.C = C
        self.seed = seed

    def fit(self, train: TrainingData) -> RelaxedThresholdPeer:
        try:
            from error_parity import RelaxedThresholdOptimizer
        except ImportError:
            raise ConfigError(NEEDS_PACKAGE.format(peer="RelaxedThresholdOptimizer", package="error-parity")) from None
        x = as_float64(train.x)
        self.logreg_ = logistic_regression(PeerParams(self.C), self.seed).fit(x, train.y.numpy())
        self.optimizer_ = RelaxedThresholdOptimizer(
            predictor=lambda features: self.logreg_.predict_proba(features)[:, 1],
            constraint=ERROR_PARITY_CONSTRAINTS[self.target.constraint], tolerance=self.target.tolerance,
            l_p_norm=1, seed=self.seed,
        )
        with _seeded_global_numpy(self.seed):
            self.optimizer_.fit(x, train.y.numpy(), group=train.s.numpy())
        # d + 1 weights and one threshold per group (error-parity's mixing weights, where it randomizes, are not counted)
        self.trainable_params_ = logreg_size(self.logreg_) + int(train.s.max() + 1)
        return self

    def predict(self, x: Tensor, s: Tensor | None = None) -> np.ndarray:
        """Labels ``(n,)``; randomized where error-parity mixes two thresholds (seeded)."""
        if not hasattr(self, "optimizer_"):
            raise ConfigError(NOT_FITTED.format(peer="RelaxedThresholdPeer"))
        if s is None:
            raise ConfigError(SENSITIVE_NEEDED.format(kind="RelaxedThresholdOptimizer"))
        with _seeded_global_numpy(self.seed):  # a copy: its own generators restart from the fitted state
            labels = copy.deepcopy(self.optimizer_).predict(as_float64(x), group=np.asarray(s))
        return np.asarray(labels).astype(np.int64)


@contextlib.contextmanager
def _seeded_global_numpy(seed: int) -> Iterator[None]:
    """Seed the global ``np.random`` inside the block and restore the caller's state after it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


class FairretNormLossPeer:
    """A copy of the target layer fine-tuned on ``CE + strength · NormLoss`` (fairret).

    NormLoss = ``Σ_g Σ_r |R̃[g,r] / R̃[r] − 1|``: the ℓ1 norm of each group's relative deviation
    from the overall rate, with the rates of P(Ŷ=1|x) in the batch (TPR and FPR stacked for
    "eo", the positive rate for "dp"). ``fit(layer, train)`` trains like TL (Adam, seeded batches).
    """

    def __init__(self, target: FairnessTarget, *, strength: float = 1.0, lr: float = 1e-2, epochs: int = 20,
                 batch_size: int = 256, seed: int = 0) -> None:
        self.target = target
        self.strength = strength
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.seed = seed

    def fit(self, layer: nn.Linear, train: TrainingData, on_epoch: Any = None) -> FairretNormLossPeer:
        """Train a copy of ``layer``; ``on_epoch(epoch, self)`` sees the peer after each epoch."""
        try:
            from fairret.loss import NormLoss
            from fairret.statistic import FalsePositiveRate, PositiveRate, StackedLinearFractionalStatistic, TruePositiveRate
        except ImportError:
            raise ConfigError(NEEDS_PACKAGE.format(peer="fairret NormLoss", package="fairret")) from None
        if self.target.constraint == "eo":
            loss = NormLoss(StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate()))
        else:
            loss = NormLoss(PositiveRate())
        n_groups = int(train.s.max()) + 1

        def penalty(logits: Tensor, y: Tensor, s: Tensor, module: nn.Module) -> Tensor:
            margin = (logits[:, 1] - logits[:, 0])[:, None]  # σ(margin) = P(Ŷ=1|x)
            sens = nn.functional.one_hot(s, n_groups).float()
            args = (y[:, None].float(),) if self.target.constraint == "eo" else ()
            return self.strength * loss(margin, sens, *args)

        self.module_ = copy.deepcopy(layer)
        for parameter in self.module_.parameters():
            parameter.requires_grad_(True)
        self.trainable_params_ = count_parameters(self.module_)
        train_classifier(self.module_, train, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=self.seed,
                         penalty=penalty, on_epoch=None if on_epoch is None else (lambda epoch, _m: on_epoch(epoch, self)))
        return self

    def predict(self, x: Tensor, s: Tensor | None = None) -> np.ndarray:
        """Labels ``(n,)`` = argmax of the head's logits (the groups are not used)."""
        if not hasattr(self, "module_"):
            raise ConfigError(NOT_FITTED.format(peer="FairretNormLossPeer"))
        return predict(self.module_, x)


# --- the two peers as methods of the catalogue (``errorparity-eo:ε``, ``fairret-eo:ε``) ----------------

@dataclass
class FittedTolerancePeer:
    """A fitted :class:`RelaxedThresholdPeer` seen as a method's fit: ``predict(x, s)`` and its size."""

    peer: RelaxedThresholdPeer

    @property
    def trainable_params(self) -> int:
        return self.peer.trainable_params_

    def predict(self, x: Tensor, s: Tensor | None = None) -> np.ndarray:
        return self.peer.predict(x, s)


class RelaxedThresholdMethod(HeadMethod):
    """``errorparity-eo:ε``: :class:`RelaxedThresholdPeer` at the spec's target (set by the engine's ``constrain``)."""

    trains_by_epoch = False

    def candidates(self, target: nn.Linear, grid: FinetuneGrid) -> list[PeerParams]:
        return [PeerParams(LOGREG_C)]

    def fit(self, target: nn.Linear, train: TrainingData, context: Any, params: PeerParams, *, epochs: int,
            batch_size: int, seed: int, on_epoch: OnEpoch | None = None) -> Fitted:
        return FittedTolerancePeer(RelaxedThresholdPeer(self.target, C=params.C, seed=seed).fit(train))


@dataclass(frozen=True)
class FairretParams:
    """NormLoss strength and Adam's learning rate."""

    strength: float
    lr: float


class FairretMethod(HeadMethod):
    """``fairret-eo:ε``: :class:`FairretNormLossPeer`, its strength and lr chosen on validation under the target."""

    def candidates(self, target: nn.Linear, grid: FinetuneGrid) -> list[FairretParams]:
        return [FairretParams(strength, lr) for strength in FAIRRET_STRENGTHS for lr in grid.lrs]

    def fit(self, target: nn.Linear, train: TrainingData, context: Any, params: FairretParams, *, epochs: int,
            batch_size: int, seed: int, on_epoch: OnEpoch | None = None) -> Fitted:
        peer = FairretNormLossPeer(self.target, strength=params.strength, lr=params.lr, epochs=epochs,
                                   batch_size=batch_size, seed=seed)
        peer.fit(target, train, on_epoch=None if on_epoch is None else
                 (lambda epoch, fitted: on_epoch(epoch, FittedHead(fitted.module_, fitted.trainable_params_))))
        return FittedHead(peer.module_, peer.trainable_params_)

