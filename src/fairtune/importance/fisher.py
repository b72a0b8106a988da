"""Eq. (1): per-group diagonal Fisher information of one ``nn.Linear`` layer.

For a linear layer ``z = W x + b`` (PyTorch layout, ``W`` is ``k x d``) followed by a softmax
and cross-entropy, the per-sample gradient of ``log p(y|x)`` is ``(e_y - p) x^T``. Its square,
averaged over a group g's ``n_g`` samples, is the diagonal Fisher

    F_g = (1/n_g) * ((P_g - E_g) ⊙ (P_g - E_g))^T (X_g ⊙ X_g)          (k x d)
    F_g^bias = (1/n_g) * Σ (p - e_y)^2                                   (k)

which is METHOD.md's d x k formula, transposed to ``nn.Linear.weight``'s layout. It takes one
matmul per batch and O(G·k·d) memory, whatever the number of samples.

``kind="empirical"`` uses the data's labels. ``kind="true"`` takes the expectation over labels
drawn from the model, E_{y~p}[(p - e_y)^2] = p (1 - p), exactly rather than by sampling.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass(frozen=True)
class GroupFisher:
    """Per-group mean diagonal Fisher of a linear layer.

    Attributes
    ----------
    weight : Tensor ``(G, k, d)``, F_g for ``nn.Linear.weight``.
    bias : Tensor ``(G, k)``, F_g for ``nn.Linear.bias``.
    counts : Tensor ``(G,)``, samples per group.
    """

    weight: Tensor
    bias: Tensor
    counts: Tensor

    @property
    def n_groups(self) -> int:
        return self.weight.shape[0]

    def pooled(self) -> Tensor:
        """Fisher over all samples: the count-weighted mean of the groups' (FWSVD's importance)."""
        share = self.counts.to(self.weight.dtype) / self.counts.sum()
        return torch.einsum("g,gkd->kd", share, self.weight)


def squared_residuals(logits: Tensor, labels: Tensor | None, kind: Literal["empirical", "true"] = "empirical") -> Tensor:
    """Per-sample ``(p - e_y)^2`` (empirical) or its expectation ``p (1 - p)`` under y ~ p (true); ``(n, k)``."""
    probs = logits.softmax(dim=1)
    if kind == "true":
        return probs * (1 - probs)
    if kind != "empirical":
        raise ValueError(f"unknown Fisher kind {kind!r}; use 'empirical' or 'true'")
    if labels is None:
        raise ValueError("the empirical Fisher needs labels")
    return (probs - F.one_hot(labels, probs.shape[1]).to(probs.dtype)) ** 2


@torch.no_grad()
def group_fisher(
    layer: nn.Linear,
    batches: Iterable[tuple[Tensor, Tensor, Tensor]],
    n_groups: int,
    *,
    kind: Literal["empirical", "true"] = "empirical",
) -> GroupFisher:
    """Stream ``(inputs, labels, groups)`` batches of the layer's inputs and return each group's Fisher.

    ``inputs`` are what the layer receives (``(n, d)``), ``labels`` int64 class indices, ``groups``
    int64 codes in ``0..n_groups-1``. Computed in float64 and returned in float64.
    """
    k, d = layer.weight.shape
    weight = torch.zeros(n_groups * k, d, dtype=torch.float64)
    bias = torch.zeros(n_groups * k, dtype=torch.float64)
    counts = torch.zeros(n_groups, dtype=torch.float64)
    w, b = layer.weight.double(), None if layer.bias is None else layer.bias.double()
    for inputs, labels, groups in batches:
        x = inputs.double()
        residual2 = squared_residuals(F.linear(x, w, b), labels, kind)  # (n, k)
        membership = F.one_hot(groups, n_groups).double()  # (n, G)
        per_group = (membership[:, :, None] * residual2[:, None, :]).reshape(len(x), n_groups * k)  # (n, G*k)
        weight += per_group.T @ (x * x)
        bias += per_group.sum(dim=0)
        counts += membership.sum(dim=0)
    if (counts == 0).any():
        raise ValueError(f"group code(s) {torch.nonzero(counts == 0).flatten().tolist()} have no samples")
    return GroupFisher(
        weight=(weight.reshape(n_groups, k, d) / counts[:, None, None]),
        bias=(bias.reshape(n_groups, k) / counts[:, None]),
        counts=counts,
    )


def feature_batches(
    inputs: Tensor, labels: Tensor, groups: Tensor, batch_size: int = 4096
) -> Iterable[tuple[Tensor, Tensor, Tensor]]:
    """Slice in-memory tensors into batches for :func:`group_fisher`."""
    for start in range(0, len(inputs), batch_size):
        end = start + batch_size
        yield inputs[start:end], labels[start:end], groups[start:end]
