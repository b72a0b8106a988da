"""``fairtune run``: methods x seeds on one data set, as units of the engine.

Per seed the engine splits the data, pre-trains the model (cached), computes the target
layer's features once, selects each method's settings on validation and scores them on test
(:mod:`fairtune.experiments.engine`). The result is written as a run folder by
:func:`fairtune.experiments.outputs.write_run`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Literal

import pandas as pd
from pydantic import Field, field_validator, model_validator

from ..catalogue import PRETRAINED, TARGETABLE, ThresholdRule, parse_methods, targeted, threshold_rule
from ..constraints.targets import BAD_TOLERANCE
from ..errors import ConfigError
from ..config import DataConfig, FinetuneGrid, PretrainConfig, _Settings
from ..training import resolve_device
from .engine import Environment, Unit, UnitResult, execute, stage_totals
from .outputs import RunResult, write_run
from .run_folder import RunFolder
from .scheduling import SerialExecutor


logger = logging.getLogger(__name__)
#: ε of ``--constraint`` without ``--tolerance``.
DEFAULT_TOLERANCE = 0.05
TARGET_NEEDS_CONSTRAINT = "--tolerance and --thresholds set a fairness target: give --constraint eo or --constraint dp too"


class RunConfig(_Settings):
    """Everything one ``fairtune run`` needs; written to ``config.json`` to rerun it."""

    data: DataConfig = Field(default_factory=DataConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneGrid = Field(default_factory=FinetuneGrid)
    methods: tuple[str, ...] = Field(("tl", "svd", "win"), min_length=1, description="method specs (see fairtune.catalogue)")
    seeds: tuple[int, ...] = Field(tuple(range(10)), min_length=1)
    target_layer: str | None = Field(None, description="name of the nn.Linear to fine-tune; None = the last")
    cache_dir: str | None = Field(None, description="cache of pre-trained models; None = $FAIRTUNE_CACHE or ~/.cache/fairtune")
    device: str | None = Field(None, description="torch device of the model and features (cpu, cuda, cuda:1); None = cpu")
    constraint: Literal["eo", "dp"] | None = Field(
        None, description="fairness target for every method that can take one: fine-tune subject to ΔEO (eo) or ΔDP (dp) <= tolerance")
    tolerance: float | None = Field(None, description="ε of the fairness target (default 0.05)")
    thresholds: ThresholdRule | None = Field(
        None, description="with a target, fine-tune as without it, then fit decision thresholds meeting it: "
                          "'deterministic' or 'randomized' per group (needs the sensitive attribute to predict; true: "
                          "deterministic), or 'proxy' (randomized per cell of the group inferred from the inputs; does not)")

    @field_validator("thresholds", mode="before")
    @classmethod
    def _threshold_rule(cls, value: object) -> ThresholdRule | None:
        return threshold_rule(value)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(spec) for spec in parse_methods(value))

    @field_validator("device")
    @classmethod
    def _usable_device(cls, value: str | None) -> str | None:
        return None if value is None else str(resolve_device(value))

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(value)) != len(value):
            raise ValueError("seeds must be distinct")
        return value

    @model_validator(mode="after")
    def _target_settings(self) -> RunConfig:
        if self.constraint is None and (self.tolerance is not None or self.thresholds):
            raise ConfigError(TARGET_NEEDS_CONSTRAINT)
        if self.tolerance is not None and not 0 < self.tolerance < 2:
            raise ConfigError(BAD_TOLERANCE.format(value=self.tolerance))
        self.method_specs()  # a tolerance out of range is named before any work
        return self

    def method_specs(self) -> tuple[str, ...]:
        """The methods run: with ``constraint``, each one that can take a target is fine-tuned to it
        (``win`` -> ``win-eo:0.05``); the others (e.g. the peers) run as they are."""
        if self.constraint is None:
            return self.methods
        tolerance = DEFAULT_TOLERANCE if self.tolerance is None else self.tolerance
        return tuple(targeted(m, self.constraint, tolerance, self.thresholds) if m in TARGETABLE else m for m in self.methods)

    def units(self) -> list[Unit]:
        """Per seed: the pre-trained model, then each method (the rows' order in results.csv)."""
        return [
            Unit(data=self.data, pretrain=self.pretrain, finetune=self.finetune, method=method, seed=seed,
                 target_layer=self.target_layer)
            for seed in self.seeds for method in (PRETRAINED, *self.method_specs())
        ]

    def environment(self, keep_predictions: bool = False, batched: bool = True) -> Environment:
        return Environment(cache_dir=self.cache_dir, device=self.device, keep_predictions=keep_predictions, batched=batched)


def collect(results: list[UnitResult]) -> RunResult:
    """Unit results, in order, as one result table, selections, predictions and stage times."""
    predictions = [r.predictions for r in results if r.predictions is not None]
    return RunResult(
        results=pd.DataFrame([r.row for r in results]),
        selections=[r.selection for r in results if r.selection is not None],
        predictions=pd.concat(predictions, ignore_index=True) if predictions else None,
        stage_seconds=stage_totals(results),
        group_names=next((r.group_names for r in results if r.group_names), ()),
    )


def run(config: RunConfig, *, out: str | os.PathLike[str] | None = None, overwrite: bool = False,
        keep_predictions: bool = False, progress: bool = True, executor: SerialExecutor | None = None,
        on_unit: Callable[[Unit], None] | None = None, batched: bool = True) -> RunResult:
    """Run ``config.methods`` over ``config.seeds`` on ``config.data`` (serially unless given an executor).

    ``batched=False`` trains each candidate in its own loop: the reference path, with the same results.

    With ``out``, also write the run folder there (:func:`~fairtune.experiments.outputs.write_run`)
    by the protocol of :class:`~fairtune.experiments.run_folder.RunFolder`: a folder holding an
    earlier run is refused unless ``overwrite``, checked before any work starts; the files appear
    together at the end, and a failed run leaves the folder as it was.
    """
    env = config.environment(keep_predictions, batched)
    if out is None:
        return _run(config, env, progress, executor, on_unit)
    with RunFolder(out, overwrite=overwrite) as folder:
        started = time.perf_counter()
        result = _run(config, env, progress, executor, on_unit)
        writing = time.perf_counter()
        folder.commit(lambda directory: write_run(result, config, directory, wall_seconds=time.perf_counter() - started))
    result.stage_seconds["write"] = round(time.perf_counter() - writing, 3)  # after config.json, which cannot hold it
    logger.info("seconds per stage: %s", ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in result.stage_seconds.items()))
    return result


def _run(config: RunConfig, env: Environment, progress: bool, executor: SerialExecutor | None,
         on_unit: Callable[[Unit], None] | None) -> RunResult:
    results = execute(config.units(), env, executor=executor, on_unit=on_unit, progress="fine-tuning" if progress else None)
    return collect(results)
