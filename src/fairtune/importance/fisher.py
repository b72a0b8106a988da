"""Eq. (1): per-group diagonal Fisher information of one ``nn.Linear`` layer.

For a linear layer ``z = W x + b`` (PyTorch layout, ``W`` is ``k x d``) followed by a softmax
and cross-entropy, the per-sample gradient of ``log p(y|x)`` is ``(e_y - p) x^T``. Its square,
averaged over a group g's ``n_g`` samples, is the diagonal Fisher

    F_g = (1/n_g) * ((P_g - E_g) ⊙ (P_g - E_g))^T (X_g ⊙ X_g)          (k x d)
    F_g^bias = (1/n_g) * Σ (p - e_y)^2                                   (k)

which is the d x k formula of ``docs/method.md``, transposed to ``nn.Linear.weight``'s layout. It takes one
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


class _GroupSums:
    """Running per-group sums of squared per-sample gradients of a linear layer, on the layer's device."""

    def __init__(self, n_groups: int, k: int, d: int, device: torch.device | None = None) -> None:
        self.n_groups, self.k, self.d = n_groups, k, d
        self.weight = torch.zeros(n_groups * k, d, dtype=torch.float64, device=device)
        self.bias = torch.zeros(n_groups * k, dtype=torch.float64, device=device)
        self.counts = torch.zeros(n_groups, dtype=torch.float64, device=device)
        self._square = torch.empty(0, d, dtype=torch.float64, device=device)  # X⊙X of a batch, reused: a fresh n x d tensor per batch costs ~3x

    def add(self, x: Tensor, delta2: Tensor, groups: Tensor) -> None:
        """Add a batch: layer inputs ``x`` ``(n, d)``, squared output gradients ``delta2`` ``(n, k)``."""
        device = self.weight.device
        x, delta2, groups = x.to(device), delta2.to(device), groups.to(device)
        membership = F.one_hot(groups, self.n_groups).double()  # (n, G)
        per_group = (membership[:, :, None] * delta2[:, None, :]).reshape(len(x), self.n_groups * self.k)
        if len(self._square) < len(x) or self._square.dtype != x.dtype or self._square.device != x.device:
            self._square = torch.empty_like(x)
        self.weight += per_group.T @ torch.mul(x, x, out=self._square[: len(x)])
        self.bias += per_group.sum(dim=0)
        self.counts += membership.sum(dim=0)

    def result(self) -> GroupFisher:
        if (self.counts == 0).any():
            raise ValueError(f"group code(s) {torch.nonzero(self.counts == 0).flatten().tolist()} have no samples")
        return GroupFisher(
            weight=self.weight.reshape(self.n_groups, self.k, self.d) / self.counts[:, None, None],
            bias=self.bias.reshape(self.n_groups, self.k) / self.counts[:, None],
            counts=self.counts,
        )


@torch.no_grad()
def group_fisher(
    layer: nn.Linear,
    batches: Iterable[tuple[Tensor, Tensor, Tensor]],
    n_groups: int,
    *,
    kind: Literal["empirical", "true"] = "empirical",
) -> GroupFisher:
    """Stream ``(inputs, labels, groups)`` batches of the layer's inputs and return each group's Fisher.

    ``layer`` is the model's output layer; ``inputs`` are what it receives (``(n, d)``), ``labels``
    int64 class indices, ``groups`` int64 codes in ``0..n_groups-1``. Float64 throughout.
    """
    k, d = layer.weight.shape
    sums = _GroupSums(n_groups, k, d, layer.weight.device)
    w, b = layer.weight.double(), None if layer.bias is None else layer.bias.double()
    for inputs, labels, groups in batches:
        x, labels = inputs.to(w.device, torch.float64), labels.to(w.device)
        sums.add(x, squared_residuals(F.linear(x, w, b), labels, kind), groups)
    return sums.result()


def inner_layer_fisher(
    head: nn.Module,
    layer: nn.Linear,
    batches: Iterable[tuple[Tensor, Tensor, Tensor]],
    n_groups: int,
    *,
    kind: Literal["empirical", "true"] = "empirical",
) -> GroupFisher:
    """Per-group diagonal Fisher of ``layer`` anywhere inside ``head``, from batches of ``head``'s inputs.

    With X the layer's inputs and Δ = ∂(Σ_n log p(y_n|x_n))/∂Z its per-sample output gradients
    (one backward pass: samples do not interact in eval mode), the per-sample weight gradient is
    δ_n x_nᵀ, so F_g = (1/n_g) (Δ_g⊙Δ_g)ᵀ(X_g⊙X_g), Eq. (1) for any depth. For the output layer
    Δ = e_y − p and this equals :func:`group_fisher`. ``kind="true"`` sums Σ_c p_c Δ_c² over the
    classes c (one backward pass per class).
    """
    k, d = layer.weight.shape
    sums = _GroupSums(n_groups, k, d, layer.weight.device)
    seen: dict[str, Tensor] = {}

    def capture(_module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        seen["x"], seen["z"] = args[0], output

    handle = layer.register_forward_hook(capture)
    head.eval()
    try:
        for inputs, labels, groups in batches:
            log_probs = head(inputs.to(layer.weight)).log_softmax(dim=1)
            labels = labels.to(log_probs.device)
            x, z = seen["x"].detach().double(), seen["z"]
            if kind == "empirical":
                (delta,) = torch.autograd.grad(log_probs.gather(1, labels[:, None]).sum(), z)
                delta2 = delta.double() ** 2
            else:
                probs = log_probs.exp().detach().double()
                delta2 = torch.zeros_like(z, dtype=torch.float64)
                for c in range(log_probs.shape[1]):
                    (delta,) = torch.autograd.grad(log_probs[:, c].sum(), z, retain_graph=True)
                    delta2 += probs[:, c:c + 1] * delta.double() ** 2
            sums.add(x, delta2, groups)
    finally:
        handle.remove()
    return sums.result()


def feature_batches(
    inputs: Tensor, labels: Tensor, groups: Tensor, batch_size: int = 4096
) -> Iterable[tuple[Tensor, Tensor, Tensor]]:
    """Slice in-memory tensors into batches for :func:`group_fisher`."""
    for start in range(0, len(inputs), batch_size):
        end = start + batch_size
        yield inputs[start:end], labels[start:end], groups[start:end]
