"""The paper's tabular pre-trained model: a ReLU MLP with a two-class linear output."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn


class MLP(nn.Sequential):
    r"""``x -> [Linear -> ReLU] * len(hidden) -> Linear(·, n_classes)``.

    The paper's "two-layer MLP with ReLU activation"; fairtune reads it as two hidden ReLU
    layers by default (``hidden=(64, 32)``), configurable. The output layer is called
    ``output``, the hidden ones ``hidden1``, ``hidden2``, ...

    Shape: ``(N, in_features) -> (N, n_classes)``.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (64, 32), n_classes: int = 2) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        width = in_features
        for i, size in enumerate(hidden, start=1):
            layers[f"hidden{i}"] = nn.Linear(width, size)
            layers[f"relu{i}"] = nn.ReLU()
            width = size
        layers["output"] = nn.Linear(width, n_classes)
        super().__init__(layers)
        self.in_features = in_features
        self.hidden = tuple(hidden)
