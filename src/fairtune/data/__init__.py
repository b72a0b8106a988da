"""Data sets. Every loader returns a :class:`Task` (source / train / val / test splits)."""

from __future__ import annotations

from collections.abc import Callable

from ..config import DataConfig
from ..errors import ConfigError
from ._types import Split, Task
from .adult import adult_task, load_adult_frame
from .tabular import csv_task, read_csv, split_indices, tabular_task


def _adult(config: DataConfig, seed: int) -> Task:
    return adult_task(seed=seed, split=config.split, keep_sensitive=config.keep_sensitive, source_balance=config.source_balance)


def _csv(config: DataConfig, seed: int) -> Task:
    return csv_task(
        config.csv, target=config.target, sensitive=config.sensitive, positive=config.positive,
        split=config.split, seed=seed, keep_sensitive=config.keep_sensitive, drop_missing=config.drop_missing,
        source_balance=config.source_balance,
    )


#: data set name -> loader(config, seed). Image data sets register here too.
LOADERS: dict[str, Callable[[DataConfig, int], Task]] = {"adult": _adult, "csv": _csv}


def load_task(config: DataConfig, *, seed: int) -> Task:
    """Load the task that ``config`` names, split with ``seed``."""
    try:
        loader = LOADERS[config.dataset]
    except KeyError:
        raise ConfigError(f"unknown dataset {config.dataset!r}; available: {', '.join(LOADERS)}") from None
    return loader(config, seed)


__all__ = ["Split", "Task", "LOADERS", "load_task", "adult_task", "load_adult_frame", "csv_task", "read_csv", "tabular_task", "split_indices"]
