"""Sweeps: a grid of (data set, method, setting, seed) units, each an independent task.

A sweep config (YAML or TOML) names the grid::

    out: runs/sweep                       # output folder (``--out`` overrides it)
    datasets:                             # name -> DataConfig
      adult: {dataset: adult}
      mine: {dataset: csv, csv: my.csv, target: label, sensitive: group}
    methods: [tl, svd, win]
    settings:                             # name -> FinetuneGrid (searched on validation)
      default: {}
      fast: {epochs: [5], lrs: [0.01]}
    seeds: 10                             # 0..9, or an explicit list [0, 3, 7]
    pretrain: {epochs: 20}                # shared PretrainConfig
    cache_dir: null                       # pre-trained model cache shared by all tasks

Each unit is :func:`fairtune.experiments.run.run` restricted to one method and one seed. Units
run in local processes (:class:`~concurrent.futures.ProcessPoolExecutor`) or on a Dask cluster
(``distributed.Client(scheduler)``). Every finished unit is stored at once as one atomic JSON
file under ``OUT/units/`` (:class:`~fairtune.experiments.store.ResultStore`), so a killed sweep
restarted with the same config skips what finished. ``OUT/results.csv`` is written (atomically)
when every unit is done. Pre-trained models (and, for image data, backbone features) are computed
once per (data set, seed) before the units start and shared through the on-disk caches; on a
multi-machine cluster ``cache_dir`` must be on a shared file system (or each machine computes its
own copy, with the same result).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import threading
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from pydantic import Field, ValidationError, field_validator

from .._io import ensure_writable_dir, write_csv, write_json
from .._validation import seed_range
from ..config import DataConfig, FinetuneGrid, PretrainConfig, _Settings
from ..data import NamedDatasetErrors
from ..errors import ConfigError
from ..methods import METHODS
from .run import RunConfig, RunResult, run
from .store import ResultStore, unit_key

logger = logging.getLogger(__name__)

#: Environment variable naming a Dask scheduler (the ``dask`` convention).
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
#: Columns of ``results.csv`` that identify a unit; the metrics follow.
UNIT_COLUMNS = ["dataset", "setting", "method", "seed"]


class SweepConfig(_Settings):
    """A grid of units; validated strictly (unknown keys and wrong types are named)."""

    datasets: dict[str, DataConfig] = Field(default_factory=lambda: {"adult": DataConfig()}, min_length=1)
    methods: tuple[str, ...] = Field(("tl", "svd", "win"), min_length=1)
    settings: dict[str, FinetuneGrid] = Field(default_factory=lambda: {"default": FinetuneGrid()}, min_length=1)
    seeds: tuple[int, ...] = Field(tuple(range(10)), min_length=1)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    target_layer: str | None = None
    cache_dir: str | None = None
    out: str | None = Field(None, description="output folder; the CLI's --out overrides it")

    @field_validator("seeds", mode="before")
    @classmethod
    def _count_means_range(cls, value: Any) -> Any:
        return seed_range(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [m for m in value if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(METHODS)}")
        return value

    def units(self) -> list[dict[str, Any]]:
        """Every (data set, setting, method, seed), in a fixed order: the rows' order in results.csv."""
        return [
            {"dataset": d, "setting": s, "method": m, "seed": seed}
            for d in self.datasets for s in self.settings for m in self.methods for seed in self.seeds
        ]

    def run_config(self, unit: dict[str, Any]) -> RunConfig:
        """The one-method, one-seed :class:`RunConfig` that computes ``unit``."""
        return RunConfig(
            data=self.datasets[unit["dataset"]], pretrain=self.pretrain, finetune=self.settings[unit["setting"]],
            methods=(unit["method"],), seeds=(unit["seed"],), target_layer=self.target_layer, cache_dir=self.cache_dir,
        )

    def key(self, unit: dict[str, Any]) -> str:
        """Store key: hashes everything the unit's result depends on, so an edited config never reuses stale units."""
        config = self.run_config(unit).model_dump(mode="json")
        config.pop("cache_dir")
        return unit_key(**unit, config=config)


def _error_location(error: dict[str, Any]) -> str:
    return ".".join(str(part) for part in error["loc"]) or "(top level)"


def validate_sweep(raw: Any, *, source: str = "sweep config") -> SweepConfig:
    """Validate a parsed config; a problem becomes a one-line :class:`ConfigError` naming the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level, got {type(raw).__name__}")
    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _error_location(first)
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"{source}: unknown key {where!r}{more}") from None
        raise ConfigError(f"{source}: invalid value for {where!r}: {first['msg']}{more}") from None


def load_sweep_config(path: str | os.PathLike[str]) -> SweepConfig:
    """Read and validate a ``.yaml``/``.yml`` or ``.toml`` sweep config."""
    config_path = Path(path)
    if not config_path.is_file():
        raise ConfigError(f"sweep config not found: {config_path}")
    text = config_path.read_text()
    try:
        if config_path.suffix == ".toml":
            raw = tomllib.loads(text)
        elif config_path.suffix in (".yaml", ".yml"):
            raw = yaml.safe_load(text)
        else:
            raise ConfigError(f"sweep config {config_path} must end in .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot parse {config_path}: {' '.join(str(exc).split())}") from None
    return validate_sweep(raw, source=str(config_path))


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` intra-op threads, so results do not depend on how many workers share the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def prepare_unit(config: RunConfig) -> None:
    """Once per (data set, seed), before its units: pre-train the model into the cache and, for
    image data, compute the backbone features into the feature cache; the units then only load them."""
    from ..data import load_task
    from ..factorization import find_linear
    from .run import new_task_features, pretrained_model

    seed = config.seeds[0] if config.data.split_seed is None else config.data.split_seed
    with _torch_threads(1):
        task = load_task(config.data, seed=seed)
        model = pretrained_model(task, config, seed)
        if not isinstance(task.train.inputs, torch.Tensor):  # tabular features are cheaper to recompute than to store
            _, layer = find_linear(model, config.target_layer)
            new_task_features(model, layer, {k: v for k, v in task.splits().items() if k != "source"}, config)


def run_unit(config: RunConfig) -> dict[str, Any]:
    """One unit: ``run(config)`` for its single method and seed, as a JSON-ready record."""
    with _torch_threads(1):
        result = run(config, progress=False)
    return {"columns": list(result.results.columns), "rows": result.results.to_dict(orient="records"), "selections": result.selections}


def _one_per_data_seed(configs: list[RunConfig]) -> list[RunConfig]:
    """One config per distinct (data, pre-training seed): the work :func:`prepare_unit` does once."""
    distinct: dict[tuple[str, int], RunConfig] = {}
    for config in configs:
        seed = config.seeds[0] if config.data.split_seed is None else config.data.split_seed
        distinct.setdefault((config.data.model_dump_json(), seed), config)
    return list(distinct.values())


Task = Callable[[RunConfig], Any]


class SerialExecutor:
    """Run tasks one after the other in this process. Executors are context managers with ``imap``."""

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def imap(self, function: Task, configs: list[RunConfig]) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, function(configs[index]))`` as tasks finish."""
        for index, config in enumerate(configs):
            yield index, function(config)


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """Ignore SIGINT in the block (processes started in it inherit that); only the main thread can."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class ProcessExecutor(SerialExecutor):
    """Run tasks in ``workers`` local processes, spawned once per sweep (no state inherited from the caller)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ProcessExecutor:
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is not None:  # Ctrl-C or an error: stop the workers now, not after their current units
            for process in list((self._pool._processes or {}).values()):
                process.terminate()
        self._pool.shutdown(cancel_futures=True)

    def imap(self, function: Task, configs: list[RunConfig]) -> Iterator[tuple[int, Any]]:
        with _interrupts_ignored():  # workers start with Ctrl-C ignored: this process handles it and stops them
            futures = {self._pool.submit(function, config): index for index, config in enumerate(configs)}
        for future in as_completed(futures):
            yield futures[future], future.result()


class DaskExecutor(SerialExecutor):
    """Run tasks on the Dask cluster at ``scheduler`` (``tcp://HOST:PORT``); its workers need fairtune installed."""

    def __init__(self, scheduler: str) -> None:
        self.scheduler = scheduler
        self._client: Any = None

    def __enter__(self) -> DaskExecutor:
        try:
            from distributed import Client
        except ImportError:
            raise ConfigError("--scheduler needs dask's distributed package: pip install 'fairtune[dask]'") from None
        try:
            self._client = Client(self.scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(f"cannot connect to the Dask scheduler at {self.scheduler}: {' '.join(str(exc).split())}") from None
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client.close()

    def imap(self, function: Task, configs: list[RunConfig]) -> Iterator[tuple[int, Any]]:
        from distributed import as_completed as dask_as_completed

        futures = self._client.map(function, configs, pure=False)
        index = {future.key: i for i, future in enumerate(futures)}
        for future in dask_as_completed(futures):
            yield index[future.key], future.result()


def choose_executor(*, workers: int = 1, scheduler: str | None = None) -> SerialExecutor:
    """Dask when a scheduler is named (argument or ``$DASK_SCHEDULER_ADDRESS``), else local processes (or this one)."""
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    scheduler = scheduler or os.environ.get(SCHEDULER_ENV) or None
    if scheduler:
        return DaskExecutor(scheduler)
    return ProcessExecutor(workers) if workers > 1 else SerialExecutor()


def results_frame(sweep: SweepConfig, store: ResultStore) -> pd.DataFrame:
    """One row per (data set, setting, method, seed) plus each (data set, setting, seed)'s ``pretrained`` row.

    Rows are in grid order: data set, setting, seed, then ``pretrained`` and the methods as listed.
    """
    records = [store.get(sweep.key(unit)) for unit in sweep.units()]
    rows = [{"dataset": r["unit"]["dataset"], "setting": r["unit"]["setting"], **row} for r in records for row in r["rows"]]
    columns = ["dataset", "setting"] + records[0]["columns"]
    frame = pd.DataFrame(rows, columns=columns).drop_duplicates(UNIT_COLUMNS)  # every unit of a seed repeats its pretrained row
    rank = {
        "dataset": {name: i for i, name in enumerate(sweep.datasets)},
        "setting": {name: i for i, name in enumerate(sweep.settings)},
        "method": {"pretrained": -1} | {name: i for i, name in enumerate(sweep.methods)},
    }
    ordered = frame.sort_values(["dataset", "setting", "seed", "method"], key=lambda c: c.map(rank[c.name]) if c.name in rank else c)
    return ordered.reset_index(drop=True)


def sweep(
    config: SweepConfig,
    out: str | os.PathLike[str],
    *,
    executor: SerialExecutor | None = None,
    on_unit: Callable[[dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """Run every unit of ``config`` not yet stored under ``out/units``; write and return ``out/results.csv``.

    ``on_unit`` is called with each unit as it is stored (e.g. to show progress).
    """
    out_dir = ensure_writable_dir(out)
    store = ResultStore(out_dir / "units")
    pending = [unit for unit in config.units() if config.key(unit) not in store]
    logger.info("%d of %d units to run", len(pending), len(config.units()))
    write_json({"sweep": config.model_dump(mode="json"), "units": len(config.units())}, out_dir / "sweep.json")
    if pending:
        with (executor or SerialExecutor()) as tasks:
            names = {data.model_dump_json(): name for name, data in config.datasets.items()}  # errors name their data set
            for _ in tasks.imap(NamedDatasetErrors(prepare_unit, names), _one_per_data_seed([config.run_config(unit) for unit in pending])):
                pass
            for index, record in tasks.imap(NamedDatasetErrors(run_unit, names), [config.run_config(unit) for unit in pending]):
                unit = pending[index]
                store.put(config.key(unit), {"unit": unit, **record})
                if on_unit:
                    on_unit(unit)
    results = results_frame(config, store)
    write_csv(results, out_dir / "results.csv")
    return results


def completed_units(config: SweepConfig, out: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The units of ``config`` already stored under ``out/units``."""
    store = ResultStore(Path(out) / "units")
    return [unit for unit in config.units() if config.key(unit) in store]


def _unit_run_result(config: RunConfig, *, keep_predictions: bool) -> RunResult:
    with _torch_threads(1):
        return run(config, keep_predictions=keep_predictions, progress=False)


def run_parallel(config: RunConfig, executor: SerialExecutor, *, keep_predictions: bool = False) -> RunResult:
    """:func:`~fairtune.experiments.run.run` with each (method, seed) as one task on ``executor``.

    Same rows, selections and predictions in the same order as ``run(config)`` (each seed's
    ``pretrained`` row once, first); ``fairtune run --processes N``.
    """
    units = [{"seed": seed, "method": method} for seed in config.seeds for method in config.methods]
    configs = [config.model_copy(update={"methods": (u["method"],), "seeds": (u["seed"],)}) for u in units]
    with executor as tasks:
        for _ in tasks.imap(prepare_unit, _one_per_data_seed(configs)):
            pass
        finished = dict(tasks.imap(functools.partial(_unit_run_result, keep_predictions=keep_predictions), configs))
    parts = [finished[i] for i in range(len(configs))]
    first_of_seed = [i % len(config.methods) == 0 for i in range(len(parts))]  # keeps that seed's pretrained row
    results = pd.concat([p.results if first or p.results.empty else p.results[p.results["method"] != "pretrained"]
                         for p, first in zip(parts, first_of_seed)], ignore_index=True)
    predictions = [p.predictions if first else p.predictions[p.predictions["method"] != "pretrained"]
                   for p, first in zip(parts, first_of_seed) if p.predictions is not None]
    return RunResult(results=results, selections=[s for p in parts for s in p.selections],
                     predictions=pd.concat(predictions, ignore_index=True) if predictions else None, group_names=parts[0].group_names)
