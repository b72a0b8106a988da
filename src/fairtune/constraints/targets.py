"""A fairness target ``gap ≤ ε`` and the group rates and linear constraints that express it.

The gaps are those of :mod:`fairtune.metrics`. Write ``R[g, r]`` for group g's rate r:
for ``"eo"`` r ∈ {TPR = P(Ŷ=1|S=g,Y=1), FPR = P(Ŷ=1|S=g,Y=0)}, for ``"dp"`` r ∈ {P(Ŷ=1|S=g)}.
The metric is ``max_{g<h} Σ_r |R[g,r] − R[h,r]|``, and since ``Σ_r |a_r| = max_σ Σ_r σ_r a_r``
over sign vectors σ ∈ {±1}^R, the target ``gap ≤ ε`` is exactly the set of linear constraints

    Σ_r σ_r (R[g,r] − R[h,r]) ≤ ε     for every pair g < h and every σ ∈ {±1}^R

(4 per pair for EO, 2 per pair for DP): one Lagrange multiplier per row.

How the target is made to hold on new data (``estimate``). A rate gap measured on n samples
is the population gap plus binomial noise of variance ``Σ_{g,h} R(1−R)/n_g``, and the metric
takes its absolute value, so a rule that meets ε exactly where it was fitted measures more on
a new split: a gap fitted to 0 measures ``E|noise| ≈ 0.8·sd`` there (on Adult's test split,
about 0.02 of ΔEO from the women's TPR alone). With ``estimate="expected"`` the target bounds
the gap *expected on a new split* instead of the fitted one:

    Σ_r E|ΔR_r + sd_r·Z| ≤ ε,   sd_r² = Var_fit(ΔR_r)·(1 + n_fit / n_new),   Z ~ N(0, 1)

(the population gap is uncertain by the fitting noise, and the new split adds its own;
``n_new``: ``reference_size``, default the fitting data's size). ``estimate="sample"`` bounds
the gap on the fitting data itself.

The folded normal credits a fitted gap ΔR with the noise cancelling part of it, which assumes
ΔR is centred on the population gap. A rule *chosen* for its fitted rates is not: among many
candidates the search keeps those whose noise flattered them (the convex hull of an empirical
ROC curve lies above the true one), and on Adult the rules fitted for ``"expected"`` measured
above ε on test. ``estimate="upper"`` bounds the gap by the triangle inequality instead::

    Σ_r (|ΔR_r| + E|sd_r·Z|) ≥ Σ_r E|ΔR_r + sd_r·Z|,

a bound on the expected gap that holds however the new split's noise falls on the fitted gap:
the fitting data's own gap must leave the whole mean noise ``sd·sqrt(2/π)`` of every rate free.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations, product
from typing import Literal

import numpy as np
from scipy.special import ndtr

from ..errors import ConfigError
from ..methods.fairness import Constraint, check_constraint

BAD_TOLERANCE = "fairness tolerance ε must be a number in (0, 2), got {value!r}"
BAD_ESTIMATE = "fairness estimate must be 'expected', 'upper' or 'sample', got {value!r}"
BAD_REFERENCE = "reference size must be an integer >= 1 or None, got {value!r}"
Estimate = Literal["expected", "upper", "sample"]
ESTIMATES: tuple[Estimate, ...] = ("expected", "upper", "sample")
TOO_FEW_GROUPS = "a fairness target needs at least 2 sensitive groups, got {count}"
#: Rates of each constraint, in the order of the last axis of the rate arrays.
RATES: dict[str, tuple[str, ...]] = {"eo": ("tpr", "fpr"), "dp": ("selection",)}


@dataclass(frozen=True)
class FairnessTarget:
    """``gap ≤ tolerance`` for ``constraint`` ("eo": ΔEO = ΔTPR + ΔFPR; "dp": ΔDP).

    ``estimate``: ``"expected"`` bounds the gap expected on a new split of ``reference_size``
    samples (None: as many as the fitting data), ``"upper"`` the fitted gap plus that split's
    whole mean noise (an upper bound of the expected gap), ``"sample"`` the gap on the fitting
    data (see the module docstring).
    """

    constraint: Constraint = "eo"
    tolerance: float = 0.05
    estimate: Estimate = "expected"
    reference_size: int | None = None

    def __post_init__(self) -> None:
        check_constraint(self.constraint)
        try:
            tolerance = float(self.tolerance)
        except (TypeError, ValueError):
            raise ConfigError(BAD_TOLERANCE.format(value=self.tolerance)) from None
        if not 0 < tolerance < 2:  # also refuses nan; ΔEO ≤ 2, so ε ≥ 2 constrains nothing
            raise ConfigError(BAD_TOLERANCE.format(value=self.tolerance))
        if self.estimate not in ESTIMATES:
            raise ConfigError(BAD_ESTIMATE.format(value=self.estimate))
        if self.reference_size is not None and not (isinstance(self.reference_size, int) and self.reference_size >= 1):
            raise ConfigError(BAD_REFERENCE.format(value=self.reference_size))
        object.__setattr__(self, "tolerance", tolerance)

    @property
    def metric(self) -> str:
        """The column of :func:`fairtune.metrics.evaluate` this target bounds."""
        return "delta_eo" if self.constraint == "eo" else "delta_dp"

    def noise_scale(self, fit_size: int) -> float:
        """``1 + n_fit / n_new`` for ``"expected"`` and ``"upper"``, 0 for ``"sample"``: the factor of Var_fit(ΔR) in sd²."""
        if self.estimate == "sample":
            return 0.0
        return 1.0 + fit_size / (self.reference_size or fit_size)


def constraint_rows(constraint: Constraint, n_groups: int) -> np.ndarray:
    """Coefficients ``A`` ``(K, G, R)`` of the linear rows ``Σ_{g,r} A[k,g,r] R[g,r] ≤ ε``.

    Row k belongs to a pair g < h and a sign vector σ: ``A[k,g] = σ``, ``A[k,h] = −σ``.
    ``max_k Σ A[k]·R`` is the metric's gap (max over pairs of the summed absolute rate gaps).
    """
    if n_groups < 2:
        raise ConfigError(TOO_FEW_GROUPS.format(count=n_groups))
    n_rates = len(RATES[constraint])
    rows = []
    for (g, h), signs in product(combinations(range(n_groups), 2), product((1.0, -1.0), repeat=n_rates)):
        row = np.zeros((n_groups, n_rates))
        row[g], row[h] = signs, np.negative(signs)
        rows.append(row)
    return np.stack(rows)


def rate_sizes(constraint: Constraint, n_pos: np.ndarray, n_neg: np.ndarray) -> np.ndarray:
    """How many samples each rate averages over, ``(..., R)``: (n_pos, n_neg) for EO, n_pos + n_neg for DP."""
    if constraint == "eo":
        return np.stack(np.broadcast_arrays(n_pos, n_neg), axis=-1)
    return np.asarray(n_pos + n_neg)[..., None]


def rates_and_sizes(constraint: Constraint, tp: np.ndarray, fp: np.ndarray, n_pos: np.ndarray, n_neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rates ``R`` and the sample counts they average over, each ``(..., R)``, from per-group counts.

    EO: ``TPR = TP / n_pos``, ``FPR = FP / n_neg``; DP: ``(TP + FP) / (n_pos + n_neg)``.
    ``tp``/``fp`` count predicted positives among the group's positives/negatives.
    """
    sizes = rate_sizes(constraint, n_pos, n_neg)
    hits = np.stack(np.broadcast_arrays(tp, fp), axis=-1) if constraint == "eo" else np.asarray(tp + fp)[..., None]
    return hits / sizes, sizes


def expected_abs(mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """``E|mean + sd·Z|`` for Z ~ N(0, 1) (the folded normal's mean); ``|mean|`` where sd = 0.

    ``sd·sqrt(2/π)·exp(−mean²/(2sd²)) + mean·(1 − 2Φ(−mean/sd))``.
    """
    mean, sd = np.broadcast_arrays(np.asarray(mean, dtype=float), np.asarray(sd, dtype=float))
    safe = np.where(sd > 0, sd, 1.0)
    folded = safe * np.sqrt(2 / np.pi) * np.exp(-0.5 * (mean / safe) ** 2) + mean * (1 - 2 * ndtr(-mean / safe))
    return np.where(sd > 0, folded, np.abs(mean))


def bounded_abs(mean: np.ndarray, sd: np.ndarray, estimate: Estimate) -> np.ndarray:
    """What ``estimate`` bounds of a rate gap ``mean`` with new-split noise ``sd``: ``E|mean + sd·Z|``
    (:func:`expected_abs`; ``|mean|`` for sd = 0, as ``"sample"`` has), or ``|mean| + sd·sqrt(2/π)`` for ``"upper"``."""
    if estimate == "upper":
        return np.abs(mean) + np.asarray(sd, dtype=float) * np.sqrt(2 / np.pi)
    return expected_abs(mean, sd)


def rate_variance(rates: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Binomial variance ``R(1−R)/n`` of each measured rate (``sizes`` 0 gives 0)."""
    return rates * (1 - rates) / np.maximum(sizes, 1)


def bounded_gap(y: np.ndarray, y_pred: np.ndarray, s: np.ndarray, target: FairnessTarget) -> float:
    """The gap ``target`` bounds, measured on labels ``y``, predictions ``y_pred``, groups ``s``.

    ``max_{g<h} Σ_r E|ΔR_r + sd_r·Z|`` (module docstring): the metric's gap for
    ``estimate="sample"``, the gap expected on a new split for ``"expected"``.
    """
    y, y_pred, s = (np.asarray(a).ravel().astype(np.int64) for a in (y, y_pred, s))
    n_groups = int(s.max()) + 1
    groups = [(s == g) for g in range(n_groups)]
    rates, sizes = rates_and_sizes(
        target.constraint,
        np.array([(y_pred[m] & y[m]).sum() for m in groups]), np.array([(y_pred[m] & (1 - y[m])).sum() for m in groups]),
        np.array([y[m].sum() for m in groups]), np.array([(1 - y[m]).sum() for m in groups]),
    )
    return gap_bound(rates, sizes, target, len(y))


def gap_bound(rates: np.ndarray, sizes: np.ndarray, target: FairnessTarget, fit_size: int) -> float:
    """The gap ``target`` bounds, from per-group rates ``R`` ``(G, R)`` and the sample counts they average over.

    ``max_{g<h} Σ_r E|R[g,r] − R[h,r] + sd_r·Z|`` (:func:`bounded_abs`), ``sd_r² = (Var R[g,r] + Var R[h,r])·noise_scale(fit_size)``
    (module docstring); the rates may be those of a randomized rule (each sample's label is then
    Bernoulli(R), of the same binomial variance).
    """
    variance = rate_variance(rates, sizes) * target.noise_scale(fit_size)
    return max(float(bounded_abs(rates[g] - rates[h], np.sqrt(variance[g] + variance[h]), target.estimate).sum())
               for g, h in combinations(range(len(rates)), 2))
