"""WIN beyond the last two-column layer: deeper targets, and the importance as an anchor.

A binary head is ``d x 2``: its weighted SVD has rank ≤ 2 and reproduces W exactly at rank 2,
so there the neutralized importance only changes the parametrization. These variants let the
importance matter (``docs/method.md``, Eq. 1-4, applied more widely):

- **scope**: which ``nn.Linear`` layers of the model are adapted: ``last`` (the paper),
  ``hidden`` (the last hidden layer: the linear layer before the last) or ``all``.
  Each adapted layer gets its own per-group Fisher (:func:`inner_layer_fisher`, Eq. 1 at any
  depth), neutralized (Eq. 2); everything else stays frozen.
- **factorize**: replace each adapted layer by the weighted SVD (Eq. 4) of its rank
  ``ceil(f · min(d, k))`` for a rank fraction f searched on validation (``win-…``), by the
  plain SVD (``svd-…``, the control), or keep it whole (``tl-…``).
- **anchor** μ: add the EWC-style penalty μ · Σ F̂_N ⊙ (W − W0)² (:mod:`.anchor`) on every
  adapted layer, which keeps the weights important for *every* group near their pre-trained
  values while the others move freely.

Deeper scopes train the whole model's forward pass on its raw inputs (``needs_model``;
tabular data only); the last-layer variants train on the cached features like WIN. Only the
adapted layers' parameters require grad.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from ..config import FinetuneGrid
from ..errors import ConfigError, ModelError
from ..factorization import (
    FactorizedLinear,
    find_linear,
    freeze_all_but_,
    linear_layer_names,
    replace_module_,
)
from ..importance import (
    GroupFisher,
    feature_batches,
    inner_layer_fisher,
    neutralized_fisher,
    row_importance,
)
from ..training import TrainingData
from .anchor import anchor_penalty, effective_weight
from .base import FineTuningMethod, Fitted, train_fitted

Scope = Literal["last", "hidden", "all"]
Factorize = Literal["none", "plain", "weighted"]
#: μ of a bare ``…-anchor`` method.
DEFAULT_ANCHOR = 1.0


def scope_layers(model: nn.Module, scope: Scope) -> list[str]:
    """Names of the ``nn.Linear`` layers that ``scope`` adapts, in registration order."""
    names = linear_layer_names(model)
    if scope == "all":
        return names
    if scope == "last":
        return names[-1:]
    if len(names) < 2:
        raise ModelError(f"scope 'hidden' needs a model with at least 2 linear layers, found {len(names)}")
    return [names[-2]]


def fraction_rank(layer: nn.Linear, fraction: float) -> int:
    """``ceil(fraction · min(d, k))``, at least 1."""
    return max(1, math.ceil(fraction * min(layer.weight.shape)))


class DeepVariant(FineTuningMethod):
    """Adapt the layers of ``scope``: factorize them (or not) and anchor them (or not)."""

    scope: ClassVar[Scope]
    factorize: ClassVar[Factorize]
    anchored: ClassVar[bool] = False

    def __init__(self, anchor: float | str | None = None) -> None:
        value = DEFAULT_ANCHOR if anchor is None else anchor
        try:
            self.anchor = float(value) if self.anchored else 0.0
        except ValueError:
            raise ConfigError(f"anchor strength must be a number, got {value!r}") from None
        if self.anchor < 0:
            raise ConfigError(f"anchor strength must be >= 0, got {self.anchor}")
        self._fisher: dict[tuple[nn.Module, str], dict[str, GroupFisher]] = {}

    def needs_model(self, grid: FinetuneGrid) -> bool:
        """Deeper scopes train through the model's raw inputs; the last layer trains on cached features."""
        return self.scope != "last"

    def prepare(self, layer: nn.Linear, train: TrainingData, grid: FinetuneGrid) -> tuple[nn.Module, FinetuneGrid]:
        """For the last layer on cached features: the layer as a one-layer model, and the grid."""
        return nn.Sequential(OrderedDict(output=layer)), grid

    def fit(
        self,
        layer: nn.Linear,
        train: TrainingData,
        context: tuple[nn.Module, FinetuneGrid],
        params: dict[str, Any],
        *,
        epochs: int,
        batch_size: int,
        seed: int,
        on_epoch: Callable[[int, Fitted], None] | None = None,
    ) -> Fitted:
        head, grid = context
        return self.fit_model(head, train, params, epochs=epochs, batch_size=batch_size, seed=seed, grid=grid, on_epoch=on_epoch)

    def candidates(self, layer: nn.Linear, grid: FinetuneGrid) -> list[dict[str, Any]]:
        fractions = grid.rank_fractions if self.factorize != "none" else (None,)
        operators = grid.operators if (self.factorize == "weighted" or self.anchored) else (None,)
        return [
            {k: v for k, v in {"rank_fraction": f, "operator": op, "lr": lr}.items() if v is not None}
            for f, op, lr in itertools.product(fractions, operators, grid.lrs)
        ]

    def _group_fisher(self, model: nn.Module, names: list[str], train: TrainingData, grid: FinetuneGrid) -> dict[str, GroupFisher]:
        """Per-group Fisher of each adapted layer, computed once per model and Fisher kind."""
        key = (model, grid.fisher)  # modules hash by identity; the entry keeps the model alive
        if key not in self._fisher:
            n_groups = int(train.s.max()) + 1
            self._fisher[key] = {
                name: inner_layer_fisher(model, find_linear(model, name)[1], feature_batches(train.x, train.y, train.s), n_groups, kind=grid.fisher)
                for name in names
            }
        return self._fisher[key]

    def fit_model(
        self,
        model: nn.Module,
        train: TrainingData,
        params: dict[str, Any],
        *,
        epochs: int,
        batch_size: int,
        seed: int,
        grid: FinetuneGrid,
        on_epoch: Callable[[int, Fitted], None] | None = None,
    ) -> Fitted:
        names = scope_layers(model, self.scope)
        needs_fisher = self.factorize == "weighted" or self.anchored
        fisher = self._group_fisher(model, names, train, grid) if needs_fisher else {}
        tuned = copy.deepcopy(model).eval()
        adapted: dict[str, nn.Module] = {}
        anchors: list[tuple[nn.Module, Tensor, Tensor]] = []
        for name in names:
            layer = find_linear(tuned, name)[1]
            importance = neutralized_fisher(fisher[name], params["operator"]) if needs_fisher else None
            module: nn.Module = layer
            if self.factorize != "none":
                rows = row_importance(importance) if self.factorize == "weighted" else None
                module = FactorizedLinear.from_linear(layer, fraction_rank(layer, params["rank_fraction"]), rows)
                replace_module_(tuned, name, module)
            adapted[name] = module
            if self.anchored:
                anchors.append((module, layer.weight.detach().clone(), importance))
        freeze_all_but_(tuned, nn.ModuleList(adapted.values()))
        penalty = None
        if self.anchored and self.anchor > 0:
            def penalty(_logits: Tensor, _y: Tensor, _s: Tensor, _module: nn.Module) -> Tensor:
                return sum(anchor_penalty(effective_weight(m), w0, imp, self.anchor) for m, w0, imp in anchors)
        return train_fitted(tuned, train, lr=params["lr"], epochs=epochs, batch_size=batch_size, seed=seed,
                            penalty=penalty, on_epoch=on_epoch)


def _variant(name: str, label: str, scope: Scope, factorize: Factorize, anchored: bool, description: str) -> type[DeepVariant]:
    """A registered subclass of :class:`DeepVariant` with these class attributes."""
    attributes = {"name": name, "label": label, "description": description, "scope": scope,
                  "factorize": factorize, "anchored": anchored, "takes_value": anchored, "__doc__": description}
    return type("".join(part.capitalize() for part in name.split("-")), (DeepVariant,), attributes)


DEEP_VARIANTS: tuple[type[DeepVariant], ...] = (
    _variant("win-hidden", "WIN (hidden)", "hidden", "weighted", False,
             "WIN on the last hidden layer (weighted SVD with its neutralized Fisher), fine-tune its factors"),
    _variant("svd-hidden", "f+SVD (hidden)", "hidden", "plain", False,
             "plain SVD of the last hidden layer, fine-tune its factors (control for win-hidden)"),
    _variant("win-all", "WIN (all layers)", "all", "weighted", False, "WIN on every linear layer, fine-tune all factors"),
    _variant("svd-all", "f+SVD (all layers)", "all", "plain", False,
             "plain SVD of every linear layer, fine-tune all factors (control for win-all)"),
    _variant("tl-anchor", "TL + anchor", "last", "none", True,
             "TL with the neutralized Fisher as an EWC anchor (:μ, default 1)"),
    _variant("win-anchor", "WIN + anchor", "last", "weighted", True, "WIN (last layer) plus the neutralized-Fisher anchor (:μ)"),
    _variant("tl-all-anchor", "TL (all layers) + anchor", "all", "none", True,
             "fine-tune every linear layer with the neutralized-Fisher anchor (:μ)"),
    _variant("win-hidden-anchor", "WIN (hidden) + anchor", "hidden", "weighted", True,
             "WIN on the last hidden layer plus the anchor (:μ)"),
)
