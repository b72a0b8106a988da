"""Group-specific decision thresholds that meet a fairness target with the least Err.

Post-processing of any scorer (a fine-tuned head, a user's ``nn.Module``, a peer's
``predict_proba``): group g predicts ``Ŷ = 1 ⇔ score ≥ t_g``. The thresholds solve

    min_t  Err(t)   subject to   Σ_r E|R[g,r](t_g) − R[h,r](t_h) + sd_r·Z| ≤ ε   for every pair g < h

on the fitting data (sd_r = 0 for ``estimate="sample"``, else the noise of a new split:
:mod:`fairtune.constraints.targets`), by exhaustive search
over a grid of per-group candidates: the group's distinct scores (all of them when there
are at most ``grid`` per group, else ``grid`` of them at evenly spaced ranks) and +∞
(predict no positive). Err = 100 − weighted F1 is computed from the summed confusion
counts of the groups, so every combination costs O(1) once the per-group counts are known.
The search holds ``Π_g grid_g`` combinations: keep ``grid^G`` to a few million.

Deterministic: the same scores give the same thresholds. Some combination always meets the
target: +∞ in every group predicts no positive, a gap of 0 (with no noise allowance either).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from ..errors import ConfigError, UndefinedMetricError
from .targets import RATES, FairnessTarget, expected_abs, rate_sizes, rate_variance, rates_and_sizes

EMPTY_RATE = "fitting thresholds for {target}: group {group} has no sample to compute its {rate} on"
LENGTHS = "scores, y and s have different lengths: {lengths}"
BAD_GRID = "the threshold grid needs at least 2 candidates per group, got {grid}"
#: Candidates per group by default: exact for groups with at most this many distinct scores.
DEFAULT_GRID = 1000


@dataclass(frozen=True)
class GroupThresholds:
    """Fitted per-group thresholds: ``predict(scores, s) = 1[score ≥ thresholds[s]]``.

    ``fit_gap``, ``fit_err``: the gap and Err measured on the
    fitting data; ``fit_bound``: the gap the target bounds (the expected gap on a new split for
    ``estimate="expected"``, else ``fit_gap``).
    """

    thresholds: np.ndarray
    target: FairnessTarget
    fit_gap: float
    fit_bound: float
    fit_err: float

    def predict(self, scores: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Labels ``(n,)`` int64 from scores ``(n,)`` and group codes ``(n,)``."""
        scores, s = np.asarray(scores, dtype=float), np.asarray(s, dtype=np.int64)
        return (scores >= self.thresholds[s]).astype(np.int64)


def err_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> np.ndarray:
    """Err = 100·(1 − weighted F1) from confusion counts (broadcast), as :func:`fairtune.metrics.err`.

    ``F1_1 = 2TP / (2TP + FP + FN)``, ``F1_0 = 2TN / (2TN + FN + FP)`` (0 where the
    denominator is 0, as scikit-learn's ``zero_division=0``), weighted by the supports
    ``TP + FN`` and ``TN + FP``.
    """
    n = tp + fp + fn + tn
    with np.errstate(divide="ignore", invalid="ignore"):
        f1_pos = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        f1_neg = np.where(2 * tn + fn + fp > 0, 2 * tn / (2 * tn + fn + fp), 0.0)
    return 100.0 * (1.0 - ((tp + fn) * f1_pos + (tn + fp) * f1_neg) / n)


def candidate_thresholds(scores: np.ndarray, grid: int) -> np.ndarray:
    """The group's distinct scores (or ``grid − 1`` of them at evenly spaced ranks), then +∞."""
    distinct = np.unique(scores)
    if len(distinct) > grid - 1:
        distinct = distinct[np.unique(np.linspace(0, len(distinct) - 1, grid - 1).round().astype(int))]
    return np.append(distinct, np.inf)


def _counts_at(scores: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """How many of ``scores`` are ≥ each candidate threshold."""
    return len(scores) - np.searchsorted(np.sort(scores), candidates, side="left")


def fit_group_thresholds(
    scores: np.ndarray, y: np.ndarray, s: np.ndarray, target: FairnessTarget, *, grid: int = DEFAULT_GRID,
) -> GroupThresholds:
    """Per-group thresholds with the least Err among those meeting ``target`` on ``(scores, y, s)``.

    ``scores`` ``(n,)``: any score increasing in P(Y=1|x); ``y`` in {0, 1}; ``s`` group codes
    ``0..G−1``. ``grid``: candidates per group (see the module docstring).
    """
    scores, y, s = (np.asarray(a).ravel() for a in (scores, y, s))
    if len({len(scores), len(y), len(s)}) != 1:
        raise ConfigError(LENGTHS.format(lengths=(len(scores), len(y), len(s))))
    if grid < 2:
        raise ConfigError(BAD_GRID.format(grid=grid))
    scores, y, s = scores.astype(float), y.astype(np.int64), s.astype(np.int64)
    n_groups = int(s.max()) + 1
    candidates, rates, sizes, tp, fp, fn, tn = [], [], [], [], [], [], []
    for g in range(n_groups):
        positive, negative = scores[(s == g) & (y == 1)], scores[(s == g) & (y == 0)]
        group_sizes = rate_sizes(target.constraint, len(positive), len(negative))
        for name, size in zip(RATES[target.constraint], group_sizes):
            if size == 0:
                raise UndefinedMetricError(EMPTY_RATE.format(target=target.metric, group=g, rate=name))
        cand = candidate_thresholds(scores[s == g], grid)
        tp.append(_counts_at(positive, cand))
        fp.append(_counts_at(negative, cand))
        fn.append(len(positive) - tp[-1])
        tn.append(len(negative) - fp[-1])
        group_rates, group_sizes = rates_and_sizes(target.constraint, tp[-1], fp[-1], len(positive), len(negative))
        candidates.append(cand)
        rates.append(group_rates)
        sizes.append(group_sizes)

    def total(per_group: list[np.ndarray]) -> np.ndarray:
        """Σ_g per_group[g][k_g] over the product grid, shape (m_0, …, m_{G−1})."""
        out = np.zeros([len(c) for c in candidates])
        for g, values in enumerate(per_group):
            out = out + values.reshape([-1 if axis == g else 1 for axis in range(n_groups)])
        return out

    errs = err_from_counts(total(tp), total(fp), total(fn), total(tn))
    scale = target.noise_scale(len(scores))

    def axis(values: np.ndarray, g: int) -> np.ndarray:
        return values.reshape([-1 if a == g else 1 for a in range(n_groups)])

    worst = np.zeros(errs.shape)
    for g, h in combinations(range(n_groups), 2):
        pair = np.zeros(errs.shape)
        for r in range(rates[g].shape[1]):
            variance = axis(rate_variance(rates[g][:, r], sizes[g][r]), g) + axis(rate_variance(rates[h][:, r], sizes[h][r]), h)
            pair = pair + expected_abs(axis(rates[g][:, r], g) - axis(rates[h][:, r], h), np.sqrt(scale * variance))
        worst = np.maximum(worst, pair)
    feasible = worst <= target.tolerance + 1e-12  # never empty: +inf everywhere has gap 0
    best = np.unravel_index(np.argmin(np.where(feasible, errs, np.inf)), errs.shape)
    thresholds = np.array([candidates[g][k] for g, k in enumerate(best)])
    gap = max(float(np.abs(rates[g][best[g]] - rates[h][best[h]]).sum()) for g, h in combinations(range(n_groups), 2))
    return GroupThresholds(thresholds, target, gap, float(worst[best]), float(errs[best]))
