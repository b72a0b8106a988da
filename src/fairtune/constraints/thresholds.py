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

Randomized rules (:func:`fit_randomized_thresholds`, only when asked for) mix a group's
candidate thresholds: ``P(Ŷ=1 | score)`` is a nondecreasing step function of the score
(fairlearn's ThresholdOptimizer and error-parity mix two thresholds the same way). Mixing
reaches every point of the convex hull of a group's ROC points, below its curve too, so the
groups' rates can meet where no pair of deterministic thresholds does: on Adult's TL scores
at ΔEO ≤ 0.05 the deterministic rule pays 1.4 to 2.8 Err points more for the same aim
(``docs/fairness_target.md``). The expected rates are linear in the mixture weights, so the
search is a linear program per budget of false positives; a rule meets the target *in
expectation* (its expected rates) and draws its labels from a seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix, csr_matrix

from ..errors import ConfigError, UndefinedMetricError
from .targets import RATES, Estimate, FairnessTarget, bounded_abs, gap_bound, rate_sizes, rate_variance, rates_and_sizes

EMPTY_RATE = "fitting thresholds for {target}: group {group} has no sample to compute its {rate} on"
LENGTHS = "scores, y and s have different lengths: {lengths}"
BAD_GRID = "the threshold grid needs at least 2 candidates per group, got {grid}"
#: Candidates per group by default: exact for groups with at most this many distinct scores.
DEFAULT_GRID = 1000


@dataclass(frozen=True)
class GroupThresholds:
    """Fitted per-group thresholds: ``predict(scores, s) = 1[score ≥ thresholds[s]]``.

    ``fit_gap``, ``fit_err``: the gap and Err measured on the
    fitting data; ``fit_bound``: the gap the target bounds
    (:func:`~fairtune.constraints.targets.gap_bound`; ``fit_gap`` for ``estimate="sample"``).
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

    def record(self) -> dict[str, list[float]]:
        """JSON-ready: ``thresholds``, one per group."""
        return {"thresholds": [float(t) for t in self.thresholds]}


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


@dataclass(frozen=True)
class GroupCounts:
    """One group's confusion counts at each of its candidate thresholds (ascending, +∞ last).

    ``tp``/``fp`` ``(m,)``: predicted positives among the group's ``n_pos`` positives / ``n_neg``
    negatives; ``rates`` ``(m, R)`` the target's rates there, ``sizes`` ``(R,)`` the samples each averages.
    """

    candidates: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    n_pos: int
    n_neg: int
    rates: np.ndarray
    sizes: np.ndarray


@dataclass(frozen=True)
class CellCounts:
    """The samples a rule decides alike (one group, or one cell of inferred groups) at each of its candidate thresholds.

    ``candidates`` ``(m,)`` ascending, +∞ last; ``tp``/``fp`` ``(m,)``: the cell's predicted positives
    among its positives / negatives; ``rates[g]`` ``(m, R)``: what they add to group g's rates
    (None where the cell holds no sample of group g).
    """

    candidates: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    rates: tuple[np.ndarray | None, ...]


@dataclass(frozen=True)
class RuleCounts:
    """Every cell's :class:`CellCounts`, and the groups' positives, negatives ``(G,)`` and rate sizes ``(G, R)``."""

    cells: list[CellCounts]
    n_pos: np.ndarray
    n_neg: np.ndarray
    sizes: np.ndarray

    @classmethod
    def of_groups(cls, groups: list[GroupCounts]) -> RuleCounts:
        """Group thresholds: each group is one cell, adding to its own rates only."""
        cells = [CellCounts(group.candidates, group.tp, group.fp, tuple(group.rates if h == g else None for h in range(len(groups))))
                 for g, group in enumerate(groups)]
        return cls(cells, np.array([g.n_pos for g in groups]), np.array([g.n_neg for g in groups]), np.stack([g.sizes for g in groups]))


def _checked(scores: np.ndarray, y: np.ndarray, s: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores, y, s = (np.asarray(a).ravel() for a in (scores, y, s))
    if len({len(scores), len(y), len(s)}) != 1:
        raise ConfigError(LENGTHS.format(lengths=(len(scores), len(y), len(s))))
    if grid < 2:
        raise ConfigError(BAD_GRID.format(grid=grid))
    return scores.astype(float), y.astype(np.int64), s.astype(np.int64)


def _check_rates_defined(target: FairnessTarget, g: int, n_pos: int, n_neg: int) -> None:
    for name, size in zip(RATES[target.constraint], rate_sizes(target.constraint, n_pos, n_neg)):
        if size == 0:
            raise UndefinedMetricError(EMPTY_RATE.format(target=target.metric, group=g, rate=name))


def cell_counts(
    scores: np.ndarray, y: np.ndarray, s: np.ndarray, cells: np.ndarray, target: FairnessTarget, grid: int,
) -> tuple[RuleCounts, np.ndarray, np.ndarray, np.ndarray]:
    """:class:`RuleCounts` of a rule deciding by ``cells`` (codes ``0..C−1``) while the target measures groups ``s``,
    and ``scores``, ``y``, ``s`` checked and as float / int64 arrays (as :func:`group_counts`).

    A cell's candidates are its own distinct scores (``grid`` of them at most, :func:`candidate_thresholds`);
    a cell without samples has +∞ only.
    """
    scores, y, s = _checked(scores, y, s, grid)
    cells = np.asarray(cells).ravel().astype(np.int64)
    if len(cells) != len(scores):
        raise ConfigError(LENGTHS.format(lengths=(len(scores), len(y), len(s), len(cells))))
    n_groups = int(s.max()) + 1
    n_pos, n_neg = np.bincount(s[y == 1], minlength=n_groups), np.bincount(s[y == 0], minlength=n_groups)
    for g in range(n_groups):
        _check_rates_defined(target, g, int(n_pos[g]), int(n_neg[g]))
    counts = []
    for c in range(int(cells.max()) + 1):
        inside = cells == c
        candidates = candidate_thresholds(scores[inside], grid) if inside.any() else np.array([np.inf])
        tp_by_group = [_counts_at(scores[inside & (s == g) & (y == 1)], candidates) for g in range(n_groups)]
        fp_by_group = [_counts_at(scores[inside & (s == g) & (y == 0)], candidates) for g in range(n_groups)]
        rates = tuple(rates_and_sizes(target.constraint, tp_by_group[g], fp_by_group[g], n_pos[g], n_neg[g])[0]
                      if (inside & (s == g)).any() else None for g in range(n_groups))
        counts.append(CellCounts(candidates, sum(tp_by_group), sum(fp_by_group), rates))
    return RuleCounts(counts, n_pos, n_neg, rate_sizes(target.constraint, n_pos, n_neg)), scores, y, s


def group_counts(
    scores: np.ndarray, y: np.ndarray, s: np.ndarray, target: FairnessTarget, grid: int,
) -> tuple[list[GroupCounts], np.ndarray, np.ndarray, np.ndarray]:
    """Each group's :class:`GroupCounts`, and ``scores``, ``y``, ``s`` checked and as float / int64 arrays."""
    scores, y, s = _checked(scores, y, s, grid)
    groups = []
    for g in range(int(s.max()) + 1):
        positive, negative = scores[(s == g) & (y == 1)], scores[(s == g) & (y == 0)]
        _check_rates_defined(target, g, len(positive), len(negative))
        candidates = candidate_thresholds(scores[s == g], grid)
        tp, fp = _counts_at(positive, candidates), _counts_at(negative, candidates)
        rates, sizes = rates_and_sizes(target.constraint, tp, fp, len(positive), len(negative))
        groups.append(GroupCounts(candidates, tp, fp, len(positive), len(negative), rates, sizes))
    return groups, scores, y, s


def fit_group_thresholds(
    scores: np.ndarray, y: np.ndarray, s: np.ndarray, target: FairnessTarget, *, grid: int = DEFAULT_GRID,
) -> GroupThresholds:
    """Per-group thresholds with the least Err among those meeting ``target`` on ``(scores, y, s)``.

    ``scores`` ``(n,)``: any score increasing in P(Y=1|x); ``y`` in {0, 1}; ``s`` group codes
    ``0..G−1``. ``grid``: candidates per group (see the module docstring).
    """
    groups, scores, _, _ = group_counts(scores, y, s, target, grid)
    n_groups = len(groups)
    candidates, rates, sizes = [g.candidates for g in groups], [g.rates for g in groups], [g.sizes for g in groups]
    tp, fp = [g.tp for g in groups], [g.fp for g in groups]
    fn, tn = [g.n_pos - g.tp for g in groups], [g.n_neg - g.fp for g in groups]

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
            pair = pair + bounded_abs(axis(rates[g][:, r], g) - axis(rates[h][:, r], h), np.sqrt(scale * variance), target.estimate)
        worst = np.maximum(worst, pair)
    feasible = worst <= target.tolerance + 1e-12  # never empty: +inf everywhere has gap 0
    best = np.unravel_index(np.argmin(np.where(feasible, errs, np.inf)), errs.shape)
    thresholds = np.array([candidates[g][k] for g, k in enumerate(best)])
    gap = max(float(np.abs(rates[g][best[g]] - rates[h][best[h]]).sum()) for g, h in combinations(range(n_groups), 2))
    return GroupThresholds(thresholds, target, gap, float(worst[best]), float(errs[best]))


@dataclass(frozen=True)
class RandomizedThresholds:
    """Fitted randomized rules per group (or per cell, :mod:`~fairtune.constraints.proxy`): ``P(Ŷ=1 | score, g) =
    probabilities[g][j]``, j = number of ``cuts[g]`` ≤ score.

    Per group a nondecreasing step function of the score, from 0 below the lowest cut: a mixture
    of the thresholds ``cuts[g]`` (``probabilities[g][j+1] − probabilities[g][j]`` is the weight
    of the rule ``score ≥ cuts[g][j]``), e.g. fairlearn's "positive above t₂, with probability p
    between t₁ and t₂". A group whose probabilities are all 0 or 1 is decided deterministically.
    ``fit_gap``, ``fit_bound``, ``fit_err``: the gap, the bounded gap and Err the rule has *in
    expectation* on the fitting data. :meth:`predict` draws from ``numpy.random.default_rng(seed)``:
    the same scores give the same labels.
    """

    cuts: tuple[np.ndarray, ...]
    probabilities: tuple[np.ndarray, ...]
    target: FairnessTarget
    fit_gap: float
    fit_bound: float
    fit_err: float
    seed: int

    def positive_probability(self, scores: np.ndarray, s: np.ndarray) -> np.ndarray:
        """``P(Ŷ=1)`` ``(n,)`` of each sample, from its score and group code."""
        scores, s = np.asarray(scores, dtype=float).ravel(), np.asarray(s, dtype=np.int64).ravel()
        out = np.zeros(len(scores))
        for g, (cuts, probabilities) in enumerate(zip(self.cuts, self.probabilities)):
            members = s == g
            out[members] = probabilities[np.searchsorted(cuts, scores[members], side="right")]
        return out

    def predict(self, scores: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Labels ``(n,)`` int64: ``u < P(Ŷ=1)`` with ``u`` uniform from ``default_rng(seed)``, one per sample in order."""
        probability = self.positive_probability(scores, s)
        return (np.random.default_rng(self.seed).random(len(probability)) < probability).astype(np.int64)

    def record(self) -> dict[str, list[list[float]]]:
        """JSON-ready, per group: ``thresholds`` (the cuts) and ``probabilities`` of Ŷ = 1 from each cut on."""
        return {"thresholds": [[float(t) for t in cuts] for cuts in self.cuts],
                "probabilities": [[float(p) for p in probabilities[1:]] for probabilities in self.probabilities]}


def threshold_grid(n_groups: int) -> int:
    """Candidate thresholds per group: the deterministic search visits grid^G combinations, kept to about 2 million."""
    return max(2, min(DEFAULT_GRID, int(round(2e6 ** (1 / n_groups)))))


#: Chords of E|x + sd·Z| on each side of 0, every sd/4 up to 4·sd: their upper bound exceeds it by < 0.007·sd.
CHORD_KNOTS = 16
#: The linear programs bound the gap by ε − this, the solver's feasibility tolerance, so the rule meets ε exactly.
SOLVER_MARGIN = 1e-6
#: FP budgets of the coarse search, and golden-section steps around the best of them.
BUDGETS, REFINE_STEPS = 24, 20
#: Mixture weights below this are the solver's rounding, dropped.
WEIGHT_FLOOR = 1e-9
#: Rounds of moving the program's tolerance for the ``"expected"`` bound, and how close below ε that bound must come.
NOISE_ROUNDS, AIM_PRECISION = 6, 1e-4


def chords(sd: float, estimate: Estimate) -> tuple[np.ndarray, np.ndarray]:
    """Intercepts ``a`` and slopes ``b`` with ``max_j (a_j + b_j·x) ≥`` :func:`~fairtune.constraints.targets.bounded_abs`
    on [−1, 1], equal at the knots.

    The chords of a convex function between consecutive knots lie above it between them, so their
    maximum is its piecewise-linear interpolation: an upper bound, and exact where the function is
    ``|x|`` plus a constant (sd = 0, or ``"upper"``: knots −1, 0, 1). Else knots every sd/4 within
    ±4·sd (:data:`CHORD_KNOTS` per side), and ±1.
    """
    inner = sd * np.linspace(-4, 4, 2 * CHORD_KNOTS + 1) if sd > 0 and estimate == "expected" else np.zeros(1)
    knots = np.unique(np.clip(np.concatenate([[-1.0], inner, [1.0]]), -1, 1))
    values = bounded_abs(knots, sd, estimate)
    slopes = np.diff(values) / np.diff(knots)
    return values[:-1] - slopes * knots[:-1], slopes


def mixture_rates(counts: RuleCounts, weights: list[np.ndarray]) -> tuple[np.ndarray, float, float]:
    """Expected rates ``(G, R)``, true and false positives of per-cell mixtures of the candidates."""
    n_groups = len(counts.n_pos)
    rates = np.stack([sum(w @ cell.rates[g] for cell, w in zip(counts.cells, weights) if cell.rates[g] is not None)
                      for g in range(n_groups)])
    return rates, sum(w @ cell.tp for cell, w in zip(counts.cells, weights)), sum(w @ cell.fp for cell, w in zip(counts.cells, weights))


def mixture_err(counts: RuleCounts, weights: list[np.ndarray]) -> float:
    """Err of the expected confusion counts, summed over the cells (:func:`err_from_counts`)."""
    _, tp, fp = mixture_rates(counts, weights)
    n_pos, n_neg = counts.n_pos.sum(), counts.n_neg.sum()
    return float(err_from_counts(tp, fp, n_pos - tp, n_neg - fp))


def noise_sd(counts: RuleCounts, rates: np.ndarray, scale: float) -> dict[tuple[int, int], np.ndarray]:
    """``sd_r`` per pair g < h ``(R,)``: ``sqrt(scale·(Var R[g,r] + Var R[h,r]))`` at the rates ``(G, R)``."""
    variance = np.stack([rate_variance(rates[g], sizes) for g, sizes in enumerate(counts.sizes)]) * scale
    return {(g, h): np.sqrt(variance[g] + variance[h]) for g, h in combinations(range(len(rates)), 2)}


def _difference(first: np.ndarray | None, second: np.ndarray | None) -> np.ndarray:
    """``first − second``, either of which may be absent (no contribution)."""
    if second is None:
        return first
    return -second if first is None else first - second


@dataclass(frozen=True)
class LinearNoise:
    """The noise of a new split as a linear function of the rates, an upper bound exact at ``rates`` ``(G, R)``:
    ``sd_r(R) ≤ sd_r + Σ_{i∈{g,h}} slopes[i,r]·(R[i,r] − rates[i,r])`` per pair (``sd`` as in :func:`noise_sd`).

    Tangents of concave functions bound them from above: of the binomial variance R(1−R)/n, then of the
    square root of their sum. A linear program that bounds ``|d| + sqrt(2/π)·sd`` with it (``"upper"``)
    therefore bounds the true ``"upper"`` gap of its solution, whatever its rates.
    """

    rates: np.ndarray
    sd: dict[tuple[int, int], np.ndarray]
    slopes: np.ndarray

    @classmethod
    def at(cls, counts: RuleCounts, rates: np.ndarray, scale: float) -> LinearNoise:
        sd = {pair: np.maximum(value, SD_FLOOR) for pair, value in noise_sd(counts, rates, scale).items()}
        variance_slope = scale * (1 - 2 * rates) / np.maximum(counts.sizes, 1)  # d Var / dR, times the scale
        return cls(rates, sd, variance_slope)

    def coefficients(self, pair: tuple[int, int], r: int) -> tuple[float, float, float]:
        """``(a, k_g, k_h)`` with ``sd_r ≤ a + k_g·R[g,r] + k_h·R[h,r]``."""
        g, h = pair
        sd = float(self.sd[pair][r])
        k_g, k_h = self.slopes[g, r] / (2 * sd), self.slopes[h, r] / (2 * sd)
        return sd - k_g * self.rates[g, r] - k_h * self.rates[h, r], float(k_g), float(k_h)


#: The smallest noise a linearization divides by (rates at exactly 0 or 1 have none).
SD_FLOOR = 1e-4


def best_mixture(counts: RuleCounts, sd: dict[tuple[int, int], np.ndarray], tolerance: float,
                 estimate: Estimate, linear: LinearNoise | None = None) -> list[np.ndarray] | None:
    """Per-cell mixture weights with the least Err whose gap, bounded with the fixed noise ``sd``, is ≤ ``tolerance``.

    Variables: the weights λ_c ≥ 0 (Σ = 1) of each cell's candidates, the rate gaps
    ``d[p,r] = R[g,r] − R[h,r]`` (linear in λ) and ``t[p,r] ≥`` the :func:`chords` of what
    ``estimate`` bounds of ``d`` for each pair p = (g, h), with ``Σ_r t[p,r] ≤ tolerance``. For a budget b of false
    positives, the most true positives is then a linear program; Err, increasing in FP and
    decreasing in TP, is searched along b (``BUDGETS`` evenly spaced, then golden section around
    the best). None if no program was feasible. With ``linear`` (``estimate="upper"`` only) the noise
    follows the rates (:class:`LinearNoise`) instead of ``sd``.
    """
    cells = counts.cells
    n_rates = counts.sizes.shape[1]
    offsets = np.cumsum([0] + [len(cell.candidates) for cell in cells])
    gaps = [(pair, r) for pair in sd for r in range(n_rates)]
    gap_at = {gap: offsets[-1] + i for i, gap in enumerate(gaps)}  # d, then t at + len(gaps)
    width = offsets[-1] + 2 * len(gaps)
    eq, ub = _Rows(width), _Rows(width)
    for c, cell in enumerate(cells):
        eq.add({offsets[c] + k: 1.0 for k in range(len(cell.candidates))}, 1.0)
    for (g, h), r in gaps:
        column = gap_at[(g, h), r]
        rates = {}
        for c, cell in enumerate(cells):
            if cell.rates[g] is not None or cell.rates[h] is not None:
                first, second = (None if cell.rates[i] is None else cell.rates[i][:, r] for i in (g, h))
                rates.update({offsets[c] + k: v for k, v in enumerate(_difference(first, second))})
        eq.add({**rates, column: -1.0}, 0.0)  # R[g,r] − R[h,r] − d = 0
        if linear is None:
            for intercept, slope in zip(*chords(float(sd[g, h][r]), estimate)):
                ub.add({column: slope, column + len(gaps): -1.0}, -intercept)  # slope·d − t ≤ −intercept
            continue
        constant, k_g, k_h = linear.coefficients((g, h), r)
        noise: dict[int, float] = {}  # sqrt(2/π)·(k_g·R[g,r] + k_h·R[h,r]) on the weights
        for group, k in ((g, k_g), (h, k_h)):
            for c, cell in enumerate(cells):
                if cell.rates[group] is not None:
                    for j, v in enumerate(cell.rates[group][:, r]):
                        noise[offsets[c] + j] = noise.get(offsets[c] + j, 0.0) + np.sqrt(2 / np.pi) * k * v
        for sign in (1.0, -1.0):  # ±d + noise − t ≤ −sqrt(2/π)·constant
            ub.add({**noise, column: sign, column + len(gaps): -1.0}, -np.sqrt(2 / np.pi) * constant)
    for pair in sd:
        ub.add({gap_at[pair, r] + len(gaps): 1.0 for r in range(n_rates)}, tolerance - SOLVER_MARGIN)
    fp, tp = np.concatenate([cell.fp for cell in cells]), np.concatenate([cell.tp for cell in cells])
    ub.add(dict(enumerate(fp)), 0.0)  # Σ FP ≤ b, set per program
    a_eq, b_eq, a_ub, b_ub = *eq.matrix(), *ub.matrix()
    cost = np.zeros(width)
    cost[:offsets[-1]] = -tp + 1e-9 * fp  # the most TP; among equals, the fewest FP
    bounds = [(0, None)] * offsets[-1] + [(None, None)] * len(gaps) + [(0, None)] * len(gaps)

    def solve(budget: float) -> tuple[float, list[np.ndarray] | None]:
        b_ub[-1] = budget
        result = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
        if result.status != 0:
            return np.inf, None
        weights = [result.x[offsets[c]:offsets[c + 1]] for c in range(len(cells))]
        weights = [np.where(w > WEIGHT_FLOOR, w, 0.0) for w in weights]
        weights = [w / w.sum() for w in weights]
        return mixture_err(counts, weights), weights

    budgets = np.linspace(0, counts.n_neg.sum(), BUDGETS + 1)
    tried = [solve(b) for b in budgets]
    k = int(np.argmin([err for err, _ in tried]))
    low, high = budgets[max(k - 1, 0)], budgets[min(k + 1, BUDGETS)]
    ratio = (np.sqrt(5) - 1) / 2
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    at_left, at_right = solve(left), solve(right)
    tried += [at_left, at_right]
    for _ in range(REFINE_STEPS):
        if at_left[0] <= at_right[0]:
            high, right, at_right = right, left, at_left
            left = high - ratio * (high - low)
            at_left = solve(left)
            tried.append(at_left)
        else:
            low, left, at_left = left, right, at_right
            right = low + ratio * (high - low)
            at_right = solve(right)
            tried.append(at_right)
    return min(tried, key=lambda item: item[0])[1]


class _Rows:
    """Sparse rows ``Σ_j a_j x_j (= or ≤) b`` of a linear program, added one at a time."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.rows: list[int] = []
        self.columns: list[int] = []
        self.values: list[float] = []
        self.bounds: list[float] = []

    def add(self, coefficients: dict[int, float], bound: float) -> None:
        self.rows += [len(self.bounds)] * len(coefficients)
        self.columns += list(coefficients)
        self.values += list(coefficients.values())
        self.bounds.append(bound)

    def matrix(self) -> tuple[csr_matrix, np.ndarray]:
        """The coefficients ``(rows, width)`` and the bounds ``(rows,)``."""
        shape = (len(self.bounds), self.width)
        return coo_matrix((self.values, (self.rows, self.columns)), shape=shape).tocsr(), np.array(self.bounds, dtype=float)


def fit_randomized_thresholds(
    scores: np.ndarray, y: np.ndarray, s: np.ndarray, target: FairnessTarget, *, grid: int = DEFAULT_GRID, seed: int = 0,
    cells: np.ndarray | None = None,
) -> RandomizedThresholds:
    """Randomized per-group rules (mixtures of the candidate thresholds) with the least Err meeting ``target`` in expectation.

    Starts from :func:`fit_group_thresholds` on the same ``grid`` (a deterministic rule is a
    mixture of one threshold), so its Err is never higher. The gap bounded for
    ``estimate="expected"`` depends on the rates through their noise, which :func:`best_mixture`
    holds fixed (at the deterministic rule's rates): each round moves the program's tolerance by
    how far its solution's own bounded gap (:func:`~fairtune.constraints.targets.gap_bound`)
    missed ε, and a mixture is kept only if that gap is ≤ ε. Where the fixed noise alone exceeds
    ε (tiny groups), the deterministic rule is kept. ``seed``: that of
    :meth:`RandomizedThresholds.predict`.

    ``cells`` (codes ``0..C−1``, e.g. :class:`~fairtune.constraints.InferredGroups`): the rule decides
    by these instead of the groups, which the target still measures; it then starts from predicting
    no positive (a gap of 0), with the noise held at the rates of the top ``mean(y)`` scores. Where
    those rounds end short of ε with ``estimate="upper"`` (small groups, whose noise alone can exceed
    ε at those rates), programs whose noise follows the rates (:class:`LinearNoise`) go on from there.
    """
    if cells is None:
        deterministic = fit_group_thresholds(scores, y, s, target, grid=grid)
        groups, scores, y, s = group_counts(scores, y, s, target, grid)
        counts = RuleCounts.of_groups(groups)
        best = [(g.candidates == t).astype(float) for g, t in zip(groups, deterministic.thresholds)]
        sd = noise_sd(counts, mixture_rates(counts, best)[0], target.noise_scale(len(scores)))
    else:
        counts, scores, y, s = cell_counts(scores, y, s, cells, target, grid)
        best = [(cell.candidates == np.inf).astype(float) for cell in counts.cells]
        rates_start = _rates_above(counts, scores, y, s, np.quantile(scores, 1 - y.mean()), target)
        sd = noise_sd(counts, rates_start, target.noise_scale(len(scores)))
    sizes, scale, aim = counts.sizes, target.noise_scale(len(scores)), target.tolerance
    for _ in range(NOISE_ROUNDS if scale else 1):
        weights = best_mixture(counts, sd, aim, target.estimate)
        if weights is None:
            break
        rates = mixture_rates(counts, weights)[0]
        bound = gap_bound(rates, sizes, target, len(scores))
        if bound <= target.tolerance:
            if mixture_err(counts, weights) < mixture_err(counts, best):
                best = weights
            if bound > target.tolerance - AIM_PRECISION:
                break
        aim += target.tolerance - AIM_PRECISION / 2 - bound
    reached = gap_bound(mixture_rates(counts, best)[0], sizes, target, len(scores)) > target.tolerance - AIM_PRECISION
    if cells is not None and scale and target.estimate == "upper" and not reached:  # the fixed noise fell short of ε
        best = _refine_with_linear_noise(counts, best, rates_start, target, len(scores))
    rates = mixture_rates(counts, best)[0]
    cuts, probabilities = [], []
    for cell, weights in zip(counts.cells, best):
        used = (weights > 0) & np.isfinite(cell.candidates)  # +∞ predicts no positive: it adds no step
        cuts.append(cell.candidates[used])
        probabilities.append(np.minimum(np.concatenate([[0.0], np.cumsum(weights[used])]), 1.0))
    gap = max(float(np.abs(rates[g] - rates[h]).sum()) for g, h in combinations(range(len(rates)), 2))
    return RandomizedThresholds(tuple(cuts), tuple(probabilities), target, gap, gap_bound(rates, sizes, target, len(scores)),
                                mixture_err(counts, best), seed)


#: Rounds of re-linearizing the noise at the last solution's rates.
LINEAR_ROUNDS = 4


def _refine_with_linear_noise(counts: RuleCounts, best: list[np.ndarray], start: np.ndarray, target: FairnessTarget,
                              fit_size: int) -> list[np.ndarray]:
    """Lower the Err of ``best`` by programs whose noise follows the rates (:class:`LinearNoise`), linearized at
    ``best``'s rates (at ``start``'s while ``best`` predicts no positive), then at each solution's: every solution
    meets the ``"upper"`` bound, which each round checks again, so the kept rule never misses it."""
    scale = target.noise_scale(fit_size)
    at = start if not any(w @ cell.tp + w @ cell.fp for cell, w in zip(counts.cells, best)) else mixture_rates(counts, best)[0]
    for _ in range(LINEAR_ROUNDS):
        noise = LinearNoise.at(counts, at, scale)
        weights = best_mixture(counts, noise.sd, target.tolerance, target.estimate, linear=noise)
        if weights is None:
            break
        at = mixture_rates(counts, weights)[0]
        if gap_bound(at, counts.sizes, target, fit_size) <= target.tolerance and mixture_err(counts, weights) < mixture_err(counts, best):
            best = weights
    return best


def _rates_above(counts: RuleCounts, scores: np.ndarray, y: np.ndarray, s: np.ndarray, threshold: float,
                 target: FairnessTarget) -> np.ndarray:
    """The groups' rates ``(G, R)`` of the rule ``score ≥ threshold`` (the groups' sizes from ``counts``)."""
    n_groups = len(counts.n_pos)
    positive = scores >= threshold
    tp = np.bincount(s[positive & (y == 1)], minlength=n_groups)
    fp = np.bincount(s[positive & (y == 0)], minlength=n_groups)
    return rates_and_sizes(target.constraint, tp, fp, counts.n_pos, counts.n_neg)[0]
