"""Data sets. Every loader returns a :class:`Task` (source / train / val / test splits)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..config import DataConfig
from .. import errors
from ..errors import ConfigError, DataError, FairtuneError
from ._types import Split, Task
from .adult import adult_task, load_adult_frame
from .tabular import csv_task, read_csv, split_indices, tabular_task
from .celeba import celeba_task
from .digits import digits_task
from .image_folder import ImageFiles, image_folder_task
from .lfw import lfw_task


def _adult(config: DataConfig, seed: int) -> Task:
    return adult_task(seed=seed, split=config.split, keep_sensitive=config.keep_sensitive, source_balance=config.source_balance,
                      stratify=bool(config.stratify), min_group_size=config.min_group_size)


def _csv(config: DataConfig, seed: int) -> Task:
    return csv_task(
        config.csv, target=config.target, sensitive=config.sensitive, positive=config.positive,
        split=config.split, seed=seed, keep_sensitive=config.keep_sensitive, drop_missing=config.drop_missing,
        source_balance=config.source_balance, stratify=config.stratify is not False, min_group_size=config.min_group_size,
    )


#: data set name -> loader(config, seed). Image data sets register here too.
def _data_dir(config: DataConfig) -> str:
    if config.data_dir is None:
        raise ConfigError(f"dataset {config.dataset!r} needs --data-dir DIR (see README, 'Image data')")
    return config.data_dir


def _celeba(config: DataConfig, seed: int) -> Task:
    attributes = {k: v for k, v in (("target", config.target), ("sensitive", config.sensitive)) if v}
    return celeba_task(_data_dir(config), **attributes, split=config.split, seed=seed, **_image_size(config))


def _lfw(config: DataConfig, seed: int) -> Task:
    attributes = {k: v for k, v in (("target", config.target), ("sensitive", config.sensitive)) if v}
    return lfw_task(_data_dir(config), **attributes, split=config.split, seed=seed, **_image_size(config))


def _image_folder(config: DataConfig, seed: int) -> Task:
    if config.csv is None:
        raise ConfigError("dataset 'image-folder' needs --csv FILE with columns path,label,sensitive")
    columns = {k: v for k, v in (("target", config.target), ("sensitive", config.sensitive)) if v}
    return image_folder_task(config.csv, **columns, positive=config.positive, split=config.split, seed=seed,
                             stratify=config.stratify is not False, min_group_size=config.min_group_size, **_image_size(config))


def _digits(config: DataConfig, seed: int) -> Task:
    return digits_task(seed=seed, split=config.split, **_image_size(config))


def _image_size(config: DataConfig) -> dict[str, int]:
    return {"image_size": config.image_size} if config.image_size else {}


LOADERS: dict[str, Callable[[DataConfig, int], Task]] = {
    "adult": _adult, "csv": _csv,
    "celeba": _celeba, "lfw": _lfw, "image-folder": _image_folder, "digits-bias": _digits,
}


def load_task(config: DataConfig, *, seed: int) -> Task:
    """Load the task that ``config`` names, split with ``seed``."""
    try:
        loader = LOADERS[config.dataset]
    except KeyError:
        raise ConfigError(f"unknown dataset {config.dataset!r}; available: {', '.join(LOADERS)}") from None
    return loader(config, seed)


def check_source(config: DataConfig) -> None:
    """Checks that need no loading, to run before any work or output: a known data set, an existing file."""
    if config.dataset not in LOADERS:
        raise ConfigError(f"unknown dataset {config.dataset!r}; available: {', '.join(LOADERS)}")
    if config.csv is not None and config.dataset in ("csv", "image-folder"):
        path = Path(config.csv)
        if path.is_dir():
            raise DataError(errors.NOT_A_FILE.format(path=path))
        if not path.is_file():
            raise DataError(errors.MISSING_FILE.format(path=path))


@contextlib.contextmanager
def dataset_errors(name: str) -> Iterator[None]:
    """Prefix the message of a FairtuneError raised in the block with the data set's name."""
    try:
        yield
    except FairtuneError as exc:
        raise type(exc)(f"data set {name!r}: {exc}") from None


class NamedDatasetErrors:
    """``function(config)`` whose FairtuneErrors name the data set of ``config.data`` (picklable, for sweep workers);
    ``config`` may also be a list of configs of one data set (a bundle of units).

    ``names`` maps ``DataConfig.model_dump_json()`` to the name the sweep config gives it.
    """

    def __init__(self, function: Callable[[Any], Any], names: dict[str, str]) -> None:
        self.function = function
        self.names = names

    def __call__(self, config: Any) -> Any:
        data = (config[0] if isinstance(config, list) else config).data
        with dataset_errors(self.names.get(data.model_dump_json(), data.dataset)):
            return self.function(config)


__all__ = ["check_source", "dataset_errors", "NamedDatasetErrors", "Split", "Task", "LOADERS", "load_task", "adult_task", "load_adult_frame", "csv_task", "read_csv", "tabular_task", "split_indices", "celeba_task", "lfw_task", "image_folder_task", "digits_task", "ImageFiles"]
