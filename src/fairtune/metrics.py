"""Fairness and accuracy metrics as the paper defines them (numpy in, floats out).

- ΔDP = ``|P(Ŷ=1 | S=1) − P(Ŷ=1 | S=2)|``                     demographic parity distance
- ΔEO = ΔTPR + ΔFPR                                           equalized odds, a *sum*
  (fairlearn's ``equalized_odds_difference`` takes the max of the two by default)
- Err = 100 − weighted-average F1, in percent

For more than two groups each gap is the largest over all pairs of groups; for ΔEO that is
max over pairs (g, h) of ``|TPR_g − TPR_h| + |FPR_g − FPR_h|``. As in fairlearn's ``MetricFrame``,
the groups are those present: a rate is taken over the groups that have a sample to compute it
on (ΔEO over the groups that have both TPR and FPR), and is undefined when fewer than two do.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from sklearn.metrics import f1_score

from .errors import UndefinedMetricError


def _as_arrays(*arrays: np.ndarray) -> list[np.ndarray]:
    out = [np.asarray(a).ravel() for a in arrays]
    if len({len(a) for a in out}) != 1:
        raise ValueError(f"arrays have different lengths: {[len(a) for a in out]}")
    return out


def _group_rates(y_pred: np.ndarray, s: np.ndarray, mask: np.ndarray, rate: str) -> dict[object, float]:
    """P(Ŷ=1 | S=g, mask) for each group g that has a sample in ``mask``; ``rate`` names it in errors."""
    groups = np.unique(s).tolist()  # Python scalars: messages show 1, not np.int64(1)
    if len(groups) < 2:
        raise UndefinedMetricError(f"{rate} needs at least 2 sensitive groups, got {len(groups)}")
    rates = {group: float(np.mean(y_pred[(s == group) & mask] == 1)) for group in groups if ((s == group) & mask).any()}
    if len(rates) < 2:
        without = next(group for group in groups if group not in rates)
        raise UndefinedMetricError(f"{rate} is undefined: group {without!r} has no sample to compute it on")
    return rates


def selection_rates(y_pred: np.ndarray, s: np.ndarray) -> dict[object, float]:
    """P(Ŷ=1 | S=g) for each group g."""
    y_pred, s = _as_arrays(y_pred, s)
    return _group_rates(y_pred, s, np.ones(len(s), bool), "the selection rate P(Ŷ=1|S)")


def true_positive_rates(y_true: np.ndarray, y_pred: np.ndarray, s: np.ndarray) -> dict[object, float]:
    """P(Ŷ=1 | S=g, Y=1) for each group g."""
    y_true, y_pred, s = _as_arrays(y_true, y_pred, s)
    return _group_rates(y_pred, s, y_true == 1, "the true positive rate P(Ŷ=1|S,Y=1)")


def false_positive_rates(y_true: np.ndarray, y_pred: np.ndarray, s: np.ndarray) -> dict[object, float]:
    """P(Ŷ=1 | S=g, Y=0) for each group g."""
    y_true, y_pred, s = _as_arrays(y_true, y_pred, s)
    return _group_rates(y_pred, s, y_true == 0, "the false positive rate P(Ŷ=1|S,Y=0)")


def _max_gap(rates: dict[object, float]) -> float:
    values = list(rates.values())
    return float(max(values) - min(values))


def delta_dp(y_pred: np.ndarray, s: np.ndarray) -> float:
    """ΔDP = max over group pairs of ``|P(Ŷ=1|S=g) − P(Ŷ=1|S=h)|``."""
    return _max_gap(selection_rates(y_pred, s))


def delta_eo(y_true: np.ndarray, y_pred: np.ndarray, s: np.ndarray) -> float:
    """ΔEO = max over group pairs of ``|ΔTPR| + |ΔFPR|`` (the paper's sum)."""
    tpr = true_positive_rates(y_true, y_pred, s)
    fpr = false_positive_rates(y_true, y_pred, s)
    both = [g for g in tpr if g in fpr]
    if len(both) < 2:
        raise UndefinedMetricError("ΔEO is undefined: fewer than 2 groups have both positive and negative samples")
    return float(max(abs(tpr[g] - tpr[h]) + abs(fpr[g] - fpr[h]) for g, h in combinations(both, 2)))


def err(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Err = 100 − 100 · weighted-average F1 (percent), as ``f1_score(average="weighted", zero_division=0)``."""
    y_true, y_pred = _as_arrays(y_true, y_pred)
    if _binary(y_true) and _binary(y_pred) and len(y_true):
        return _binary_err(y_true, y_pred)
    return float(100.0 * (1.0 - f1_score(y_true, y_pred, average="weighted", zero_division=0)))


def _binary(labels: np.ndarray) -> bool:
    return labels.dtype.kind in "iub" and bool(((labels == 0) | (labels == 1)).all())


def _binary_err(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """:func:`err` of 0/1 labels from their confusion counts, in scikit-learn's arithmetic (the same float).

    Over the labels present in either array, ``F1_c = 2·TP_c / (n_true_c + n_pred_c)``, then
    ``np.average`` weighted by ``n_true_c``; 100 times faster than ``f1_score`` on the
    validation splits that every candidate checkpoint is scored on.
    """
    counts = np.bincount(2 * y_true.astype(np.int64) + y_pred.astype(np.int64), minlength=4)  # tn, fp, fn, tp
    true_sum = np.array([counts[0] + counts[1], counts[2] + counts[3]])
    pred_sum = np.array([counts[0] + counts[2], counts[1] + counts[3]])
    tp_sum = np.array([counts[0], counts[3]])
    present = (true_sum + pred_sum) > 0  # so no denominator is 0, and the weights sum to n > 0
    true_sum, pred_sum, tp_sum = true_sum[present], pred_sum[present], tp_sum[present]
    f1 = 2.0 * tp_sum.astype(np.float64) / (1.0 * true_sum.astype(np.float64) + pred_sum.astype(np.float64))
    return float(100.0 * (1.0 - float(np.average(f1, weights=true_sum))))


def evaluate(y_true: np.ndarray, y_pred: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """All three metrics: ``{"err", "delta_dp", "delta_eo"}``."""
    return {"err": err(y_true, y_pred), "delta_dp": delta_dp(y_pred, s), "delta_eo": delta_eo(y_true, y_pred, s)}
