"""The Python API: fine-tune *your* pre-trained ``nn.Module`` on *your* data, fairly.

Estimator-style (scikit-learn / fairlearn): ``__init__`` stores settings, ``fit`` does the
work and returns ``self``, fitted state ends in ``_``.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any, get_args

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from torch import Tensor, nn

from . import errors
from ._validation import binary_labels, finite_features, group_codes
from .config import FinetuneGrid, FisherKind, Operator
from .catalogue import CATALOGUE, MethodSpec, parse_methods, targeted, threshold_rule
from .constraints import fit_threshold_rule, predict_with_rule
from .constraints.proxy import ProxyThresholds
from .errors import ConfigError, DataError, FairtuneError, ModelError
from .experiments.engine import compare_on_features, target_of
from .factorization import find_linear, replace_module_
from .methods import build_method
from .models import extract_features
from .training import TrainingData, model_dtype, predict_proba, resolve_device

#: ``(X, y, s)`` arrays/tensors, or an iterable of ``(x, y, s)`` batches such as a DataLoader.
Data = tuple[Any, Any, Any] | Iterable[tuple[Tensor, Tensor, Tensor]]


def _as_inputs(x: Any, dtype: torch.dtype = torch.float32) -> Tensor:
    """``x`` as a tensor of ``dtype`` (the model's), refusing an empty or non-finite input."""
    if isinstance(x, Tensor):
        inputs = x
    else:
        array = np.asarray(x)
        inputs = torch.from_numpy(finite_features(array)) if array.ndim == 2 else torch.as_tensor(array, dtype=torch.float32)
    if len(inputs) == 0:
        raise DataError(errors.NO_SAMPLES)
    if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
        raise DataError("inputs contain NaN or infinite values")
    return inputs.to(dtype) if inputs.is_floating_point() else inputs


def _float32_head(layer: nn.Linear) -> nn.Linear:
    """The layer fairtune fine-tunes in float32: ``layer`` itself, or a float32 copy of a float64 one."""
    return layer if layer.weight.dtype == torch.float32 else copy.deepcopy(layer).float()


def _labels(y: Any) -> np.ndarray:
    labels = np.asarray(y.cpu() if isinstance(y, Tensor) else y)
    if labels.ndim > 1 and not (labels.ndim == 2 and labels.shape[1] == 1):
        raise DataError(errors.NOT_A_LABEL_VECTOR.format(shape=tuple(labels.shape)))
    return labels.ravel()


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
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) != 3:
            raise DataError(errors.NOT_A_TRIPLE.format(count=len(batch) if isinstance(batch, (tuple, list)) else 1))
        x, y, s = batch
        if y is None or s is None:
            raise DataError(errors.MISSING_LABELS_OR_GROUPS)
        inputs = _as_inputs(x, model_dtype(model))
        ys.append(_labels(y))
        ss.append(np.asarray(s.cpu() if isinstance(s, Tensor) else s).ravel())
        if not len(inputs) == len(ys[-1]) == len(ss[-1]):
            raise DataError(errors.LENGTH_MISMATCH.format(x=len(inputs), y=len(ys[-1]), s=len(ss[-1])))
        xs.append(extract_features(model, layer, inputs))
    if not xs:
        raise DataError("no data: the data loader yielded no batch")
    y_all = binary_labels(np.concatenate(ys), name="y", not_binary=errors.NON_BINARY_LABELS_API)
    s_raw = np.concatenate(ss)
    if group_names is None:
        s_codes, group_names = group_codes(s_raw, name="sensitive_features")
    else:
        s_codes = known_groups(s_raw, group_names)
    return TrainingData.from_arrays(torch.cat(xs), y_all, s_codes), group_names


def known_groups(values: Any, group_names: Sequence[str]) -> np.ndarray:
    """Codes of sensitive values among the groups seen when fitting; an unseen group is a :class:`DataError`."""
    raw = np.asarray(values.cpu() if isinstance(values, Tensor) else values).ravel()
    lookup = {g: i for i, g in enumerate(group_names)}
    text = pd.Series(raw).astype(str).str.strip()
    unknown = sorted(set(text) - set(lookup))
    if unknown:
        raise DataError(f"sensitive groups {unknown} were not seen when fitting ({list(group_names)})")
    return text.map(lookup).to_numpy(np.int64)


NOT_LAST_LAYER = (
    "method {method!r} trains more than the target layer and is not available in FairFineTuner; "
    "use one of: {available}"
)
NOT_TORCH = "method {method!r} is not a torch fine-tuning method; compare() runs it beside the others"
BAD_ARGUMENT = "invalid {argument}={value!r}: it must be {rule}"
TARGET_NEEDS_CONSTRAINT = "tolerance and thresholds set a fairness target: give constraint='eo' or constraint='dp' too"
NEEDS_SENSITIVE = "this FairFineTuner predicts with per-group thresholds: pass sensitive_features to predict"
PROXY_NEEDS_ARRAY = "thresholds='proxy' infers the groups from X: pass X as an array or tensor, not a DataLoader"
MEANINGLESS_ARGUMENT = "argument {argument}={value!r} means nothing for method {method!r}, which uses: {uses}"
NOT_FITTED = "this FairFineTuner is not fitted yet; call fit() first"
#: The arguments FairFineTuner passes to a method only where its catalogue entry uses them.
METHOD_ARGUMENTS = ("rank", "operator", "fisher")


class NotFittedError(FairtuneError, SklearnNotFittedError):
    """``predict`` before ``fit`` (also scikit-learn's ``NotFittedError``)."""


def estimator_methods() -> list[str]:
    """The catalogue's methods that :class:`FairFineTuner` fits: those that train on the target layer's features."""
    return [name for name, info in CATALOGUE.items() if info.estimator_args]


def _check_arguments(tuner: FairFineTuner) -> None:
    """Each argument in range, named as the user wrote it (not as the grid field it fills)."""
    choices = {"operator": get_args(Operator), "fisher": get_args(FisherKind)}
    for argument, allowed in choices.items():
        value = getattr(tuner, argument)
        if value is not None and value not in allowed:
            raise ConfigError(BAD_ARGUMENT.format(argument=argument, value=value, rule=f"one of {', '.join(allowed)}"))
    positive_ints = {"rank": tuner.rank or 1, "epochs": tuner.epochs, "batch_size": tuner.batch_size}
    for argument, value in positive_ints.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError(BAD_ARGUMENT.format(argument=argument, value=value, rule="an integer >= 1"))
    if isinstance(tuner.lr, bool) or not isinstance(tuner.lr, numbers.Real) or not 0 < tuner.lr < math.inf:
        raise ConfigError(BAD_ARGUMENT.format(argument="lr", value=tuner.lr, rule="a finite number > 0"))


class FairFineTuner(ClassifierMixin, BaseEstimator):
    """Fine-tune the linear layer of a pre-trained classifier, with WIN by default.

    WIN (Zhang & Zhou 2024, Algorithm 1; equations in ``docs/method.md``): freeze everything
    but the target ``nn.Linear``, compute its Fisher information per sensitive group (Eq. 1),
    neutralize it (Eq. 2), factorize the layer by the weighted SVD (Eq. 4) into l̂1 → l̂2 and
    fine-tune those.

    A scikit-learn estimator: ``get_params``/``set_params``, ``clone``, ``GridSearchCV`` and
    fairlearn's ``ThresholdOptimizer(estimator=tuner, prefit=True)`` work with it.

    Parameters
    ----------
    model : a pre-trained classifier with two outputs (logits of Y=0, Y=1). Not modified.
    method : a method spec that trains on the target layer: ``"win"``, ``"svd"`` (f+SVD),
        ``"tl"`` (the layer as it is), ``"tl-anchor[:μ]"``, ``"win-anchor[:μ]"``.
    layer : name of the target ``nn.Linear``; default the last one. It must produce the
        model's output.
    rank, operator, fisher : the factorization rank, neutralization operator and Fisher kind;
        None = the method's default (1, ``"mean"``, ``"empirical"``). Setting one that the
        method does not use is an error, not silently ignored.
    lr, epochs, batch_size, seed : fine-tuning settings (Adam, cross-entropy). ``seed`` fixes the
        batch order; torch's global random state is left as it was.
    device : where to fine-tune (``"cpu"``, ``"cuda"``, ...); None = the model's device.
    constraint, tolerance : a fairness target: fine-tune subject to ΔEO (``"eo"``) or ΔDP (``"dp"``)
        ≤ ``tolerance`` (default 0.05) on the training data, by Lagrange multipliers
        (:func:`~fairtune.constraints.train_constrained`), or with ``thresholds`` meet it by
        per-group decision rules after plain fine-tuning. The gap bounded is the one expected on a
        new sample of the same size (``docs/fairness_target.md``).
    thresholds : with a target, fine-tune as without it, then fit decision rules meeting it on the
        training data: ``"deterministic"`` (or True; one threshold per group) or ``"randomized"``
        (a mixture of thresholds per group, its labels drawn from ``seed``: less Err at the same
        gap), after which ``predict`` needs ``sensitive_features``; or ``"proxy"``, a randomized
        rule per cell of the group inferred from X (:func:`~fairtune.constraints.fit_proxy_thresholds`),
        which predicts from X alone.

    Attributes
    ----------
    model_ : the fine-tuned copy of ``model`` (the target layer replaced), on ``device_``.
    layer_name_ : the target layer's name.
    trainable_params_ : parameters that were fine-tuned.
    group_names_ : the sensitive groups seen in ``fit``.
    classes_ : ``array([0, 1])``.
    thresholds_ : the fitted rule (:class:`~fairtune.constraints.GroupThresholds`,
        :class:`~fairtune.constraints.RandomizedThresholds` or :class:`~fairtune.constraints.ProxyThresholds`), or None.

    Examples
    --------
    >>> tuner = FairFineTuner(model, method="win", rank=1).fit(X, y, sensitive_features=s)  # doctest: +SKIP
    >>> tuner.predict_proba(X_test)[:, 1]  # doctest: +SKIP
    """

    def __init__(
        self, model: nn.Module | None = None, *, method: str = "win", layer: str | None = None, rank: int | None = None,
        operator: str | None = None, fisher: str | None = None, lr: float = 1e-2, epochs: int = 20,
        batch_size: int = 256, seed: int = 0, device: str | None = None, constraint: str | None = None,
        tolerance: float | None = None, thresholds: str | bool | None = None,
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
        self.device = device
        self.constraint = constraint
        self.tolerance = tolerance
        self.thresholds = thresholds

    def _spec(self) -> MethodSpec:
        if self.constraint is None and (self.tolerance is not None or threshold_rule(self.thresholds)):
            raise ConfigError(TARGET_NEEDS_CONSTRAINT)
        if self.constraint is not None:
            return MethodSpec.parse(targeted(self.method, self.constraint, 0.05 if self.tolerance is None else self.tolerance,
                                             threshold_rule(self.thresholds)))
        spec = MethodSpec.parse(self.method)
        if spec.info.family == "peer":
            raise ConfigError(NOT_TORCH.format(method=self.method))
        if not spec.info.estimator_args:
            raise ConfigError(NOT_LAST_LAYER.format(method=self.method, available=", ".join(estimator_methods())))
        for argument in METHOD_ARGUMENTS:
            value = getattr(self, argument)
            if value is not None and argument not in spec.info.estimator_args:
                uses = ", ".join(spec.info.estimator_args)
                raise ConfigError(MEANINGLESS_ARGUMENT.format(argument=argument, value=value, method=self.method, uses=uses))
        return spec

    def fit(self, X: Any, y: Any = None, *, sensitive_features: Any = None) -> FairFineTuner:
        """Fine-tune on ``(X, y, sensitive_features)``, or on a DataLoader of ``(x, y, s)`` batches passed as ``X``."""
        if self.model is None:
            raise ConfigError("FairFineTuner needs a model: FairFineTuner(model, ...)")
        spec = self._spec()
        _check_arguments(self)
        grid = FinetuneGrid(ranks=(int(self.rank or 1),), lrs=(float(self.lr),), epochs=(int(self.epochs),),
                            operators=(self.operator or "mean",), fisher=self.fisher or "empirical",
                            batch_size=int(self.batch_size))
        device = resolve_device(self.device, self.model)
        model = copy.deepcopy(self.model).eval().to(device)
        name, layer = binary_head(model, self.layer)
        train, groups = layer_features(model, layer, X if y is None else (X, y, sensitive_features))
        train = train.to(device)
        layer = _float32_head(layer)  # the model runs in its dtype; its head is fine-tuned in float32
        method = build_method(spec, grid)
        target = target_of(spec)
        if target is not None and spec.info.constrained:
            method.constrain(target, train)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            fitted = method.fit(layer, train, method.prepare(layer, train, grid), method.estimator_params(layer, grid),
                                epochs=self.epochs, batch_size=self.batch_size, seed=self.seed)
        fitted.module.to(model_dtype(model))
        if name:
            replace_module_(model, name, fitted.module)
        else:  # the model is the target layer itself
            model = fitted.module
        head = {id(p) for p in fitted.module.parameters()}
        for parameter in model.parameters():  # the backbone stays frozen; the head keeps what it trained
            if id(parameter) not in head:
                parameter.requires_grad_(False)
        self.model_, self.layer_name_, self.group_names_, self.device_ = model, name, groups, device
        self.trainable_params_ = fitted.trainable_params
        self.classes_ = np.array([0, 1])
        self.thresholds_ = None
        if spec.info.thresholds:
            inputs = None
            if spec.info.thresholds == "proxy":
                if y is None:
                    raise ConfigError(PROXY_NEEDS_ARRAY)
                inputs = _as_inputs(X).cpu().numpy()
            self.thresholds_ = fit_threshold_rule(fitted.scores(train.x), train.y.cpu().numpy(), train.s.cpu().numpy(), target,
                                                  spec.info.thresholds, seed=self.seed, x=inputs)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(NOT_FITTED)

    @torch.no_grad()
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n, 2)`` float64: columns P(Y=0 | x), P(Y=1 | x) (scikit-learn's layout).

        These are the model's; with per-group ``thresholds_``, :meth:`predict` thresholds them per group.
        """
        self._check_fitted()
        inputs = _as_inputs(X, model_dtype(self.model_)).to(self.device_)
        positive = predict_proba(self.model_, inputs).astype(np.float64)
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X: Any, *, sensitive_features: Any = None) -> np.ndarray:
        """Predicted labels in {0, 1}: P(Y=1 | x) > 0.5, or by the fitted ``thresholds_`` (per group, or per cell of X)."""
        positive = self.predict_proba(X)[:, 1]
        if self.thresholds_ is None:
            return (positive > 0.5).astype(np.int64)
        if isinstance(self.thresholds_, ProxyThresholds):
            return predict_with_rule(self.thresholds_, positive, None, _as_inputs(X).cpu().numpy())
        if sensitive_features is None:
            raise DataError(NEEDS_SENSITIVE)
        codes = known_groups(sensitive_features, self.group_names_)
        return predict_with_rule(self.thresholds_, positive, codes)


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
    if not len(seeds):
        raise ConfigError(errors.NO_SEEDS)
    parse_methods(tuple(methods))
    grid = grid or FinetuneGrid()
    model = copy.deepcopy(model).eval()  # the caller's model keeps its train/eval mode
    name, target = binary_head(model, layer)
    train_f, groups = layer_features(model, target, train)
    features = {"train": train_f, "val": layer_features(model, target, val, groups)[0], "test": layer_features(model, target, test, groups)[0]}
    rows = [result.row for seed in seeds for result in compare_on_features(_float32_head(target), features, methods, grid, seed=seed)]
    return pd.DataFrame(rows)
