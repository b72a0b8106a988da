"""The neutralized importance as a per-weight anchor during fine-tuning (EWC-style).

Elastic weight consolidation (Kirkpatrick et al., PNAS 2017) keeps the weights that matter
for an earlier task close to their old values. Here the "earlier task" is predicting *every*
sensitive group well, and the importance is the neutralized Fisher F_N (Eq. 2):

    penalty = μ · Σ_ij F̂_N[i,j] · (W[i,j] − W0[i,j])²,     F̂_N = F_N / mean(F_N)

W is the layer's effective weight (``second.weight @ first.weight`` for a factorized layer),
W0 its pre-trained value. Normalizing F_N by its mean makes μ comparable across layers and
data sets.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..factorization import FactorizedLinear


def effective_weight(module: nn.Module) -> Tensor:
    """The ``k x d`` weight a linear or factorized linear layer applies."""
    if isinstance(module, FactorizedLinear):
        return module.second.weight @ module.first.weight
    if isinstance(module, nn.Linear):
        return module.weight
    raise TypeError(f"no linear weight in a {type(module).__name__}")


def anchor_penalty(weight: Tensor, reference: Tensor, importance: Tensor, strength: float) -> Tensor:
    """μ · Σ (F / mean F) ⊙ (W − W0)², a scalar; zero at W = W0 and for μ = 0."""
    scale = importance / importance.mean().clamp_min(1e-30)
    return strength * (scale.to(weight) * (weight - reference.to(weight)) ** 2).sum()
