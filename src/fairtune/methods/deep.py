"""WIN beyond the last two-column layer: deeper targets, and the importance as an anchor.

A binary head is ``d x 2``: its weighted SVD has rank ≤ 2 and reproduces W exactly at rank 2,
so there the neutralized importance only changes the parametrization. These variants let the
importance matter (Eq. 1-4 of ``docs/method.md``, applied more widely):

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
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from ..catalogue import MethodSpec
from ..config import FinetuneGrid
from ..errors import ModelError
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
from ..training import Penalty, TrainingData
from .anchor import anchor_penalty, effective_weight
from .base import Fitted, HeadMethod, Method, ModelMethod, OnEpoch, train_fitted

Scope = Literal["last", "hidden", "all"]
Factorize = Literal["none", "plain", "weighted"]


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


@dataclass(frozen=True)
class VariantParams:
    """A variant's searched settings; unused ones are None.

    The rank of each factorized layer is ``rank`` where given (the estimator's argument), else
    ``ceil(rank_fraction · min(d, k))``.
    """

    rank_fraction: float | None
    operator: str | None
    lr: float
    rank: int | None = None

    def rank_of(self, layer: nn.Linear) -> int:
        return self.rank if self.rank is not None else fraction_rank(layer, self.rank_fraction)


@dataclass(frozen=True)
class Variant:
    """Which layers are adapted (scope), how (factorize) and whether they are anchored."""

    scope: Scope
    factorize: Factorize
    anchored: bool

    @property
    def needs_fisher(self) -> bool:
        return self.factorize == "weighted" or self.anchored


class DeepVariant(Method):
    """Adapt the layers of ``variant.scope``: factorize them (or not) and anchor them (or not).

    ``anchor`` is μ of the anchor penalty (0 when the variant is not anchored).
    """

    variant: ClassVar[Variant]

    def __init__(self, anchor: float = 0.0) -> None:
        self.anchor = anchor if self.variant.anchored else 0.0

    def candidates(self, target: nn.Module, grid: FinetuneGrid) -> list[VariantParams]:
        fractions = grid.rank_fractions if self.variant.factorize != "none" else (None,)
        operators = grid.operators if self.variant.needs_fisher else (None,)
        return [VariantParams(f, op, lr) for f, op, lr in itertools.product(fractions, operators, grid.lrs)]

    def _fisher(self, model: nn.Module, layers: dict[str, nn.Linear], train: TrainingData,
                grid: FinetuneGrid) -> dict[str, GroupFisher]:
        """Per-group Fisher of each adapted layer (Eq. 1 at any depth), once per seed."""
        if not self.variant.needs_fisher:
            return {}
        n_groups = int(train.s.max()) + 1
        return {
            name: inner_layer_fisher(model, layer, feature_batches(train.x, train.y, train.s), n_groups, kind=grid.fisher)
            for name, layer in layers.items()
        }

    def _adapt(self, layer: nn.Linear, fisher: GroupFisher | None, params: VariantParams) -> tuple[nn.Module, tuple | None]:
        """The module that replaces ``layer``, and its anchor ``(module, W0, F_N)`` if anchored."""
        importance = neutralized_fisher(fisher, params.operator) if self.variant.needs_fisher else None
        module: nn.Module = layer
        if self.variant.factorize != "none":
            rows = row_importance(importance) if self.variant.factorize == "weighted" else None
            module = FactorizedLinear.from_linear(layer, params.rank_of(layer), rows)
        anchor = (module, layer.weight.detach().clone(), importance) if self.variant.anchored else None
        return module, anchor

    def _anchor_penalty(self, anchors: list[tuple]) -> Penalty | None:
        """μ · Σ over adapted layers of the anchor penalty (:mod:`.anchor`), or None for μ = 0."""
        if not anchors or self.anchor <= 0:
            return None

        def penalty(_logits: Tensor, _y: Tensor, _s: Tensor, _module: nn.Module) -> Tensor:
            return sum(anchor_penalty(effective_weight(m), w0, imp, self.anchor) for m, w0, imp in anchors)

        return penalty


class LastLayerVariant(DeepVariant, HeadMethod):
    """A variant of the target layer alone, trained on its cached input features."""

    def prepare(self, target: nn.Linear, train: TrainingData, grid: FinetuneGrid) -> dict[str, GroupFisher]:
        return self._fisher(target, {"": target}, train, grid)

    def estimator_params(self, layer: nn.Linear, grid: FinetuneGrid) -> VariantParams:
        operator = grid.operators[0] if self.variant.needs_fisher else None
        rank = grid.ranks[0] if self.variant.factorize != "none" else None
        return VariantParams(None, operator, grid.lrs[0], rank)

    def fit(self, target: nn.Linear, train: TrainingData, context: dict[str, GroupFisher], params: VariantParams, *,
            epochs: int, batch_size: int, seed: int, on_epoch: OnEpoch | None = None) -> Fitted:
        module, anchor = self._adapt(copy.deepcopy(target), context.get(""), params)
        module.requires_grad_(True)
        return train_fitted(module, train, lr=params.lr, epochs=epochs, batch_size=batch_size, seed=seed,
                            penalty=self._anchor_penalty([anchor] if anchor else []), on_epoch=on_epoch,
                            target=self.target, constraint_data=self.constraint_data)


class InnerVariant(DeepVariant, ModelMethod):
    """A variant that adapts layers inside the model, trained through its raw inputs."""

    def prepare(self, target: nn.Module, train: TrainingData, grid: FinetuneGrid) -> dict[str, GroupFisher]:
        return self._fisher(target, {name: find_linear(target, name)[1] for name in scope_layers(target, self.variant.scope)},
                            train, grid)

    def fit(self, target: nn.Module, train: TrainingData, context: dict[str, GroupFisher], params: VariantParams, *,
            epochs: int, batch_size: int, seed: int, on_epoch: OnEpoch | None = None) -> Fitted:
        tuned = copy.deepcopy(target).eval()
        adapted, anchors = [], []
        for name in scope_layers(tuned, self.variant.scope):
            layer = find_linear(tuned, name)[1]
            module, anchor = self._adapt(layer, context.get(name), params)
            if module is not layer:
                replace_module_(tuned, name, module)
            adapted.append(module)
            anchors += [anchor] if anchor else []
        freeze_all_but_(tuned, nn.ModuleList(adapted))
        return train_fitted(tuned, train, lr=params.lr, epochs=epochs, batch_size=batch_size, seed=seed,
                            penalty=self._anchor_penalty(anchors), on_epoch=on_epoch,
                            target=self.target, constraint_data=self.constraint_data)


def _factory(scope: Scope, factorize: Factorize, anchored: bool):
    """The catalogue's factory ``(spec, grid) -> method`` of one variant."""
    base = LastLayerVariant if scope == "last" else InnerVariant
    cls = type(f"{base.__name__}[{scope},{factorize},{'anchor' if anchored else 'plain'}]", (base,),
               {"variant": Variant(scope, factorize, anchored)})

    def build(spec: MethodSpec, grid: FinetuneGrid) -> Method:
        if not anchored:
            return cls()
        return cls(spec.info.value.default if spec.value is None else spec.value)

    return build


WIN_HIDDEN = _factory("hidden", "weighted", False)
SVD_HIDDEN = _factory("hidden", "plain", False)
WIN_ALL = _factory("all", "weighted", False)
SVD_ALL = _factory("all", "plain", False)
TL_ANCHOR = _factory("last", "none", True)
WIN_ANCHOR = _factory("last", "weighted", True)
TL_ALL_ANCHOR = _factory("all", "none", True)
WIN_HIDDEN_ANCHOR = _factory("hidden", "weighted", True)
