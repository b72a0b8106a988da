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

Each unit is one method on one seed, computed by the engine (:mod:`fairtune.experiments.engine`)
exactly as ``fairtune run`` computes it; units run in local processes or on a Dask cluster
(:mod:`fairtune.experiments.scheduling`). Every finished unit is stored at once as one atomic JSON
file under ``OUT/units/`` (:class:`~fairtune.experiments.store.ResultStore`), so a killed sweep
restarted with the same config skips what finished. ``OUT/results.csv`` is written (atomically)
when every unit is done. Pre-trained models (and, for image data, backbone features) are computed
once per (data set, seed) before the units start and shared through the on-disk caches; on a
multi-machine cluster ``cache_dir`` must be on a shared file system (or each machine computes its
own copy, with the same result).
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import Field, field_validator

from .._io import ensure_writable_dir, write_csv, write_json
from .._validation import seed_range
from ..catalogue import PRETRAINED, parse_methods
from ..config import DataConfig, FinetuneGrid, PretrainConfig, _Settings
from ..errors import ConfigError
from .engine import Environment, Unit, execute
from .run_folder import check_sources, sweep_folder
from .scheduling import SerialExecutor
from .store import ResultStore

logger = logging.getLogger(__name__)

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
        try:
            return tuple(str(spec) for spec in parse_methods(value))
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    def labelled_units(self) -> list[tuple[str, str, Unit]]:
        """``(data set, setting, unit)`` in grid order: data set, setting, seed, then ``pretrained`` and the methods."""
        return [
            (d, s, Unit(data=data, pretrain=self.pretrain, finetune=grid, method=method, seed=seed, target_layer=self.target_layer))
            for d, data in self.datasets.items() for s, grid in self.settings.items()
            for seed in self.seeds for method in (PRETRAINED, *self.methods)
        ]


def validate_sweep(raw: Any, *, source: str = "sweep config") -> SweepConfig:
    """Validate a parsed config; a problem becomes a one-line :class:`ConfigError` naming the file and the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level, got {type(raw).__name__}")
    try:
        return SweepConfig.model_validate(raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


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


def sweep(
    config: SweepConfig,
    out: str | os.PathLike[str],
    *,
    executor: SerialExecutor | None = None,
    progress: bool = False,
    overwrite: bool = False,
    on_unit: Callable[[Unit], None] | None = None,
) -> pd.DataFrame:
    """Run every unit of ``config`` not yet stored under ``out/units``; write and return ``out/results.csv``.

    ``out`` holding another grid's sweep is refused unless ``overwrite``
    (:func:`~fairtune.experiments.run_folder.sweep_folder`); the same grid resumes. ``progress``
    shows a bar over units (those already stored count as done); ``on_unit`` is called with
    each unit as it is stored. ``attrs["reused"]`` of the result counts the units found in the store.
    """
    check_sources(config.datasets)  # a missing CSV is named before any file is written
    with sweep_folder(out, config.model_dump(mode="json"), overwrite=overwrite) as folder:
        return _sweep(config, ensure_writable_dir(folder), executor, progress, on_unit)


def _sweep(config: SweepConfig, out_dir: Path, executor: SerialExecutor | None, progress: bool,
           on_unit: Callable[[Unit], None] | None) -> pd.DataFrame:
    labelled = config.labelled_units()
    units = [unit for _, _, unit in labelled]
    # first, so that a killed sweep is recognised as this grid's and resumed
    write_json({"sweep": config.model_dump(mode="json"), "units": len(units)}, out_dir / "sweep.json")
    store = ResultStore(out_dir / "units")
    reused = len({unit.key for unit in units if unit.key in store})
    names = {data.model_dump_json(): name for name, data in config.datasets.items()}  # errors name their data set
    results = execute(units, Environment(cache_dir=config.cache_dir), executor=executor, store=store, on_unit=on_unit,
                      dataset_names=names, progress="sweep" if progress else None)
    frame = pd.DataFrame([{"dataset": d, "setting": s, **result.row} for (d, s, _), result in zip(labelled, results)])
    write_csv(frame, out_dir / "results.csv")
    frame.attrs["reused"] = reused
    return frame


def completed_units(config: SweepConfig, out: str | os.PathLike[str]) -> list[Unit]:
    """The units of ``config`` already stored under ``out/units``."""
    store = ResultStore(Path(out) / "units")
    return [unit for _, _, unit in config.labelled_units() if unit.key in store]
