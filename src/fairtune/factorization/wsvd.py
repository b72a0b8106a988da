"""Eq. (4): weighted SVD of a linear layer's weight.

In the paper's notation the layer is ``Z = X W + b`` with ``W`` of shape ``d x k``; PyTorch
stores ``weight = Wᵀ`` (``k x d``). With the row importance Î = diag(ι) (``d x d``),

    min_{A,B} ‖Î W − Î A B‖   is solved by   Î W = U* S* V*ᵀ,   A = Î⁻¹ U*_r S*_r,   B = V*_rᵀ

(Eckart–Young applied to Î W). ``ι = 1`` gives the plain SVD (the ``f+SVD`` baseline). At
``r = min(d, k)`` the product A B equals W exactly, whatever ι is.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .. import errors
from ..errors import ConfigError


class LowRankFactors(NamedTuple):
    """Weights of the two layers that replace ``nn.Linear(d, k)``, in ``nn.Linear`` layout.

    ``first`` is ``(r, d)`` = Aᵀ (layer l̂1, no bias); ``second`` is ``(k, r)`` = Bᵀ (layer l̂2).
    ``second @ first`` approximates ``weight``.
    """

    first: Tensor
    second: Tensor


def max_rank(weight: Tensor) -> int:
    return min(weight.shape)


def check_rank(rank: int, weight: Tensor) -> None:
    if rank < 1:
        raise ConfigError(errors.RANK_TOO_SMALL.format(rank=rank))
    if rank > max_rank(weight):
        d, k = weight.shape[1], weight.shape[0]
        raise ConfigError(errors.RANK_TOO_LARGE.format(rank=rank, rows=d, cols=k, max_rank=max_rank(weight)))


def weighted_svd(weight: Tensor, rank: int, row_importance: Tensor | None = None) -> LowRankFactors:
    """Factorize ``weight`` (``k x d``, PyTorch layout) at ``rank`` under row importance ``ι`` (``d``).

    Computed in float64 and returned in ``weight``'s dtype and device.
    """
    check_rank(rank, weight)
    w = weight.detach().to(torch.float64).T  # paper layout, d x k
    iota = torch.ones(w.shape[0], dtype=torch.float64, device=w.device) if row_importance is None else row_importance.detach().to(torch.float64).to(w.device)
    if iota.shape != (w.shape[0],) or not bool((iota > 0).all()):
        raise ValueError(f"row importance must be a positive vector of length {w.shape[0]}")
    u, s, vh = torch.linalg.svd(iota[:, None] * w, full_matrices=False)
    a = (u[:, :rank] * s[:rank]) / iota[:, None]  # d x r
    b = vh[:rank]  # r x k
    return LowRankFactors(first=a.T.to(weight), second=b.T.to(weight))


def weighted_error(weight: Tensor, approximation: Tensor, row_importance: Tensor) -> Tensor:
    """‖Î (W − Ŵ)‖_F in the paper's layout, for ``k x d`` weights and ``d`` row importances."""
    return torch.linalg.matrix_norm((weight - approximation).T.double() * row_importance.double()[:, None])
