"""Layer surgery: replace one ``nn.Linear`` of any model by two low-rank layers and freeze the rest.

Modelled on PEFT's layer replacement: find the module by name, fetch its parent and
``setattr`` the new module in its place. Only ``nn.Linear`` is replaced; anything else is
refused with a clear message.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import errors
from ..errors import ModelError
from .wsvd import LowRankFactors, weighted_svd


class FactorizedLinear(nn.Module):
    r"""Two stacked linear maps, :math:`y = B^T (A^T x) + b`, replacing ``nn.Linear(d, k)``.

    ``first`` is l̂1 = ``nn.Linear(d, r, bias=False)`` with weight Aᵀ; ``second`` is
    l̂2 = ``nn.Linear(r, k)`` with weight Bᵀ and the original bias ``b``.

    Shape: ``(N, *, d) -> (N, *, k)``.

    Examples
    --------
    >>> layer = nn.Linear(8, 2)
    >>> low_rank = FactorizedLinear.from_linear(layer, rank=2)
    >>> x = torch.randn(4, 8)
    >>> torch.allclose(low_rank(x), layer(x), atol=1e-5)
    True
    """

    def __init__(self, in_features: int, rank: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    @classmethod
    def from_factors(cls, factors: LowRankFactors, bias: Tensor | None) -> FactorizedLinear:
        rank, in_features = factors.first.shape
        module = cls(in_features, rank, factors.second.shape[0], bias=bias is not None)
        module.to(device=factors.first.device, dtype=factors.first.dtype)
        with torch.no_grad():
            module.first.weight.copy_(factors.first)
            module.second.weight.copy_(factors.second)
            if bias is not None:
                module.second.bias.copy_(bias)
        return module

    @classmethod
    def from_linear(cls, layer: nn.Linear, rank: int, row_importance: Tensor | None = None) -> FactorizedLinear:
        """Eq. (4) on ``layer.weight``: plain SVD without ``row_importance``, weighted with it."""
        return cls.from_factors(weighted_svd(layer.weight, rank, row_importance), layer.bias)

    @property
    def rank(self) -> int:
        return self.first.out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))

    def extra_repr(self) -> str:
        return f"in_features={self.first.in_features}, rank={self.rank}, out_features={self.second.out_features}"


def linear_layer_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def find_linear(model: nn.Module, name: str | None = None) -> tuple[str, nn.Linear]:
    """Return ``(name, layer)`` of the ``nn.Linear`` called ``name``; default: the last one registered."""
    available = linear_layer_names(model)
    if name is None:
        if not available:
            raise ModelError(errors.NO_LINEAR_LAYER.format(name="<last>", available="none"))
        name = available[-1]
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ModelError(errors.NO_LINEAR_LAYER.format(name=name, available=", ".join(available) or "none")) from None
    if not isinstance(module, nn.Linear):
        raise ModelError(errors.NOT_LINEAR.format(name=name, kind=type(module).__name__))
    return name, module


def replace_module_(model: nn.Module, name: str, new_module: nn.Module) -> nn.Module:
    """``setattr`` ``new_module`` in place of the submodule ``name``; return the old one."""
    if not name:
        raise ModelError(errors.ROOT_NOT_REPLACEABLE)
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child_name)
    setattr(parent, child_name, new_module)
    return old


def freeze_all_but_(model: nn.Module, trainable: nn.Module) -> None:
    """Set ``requires_grad`` to False on every parameter of ``model`` outside ``trainable``."""
    keep = {id(p) for p in trainable.parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in keep)


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def factorize_linear_(
    model: nn.Module, name: str | None = None, *, rank: int, row_importance: Tensor | None = None
) -> FactorizedLinear:
    """Replace the linear layer ``name`` of ``model`` (in place) by l̂1 → l̂2 and freeze the rest.

    Algorithm 1, lines 3-9. Returns the new module; ``count_parameters(model)`` then counts
    only l̂1 and l̂2.
    """
    name, layer = find_linear(model, name)
    factorized = FactorizedLinear.from_linear(layer, rank, row_importance)
    replace_module_(model, name, factorized)
    freeze_all_but_(model, factorized)
    return factorized
