"""Differentiable (relaxed) fairness gaps and the regularizer built from them.

The paper's Retrain+EO / Retrain+DP baselines and its fair pre-trained model add "an
equalized-odds / demographic-parity regularizer of intensity λ" to the loss without saying
which one. fairtune relaxes the metrics of :mod:`fairtune.metrics` by replacing the
predicted label Ŷ with the predicted probability p = P(Ŷ=1 | x):

- relaxed ΔDP = max_{g,h} | mean_{S=g} p − mean_{S=h} p |
  (for two groups simply the absolute difference of the two group means);
- relaxed ΔEO = relaxed ΔDP on the samples with Y=1 (the TPR gap)
  + relaxed ΔDP on the samples with Y=0 (the FPR gap),
  a sum, as the paper's ΔEO = ΔTPR + ΔFPR.

Groups absent from a batch are skipped; with fewer than two groups present a gap is 0.
The loss of a batch is then ``cross_entropy + λ · gap``.

A temperature τ sharpens the relaxation: ``p_τ = σ((z₁ − z₀)/τ)`` (τ = 1 is the softmax
probability itself; as τ → 0, p_τ → the predicted label 1[z₁ > z₀], so the relaxed gap
approaches the measured one and its gradient concentrates on the samples near the decision
boundary, the ones whose label a small change flips). With τ = 1 the gap of a model whose
probabilities are spread around 0.5 can shrink while its labels, and the measured gap, do
not move: Retrain's λ did not steer the measured ΔEO on Adult (issue 12).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..training import AutogradOnly

Constraint = Literal["eo", "dp"]
CONSTRAINTS: tuple[Constraint, ...] = ("eo", "dp")
BAD_CONSTRAINT = "unknown fairness constraint {kind!r}; use one of: eo, dp"
BAD_INTENSITY = "fairness intensity λ must be a finite number >= 0, got {value!r}"
BAD_TEMPERATURE = "surrogate temperature τ must be a finite number > 0, got {value!r}"
BAD_MOMENTUM = "penalty momentum must be a number in [0, 1), got {value!r}"
#: The surrogate of Retrain+EO / Retrain+DP (issue 12), measured on Adult (10 seeds, λ = 0.1 /
#: 0.5 / 0.9). EO: with τ = 1 and no momentum raising λ did not lower the measured ΔEO (0.095 /
#: 0.088 / 0.093); with τ = 0.3 and momentum 0.95 it does (0.100 / 0.092 / 0.087). DP: τ = 1
#: without momentum already does (ΔDP 0.154 / 0.054 / 0.031) and the sharper one does not
#: (0.128 / 0.017 / 0.043, at more Err), so DP keeps it. Fair pre-training keeps τ = 1, no momentum.
RETRAIN_SURROGATE: dict[str, dict[str, float]] = {"eo": {"temperature": 0.3, "momentum": 0.95}, "dp": {}}


def relaxed_dp_gap(probs: Tensor, s: Tensor) -> Tensor:
    """Largest difference between the groups' mean predicted probability, a scalar tensor.

    ``max_g mean_{S=g} p − min_g mean_{S=g} p`` over the groups present in ``s``, which
    equals ``max_{g,h} |mean_g p − mean_h p|``.

    Parameters
    ----------
    probs : ``(n,)`` float, P(Ŷ=1 | x) for each sample.
    s : ``(n,)`` int64 group codes ``0..G-1``.

    Returns 0 (no gradient) when fewer than two groups are present.
    """
    counts = torch.bincount(s)  # G = max(s) + 1 counts
    present = counts > 0
    if int(present.sum()) < 2:
        return probs.new_zeros(())
    sums = probs.new_zeros(len(counts)).index_add(0, s, probs)
    return spread(sums[present] / counts[present].to(probs.dtype))


def spread(values: Tensor) -> Tensor:
    """``values.max() - values.min()`` of a 1-d tensor, value and gradient bit for bit, in fewer torch calls.

    Why: the backward of a full ``max()`` compares every entry with the maximum and divides the
    gradient by the number of ties; a unique extreme gets the whole gradient, exactly what indexing
    it gives. So a unique largest and smallest entry are indexed; ties (and NaN) keep max and min.
    """
    numbers = values.detach().tolist()
    high, low = max(numbers), min(numbers)
    if numbers.count(high) > 1 or numbers.count(low) > 1 or any(v != v for v in numbers):
        return values.max() - values.min()
    return values[numbers.index(high)] - values[numbers.index(low)]


def relaxed_eo_gap(probs: Tensor, y: Tensor, s: Tensor) -> Tensor:
    """Relaxed ΔEO: the relaxed ΔDP among Y=1 samples plus the same among Y=0 samples.

    ``max_{g,h} |E[p | S=g, Y=1] − E[p | S=h, Y=1]| + max_{g,h} |E[p | S=g, Y=0] − E[p | S=h, Y=0]|``;
    shapes as :func:`relaxed_dp_gap`, ``y`` ``(n,)`` in {0, 1}.
    """
    positive = y == 1
    return relaxed_dp_gap(probs[positive], s[positive]) + relaxed_dp_gap(probs[~positive], s[~positive])


def check_intensity(value: float | str) -> float:
    """λ as a float, or a :class:`ConfigError` unless it is finite and >= 0."""
    try:
        lam = float(value)
    except (TypeError, ValueError):
        raise ConfigError(BAD_INTENSITY.format(value=value)) from None
    if not (lam >= 0 and lam != float("inf")):
        raise ConfigError(BAD_INTENSITY.format(value=value))
    return lam


def check_constraint(kind: str) -> Constraint:
    """``kind`` if it names a constraint (``"eo"`` or ``"dp"``), else a :class:`ConfigError`."""
    if kind not in CONSTRAINTS:
        raise ConfigError(BAD_CONSTRAINT.format(kind=kind))
    return kind  # type: ignore[return-value]


def check_temperature(value: float | str) -> float:
    """τ as a float, or a :class:`ConfigError` unless it is finite and > 0."""
    try:
        tau = float(value)
    except (TypeError, ValueError):
        raise ConfigError(BAD_TEMPERATURE.format(value=value)) from None
    if not 0 < tau < float("inf"):  # also refuses nan
        raise ConfigError(BAD_TEMPERATURE.format(value=value))
    return tau


def relaxed_labels(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``p_τ = σ((z₁ − z₀)/τ)`` from two-class logits ``(n, 2)``; τ = 1 gives softmax(logits)[:, 1]."""
    return torch.sigmoid((logits[:, 1] - logits[:, 0]) / temperature)


def fairness_penalty(kind: Constraint, lam: float, *, temperature: float = 1.0, momentum: float = 0.0) -> FairnessPenalty:
    """The regularizer ``λ · gap`` for :func:`fairtune.training.train_classifier`.

    ``kind`` is ``"eo"`` (:func:`relaxed_eo_gap`) or ``"dp"`` (:func:`relaxed_dp_gap`), computed
    on ``p_τ = σ((z₁ − z₀)/τ)`` (:func:`relaxed_labels`; τ = ``temperature``, 1 = the softmax
    probability). The returned callable has the ``Penalty`` signature
    ``penalty(logits, y, s, module) -> scalar``.

    ``momentum`` m > 0 smooths the direction of the penalty across batches (a new penalty
    object per training run; it keeps state). A batch of 256 Adult rows holds about ten women
    with Y=1, so the sign of its TPR gap is mostly noise, and ``|gap|`` pushes the groups apart
    as often as together once the true gap is small. With m > 0, each rate's group means are
    averaged over batches, ``ḡ ← m·ḡ + (1 − m)·mean_batch`` (detached), and the penalty is
    ``λ · Σ_r (mean_batch[a_r] − mean_batch[b_r])`` with ``a_r, b_r`` the groups of the largest
    and smallest averaged mean: the batch's gap, signed by the averaged one.
    """
    kind = check_constraint(kind)
    lam = check_intensity(lam)
    tau = check_temperature(temperature)
    if not 0 <= momentum < 1:
        raise ConfigError(BAD_MOMENTUM.format(value=momentum))
    return FairnessPenalty(kind, lam, tau, momentum)


class FairnessPenalty:
    """``λ · gap`` (see :func:`fairness_penalty`): a :data:`~fairtune.training.Penalty`, which also gives its gradient
    with respect to the logits without autograd (:meth:`logits_grad`, for :class:`~fairtune.training.ExplicitStep`)."""

    def __init__(self, kind: Constraint, lam: float, tau: float, momentum: float) -> None:
        self.kind, self.lam, self.tau, self.momentum = kind, lam, tau, momentum
        self.averages: dict[int, np.ndarray] = {}  # per rate (1: Y=1, 0: Y=0 or every row), with momentum

    def __call__(self, logits: Tensor, y: Tensor, s: Tensor, module: nn.Module) -> Tensor:
        probs = logits.softmax(dim=1)[:, 1] if self.tau == 1.0 else relaxed_labels(logits, self.tau)
        if self.momentum == 0:
            gap = relaxed_eo_gap(probs, y, s) if self.kind == "eo" else relaxed_dp_gap(probs, s)
        else:
            gap = None
            for rows, rate in self._rates(y):
                part_probs, part_s = (probs, s) if rows is None else (probs[rows], s[rows])
                smoothed = self._smoothed_means(part_probs, part_s, rate)
                part = probs.new_zeros(()) if smoothed is None else smoothed[0][smoothed[1]] - smoothed[0][smoothed[2]]
                gap = part if gap is None else gap + part
        return self.lam * gap

    def _rates(self, y: Tensor) -> list[tuple[Tensor | None, int]]:
        """The rows of each rate (None: every row) and the rate's key for the averages."""
        if self.kind == "dp":
            return [(None, 0)]
        if self.momentum:
            return [(y == 1, 1), (y == 0, 0)]
        positive = y == 1
        return [(positive, 1), (~positive, 0)]

    def _smoothed_means(self, probs: Tensor, s: Tensor, rate: int) -> tuple[Tensor, int, int, np.ndarray] | None:
        """The rate's group means of the batch, the groups of the largest and smallest averaged mean (the averages
        updated), and the means' divisors (the counts, at least 1, float32: exact); None with fewer than two groups."""
        # max(s) + 1 counts, or one per group seen before
        counts = torch.bincount(s, minlength=len(self.averages.get(rate, ()))).cpu().numpy()
        present = counts > 0
        if np.count_nonzero(present) < 2:
            return None
        divisors = np.maximum(counts, 1).astype(np.float32)
        sums = probs.new_zeros(len(counts)).index_add(0, s, probs)
        means = sums / torch.from_numpy(divisors).to(probs.device, probs.dtype)
        # The averages steer only which groups' difference is taken, so they are kept in NumPy: G numbers updated
        # with the float32 arithmetic torch gives them (a Python float times float32 rounds to float32 in both),
        # without a dozen torch calls per batch.
        batch = means.detach().cpu().numpy()
        previous = self.averages.get(rate)
        if previous is None or len(previous) < len(batch):
            previous = np.where(present, batch, np.float32("nan"))
        average = np.where(present & ~np.isnan(previous), self.momentum * previous + (1 - self.momentum) * batch, previous)
        average = np.where(present & np.isnan(previous), batch, average)
        self.averages[rate] = average
        # The first largest and smallest present average (averages of probabilities: finite or NaN, NaN ranked last).
        ranked = [value if here and value == value else None for value, here in zip(average.tolist(), present.tolist())]
        high = max(range(len(ranked)), key=lambda g: -math.inf if ranked[g] is None else ranked[g])
        low = min(range(len(ranked)), key=lambda g: math.inf if ranked[g] is None else ranked[g])
        return means, high, low, divisors

    def logits_grad(self, logits: Tensor, y: Tensor, s: Tensor) -> Tensor | None:
        """d(λ · gap)/d logits for the batch, bit for bit what autograd gives :meth:`__call__`'s graph: its forward
        values, then the backward of each of its nodes, the same operations in turn. None where the gap has no
        gradient (fewer than two groups in every rate). Raises :class:`~fairtune.training.AutogradOnly` where tied
        or NaN group means without momentum need ``max()``'s own backward. Float32 CPU logits.

        Where the values allow it, fewer calls give the same numbers: a mask's rows are taken with ``index_select``
        and its backward adds the rows' gradients into zeros with ``index_add_``; the few per-group gradients are
        float32 NumPy arithmetic (the same IEEE operations).
        """
        softmax = logits.softmax(dim=1) if self.tau == 1.0 else None
        probs = softmax[:, 1] if softmax is not None else relaxed_labels(logits, self.tau)
        upstream = np.float32(self.lam)  # the backward of ``λ · gap``: 1 · λ in float32
        probs_grad = None
        for rows, rate in self._rates(y):
            index = None if rows is None else torch.from_numpy(np.flatnonzero(rows.numpy()))
            part_probs, part_s = (probs, s) if index is None else (probs.index_select(0, index), s.index_select(0, index))
            cells = self._cells_grad(part_probs, part_s, rate, upstream)
            if cells is None:
                continue
            grad = torch.from_numpy(cells).index_select(0, part_s)  # index_add's backward
            if index is not None:  # indexing's backward: into zeros
                grad = probs.new_zeros(len(probs)).index_add_(0, index, grad)
            probs_grad = grad if probs_grad is None else probs_grad + grad
        if probs_grad is None:
            return None
        if softmax is not None:
            selected = torch.zeros_like(softmax)
            selected[:, 1] = probs_grad  # select's backward
            return torch._softmax_backward_data(selected, softmax, 1, logits.dtype)
        scaled = torch.ops.aten.sigmoid_backward(probs_grad, probs) / self.tau
        # The backward of z₁ − z₀: the two selects' gradients (into zeros) added, which is each column plus zero.
        return torch.stack([-scaled, scaled], dim=1) + 0.0

    def _cells_grad(self, probs: Tensor, s: Tensor, rate: int, upstream: np.float32) -> np.ndarray | None:
        """The gradient of the rate's gap with respect to its per-group sums (the ``index_add`` output), or None."""
        if self.momentum:
            smoothed = self._smoothed_means(probs, s, rate)
            if smoothed is None:
                return None
            _, high, low, divisors = smoothed
            return _difference_grad(len(divisors), high, low, upstream) / divisors
        counts = torch.bincount(s).numpy()
        present = np.flatnonzero(counts)
        if len(present) < 2:
            return None
        sums = probs.new_zeros(len(counts)).index_add(0, s, probs)
        numbers = (sums[torch.from_numpy(present)] / torch.from_numpy(counts[present].astype(np.float32))).tolist()
        high, low = max(numbers), min(numbers)
        if numbers.count(high) > 1 or numbers.count(low) > 1 or any(v != v for v in numbers):
            raise AutogradOnly
        # The present groups' gradient, divided by their counts and put into zeros: absent groups get 0 / 1 = +0.
        high, low = int(present[numbers.index(high)]), int(present[numbers.index(low)])
        return _difference_grad(len(counts), high, low, upstream) / np.maximum(counts, 1).astype(np.float32)


def _difference_grad(size: int, high: int, low: int, upstream: np.float32) -> np.ndarray:
    """The backward of ``means[high] - means[low]``: ``g`` and ``-g`` added into zeros, as two selects' gradients are."""
    grad = np.zeros(size, dtype=np.float32)
    grad[high] += upstream
    grad[low] += -upstream
    return grad
