"""The Python API: fine-tune *your* pre-trained ``nn.Module`` on *your* data, fairly.

Estimator-style (scikit-learn / fairlearn): ``__init__`` stores settings, ``fit`` does the
work and returns ``self``, fitted state ends in ``_``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ._validation import binary_labels, finite_features, group_codes
from .config import FinetuneGrid
from . import errors
from .errors import ConfigError, DataError, FairtuneError, ModelError
from .experiments.run import compare_on_features
from .factorization import count_parameters, find_linear, freeze_all_but_, replace_module_
from .methods import FittedHead, get_method
from .models import extract_features
from .training import TrainingData, predict_proba

#: ``(X, y, s)`` arrays/tensors, or an iterable of ``(x, y, s)`` batches such as a DataLoader.
Data = tuple[Any, Any, Any] | Iterable[tuple[Tensor, Tensor, Tensor]]


def _as_inputs(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        inputs = x
    else:
        array = np.asarray(x)
        inputs = torch.from_numpy(finite_features(array)) if array.ndim == 2 else torch.as_tensor(array, dtype=torch.float32)
    if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
        raise DataError("inputs contain NaN or infinite values")
    return inputs


def binary_head(model: nn.Module, name: str | None) -> tuple[str, nn.Linear]:
    """:func:`~fairtune.factorization.find_linear`, requiring the two outputs of a binary classifier."""
    name, layer = find_linear(model, name)
    if layer.out_features != 2:
        raise ModelError(errors.NOT_BINARY_HEAD.format(name=name, outputs=layer.out_features))
    return name, layer


def layer_features(model: nn.Module, layer: nn.Linear, data: Data, group_names: tuple[str, ...] | None = None) -> tuple[TrainingData, tuple[str, ...]]:
    """The ``layer``'s inputs for ``data`` with validated binary labels and group codes."""
    if isinstance(data, tuple) and len(data) == 3:
        batches = [data]
    else:
        batches = data
    xs, ys, ss = [], [], []
    for x, y, s in batches:
        if y is None or s is None:
            raise DataError(errors.MISSING_LABELS_OR_GROUPS)
        inputs = _as_inputs(x)
        ys.append(np.asarray(y.cpu() if isinstance(y, Tensor) else y).ravel())
        ss.append(np.asarray(s.cpu() if isinstance(s, Tensor) else s).ravel())
        if not len(inputs) == len(ys[-1]) == len(ss[-1]):
            raise DataError(errors.LENGTH_MISMATCH.format(x=len(inputs), y=len(ys[-1]), s=len(ss[-1])))
        xs.append(extract_features(model, layer, inputs))
    if not xs:
        raise DataError("no data: the data loader yielded no batch")
    y_all = binary_labels(np.concatenate(ys), name="y")
    s_raw = np.concatenate(ss)
    if group_names is None:
        s_codes, group_names = group_codes(s_raw, name="sensitive_features")
    else:
        lookup = {g: i for i, g in enumerate(group_names)}
        text = pd.Series(s_raw).astype(str).str.strip()
        unknown = sorted(set(text) - set(lookup))
        if unknown:
            raise DataError(f"sensitive groups {unknown} were not seen when fitting ({list(group_names)})")
        s_codes = text.map(lookup).to_numpy(np.int64)
    return TrainingData.from_arrays(torch.cat(xs), y_all, s_codes), group_names


NOT_LAST_LAYER = (
    "method {method!r} trains more than the target layer and is not available in FairFineTuner; "
    "use tl, svd, win or a last-layer variant (tl-anchor, win-anchor)"
)
NOT_TORCH = "method {method!r} is not a torch fine-tuning method; compare() runs it beside the others"


class FairFineTuner:
    """Fine-tune the linear layer of a pre-trained classifier, with WIN by default.

    WIN (Zhang & Zhou 2024, Algorithm 1): freeze everything but the target ``nn.Linear``,
    compute its Fisher information per sensitive group (Eq. 1), neutralize it (Eq. 2),
    factorize the layer by the weighted SVD (Eq. 4) into l̂1 → l̂2 and fine-tune those.

    Parameters
    ----------
    model : a pre-trained classifier with two outputs (logits of Y=0, Y=1). Not modified.
    method : ``"win"``, ``"svd"`` (f+SVD) or ``"tl"`` (fine-tune the layer as it is).
    layer : name of the target ``nn.Linear``; default the last one. It must produce the
        model's output.
    rank, operator, fisher : WIN's settings (rank also for svd).
    lr, epochs, batch_size, seed : fine-tuning settings (Adam, cross-entropy).

    Attributes
    ----------
    model_ : the fine-tuned copy of ``model`` (the target layer replaced).
    layer_name_ : the target layer's name.
    trainable_params_ : parameters that were fine-tuned.
    group_names_ : the sensitive groups seen in ``fit``.

    Examples
    --------
    >>> tuner = FairFineTuner(model, method="win", rank=1).fit(X, y, sensitive_features=s)  # doctest: +SKIP
    >>> tuner.predict(X_test)  # doctest: +SKIP
    """

    def __init__(
        self, model: nn.Module, *, method: str = "win", layer: str | None = None, rank: int = 1,
        operator: str = "mean", fisher: str = "empirical", lr: float = 1e-2, epochs: int = 20,
        batch_size: int = 256, seed: int = 0,
    ) -> None:
        self.model = model
        self.method = method
        self.layer = layer
        self.rank = rank
        self.operator = operator
        self.fisher = fisher
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.seed = seed

    def fit(self, X: Any, y: Any = None, *, sensitive_features: Any = None) -> FairFineTuner:
        """Fine-tune on ``(X, y, sensitive_features)``, or on a DataLoader of ``(x, y, s)`` batches passed as ``X``."""
        method = get_method(self.method)
        grid = FinetuneGrid(ranks=(self.rank,), lrs=(self.lr,), epochs=(self.epochs,), operators=(self.operator,),
                            fisher=self.fisher, batch_size=self.batch_size)
        model = copy.deepcopy(self.model).eval()
        name, layer = binary_head(model, self.layer)
        train, groups = layer_features(model, layer, X if y is None else (X, y, sensitive_features))
        if method.needs_model(grid):
            raise ConfigError(NOT_LAST_LAYER.format(method=self.method))
        torch.manual_seed(self.seed)
        params = method.candidates(layer, grid)[0]
        fitted = method.fit(layer, train, method.prepare(layer, train, grid), params,
                            epochs=self.epochs, batch_size=self.batch_size, seed=self.seed)
        if not isinstance(fitted, FittedHead):
            raise ConfigError(NOT_TORCH.format(method=self.method))
        if name:
            replace_module_(model, name, fitted.module)
        else:  # the model is the target layer itself
            model = fitted.module
        freeze_all_but_(model, fitted.module)
        self.model_, self.layer_name_, self.group_names_ = model, name, groups
        self.trainable_params_ = count_parameters(model)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise FairtuneError("this FairFineTuner is not fitted yet; call fit() first")

    @torch.no_grad()
    def predict_proba(self, X: Any) -> np.ndarray:
        """P(Y=1 | x), ``(n,)``."""
        self._check_fitted()
        return predict_proba(self.model_, _as_inputs(X))

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels in {0, 1}."""
        return (self.predict_proba(X) > 0.5).astype(np.int64)


def compare(
    model: nn.Module,
    train: Data,
    val: Data,
    test: Data,
    *,
    methods: Sequence[str] = ("tl", "svd", "win"),
    seeds: Sequence[int] = tuple(range(10)),
    layer: str | None = None,
    grid: FinetuneGrid | None = None,
) -> pd.DataFrame:
    """Fine-tune ``model`` with each method and seed; choose settings on ``val``; score on ``test``.

    Returns one row per (method, seed) with ``err, delta_dp, delta_eo, trainable_params``
    (method ``pretrained`` is the model as given). Backbone features are computed once.
    """
    grid = grid or FinetuneGrid()
    model = copy.deepcopy(model).eval()  # the caller's model keeps its train/eval mode
    name, target = binary_head(model, layer)
    train_f, groups = layer_features(model, target, train)
    features = {"train": train_f, "val": layer_features(model, target, val, groups)[0], "test": layer_features(model, target, test, groups)[0]}
    rows = []
    for seed in seeds:
        torch.manual_seed(seed)
        rows += compare_on_features(target, features, methods, grid, seed=seed)[0]
    return pd.DataFrame(rows)
