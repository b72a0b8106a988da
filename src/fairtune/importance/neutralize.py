"""Eq. (2): neutralize per-group Fisher information into one importance (project definition).

1. Normalize each group's Fisher to sum 1, so that group size and scale do not decide:
   F̃_g = F_g / ΣF_g.
2. Combine the groups elementwise with an operator:

   - ``mean``      (1/G) Σ_g F̃_g                     balanced average
   - ``geometric`` (Π_g F̃_g)^(1/G)                   large only where every group's is
   - ``min``       min_g F̃_g                         the least important group decides
   - ``harmonic``  G / Σ_g (1/F̃_g)                   between min and geometric
   - ``pooled``    Σ_g n_g F_g / Σ_g n_g             plain Fisher on all data (FWSVD): the control

   Reading of the paper: keep the weights important for predicting *every* group, ignore
   those unimportant for any.
3. Row importance as in FWSVD (Hsu et al., ICLR 2022): Î_N = diag(sqrt(Σ_j F_N[j, i])) over the
   layer's outputs j, floored at ``eps`` times its largest entry so that Î_N is invertible.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import Tensor

from ..config import Operator
from .fisher import GroupFisher

OPERATORS: tuple[str, ...] = get_args(Operator)


def normalize_groups(group_weight: Tensor) -> Tensor:
    """F̃_g = F_g / ΣF_g for each group g; ``(G, ...) -> (G, ...)``. An all-zero group stays zero."""
    totals = group_weight.flatten(1).sum(dim=1).clamp_min(torch.finfo(group_weight.dtype).tiny)
    return group_weight / totals.view(-1, *([1] * (group_weight.dim() - 1)))


def combine_groups(normalized: Tensor, operator: Operator) -> Tensor:
    """Combine normalized per-group importances ``(G, ...)`` elementwise into ``(...)``."""
    if operator == "mean":
        return normalized.mean(dim=0)
    if operator == "min":
        return normalized.min(dim=0).values
    if operator == "geometric":
        return normalized.log().mean(dim=0).exp()  # log(0) = -inf -> 0, as the product
    if operator == "harmonic":
        return normalized.shape[0] / normalized.reciprocal().sum(dim=0)  # 1/0 = inf -> 0
    raise ValueError(f"unknown operator {operator!r}; choose from {', '.join(OPERATORS)}")


def neutralized_fisher(fisher: GroupFisher, operator: Operator = "mean") -> Tensor:
    """F_N for the layer's weight, ``(k, d)``: the groups' Fisher normalized and combined."""
    if operator == "pooled":
        return fisher.pooled()
    return combine_groups(normalize_groups(fisher.weight), operator)


def row_importance(fisher_weight: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Diagonal of Î = diag(sqrt(Σ_j F[j, i])), ``(k, d) -> (d,)``, floored at ``eps * max``."""
    rows = fisher_weight.sum(dim=0).clamp_min(0).sqrt()
    floor = eps * rows.max() if rows.max() > 0 else torch.ones((), dtype=rows.dtype)
    return rows.clamp_min(floor)
