"""Constrained fine-tuning: minimise cross-entropy subject to a fairness target, by Lagrange multipliers.

    min_θ max_{λ ≥ 0}  CE(θ) + Σ_k λ_k (c̃_k(θ) − ε)

with one multiplier per linear row k of the target (a group pair and a sign vector σ,
:func:`fairtune.constraints.targets.constraint_rows`). The two players see different gaps
(the proxy-Lagrangian of Cotter et al. 2019):

- the primal step (Adam on the trainable parameters, mini-batches) follows the smooth
  surrogate ``c̃_k = Σ_r σ_r (R̃[g,r] − R̃[h,r])`` of the batch, with the rates relaxed to
  ``R̃ = mean σ((z₁ − z₀)/τ)`` over the rate's samples (τ: ``temperature``; τ = 1 is P(Ŷ=1|x));
- the dual step (nuPI, ``dual_lr`` with proportional gain ``damping``, which damps the
  oscillation of plain gradient ascent; Sohrabi et al. 2024) follows the *measured* row: the thresholded
  rates (Ŷ = argmax) of the current model on the whole ``constraint_data`` (default: the
  training split), plus the noise allowance of ``target.estimate`` (the rows' maximum is then
  the gap the target bounds: :mod:`fairtune.constraints.targets`).

The multipliers and both steps are cooper's (``cooper-optim``: ``ConstraintState``'s
``violation`` is the surrogate, ``strict_violation`` the measured row; ``nuPI``;
``SimultaneousOptimizer``).
The batches are those of :func:`fairtune.training.train_classifier` with the same seed, and
``target=None`` *is* that function: no target, the same training.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from itertools import combinations

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..methods.fairness import check_temperature, relaxed_labels
from ..training import TrainingData, intra_op_threads, train_classifier
from .targets import FairnessTarget, bounded_abs, constraint_rows, rate_variance, rates_and_sizes

#: Step size of the multipliers' gradient ascent (on violations of the order of ε).
DUAL_LR = 0.5
#: Proportional gain of the multipliers' nuPI update (0: plain gradient ascent).
DAMPING = 10.0
NO_TRAINABLE = "the module has no trainable parameter"


def surrogate_rates(logits: Tensor, y: Tensor, s: Tensor, constraint: str, n_groups: int, temperature: float, fallback: Tensor) -> Tensor:
    """Relaxed rates ``R̃ (G, R)``: the mean of σ((z₁ − z₀)/τ) over each rate's samples.

    A rate with no sample in the batch takes its ``fallback`` value (a constant: no gradient).
    """
    soft = relaxed_labels(logits, temperature)
    masks = _rate_masks(y, s, constraint, n_groups)  # (G, R, n)
    counts = masks.sum(dim=2)
    sums = (masks * soft).sum(dim=2)
    return torch.where(counts > 0, sums / counts.clamp(min=1), fallback)


def _rate_masks(y: Tensor, s: Tensor, constraint: str, n_groups: int) -> Tensor:
    groups = (s[None, :] == torch.arange(n_groups, device=s.device)[:, None]).float()
    if constraint == "dp":
        return groups[:, None, :]
    return torch.stack([groups * (y == 1), groups * (y == 0)], dim=1)


@torch.no_grad()
def measured_rows(module: nn.Module, data: TrainingData, target: FairnessTarget, rows: np.ndarray, n_groups: int) -> tuple[Tensor, Tensor]:
    """The measured rows (thresholded rates plus the noise allowance) of ``module`` on ``data``, and the rates.

    Returns ``(K,)`` row values and ``(G, R)`` rates; ``max_k`` of the rows is the gap the target bounds.
    """
    was_training = module.training
    module.eval()
    predicted = (module(data.x).argmax(dim=1) == 1).cpu().numpy()
    module.train(was_training)
    y, s = data.y.cpu().numpy(), data.s.cpu().numpy()
    tp = np.array([(predicted & (y == 1) & (s == g)).sum() for g in range(n_groups)])
    fp = np.array([(predicted & (y == 0) & (s == g)).sum() for g in range(n_groups)])
    n_pos = np.array([((y == 1) & (s == g)).sum() for g in range(n_groups)])
    n_neg = np.array([((y == 0) & (s == g)).sum() for g in range(n_groups)])
    rates, sizes = rates_and_sizes(target.constraint, tp, fp, n_pos, n_neg)
    values = np.einsum("kgr,gr->k", rows, rates)
    scale = target.noise_scale(len(y))
    if scale:
        variance = rate_variance(rates, sizes)
        allowance = {}
        for g, h in combinations(range(n_groups), 2):
            gap = rates[g] - rates[h]
            allowance[g, h] = float((bounded_abs(gap, np.sqrt(scale * (variance[g] + variance[h])), target.estimate) - np.abs(gap)).sum())
        pairs = [tuple(np.nonzero(np.abs(row).sum(axis=1))[0]) for row in rows]
        values = values + np.array([allowance[pair] for pair in pairs])
    device = data.x.device
    return torch.tensor(values, dtype=torch.float32, device=device), torch.tensor(rates, dtype=torch.float32, device=device)


def train_constrained(
    module: nn.Module,
    train: TrainingData,
    *,
    target: FairnessTarget | None,
    lr: float,
    epochs: int,
    batch_size: int = 256,
    seed: int = 0,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    constraint_data: TrainingData | None = None,
    dual_lr: float = DUAL_LR,
    damping: float = DAMPING,
    temperature: float = 1.0,
    threads: int | None = 1,
) -> nn.Module:
    """Train ``module``'s parameters that require grad, in place, for CE subject to ``target``; return it.

    ``target=None``: exactly :func:`fairtune.training.train_classifier`. ``constraint_data``:
    where the multipliers measure the gap (default ``train``; e.g. train and validation pooled).
    ``on_epoch(epoch, module)`` is called (in eval mode) after each epoch, counting from 1.
    The simultaneous primal-dual steps circle the constraint's boundary, so the module ends
    with the epoch-end iterate of the lowest training CE among those that met the target on
    ``constraint_data`` (the last one if none did; Cotter et al. 2019 pick the best feasible
    iterate the same way).
    The multipliers after training are kept on the module as ``module.fairness_multipliers_``.
    """
    if target is None:
        return train_classifier(module, train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, on_epoch=on_epoch, threads=threads)
    tau = check_temperature(temperature)
    import cooper  # imported on use: it is needed only under a target
    parameters = [p for p in module.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError(NO_TRAINABLE)
    measure = train if constraint_data is None else constraint_data
    n_groups = int(max(train.s.max(), measure.s.max())) + 1
    rows = constraint_rows(target.constraint, n_groups)
    problem = fairness_problem(rows, target, tau, n_groups, device=parameters[0].device)
    primal = torch.optim.Adam(parameters, lr=lr)
    dual = cooper.optim.nuPI(problem.dual_parameters(), lr=dual_lr, Kp=damping, Ki=1.0, maximize=True)
    optimizer = cooper.optim.SimultaneousOptimizer(cmp=problem, primal_optimizers=primal, dual_optimizers=dual)
    generator = torch.Generator().manual_seed(seed)
    best: tuple[float, dict[str, Tensor]] | None = None
    with intra_op_threads(threads):
        for epoch in range(1, epochs + 1):
            module.train()
            order = torch.randperm(len(train), generator=generator)
            for start in range(0, len(train), batch_size):
                idx = order[start:start + batch_size]
                strict, rates = measured_rows(module, measure, target, rows, n_groups)
                optimizer.roll(compute_cmp_state_kwargs={
                    "logits": module(train.x[idx]), "y": train.y[idx], "s": train.s[idx], "measured": strict, "rates": rates,
                })
            module.eval()
            best = _keep_if_best_feasible(best, module, train, measured_rows(module, measure, target, rows, n_groups)[0], target)
            if on_epoch is not None:
                on_epoch(epoch, module)
    if best is not None:
        module.load_state_dict(best[1])
    module.fairness_multipliers_ = problem.fairness.multiplier.weight.detach().clone()
    return module


@torch.no_grad()
def _keep_if_best_feasible(
    best: tuple[float, dict[str, Tensor]] | None, module: nn.Module, train: TrainingData, rows: Tensor, target: FairnessTarget,
) -> tuple[float, dict[str, Tensor]] | None:
    """The epoch-end iterate with the lowest training CE among those whose measured rows meet ε."""
    if float(rows.max()) > target.tolerance:
        return best
    loss = float(F.cross_entropy(module(train.x), train.y))
    if best is None or loss < best[0]:
        return loss, copy.deepcopy(module.state_dict())
    return best


def fairness_problem(rows: np.ndarray, target: FairnessTarget, temperature: float, n_groups: int,
                     device: torch.device | None = None):  # noqa: ANN201 (a cooper class)
    """cooper's ``ConstrainedMinimizationProblem``: CE subject to the target's rows (surrogate and measured), on ``device``."""
    import cooper

    rows_t = torch.tensor(rows, dtype=torch.float32, device=device)

    class FairnessProblem(cooper.ConstrainedMinimizationProblem):
        def __init__(self) -> None:
            super().__init__()
            self.fairness = cooper.Constraint(
                constraint_type=cooper.ConstraintType.INEQUALITY,
                formulation_type=cooper.formulations.Lagrangian,
                multiplier=cooper.multipliers.DenseMultiplier(num_constraints=len(rows), device=device),
            )

        def compute_cmp_state(self, logits: Tensor, y: Tensor, s: Tensor, measured: Tensor, rates: Tensor) -> cooper.CMPState:
            relaxed = surrogate_rates(logits, y, s, target.constraint, n_groups, temperature, rates)
            violation = torch.einsum("kgr,gr->k", rows_t, relaxed) - target.tolerance
            state = cooper.ConstraintState(violation=violation, strict_violation=measured - target.tolerance)
            return cooper.CMPState(loss=F.cross_entropy(logits, y), observed_constraints={self.fairness: state})

    return FairnessProblem()
