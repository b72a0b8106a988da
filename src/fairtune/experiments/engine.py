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
   (:class:`Selection`); the best is scored on ``test``. The candidates of every plain head
   method (TL, f+SVD, WIN) of several seeds train together in one loop (:func:`fit_bundle`,
   :mod:`fairtune.batched`), with the numbers of one loop per candidate.

The method ``pretrained`` is a unit like any other: the model before fine-tuning, reported
once per seed. Units run in this process, in local processes or on a Dask cluster
(:mod:`fairtune.experiments.scheduling`), each with one thread (torch's, and BLAS's and OpenMP's:
:func:`~fairtune.training.single_threaded`), so that a result does not depend on where it ran;
:func:`execute` keeps finished units in a :class:`~fairtune.experiments.store.ResultStore` when
given one, so that a rerun resumes, and runs other work (``jobs``) in the same executor.
"""

from __future__ import annotations

import functools
import logging
import operator
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
from ..batched import CandidateSet, predict_candidates, train_candidate_sets
from ..catalogue import PRETRAINED, MethodSpec, ThresholdRule
from ..config import DataConfig, FinetuneGrid, PretrainConfig, _Settings
from ..constraints import FairnessTarget, fit_threshold_rule, predict_with_rule, select_under_target
from ..data import NamedDatasetErrors, load_task
from ..data._types import Split, Task
from ..errors import ConfigError
from ..factorization import count_parameters, find_linear
from ..methods import Fitted, FittedHead, HeadMethod, Method, ModelMethod, build_method, params_record
from ..metrics import evaluate
from ..models import cached_split_features, extract_features, pretrained_mlp, pretrained_vision
from ..models.vision import default_arch
from ..training import TrainingData, single_threaded
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
RULE_NOT_MET_ON_VAL = ("{method}, seed {seed}: its decision rule (fitted on train+val for a new split) measures validation "
                       "{metric} {gap:.3f} > {tolerance:g}, flagged in selections.json")
RULE_PREDICTS_NO_POSITIVE = ("{method}, seed {seed}: the only rule meeting {metric} <= {tolerance:g} with a new split's noise "
                             "predicts no positive (a constant model); a larger tolerance, or more data, leaves room for one")
NEEDS_INPUTS = (
    "method {method!r} updates the whole model and needs the model and its tabular inputs; "
    "use --retrain-scope last (FinetuneGrid(retrain_scope='last')) to fine-tune the target layer only"
)
VISION_ONLY = "--weights and --arch are for image data sets; {name!r} is tabular (its model is the MLP, see --hidden)"
#: Seeds per bundle of units (:func:`bundles_of`) at most where results are stored as they finish: an interrupted
#: sweep then loses at most this many seeds' work. (One loop over 10 seeds is about 10 % faster than two over 5.)
STORED_BUNDLE_SEEDS = 5
#: Memory for the prepared seeds a process keeps (their features, and the model's inputs where a whole-model method
#: loaded them), the last :data:`PREPARED_KEPT` whatever their size: a seed's units run in several bundles, not one
#: after the other (bundles of 5 seeds, other processes), and preparing a seed again loads and encodes its data
#: again (0.2-0.4 s for Adult, prepared about 120 times in ``reproduce`` when two seeds were kept).
PREPARED_BYTES = 512 * 2**20
PREPARED_KEPT = 2


#: Work besides the units that :func:`execute` runs in their executor: returns the store records it computed, by key.
Job = Callable[[], dict[str, dict[str, Any]]]


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
    """A seed's pre-trained model, target layer and per-split features (computed once), and its group names.

    The task itself is not kept: once the features exist, the head methods need nothing else,
    and the inputs of every split (the encoded table, several times the size of the features)
    would stay in memory for as long as the seed is kept. ``reload`` loads the task again (the
    same split: loaders are seeded) for a method that trains the whole model; it is None where
    the inputs are not tensors (image data sets).
    """

    group_names: tuple[str, ...]
    model: nn.Module
    layer: nn.Linear
    features: dict[str, TrainingData]
    reload: Callable[[], Task] | None = field(default=None, repr=False)
    _inputs: dict[str, TrainingData] | None = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        """Bytes of the features and (once loaded) the inputs."""
        kept = [*self.features.values(), *(self._inputs or {}).values()]
        return sum(tensor.nbytes for data in kept for tensor in (data.x, data.y, data.s))

    def inputs(self, method: str) -> dict[str, TrainingData]:
        """The model's own inputs per split, for a method that trains the whole model (tabular only)."""
        if self._inputs is None:
            if self.reload is None:
                raise ConfigError(NEEDS_INPUTS.format(method=method))
            device = self.layer.weight.device
            self._inputs = {name: TrainingData.from_arrays(split.inputs, split.y, split.s).to(device)
                            for name, split in new_task_splits(self.reload()).items()}
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
    tabular = all(isinstance(split.inputs, torch.Tensor) for split in new_task_splits(task).values())
    reload = functools.partial(load_task, unit.data, seed=unit.data_seed) if tabular else None
    prepared = Prepared(task.group_names, model, layer, new_task_features(model, layer, task, env, unit.data.workers, progress), reload)
    stages["features"] = time.perf_counter() - clock
    _PREPARED[key] = prepared
    while len(_PREPARED) > PREPARED_KEPT and sum(kept.nbytes for kept in _PREPARED.values()) > PREPARED_BYTES:
        _PREPARED.popitem(last=False)
    return prepared


def prepare_seed(unit: Unit, env: Environment) -> None:
    """Fill the disk caches of the unit's seed (pre-trained model; image features) before its units run."""
    with single_threaded():
        prepare(unit, env)


def metrics_of(y_pred: np.ndarray, data: TrainingData) -> dict[str, float]:
    return evaluate(data.y.cpu().numpy(), y_pred, data.s.cpu().numpy())


@dataclass
class Selection:
    """Validation scores of a method's candidates, as they train; :meth:`best` keeps one (``grid.selection``).

    A method that trains by epochs is scored at each epoch count of the grid, as checkpoints of
    one run of ``max(grid.epochs)`` epochs. Without a target the kept candidate has the lowest
    validation score; ties go to the earlier candidate, then the earlier checkpoint, whatever
    order they were scored in. With a fairness ``target`` and candidates trained subject to it
    (``constrained``) it is the one with the lowest validation Err among those that meet it on
    validation, else the closest (:func:`~fairtune.constraints.select_under_target`;
    ``met_on_val`` says which); candidates trained without it are selected as without a target.
    With ``thresholds`` (a :data:`~fairtune.catalogue.ThresholdRule`), decision rules are then
    fitted on train and validation pooled and decide its predictions (a randomized rule draws
    from ``seed``; a ``"proxy"`` rule infers the groups from ``proxy_inputs`` per split).
    """

    data: dict[str, TrainingData]
    grid: FinetuneGrid
    target: FairnessTarget | None = None
    thresholds: ThresholdRule | None = None
    constrained: bool = False
    seed: int = 0
    proxy_inputs: dict[str, np.ndarray] | None = None
    seconds: float = 0.0  # spent scoring
    _best: dict[str, Any] = field(default_factory=dict)
    _kept: list[dict[str, Any]] = field(default_factory=list)

    def observe(self, epoch: int | None, fitted: Fitted, params: Any, index: int, val_pred: np.ndarray | None = None) -> None:
        """Score candidate ``index`` (settings ``params``) after ``epoch`` (None: a method scored once).

        ``val_pred``: its validation labels, where already computed (:func:`fairtune.batched.predict_candidates`).
        """
        if epoch is not None and epoch not in self.grid.epochs:
            return
        started = time.perf_counter()
        val, test = self.data["val"], self.data["test"]
        val_metrics = metrics_of(fitted.predict(val.x, val.s) if val_pred is None else val_pred, val)
        record = {} if params is None else params_record(params)
        order = (SELECTION_SCORES[self.grid.selection](val_metrics), index, epoch or 0)
        if self.target is not None:
            self._kept.append({"order": order, "params": record if epoch is None else {**record, "epochs": epoch},
                               "val": val_metrics, "y_pred": fitted.predict(test.x, test.s), "trainable": fitted.trainable_params,
                               "scores": {name: fitted.scores(split.x) for name, split in self.data.items()} if self.thresholds else None})
        elif not self._best or order < self._best["order"]:
            self._best.update(order=order, score=order[0], params=record if epoch is None else {**record, "epochs": epoch},
                              val=val_metrics, y_pred=fitted.predict(test.x, test.s), trainable=fitted.trainable_params)
        self.seconds += time.perf_counter() - started

    def chosen(self) -> dict[str, Any]:
        """The candidate kept under a target before any decision rule: with ``constrained``, the lowest validation
        Err among those meeting it (``met_on_val``), else as without the target; ``scores`` per split with a rule."""
        kept = sorted(self._kept, key=lambda record: record["order"][1:])  # the order of one loop per candidate, whatever ran
        if self.constrained:
            index, met = select_under_target([record["val"] for record in kept], self.target)
            return {**kept[index], "met_on_val": met}
        return min(kept, key=lambda record: record["order"])  # trained without the target: selected as without it

    def best(self) -> dict[str, Any]:
        """``score, params`` (a dict), ``val`` (metrics), ``y_pred`` (test predictions), ``trainable``; with a
        target also ``met_on_val`` (and ``thresholds``)."""
        if self.target is None:
            return dict(self._best)
        started = time.perf_counter()
        best = self.chosen()
        if self.thresholds:  # the rules decide the predictions, and whether validation meets the target
            best = {**best, **apply_thresholds(best["scores"], self.data, self.target, self.thresholds, self.seed,
                                               self.proxy_inputs)}
            best["met_on_val"] = best["val"][self.target.metric] <= self.target.tolerance
        self.seconds += time.perf_counter() - started
        return best


def apply_thresholds(scores: dict[str, np.ndarray], data: dict[str, TrainingData], target: FairnessTarget,
                     rule: ThresholdRule = "deterministic", seed: int = 0,
                     proxy_inputs: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Decision rules fitted on train and validation pooled (for the gap expected on a new split): the
    validation metrics and test predictions they give, and the rules themselves (``thresholds``, and
    ``probabilities`` for a randomized rule). A ``"proxy"`` rule decides by ``proxy_inputs`` per split."""
    pooled_scores = np.concatenate([scores["train"], scores["val"]])
    y = np.concatenate([data["train"].y.cpu().numpy(), data["val"].y.cpu().numpy()])
    s = np.concatenate([data["train"].s.cpu().numpy(), data["val"].s.cpu().numpy()])
    x = None if proxy_inputs is None else np.concatenate([proxy_inputs["train"], proxy_inputs["val"]])
    fitted = fit_threshold_rule(pooled_scores, y, s, target, rule, seed=seed, x=x)

    def decide(name: str) -> np.ndarray:
        return predict_with_rule(fitted, scores[name], data[name].s.cpu().numpy(), None if proxy_inputs is None else proxy_inputs[name])

    return {"val": metrics_of(decide("val"), data["val"]), "y_pred": decide("test"), **fitted.record()}


def proxy_inputs_of(features: dict[str, TrainingData], inputs: dict[str, TrainingData] | None) -> dict[str, np.ndarray]:
    """What a ``"proxy"`` rule infers the groups from, per split: the model's own inputs where they are a table
    (a tabular task), else the features the head sees (image data sets, whose inputs are not kept)."""
    source = inputs if inputs is not None and inputs["train"].x.dim() == 2 else features
    return {name: split.x.cpu().numpy() for name, split in source.items()}


def target_of(spec: MethodSpec) -> FairnessTarget | None:
    """The fairness target a spec names (``win-eo:0.05``: ΔEO ≤ 0.05), or None."""
    info = spec.info
    if info.constraint is None:
        return None
    return FairnessTarget(info.constraint, info.value.default if spec.value is None else spec.value, info.estimate)


def pooled(first: TrainingData, second: TrainingData) -> TrainingData:
    return TrainingData(torch.cat([first.x, second.x]), torch.cat([first.y, second.y]), torch.cat([first.s, second.s]))


def plain_head(method: Method) -> bool:
    """Whether every candidate of ``method`` is a plain head trained by :func:`~fairtune.training.train_classifier`
    (no penalty, no target)."""
    return (isinstance(method, HeadMethod) and method.trains_by_epoch and method.target is None
            and type(method).fit is HeadMethod.fit and type(method).penalty is HeadMethod.penalty)


def trains_alike(method: Method, train: TrainingData) -> bool:
    """A :func:`plain_head` method on float32 CPU features: its candidates can train together (:mod:`fairtune.batched`)."""
    return plain_head(method) and train.x.dtype == torch.float32 and train.x.device.type == "cpu"


@dataclass
class MethodFit:
    """One method spec fitted on one seed's features, in steps: :meth:`start`, train, :meth:`result`.

    :func:`fit_method` runs the steps for one spec; :func:`fit_bundle` trains the candidates of
    several (every plain head method of several seeds) in one loop between the same steps.
    """

    spec: MethodSpec
    method: Method
    fairness: FairnessTarget | None
    grid: FinetuneGrid
    target: nn.Module  # the layer, or the model of a ModelMethod
    data: dict[str, TrainingData]
    seed: int
    context: Any
    candidates: list[Any]
    selection: Selection
    rng_state: torch.Tensor  # torch's global RNG after `prepare`, where one training loop per candidate goes on from
    group_names: tuple[str, ...] = ()
    keep_predictions: bool = False
    train_seconds: float = 0.0

    @classmethod
    def start(cls, spec: str, grid: FinetuneGrid, layer: nn.Linear, features: dict[str, TrainingData], *, seed: int,
              keep_predictions: bool = False, model_inputs: Callable[[], tuple[nn.Module, dict[str, TrainingData]]] | None = None,
              group_names: Sequence[str] | None = None) -> MethodFit:
        """Check the data, set the fairness target, and run the method's per-seed ``prepare`` (seeded; torch's RNG kept as it was)."""
        started = time.perf_counter()
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
        proxy = None
        if parsed.info.thresholds == "proxy":
            proxy = proxy_inputs_of(features, model_inputs()[1] if model_inputs is not None else None)
        if fairness is not None and parsed.info.constrained:
            method.constrain(fairness, pooled(data["train"], data["val"]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            context = method.prepare(target, data["train"], grid)
            candidates = method.candidates(target, grid)
            rng_state = torch.random.get_rng_state()
        return cls(parsed, method, fairness, grid, target, data, seed, context, candidates,
                   Selection(data, grid, fairness, parsed.info.thresholds, method.target is not None, seed, proxy), rng_state,
                   tuple(group_names or ()),
                   keep_predictions, time.perf_counter() - started)

    @property
    def trains_alike(self) -> bool:
        return trains_alike(self.method, self.data["train"])

    def initial_heads(self) -> list[nn.Module]:
        """Every candidate's head before training, trainable (for :mod:`fairtune.batched`)."""
        with torch.random.fork_rng(devices=[]):
            torch.random.set_rng_state(self.rng_state)
            return [self.method.initial_head(self.target, self.context, params).requires_grad_(True) for params in self.candidates]

    def train(self, batched: bool = True) -> MethodFit:
        """Train and score every candidate: one loop each, or (``batched``, a plain head method) one loop for all
        (:func:`train_together`)."""
        if batched and self.trains_alike:
            train_together([self])
            return self
        started = time.perf_counter()
        grid = self.grid

        def fit(params: Any, epochs: int, on_epoch: Callable[[int, Fitted], None] | None) -> Fitted:
            return self.method.fit(self.target, self.data["train"], self.context, params, epochs=epochs,
                                   batch_size=grid.batch_size, seed=self.seed, on_epoch=on_epoch)

        with torch.random.fork_rng(devices=[]):
            torch.random.set_rng_state(self.rng_state)
            for index, params in enumerate(self.candidates):
                if self.method.trains_by_epoch:
                    fit(params, max(grid.epochs), lambda epoch, fitted, params=params, index=index:
                        self.selection.observe(epoch, fitted, params, index))
                else:
                    self.selection.observe(None, fit(params, max(grid.epochs), None), params, index)
        self.train_seconds += time.perf_counter() - started
        return self

    def observe(self, epoch: int, heads: Sequence[nn.Module], sizes: Sequence[int], val_pred: np.ndarray) -> None:
        """Score the candidates' heads (trained together) after ``epoch`` from their validation labels ``(K, n_val)``."""
        for index, (head, size, params) in enumerate(zip(heads, sizes, self.candidates)):
            self.selection.observe(epoch, FittedHead(head, size), params, index, val_pred[index])

    def result(self) -> UnitResult:
        """The kept candidate's test metrics, selection record and predictions; the seconds per stage."""
        started = time.perf_counter()
        best = self.selection.best()  # fits the per-group rule, if any: part of the method's fit
        self.train_seconds += time.perf_counter() - started
        spec, fairness, test = str(self.spec), self.fairness, self.data["test"]
        select = self.selection.seconds
        training = "peers" if self.spec.info.family == "peer" else "fine-tune"
        stages = {training: self.train_seconds - select, "select": select}
        seconds = 0.0 if self.spec.name == PRETRAINED else round(self.train_seconds, 4)
        row = {"method": spec, "seed": self.seed, **metrics_of(best["y_pred"], test), "trainable_params": best["trainable"],
               "fit_seconds": seconds}
        selection = None if self.spec.name == PRETRAINED else {
            "method": spec, "seed": self.seed, "params": best["params"], "val": best["val"], "selection": self.grid.selection}
        if fairness is not None:
            row["target_met"] = bool(row[fairness.metric] <= fairness.tolerance)
            selection.update(target_record(fairness, best, row))
            if not best["met_on_val"]:
                message = RULE_NOT_MET_ON_VAL if self.spec.info.thresholds else NOT_MET_ON_VAL
                logger.warning(message.format(method=spec, seed=self.seed, metric=fairness.metric,
                                              tolerance=fairness.tolerance, gap=best["val"][fairness.metric]))
            if self.spec.info.thresholds and not np.any(best["y_pred"]):
                logger.warning(RULE_PREDICTS_NO_POSITIVE.format(method=spec, seed=self.seed, metric=fairness.metric,
                                                                tolerance=fairness.tolerance))
        predictions = None
        if self.keep_predictions:
            codes = test.s.cpu().numpy()
            predictions = pd.DataFrame({"method": spec, "seed": self.seed, "y_true": test.y.cpu().numpy(), "y_pred": best["y_pred"],
                                        "sensitive": codes})
            if self.group_names:
                predictions["group"] = [self.group_names[code] for code in codes]
        return UnitResult(row, selection, predictions, stages, self.group_names)


def fit_method(spec: str, grid: FinetuneGrid, layer: nn.Linear, features: dict[str, TrainingData], *, seed: int,
               keep_predictions: bool = False, model_inputs: Callable[[], tuple[nn.Module, dict[str, TrainingData]]] | None = None,
               group_names: Sequence[str] | None = None, batched: bool = True) -> UnitResult:
    """Fine-tune one method from ``layer`` (or the whole model): select on 'val', score on 'test'.

    A :class:`~fairtune.methods.ModelMethod` trains the model returned by ``model_inputs()`` on
    its raw inputs instead of the features. With ``batched``, the candidates of a plain head
    method (TL, f+SVD, WIN) train in one loop, with the same result as one loop each. A fairness
    target (``win-eo:0.05``) trains each candidate subject to it, its gap measured on train and
    validation pooled, and selects under it; its selection record says whether validation and
    test met it. Torch's global RNG is left as it was.
    """
    return MethodFit.start(spec, grid, layer, features, seed=seed, keep_predictions=keep_predictions,
                           model_inputs=model_inputs, group_names=group_names).train(batched).result()


def train_together(fits: Sequence[MethodFit]) -> None:
    """Train the candidates of every fit (plain head methods, one grid) in one loop: the candidates of each seed and
    features (the fits of one seed share its features; fair pre-training's models each have their own) are one
    :class:`~fairtune.batched.CandidateSet` (one batch order), and sets whose training splits have the same length
    train together. Each fit's candidates end, and are scored, as in one loop per candidate."""
    by_length: dict[int, list[MethodFit]] = {}
    for fit in fits:
        by_length.setdefault(len(fit.data["train"]), []).append(fit)
    for group in by_length.values():
        started = time.perf_counter()
        seeds: dict[tuple[int, int], list[MethodFit]] = {}
        for fit in group:
            seeds.setdefault((fit.seed, id(fit.data["train"])), []).append(fit)
        heads = {id(fit): fit.initial_heads() for fit in group}
        sizes = {id(fit): [count_parameters(head) for head in heads[id(fit)]] for fit in group}
        sets = [CandidateSet([head for fit in members for head in heads[id(fit)]],
                             [params.lr for fit in members for params in fit.candidates], members[0].data["train"], seed)
                for (seed, _), members in seeds.items()]
        grid = group[0].grid

        def observe(epoch: int, per_set: list[list[nn.Module]]) -> None:  # called at the grid's epochs only
            for members, trained in zip(seeds.values(), per_set):
                val_pred = predict_candidates(trained, members[0].data["val"].x)
                offset = 0
                for fit in members:
                    count = len(fit.candidates)
                    fit.observe(epoch, trained[offset:offset + count], sizes[id(fit)], val_pred[offset:offset + count])
                    offset += count

        train_candidate_sets(sets, epochs=max(grid.epochs), batch_size=grid.batch_size, checkpoints=set(grid.epochs),
                             on_checkpoint=observe)
        elapsed, total = time.perf_counter() - started, sum(len(fit.candidates) for fit in group)
        for fit in group:  # the shared loop's time, shared by candidates
            fit.train_seconds += elapsed * len(fit.candidates) / total


def target_record(target: FairnessTarget, best: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """What a selection under a target records: the target, the gaps reached on val and test, and whether each met it."""
    record = {"target": {"constraint": target.constraint, "tolerance": target.tolerance},
              "val_gap": best["val"][target.metric], "met_on_val": best["met_on_val"],
              "test_gap": row[target.metric], "met_on_test": row["target_met"]}
    record.update({key: best[key] for key in ("thresholds", "probabilities") if key in best})
    return record


def start_unit(unit: Unit, env: Environment) -> tuple[MethodFit, dict[str, float]]:
    """The unit's seed prepared and its method started; the seconds the preparation took (none if done before)."""
    preparation: dict[str, float] = {}
    prepared = prepare(unit, env, stages=preparation)
    fit = MethodFit.start(unit.method, unit.finetune, prepared.layer, prepared.features, seed=unit.seed,
                          keep_predictions=env.keep_predictions, group_names=prepared.group_names,
                          model_inputs=(lambda: (prepared.model, prepared.inputs(unit.method))) if prepared.reload else None)
    return fit, preparation


def _with_preparation(result: UnitResult, preparation: dict[str, float]) -> UnitResult:
    result.stage_seconds = {**preparation, **result.stage_seconds}
    return result


def fit_bundle(units: Sequence[Unit], env: Environment) -> list[UnitResult]:
    """Compute units of one grid (see :func:`bundles_of`; a single unit is a bundle too), with one thread (see
    the module docstring): the candidates of every plain head method of every seed train in one loop
    (:func:`train_together`), the other units one by one; results in the order of ``units``."""
    with single_threaded():
        started = [start_unit(unit, env) for unit in units]
        stacked = [env.batched and fit.trains_alike for fit, _ in started]
        train_together([fit for (fit, _), stacks in zip(started, stacked) if stacks])
        return [_with_preparation((fit if stacks else fit.train(env.batched)).result(), preparation)
                for (fit, preparation), stacks in zip(started, stacked)]


def bundles_of(units: Sequence[Unit], env: Environment, workers: int | None, max_seeds: int | None = None) -> list[list[Unit]]:
    """The executor's tasks: units that share data, pre-training, grid and layer, whose method is a plain head
    method (or ``pretrained``), go in one bundle (:func:`fit_bundle`), split by seed into ``workers`` bundles
    (one per seed if None) of at most ``max_seeds`` seeds; every other unit is a task of its own. Bundles come
    where their first unit was. Without ``env.batched``, or on a device other than the CPU, every unit is a
    task of its own."""
    if not env.batched or env.device not in (None, "cpu"):
        return [[unit] for unit in units]
    tasks: list[list[Unit] | dict[int, list[Unit]]] = []
    groups: dict[str, dict[int, list[Unit]]] = {}
    for unit in units:
        spec = MethodSpec.parse(unit.method)
        if spec.name != PRETRAINED and (spec.info.constraint is not None or not plain_head(build_method(spec, unit.finetune))):
            tasks.append([unit])
            continue
        key = unit_key(data=unit.data.model_dump(mode="json"), pretrain=unit.pretrain.model_dump(mode="json"),
                       finetune=unit.finetune.model_dump(mode="json"), layer=unit.target_layer)
        if key not in groups:
            groups[key] = {}
            tasks.append(groups[key])
        groups[key].setdefault(unit.data_seed, []).append(unit)
    out: list[list[Unit]] = []
    for task in tasks:
        if isinstance(task, list):
            out.append(task)
            continue
        seeds = list(task.values())
        chunks = max(1 if max_seeds is None else -(-len(seeds) // max_seeds), len(seeds) if workers is None else min(workers, len(seeds)))
        out += [[unit for seed_units in seeds[i::chunks] for unit in seed_units] for i in range(chunks)]
    return out


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
    jobs: Sequence[Job] = (),
    on_job: Callable[[dict[str, dict[str, Any]]], None] | None = None,
) -> list[UnitResult]:
    """Compute every unit not yet in ``store``; return all results in the order of ``units``.

    Each distinct seed is prepared once before its units (filling the on-disk caches, so that
    parallel workers do not pre-train the same model twice). The units run in bundles
    (:func:`bundles_of`): the plain head methods of several seeds train in one loop, with the
    results of one loop per candidate; with a ``store``, a bundle holds at most
    :data:`STORED_BUNDLE_SEEDS` seeds. ``on_unit`` sees each unit as it finishes. ``dataset_names`` (``DataConfig`` JSON -> name) makes a unit's error name its data set.
    ``progress`` is the description of a progress bar over the distinct units (those found in
    ``store`` count as done); None shows none.

    ``jobs`` is other work for the same executor (``reproduce``'s fair pre-training), so that it and
    the units keep every process busy: each job is a picklable callable returning store records by
    key. Jobs start before the units' bundles, in the order given (the longest first, then the
    bundles, keep the processes busy to the end); their records go into ``store`` as each job
    finishes, and ``on_job`` sees them.
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
        if pending or jobs:
            seeds = list({_preparation_key(unit, env): unit for _, unit in pending}.values())
            with executor or SerialExecutor() as tasks:
                prepare_task, fit_task = functools.partial(prepare_seed, env=env), functools.partial(fit_bundle, env=env)
                if dataset_names:
                    prepare_task, fit_task = NamedDatasetErrors(prepare_task, dataset_names), NamedDatasetErrors(fit_task, dataset_names)
                if tasks.parallel:
                    for _ in tasks.imap(prepare_task, seeds):
                        pass
                bundles = bundles_of([unit for _, unit in pending], env, tasks.workers,
                                     max_seeds=None if store is None else STORED_BUNDLE_SEEDS)
                work = [*jobs, *(functools.partial(fit_task, bundle) for bundle in bundles)]
                for index, outcome in tasks.imap(operator.call, work):
                    if index < len(jobs):
                        for key, record in outcome.items():
                            if store is not None:
                                store.put(key, record)
                        if on_job:
                            on_job(outcome)
                        continue
                    for unit, result in zip(bundles[index - len(jobs)], outcome):
                        key = unit.key
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
