"""The one data type every loader returns: a task split into source / train / val / test."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Split:
    """One split of a task.

    Attributes
    ----------
    inputs : torch.Tensor or Dataset
        Model inputs: a float32 tensor ``(n, d)`` for tabular data, or a map-style
        :class:`~torch.utils.data.Dataset` whose items are input tensors (e.g. images).
    y : np.ndarray
        Binary labels, int64 in {0, 1}, shape ``(n,)``.
    s : np.ndarray
        Sensitive-group codes, int64 in ``0..G-1``, shape ``(n,)``.
    """

    inputs: torch.Tensor | Dataset
    y: np.ndarray
    s: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Task:
    """A downstream task with its pre-training (``source``) split, as in the paper's Table 1.

    ``fingerprint`` identifies the data, split and preprocessing; caches of pre-trained
    models and backbone features are keyed by it.
    """

    name: str
    source: Split
    train: Split
    val: Split
    test: Split
    group_names: tuple[str, ...]
    label_name: str
    sensitive_name: str
    fingerprint: str
    feature_names: tuple[str, ...] = field(default=())

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    def splits(self) -> dict[str, Split]:
        return {"source": self.source, "train": self.train, "val": self.val, "test": self.test}

    def sizes(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.splits().items()}
