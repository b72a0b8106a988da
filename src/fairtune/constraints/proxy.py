"""Decision rules that meet a fairness target without the sensitive attribute at prediction time.

A per-group rule (:mod:`fairtune.constraints.thresholds`) decides by the sensitive attribute s.
Where s is known only for the training data (as for fairlearn's ExponentiatedGradient), the
rule can decide by cells of x instead: a multinomial logistic regression of s on x, fitted on
the rule's fitting data, gives each sample its most likely group ĝ(x) and that group's
probability; the cells are ĝ crossed with ``bins`` quantile bins of the probability. Each cell
then gets a randomized threshold of the score (:func:`~fairtune.constraints.fit_randomized_thresholds`
with ``cells``) such that the rates of the *true* groups, measured with s on the fitting data,
meet the target in expectation. The rule uses only the score and x at prediction time.

Bins matter: a sample's group probability also says how much its score should move, so finer
cells cost less Err than two (ĝ only). On Adult (``docs/fairness_target.md``) a proxy on the
model's inputs finds sex with a test AUC of about 0.93.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ..errors import ConfigError
from ..training import single_threaded
from .targets import FairnessTarget
from .thresholds import RandomizedThresholds, fit_randomized_thresholds

#: Quantile bins of the inferred group's probability per inferred group, and candidate thresholds per cell.
PROXY_BINS, PROXY_GRID = 4, 100
ROWS = "the inputs have {inputs} rows but the scores have {scores}"


@dataclass(frozen=True)
class InferredGroups:
    """The cells of x: the most likely group ĝ(x) under ``model`` and the bin of P(ĝ | x) among ``edges[ĝ]``.

    ``cells(x) = ĝ·bins + #{edges[ĝ] < P(ĝ | x)}``, codes ``0..G·bins − 1``.
    """

    model: Pipeline
    edges: tuple[np.ndarray, ...]
    bins: int

    def cells(self, x: np.ndarray) -> np.ndarray:
        """Cell codes ``(n,)`` int64 of the rows of ``x`` ``(n, d)``."""
        with single_threaded():  # the same codes whatever the machine's cores
            probability = self.model.predict_proba(_table(x))
        likely = probability.argmax(axis=1)
        out = likely * self.bins
        for g, edges in enumerate(self.edges):
            members = likely == g
            out[members] += np.searchsorted(edges, probability[members, g], side="left")
        return out.astype(np.int64)


def _table(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1)


def fit_inferred_groups(x: np.ndarray, s: np.ndarray, *, bins: int = PROXY_BINS) -> InferredGroups:
    """A logistic regression of the group codes ``s`` on ``x`` (standardized), and the quantile edges of the cells."""
    if bins < 1:
        raise ConfigError(f"the inferred groups need at least 1 bin, got {bins}")
    x, s = _table(x), np.asarray(s).ravel().astype(np.int64)
    with single_threaded():  # the same fit on any machine, and no contention between units
        model = make_pipeline(StandardScaler(), LogisticRegression(solver="newton-cholesky", max_iter=100)).fit(x, s)
        probability = model.predict_proba(x)
    likely = probability.argmax(axis=1)
    edges = tuple(np.quantile(probability[likely == g, g], np.linspace(0, 1, bins + 1)[1:-1]) if (likely == g).any()
                  else np.zeros(0) for g in range(probability.shape[1]))
    return InferredGroups(model, edges, bins)


@dataclass(frozen=True)
class ProxyThresholds:
    """A randomized threshold per cell of :class:`InferredGroups`: ``predict(scores, x)`` needs no sensitive attribute."""

    groups: InferredGroups
    rule: RandomizedThresholds

    @property
    def fit_gap(self) -> float:
        return self.rule.fit_gap

    @property
    def fit_bound(self) -> float:
        return self.rule.fit_bound

    @property
    def fit_err(self) -> float:
        return self.rule.fit_err

    def predict(self, scores: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Labels ``(n,)`` int64 from scores ``(n,)`` and inputs ``(n, ...)``, drawn from the rule's seed."""
        if len(x) != len(scores):
            raise ConfigError(ROWS.format(inputs=len(x), scores=len(scores)))
        return self.rule.predict(scores, self.groups.cells(x))

    def record(self) -> dict[str, list[list[float]]]:
        """JSON-ready: the cells' ``thresholds`` and ``probabilities`` (:meth:`RandomizedThresholds.record`)."""
        return self.rule.record()


def fit_proxy_thresholds(
    scores: np.ndarray, x: np.ndarray, y: np.ndarray, s: np.ndarray, target: FairnessTarget, *, seed: int = 0,
    bins: int = PROXY_BINS, grid: int = PROXY_GRID,
) -> ProxyThresholds:
    """Randomized thresholds per cell of the groups inferred from ``x`` with the least Err meeting ``target``
    (measured on ``s``) in expectation on ``(scores, y, s)``."""
    if len(x) != len(np.ravel(scores)):
        raise ConfigError(ROWS.format(inputs=len(x), scores=len(np.ravel(scores))))
    groups = fit_inferred_groups(x, s, bins=bins)
    rule = fit_randomized_thresholds(scores, y, s, target, grid=grid, seed=seed, cells=groups.cells(x))
    return ProxyThresholds(groups, rule)
