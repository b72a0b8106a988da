"""The one experiment engine: units of work, how each is computed, and how many run at once.

A :class:`Unit` is one method spec fitted on one seed of one data set with one set of
settings; ``fairtune run``, ``sweep``, ``reproduce`` and ``study`` are lists of units plus
their writers. Per unit:

1. the data are split with the seed given by :func:`data_seed` (the one rule: the run seed,
   unless ``DataConfig.split_seed`` fixes it), and the model is pre-trained on the source
   split (cached on disk);
2. the target layer's input features are computed once per split (kept in memory for the
   next unit of the same seed);
3. every candidate setting of the method is trained on ``train`` and scored on ``val``
   (:func:`select_on_validation`); the best is scored on ``test``.

The method ``pretrained`` is a unit like any other: the model before fine-tuning, reported
once per seed. Units run in this process, in local processes or on a Dask cluster
(:mod:`fairtune.experiments.scheduling`), each with one torch thread, so that a result does
not depend on where it ran; :func:`execute` keeps finished units in a
:class:`~fairtune.experiments.store.ResultStore` when given one, so that a rerun resumes.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from .._validation import check_groups_present
from ..batched import train_candidates
from ..catalogue import PRETRAINED, MethodSpec, ThresholdRule
from ..config import DataConfig, FinetuneGrid, PretrainConfig, _Settings
from ..constraints import FairnessTarget, fit_threshold_rule, select_under_target
from ..data import NamedDatasetErrors, load_task
from ..data._types import Split, Task
from ..errors import ConfigError
from ..factorization import count_parameters, find_linear
from ..methods import Fitted, FittedHead, HeadMethod, Method, ModelMethod, build_method, params_record
from ..metrics import evaluate
from ..models import cached_split_features, extract_features, pretrained_mlp, pretrained_vision
from ..models.vision import default_arch
from ..training import TrainingData, intra_op_threads
from .scheduling import SerialExecutor
from .store import ResultStore, unit_key

logger = logging.getLogger(__name__)

#: Lower is better for every selection metric.
SELECTION_SCORES: dict[str, Callable[[dict[str, float]], float]] = {
    "err": lambda m: m["err"],
    "delta_eo": lambda m: m["delta_eo"],
    "delta_dp": lambda m: m["delta_dp"],
    "err+delta_eo": lambda m: m["err"] / 100 + m["delta_eo"],
}
NOT_MET_ON_VAL = ("{method}, seed {seed}: no candidate met {metric} <= {tolerance:g} on validation; kept the closest "
                  "(validation {metric} {gap:.3f}), flagged in selections.json")
RULE_NOT_MET_ON_VAL = ("{method}, seed {seed}: its per-group rule (fitted on train+val for a new split) measures validation "
                       "{metric} {gap:.3f} > {tolerance:g}, flagged in selections.json")
NEEDS_INPUTS = (
    "method {method!r} updates the whole model and needs the model and its tabular inputs; "
    "use --retrain-scope last (FinetuneGrid(retrain_scope='last')) to fine-tune the target layer only"
)
VISION_ONLY = "--weights and --arch are for image data sets; {name!r} is tabular (its model is the MLP, see --hidden)"
#: Prepared seeds kept in memory per process: the units of one seed usually run one after the other.
PREPARED_KEPT = 2


def data_seed(data: DataConfig, seed: int) -> int:
    """The seed of the data split and pre-training: ``data.split_seed`` if set, else the run seed."""
    return data.split_seed if data.split_seed is not None else seed


class Unit(_Settings):
    """One method spec on one seed: everything its result depends on (and so its store key)."""

    data: DataConfig = Field(default_factory=DataConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneGrid = Field(default_factory=FinetuneGrid)
    method: str
    seed: int
    target_layer: str | None = None

    @property
    def data_seed(self) -> int:
        return data_seed(self.data, self.seed)

    @property
    def key(self) -> str:
        return unit_key(**self.model_dump(mode="json"))


@dataclass(frozen=True)
class Environment:
    """How units are computed, which does not change their results: caches, device, what is kept."""

    cache_dir: str | None = None
    device: str | None = None
    keep_predictions: bool = False
    #: Train the candidates of a plain head method together (:mod:`fairtune.batched`); False: one loop each.
    batched: bool = True


#: The stages whose time a run reports (``fairtune run -v``, ``config.json``).
STAGES = ("load", "pre-train", "features", "fine-tune", "select", "peers")


@dataclass
class UnitResult:
    """A unit's test-metric row, its selection record (none for ``pretrained``), test predictions,
    and the seconds it spent per stage (the seed's preparation counts for its first unit here)."""

    row: dict[str, Any]
    selection: dict[str, Any] | None = None
    predictions: pd.DataFrame | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    group_names: tuple[str, ...] = ()

    def record(self) -> dict[str, Any]:
        """JSON-ready form, for a :class:`ResultStore`."""
        return {"row": self.row, "columns": list(self.row), "selection": self.selection, "stage_seconds": self.stage_seconds,
                "group_names": list(self.group_names),
                "predictions": None if self.predictions is None else self.predictions.to_dict(orient="list"),
                "prediction_columns": None if self.predictions is None else list(self.predictions.columns)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> UnitResult:
        """The stored result, its columns in the order they were computed (JSON files sort keys)."""
        row = {column: record["row"][column] for column in record["columns"]}
        predictions = record.get("predictions")
        if predictions is not None:
            predictions = pd.DataFrame(predictions)[record["prediction_columns"]]
        return cls(row, record.get("selection"), predictions, record.get("stage_seconds", {}), tuple(record.get("group_names", ())))


@dataclass
class Prepared:
    """A seed's task, pre-trained model, target layer and per-split features (computed once)."""

    task: Task
    model: nn.Module
    layer: nn.Linear
    features: dict[str, TrainingData]
    _inputs: dict[str, TrainingData] | None = field(default=None, repr=False)

    def inputs(self, method: str) -> dict[str, TrainingData]:
        """The model's own inputs per split, for a method that trains the whole model (tabular only)."""
        if self._inputs is None:
            splits = new_task_splits(self.task)
            if not all(isinstance(split.inputs, torch.Tensor) for split in splits.values()):
                raise ConfigError(NEEDS_INPUTS.format(method=method))
            device = self.layer.weight.device
            self._inputs = {name: TrainingData.from_arrays(split.inputs, split.y, split.s).to(device)
                            for name, split in splits.items()}
        return self._inputs


def new_task_splits(task: Task) -> dict[str, Split]:
    """The new task's splits (train, val, test): all but the source split."""
    return {name: split for name, split in task.splits().items() if name != "source"}


def pretrained_model(task: Task, unit: Unit, env: Environment, progress: bool = False) -> nn.Module:
    """The pre-trained classifier: the MLP for tensor (tabular) inputs, a vision model for image data sets."""
    seed = unit.data_seed
    if isinstance(task.source.inputs, torch.Tensor):
        if unit.data.weights or unit.data.arch:
            raise ConfigError(VISION_ONLY.format(name=task.name))
        return pretrained_mlp(task, unit.pretrain, seed=seed, cache_dir=env.cache_dir)
    return pretrained_vision(
        task, unit.pretrain, arch=unit.data.arch or default_arch(task.name), weights=unit.data.weights,
        seed=seed, cache_dir=env.cache_dir, workers=unit.data.workers, progress=progress,
    )


def split_features(model: nn.Module, layer: nn.Linear, task_splits: dict[str, Split], progress: bool = False) -> dict[str, TrainingData]:
    """The target layer's inputs for each split, computed once (on the layer's device)."""
    return {
        name: TrainingData.from_arrays(extract_features(model, layer, split.inputs, progress=progress, description=f"features ({name})"),
                                       split.y, split.s).to(layer.weight.device)
        for name, split in task_splits.items()
    }


def new_task_features(model: nn.Module, layer: nn.Linear, task: Task, env: Environment, workers: int = 0,
                      progress: bool = False) -> dict[str, TrainingData]:
    """:func:`split_features` for tensor inputs; features cached on disk for image data sets."""
    splits = new_task_splits(task)
    if all(isinstance(split.inputs, torch.Tensor) for split in splits.values()):
        return split_features(model, layer, splits, progress)
    features = cached_split_features(model, layer, splits, cache_dir=env.cache_dir, workers=workers, progress=progress)
    return {name: data.to(layer.weight.device) for name, data in features.items()}


_PREPARED: OrderedDict[str, Prepared] = OrderedDict()


def _preparation_key(unit: Unit, env: Environment) -> str:
    return unit_key(data=unit.data.model_dump(mode="json"), pretrain=unit.pretrain.model_dump(mode="json"),
                    seed=unit.data_seed, layer=unit.target_layer, cache=env.cache_dir, device=env.device)


def prepare(unit: Unit, env: Environment, progress: bool = False, stages: dict[str, float] | None = None) -> Prepared:
    """The unit's seed prepared: data split, pre-trained model (disk cache), features (memory).

    ``stages`` receives the seconds spent loading, pre-training and computing features (none
    when the seed was prepared before in this process).
    """
    key = _preparation_key(unit, env)
    if key in _PREPARED:
        _PREPARED.move_to_end(key)
        return _PREPARED[key]
    stages = {} if stages is None else stages
    clock = time.perf_counter()
    task = load_task(unit.data, seed=unit.data_seed)
    stages["load"], clock = time.perf_counter() - clock, time.perf_counter()
    model = pretrained_model(task, unit, env, progress)
    if env.device is not None:
        model = model.to(env.device)
    _, layer = find_linear(model, unit.target_layer)
    stages["pre-train"], clock = time.perf_counter() - clock, time.perf_counter()
    prepared = Prepared(task, model, layer, new_task_features(model, layer, task, env, unit.data.workers, progress))
    stages["features"] = time.perf_counter() - clock
    _PREPARED[key] = prepared
    while len(_PREPARED) > PREPARED_KEPT:
        _PREPARED.popitem(last=False)
    return prepared


def prepare_seed(unit: Unit, env: Environment) -> None:
    """Fill the disk caches of the unit's seed (pre-trained model; image features) before its units run."""
    with intra_op_threads(1):
        prepare(unit, env)


def metrics_of(y_pred: np.ndarray, data: TrainingData) -> dict[str, float]:
    return evaluate(data.y.cpu().numpy(), y_pred, data.s.cpu().numpy())


FitCandidate = Callable[[Any, int, Callable[[int, Fitted], None] | None], Fitted]


TrainTogether = Callable[[Sequence[Any], Callable[[int, list[Fitted]], None]], None]


def select_on_validation(method: Method, fit: FitCandidate, candidates: Sequence[Any], data: dict[str, TrainingData],
                         grid: FinetuneGrid, target: FairnessTarget | None = None, thresholds: ThresholdRule | None = None,
                         train_together: TrainTogether | None = None, seed: int = 0) -> dict[str, Any]:
    """Train every candidate and keep the one with the lowest validation score (``grid.selection``).

    A method that trains by epochs is scored at each epoch count of the grid, as checkpoints of
    one run of ``max(grid.epochs)`` epochs. With a fairness ``target`` and a method trained
    subject to it (``method.target``), the kept candidate is the one with the lowest validation
    Err among those that meet it on validation, else the closest
    (:func:`~fairtune.constraints.select_under_target`; ``met_on_val`` says which); a method
    trained without it is selected as without a target. With ``thresholds`` (a
    :data:`~fairtune.catalogue.ThresholdRule`), per-group decision rules are then fitted on train
    and validation pooled and decide its predictions (randomized ones draw from ``seed``).
    ``train_together(candidates, on_checkpoint)``, where given, trains
    every candidate in one loop (:func:`fairtune.batched.train_candidates`, the same numbers as
    one loop each); ties are broken the same way in both orders: the earlier candidate, then the
    earlier checkpoint. Returns ``score, params`` (a dict), ``val`` (metrics), ``y_pred`` (test
    predictions), ``trainable`` and ``select_seconds`` (the time spent scoring).
    """
    score, checkpoints, best = SELECTION_SCORES[grid.selection], set(grid.epochs), {}
    val, test = data["val"], data["test"]
    scoring, kept = [0.0], []

    def keep_if_best(epoch: int | None, fitted: Fitted, params: Any, index: int) -> None:
        if epoch is not None and epoch not in checkpoints:
            return
        started = time.perf_counter()
        val_metrics = metrics_of(fitted.predict(val.x, val.s), val)
        record = {} if params is None else params_record(params)
        order = (score(val_metrics), index, epoch or 0)
        if target is not None:
            kept.append({"order": order, "params": record if epoch is None else {**record, "epochs": epoch},
                         "val": val_metrics, "y_pred": fitted.predict(test.x, test.s), "trainable": fitted.trainable_params,
                         "scores": {name: fitted.scores(split.x) for name, split in data.items()} if thresholds else None})
        elif not best or order < best["order"]:
            best.update(order=order, score=order[0], params=record if epoch is None else {**record, "epochs": epoch},
                        val=val_metrics, y_pred=fitted.predict(test.x, test.s), trainable=fitted.trainable_params)
        scoring[0] += time.perf_counter() - started

    if train_together is not None:
        train_together(candidates, lambda epoch, fitted: [keep_if_best(epoch, f, p, i) for i, (f, p) in
                                                          enumerate(zip(fitted, candidates))])
    else:
        for index, params in enumerate(candidates):
            if method.trains_by_epoch:
                fit(params, max(checkpoints), lambda epoch, fitted, params=params, index=index: keep_if_best(epoch, fitted, params, index))
            else:
                keep_if_best(None, fit(params, max(checkpoints), None), params, index)
    if target is not None:
        started = time.perf_counter()
        kept.sort(key=lambda record: record["order"][1:])  # the order of one loop per candidate, whatever ran
        if method.target is None:  # trained without the target: selected as without it, then post-processed
            best = min(kept, key=lambda record: record["order"])
        else:
            index, met = select_under_target([record["val"] for record in kept], target)
            best = {**kept[index], "met_on_val": met}
        if thresholds:  # the thresholds decide the predictions, and whether validation meets the target
            best = {**best, **apply_thresholds(best["scores"], data, target, thresholds, seed)}
            best["met_on_val"] = best["val"][target.metric] <= target.tolerance
        scoring[0] += time.perf_counter() - started
    return {**best, "select_seconds": scoring[0]}


def apply_thresholds(scores: dict[str, np.ndarray], data: dict[str, TrainingData], target: FairnessTarget,
                     rule: ThresholdRule = "deterministic", seed: int = 0) -> dict[str, Any]:
    """Per-group decision rules fitted on train and validation pooled (for the gap expected on a new split):
    the validation metrics and test predictions they give, and the rules themselves (``thresholds``, and
    ``probabilities`` for a randomized rule)."""
    pooled_scores = np.concatenate([scores["train"], scores["val"]])
    y = np.concatenate([data["train"].y.cpu().numpy(), data["val"].y.cpu().numpy()])
    s = np.concatenate([data["train"].s.cpu().numpy(), data["val"].s.cpu().numpy()])
    fitted = fit_threshold_rule(pooled_scores, y, s, target, rule, seed=seed)
    val, test = data["val"], data["test"]
    return {"val": metrics_of(fitted.predict(scores["val"], val.s.cpu().numpy()), val),
            "y_pred": fitted.predict(scores["test"], test.s.cpu().numpy()), **fitted.record()}


def target_of(spec: MethodSpec) -> FairnessTarget | None:
    """The fairness target a spec names (``win-eo:0.05``: ΔEO ≤ 0.05), or None."""
    info = spec.info
    if info.constraint is None:
        return None
    return FairnessTarget(info.constraint, info.value.default if spec.value is None else spec.value, info.estimate)


def pooled(first: TrainingData, second: TrainingData) -> TrainingData:
    return TrainingData(torch.cat([first.x, second.x]), torch.cat([first.y, second.y]), torch.cat([first.s, second.s]))


def trains_alike(method: Method, train: TrainingData) -> bool:
    """Whether every candidate of ``method`` is a plain head trained by :func:`~fairtune.training.train_classifier`
    (no penalty, no target) on float32 CPU features: then they can train together (:mod:`fairtune.batched`)."""
    return (isinstance(method, HeadMethod) and method.trains_by_epoch and method.target is None
            and type(method).fit is HeadMethod.fit and type(method).penalty is HeadMethod.penalty
            and train.x.dtype == torch.float32 and train.x.device.type == "cpu")


def fit_method(spec: str, grid: FinetuneGrid, layer: nn.Linear, features: dict[str, TrainingData], *, seed: int,
               keep_predictions: bool = False, model_inputs: Callable[[], tuple[nn.Module, dict[str, TrainingData]]] | None = None,
               group_names: Sequence[str] | None = None, batched: bool = True) -> UnitResult:
    """Fine-tune one method from ``layer`` (or the whole model): select on 'val', score on 'test'.

    A :class:`~fairtune.methods.ModelMethod` trains the model returned by ``model_inputs()`` on
    its raw inputs instead of the features. With ``batched``, the candidates of a plain head
    method (TL, f+SVD, WIN) train in one loop, with the same result as one loop each. A fairness target (``win-eo:0.05``) trains each
    candidate subject to it, its gap measured on train and validation pooled, and selects
    under it; its selection record says whether validation and test met it. Torch's global RNG
    is left as it was.
    """
    parsed = MethodSpec.parse(spec)
    method = build_method(parsed, grid)
    fairness = target_of(parsed)
    target, data = layer, features
    if isinstance(method, ModelMethod):
        if model_inputs is None:
            raise ConfigError(NEEDS_INPUTS.format(method=spec))
        target, data = model_inputs()
    for name, split in data.items():
        check_groups_present(split.s.cpu().numpy(), int(data["train"].s.max()) + 1, where=name)
    if fairness is not None and parsed.info.constrained:
        method.constrain(fairness, pooled(data["train"], data["val"]))
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        context = method.prepare(target, data["train"], grid)

        def fit(params: Any, epochs: int, on_epoch: Callable[[int, Fitted], None] | None) -> Fitted:
            return method.fit(target, data["train"], context, params, epochs=epochs, batch_size=grid.batch_size,
                              seed=seed, on_epoch=on_epoch)

        def train_together(candidates: Sequence[Any], on_checkpoint: Callable[[int, list[Fitted]], None]) -> None:
            heads = [method.initial_head(target, context, params).requires_grad_(True) for params in candidates]
            sizes = [count_parameters(head) for head in heads]
            train_candidates(heads, [params.lr for params in candidates], data["train"], epochs=max(grid.epochs),
                             batch_size=grid.batch_size, seed=seed, checkpoints=set(grid.epochs),
                             on_checkpoint=lambda epoch, trained: on_checkpoint(epoch, [FittedHead(h, n) for h, n in zip(trained, sizes)]))

        together = train_together if batched and trains_alike(method, data["train"]) else None
        best = select_on_validation(method, fit, method.candidates(target, grid), data, grid, fairness, parsed.info.thresholds,
                                    train_together=together, seed=seed)
    elapsed = time.perf_counter() - start
    seconds = 0.0 if parsed.name == PRETRAINED else round(elapsed, 4)
    training = "peers" if parsed.info.family == "peer" else "fine-tune"
    stages = {training: elapsed - best["select_seconds"], "select": best["select_seconds"]}
    test = data["test"]
    row = {"method": spec, "seed": seed, **metrics_of(best["y_pred"], test), "trainable_params": best["trainable"],
           "fit_seconds": seconds}
    selection = None if parsed.name == PRETRAINED else {
        "method": spec, "seed": seed, "params": best["params"], "val": best["val"], "selection": grid.selection}
    if fairness is not None:
        row["target_met"] = bool(row[fairness.metric] <= fairness.tolerance)
        selection.update(target_record(fairness, best, row))
        if not best["met_on_val"]:
            message = RULE_NOT_MET_ON_VAL if parsed.info.thresholds else NOT_MET_ON_VAL
            logger.warning(message.format(method=spec, seed=seed, metric=fairness.metric, tolerance=fairness.tolerance,
                                          gap=best["val"][fairness.metric]))
    predictions = None
    if keep_predictions:
        codes = test.s.cpu().numpy()
        predictions = pd.DataFrame({"method": spec, "seed": seed, "y_true": test.y.cpu().numpy(), "y_pred": best["y_pred"],
                                    "sensitive": codes})
        if group_names:
            predictions["group"] = [group_names[code] for code in codes]
    return UnitResult(row, selection, predictions, stages, tuple(group_names or ()))


def target_record(target: FairnessTarget, best: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """What a selection under a target records: the target, the gaps reached on val and test, and whether each met it."""
    record = {"target": {"constraint": target.constraint, "tolerance": target.tolerance},
              "val_gap": best["val"][target.metric], "met_on_val": best["met_on_val"],
              "test_gap": row[target.metric], "met_on_test": row["target_met"]}
    record.update({key: best[key] for key in ("thresholds", "probabilities") if key in best})
    return record


def fit_unit(unit: Unit, env: Environment) -> UnitResult:
    """Compute one unit (with one torch thread; see the module docstring)."""
    preparation: dict[str, float] = {}
    with intra_op_threads(1):
        prepared = prepare(unit, env, stages=preparation)
        result = fit_method(unit.method, unit.finetune, prepared.layer, prepared.features, seed=unit.seed,
                            keep_predictions=env.keep_predictions, group_names=prepared.task.group_names, batched=env.batched,
                            model_inputs=lambda: (prepared.model, prepared.inputs(unit.method)))
    result.stage_seconds = {**preparation, **result.stage_seconds}
    return result


def stage_totals(results: Sequence[UnitResult]) -> dict[str, float]:
    """Seconds per stage summed over units, in :data:`STAGES` order."""
    return {stage: round(sum(r.stage_seconds.get(stage, 0.0) for r in results), 3) for stage in STAGES}


def execute(
    units: Sequence[Unit],
    env: Environment,
    *,
    executor: SerialExecutor | None = None,
    store: ResultStore | None = None,
    on_unit: Callable[[Unit], None] | None = None,
    dataset_names: dict[str, str] | None = None,
    progress: str | None = None,
) -> list[UnitResult]:
    """Compute every unit not yet in ``store``; return all results in the order of ``units``.

    Each distinct seed is prepared once before its units (filling the on-disk caches, so that
    parallel workers do not pre-train the same model twice). ``on_unit`` sees each unit as it
    finishes. ``dataset_names`` (``DataConfig`` JSON -> name) makes a unit's error name its data set.
    ``progress`` is the description of a progress bar over the distinct units (those found in
    ``store`` count as done); None shows none.
    """
    for unit in units:  # every method spec is checked before any work starts
        MethodSpec.parse(unit.method)
    keys = [unit.key for unit in units]
    distinct = dict(zip(keys, units))
    results: dict[str, UnitResult] = {}
    if store is not None:
        results = {key: UnitResult.from_record(store.get(key)) for key in distinct if key in store}
    pending = [(key, unit) for key, unit in distinct.items() if key not in results]
    with tqdm(total=len(distinct), initial=len(results), desc=progress, unit="unit", disable=progress is None) as bar:
        if pending:
            seeds = list({_preparation_key(unit, env): unit for _, unit in pending}.values())
            with executor or SerialExecutor() as tasks:
                prepare_task, fit_task = functools.partial(prepare_seed, env=env), functools.partial(fit_unit, env=env)
                if dataset_names:
                    prepare_task, fit_task = NamedDatasetErrors(prepare_task, dataset_names), NamedDatasetErrors(fit_task, dataset_names)
                if tasks.parallel:
                    for _ in tasks.imap(prepare_task, seeds):
                        pass
                for index, result in tasks.imap(fit_task, [unit for _, unit in pending]):
                    key, unit = pending[index]
                    results[key] = result
                    if store is not None:
                        store.put(key, {"unit": unit.model_dump(mode="json"), **result.record()})
                    bar.set_postfix_str(f"seed {unit.seed} {unit.method}")
                    bar.update(1)
                    if on_unit:
                        on_unit(unit)
    return [results[key] for key in keys]


def compare_on_features(
    layer: nn.Linear,
    features: dict[str, TrainingData],
    methods: Sequence[str],
    grid: FinetuneGrid,
    *,
    seed: int,
    keep_predictions: bool = False,
    model: nn.Module | None = None,
    inputs: dict[str, TrainingData] | None = None,
) -> list[UnitResult]:
    """``pretrained`` and each method of ``methods`` on given features (the Python API's :func:`~fairtune.compare`).

    A method that trains the whole model needs ``model`` and its ``inputs`` per split.
    """
    model_inputs = None if model is None or inputs is None else (lambda: (model, inputs))
    return [fit_method(spec, grid, layer, features, seed=seed, keep_predictions=keep_predictions, model_inputs=model_inputs)
            for spec in (PRETRAINED, *methods)]
