"""Run methods x seeds on a task: pre-train (cached), cache features, select on val, score on test."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from .._validation import check_groups_present, unique_methods
from ..config import DataConfig, FinetuneGrid, PretrainConfig, _Settings
from ..data import load_task
from ..data._types import Split, Task
from ..errors import ConfigError
from ..factorization import count_parameters, find_linear
from ..methods import FineTuningMethod, Fitted, get_method
from ..metrics import evaluate
from ..models import cached_split_features, extract_features, pretrained_mlp, pretrained_vision
from ..models.vision import default_arch
from ..training import TrainingData, predict

logger = logging.getLogger(__name__)

#: Lower is better for every selection metric.
SELECTION_SCORES: dict[str, Callable[[dict[str, float]], float]] = {
    "err": lambda m: m["err"],
    "delta_eo": lambda m: m["delta_eo"],
    "delta_dp": lambda m: m["delta_dp"],
    "err+delta_eo": lambda m: m["err"] / 100 + m["delta_eo"],
}


NEEDS_INPUTS = (
    "method {method!r} updates the whole model (retrain_scope='all') and needs the model and its tabular inputs; "
    "use --retrain-scope last (FinetuneGrid(retrain_scope='last')) to fine-tune the target layer only"
)


class RunConfig(_Settings):
    """Everything one ``fairtune run`` needs; written to ``config.json`` to rerun it."""

    data: DataConfig = Field(default_factory=DataConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneGrid = Field(default_factory=FinetuneGrid)
    methods: tuple[str, ...] = Field(("tl", "svd", "win"), min_length=1)
    seeds: tuple[int, ...] = Field(tuple(range(10)), min_length=1)
    target_layer: str | None = Field(None, description="name of the nn.Linear to fine-tune; None = the last")
    cache_dir: str | None = None

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return unique_methods(value)


@dataclass
class RunResult:
    """Per (method, seed): test metrics; the settings chosen on validation; optional predictions."""

    results: pd.DataFrame
    selections: list[dict[str, Any]] = field(default_factory=list)
    predictions: pd.DataFrame | None = None
    group_names: tuple[str, ...] = ()


def pretrained_model(task: Task, config: RunConfig, seed: int, progress: bool = False) -> nn.Module:
    """The pre-trained classifier: the MLP for tensor (tabular) inputs, a vision model for image data sets."""
    if isinstance(task.source.inputs, torch.Tensor):
        if config.data.weights or config.data.arch:
            raise ConfigError(f"--weights and --arch are for image data sets; {task.name!r} is tabular (its model is the MLP, see --hidden)")
        return pretrained_mlp(task, config.pretrain, seed=seed, cache_dir=config.cache_dir)
    return pretrained_vision(
        task, config.pretrain, arch=config.data.arch or default_arch(task.name), weights=config.data.weights,
        seed=seed, cache_dir=config.cache_dir, workers=config.data.workers, progress=progress,
    )


def new_task_features(
    model: nn.Module, layer: nn.Linear, task_splits: dict[str, Split], config: RunConfig, progress: bool = False,
) -> dict[str, TrainingData]:
    """:func:`split_features` for tensor inputs; features cached on disk for image data sets."""
    if all(isinstance(split.inputs, torch.Tensor) for split in task_splits.values()):
        return split_features(model, layer, task_splits)
    return cached_split_features(model, layer, task_splits, cache_dir=config.cache_dir, workers=config.data.workers, progress=progress)


def split_features(model: nn.Module, layer: nn.Linear, task_splits: dict[str, Split], progress: bool = False) -> dict[str, TrainingData]:
    """The target layer's inputs for each split, computed once."""
    return {
        name: TrainingData.from_arrays(extract_features(model, layer, split.inputs, progress=progress, description=f"features ({name})"), split.y, split.s)
        for name, split in task_splits.items()
    }


def split_inputs(task_splits: dict[str, Split]) -> dict[str, TrainingData] | None:
    """The model's own inputs for each split (tabular tensors), or None for inputs that are not a tensor."""
    if not all(isinstance(split.inputs, torch.Tensor) for split in task_splits.values()):
        return None
    return {name: TrainingData.from_arrays(split.inputs, split.y, split.s) for name, split in task_splits.items()}


def _metrics(y_pred: np.ndarray, data: TrainingData) -> dict[str, float]:
    return evaluate(data.y.numpy(), y_pred, data.s.numpy())


def _method_data(
    method: FineTuningMethod, spec: str, grid: FinetuneGrid, features: dict[str, TrainingData],
    model: nn.Module | None, inputs: dict[str, TrainingData] | None,
) -> dict[str, TrainingData]:
    """The splits ``method`` trains and predicts on: the model's inputs if it updates the whole model, else the features."""
    if not method.needs_model(grid):
        return features
    if model is None or inputs is None:
        raise ConfigError(NEEDS_INPUTS.format(method=spec))
    return inputs


def _fitter(
    method: FineTuningMethod, layer: nn.Linear, model: nn.Module | None, train: TrainingData, grid: FinetuneGrid, seed: int,
) -> Callable[[dict[str, Any], int, Callable[[int, Fitted], None] | None], Fitted]:
    """``fit(params, epochs, on_epoch)`` for ``method``: ``fit_model`` on the whole model, or ``fit`` on the layer."""
    if method.needs_model(grid):
        return lambda params, epochs, on_epoch: method.fit_model(
            model, train, params, epochs=epochs, batch_size=grid.batch_size, seed=seed, grid=grid, on_epoch=on_epoch)
    context = method.prepare(layer, train, grid)
    return lambda params, epochs, on_epoch: method.fit(
        layer, train, context, params, epochs=epochs, batch_size=grid.batch_size, seed=seed, on_epoch=on_epoch)


def select_on_validation(
    method: FineTuningMethod,
    fit: Callable[[dict[str, Any], int, Callable[[int, Fitted], None] | None], Fitted],
    candidates: Sequence[dict[str, Any]],
    data: dict[str, TrainingData],
    grid: FinetuneGrid,
) -> dict[str, Any]:
    """Train every candidate and keep the one with the lowest validation score (``grid.selection``).

    A method that trains by epochs is scored at each epoch count of the grid, as checkpoints of
    one run of ``max(grid.epochs)`` epochs. Returns ``score, params, val`` (metrics),
    ``y_pred`` (test predictions) and ``trainable``.
    """
    score, checkpoints, best = SELECTION_SCORES[grid.selection], set(grid.epochs), {}
    val = data["val"]

    def keep_if_best(epoch: int | None, fitted: Fitted, params: dict[str, Any]) -> None:
        if epoch is not None and epoch not in checkpoints:
            return
        val_metrics = _metrics(fitted.predict(val.x, val.s), val)
        if not best or score(val_metrics) < best["score"]:
            best.update(score=score(val_metrics), params=params if epoch is None else {**params, "epochs": epoch},
                        val=val_metrics, y_pred=fitted.predict(data["test"].x, data["test"].s),
                        trainable=fitted.trainable_params)

    for params in candidates:
        if method.trains_by_epoch:
            fit(params, max(checkpoints), lambda epoch, fitted, params=params: keep_if_best(epoch, fitted, params))
        else:
            keep_if_best(None, fit(params, max(checkpoints), None), params)
    return best


def compare_on_features(
    layer: nn.Linear,
    features: dict[str, TrainingData],
    methods: Sequence[str],
    grid: FinetuneGrid,
    *,
    seed: int,
    keep_predictions: bool = False,
    progress: Callable[[], None] | None = None,
    model: nn.Module | None = None,
    inputs: dict[str, TrainingData] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[pd.DataFrame]]:
    """Fine-tune each method from ``layer`` on ``features['train']``; pick settings on 'val'; score on 'test'.

    Each candidate setting is trained once for the largest number of epochs in the grid and
    scored on validation after each epoch count of the grid (the epochs are checkpoints);
    a method that does not train by epochs is scored once per candidate. A method that
    updates the whole model (``needs_model``, e.g. retrain-eo with ``retrain_scope="all"``)
    trains ``model`` on ``inputs`` (the raw inputs of the same splits) instead.
    Returns result rows, selection records and (optionally) test predictions. The
    pre-trained layer itself is scored as method ``pretrained``.
    """
    train, test = features["train"], features["test"]
    for name, data in features.items():
        check_groups_present(data.s.numpy(), int(train.s.max()) + 1, where=name)
    rows, selections, predictions = [], [], []

    def record(method: str, y_pred: np.ndarray, trainable: int, fit_seconds: float) -> None:
        rows.append({"method": method, "seed": seed, **_metrics(y_pred, test), "trainable_params": trainable, "fit_seconds": round(fit_seconds, 4)})
        if keep_predictions:
            predictions.append(pd.DataFrame({"method": method, "seed": seed, "y_true": test.y.numpy(), "y_pred": y_pred, "sensitive": test.s.numpy()}))

    record("pretrained", predict(layer, test.x), count_parameters(layer, trainable_only=False), 0.0)
    for method_name in methods:
        method = get_method(method_name)
        start = time.perf_counter()
        data = _method_data(method, method_name, grid, features, model, inputs)
        fit = _fitter(method, layer, model, data["train"], grid, seed)
        best = select_on_validation(method, fit, method.candidates(layer, grid), data, grid)
        record(method_name, best["y_pred"], best["trainable"], time.perf_counter() - start)
        selections.append({"method": method_name, "seed": seed, "params": best["params"], "val": best["val"], "selection": grid.selection})
        if progress:
            progress()
    return rows, selections, predictions


def run(config: RunConfig, *, keep_predictions: bool = False, progress: bool = True) -> RunResult:
    """Run the comparison of ``config.methods`` over ``config.seeds`` on ``config.data``.

    Per seed: split the data (seeded unless ``data.split_seed`` fixes it), pre-train the MLP on
    the source split (cached), compute the target layer's features once per split, then
    :func:`compare_on_features`.
    """
    methods = [get_method(name) for name in config.methods]  # unknown names fail before any work
    whole_model = any(method.needs_model(config.finetune) for method in methods)
    rows, selections, predictions = [], [], []
    bar = tqdm(total=len(config.seeds) * len(config.methods), desc="fine-tuning", unit="fit", disable=not progress)
    task_cache: dict[int, tuple[Task, dict[str, TrainingData], nn.Linear, nn.Module, dict[str, TrainingData] | None]] = {}
    try:  # close the bar on errors too, so that an error message starts on its own line
        for seed in config.seeds:
            data_seed = config.data.split_seed if config.data.split_seed is not None else seed
            if data_seed not in task_cache:
                bar.set_postfix_str(f"seed {seed}: data + pre-training")
                task = load_task(config.data, seed=data_seed)
                model = pretrained_model(task, config, data_seed, progress)
                _, layer = find_linear(model, config.target_layer)
                new_task = {k: v for k, v in task.splits().items() if k != "source"}
                inputs = split_inputs(new_task) if whole_model else None
                task_cache[data_seed] = (task, new_task_features(model, layer, new_task, config, progress), layer, model, inputs)
            task, features, layer, model, inputs = task_cache[data_seed]
            bar.set_postfix_str(f"seed {seed}")
            torch.manual_seed(seed)
            r, s, p = compare_on_features(layer, features, config.methods, config.finetune, seed=seed, keep_predictions=keep_predictions,
                                          progress=lambda: bar.update(1), model=model, inputs=inputs)
            rows += r
            selections += s
            predictions += p
    finally:
        bar.close()
    names = task.group_names
    return RunResult(
        results=pd.DataFrame(rows),
        selections=selections,
        predictions=pd.concat(predictions, ignore_index=True).assign(group=lambda p: [names[c] for c in p["sensitive"]]) if predictions else None,
        group_names=names,
    )


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of each metric, one row per method (in run order)."""
    metrics = ["err", "delta_dp", "delta_eo", "trainable_params"]
    order = list(dict.fromkeys(results["method"]))
    grouped = results.groupby("method", sort=False)[metrics]
    summary = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_std")).join(grouped.size().rename("seeds"))
    summary = summary.loc[order].reset_index()
    return summary[["method", "seeds"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]]


def run_metadata(config: RunConfig) -> dict[str, Any]:
    return {"fairtune_version": __version__, "torch_version": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "config": config.model_dump(mode="json")}
