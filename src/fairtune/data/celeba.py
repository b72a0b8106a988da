"""CelebA (Liu et al., 2015) from its official files; the paper's task WavyHair, sensitive Male.

Expected under ``data_dir`` (or ``data_dir/celeba``, torchvision's layout), as distributed
on the CelebA page (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html):

* ``img_align_celeba/`` — the aligned and cropped JPEGs ``000001.jpg`` ... ``202599.jpg``;
* ``list_attr_celeba.txt`` — a count line, a header line of the 40 attribute names, then
  one row per image: the file name and 40 values in {-1, 1} (1 = has the attribute);
* ``list_eval_partition.txt`` — one row per image: the file name and 0 (train), 1 (val), 2 (test).

Splits. The paper's Table 1 lists train / val / test = 194,599 / 4,000 / 8,000; these add
up to 206,599, more than the 202,599 images, and leave nothing for pre-training, so they
cannot be disjoint. fairtune keeps the official partitions apart (they do not share
identities): the new task's test split is 8,000 images drawn from the official test
partition, its val split 4,000 images from the official val partition, and the official
train partition (162,770 images) is divided into the new task's train split (by default
half of it, ``split.train = 0.5``) and the pre-training (source) split (the other half).
All sizes are configurable (counts, or floats = fractions of their partition).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import SplitConfig
from ..errors import DataError
from ._types import Task
from .image_folder import (
    DEFAULT_IMAGE_SIZE,
    ImageFiles,
    check_files_exist,
    file_hash,
    image_task,
    image_transform,
    partition_split,
    require_file,
    target_and_sensitive,
    task_fingerprint,
)

#: New-task sizes: train = a fraction of the official train partition (the rest pre-trains), val and test as Table 1.
CELEBA_SPLIT = SplitConfig(train=0.5, val=4000, test=8000)
PARTITIONS = {0: "train", 1: "val", 2: "test"}


def celeba_root(data_dir: str | os.PathLike[str]) -> Path:
    """``data_dir``, or its ``celeba/`` subfolder when the files are there."""
    root = Path(data_dir)
    if not (root / "list_attr_celeba.txt").is_file() and (root / "celeba" / "list_attr_celeba.txt").is_file():
        return root / "celeba"
    return root


def read_celeba_attributes(path: Path) -> pd.DataFrame:
    """``list_attr_celeba.txt`` as a frame indexed by file name, one int column (-1/1) per attribute."""
    try:
        frame = pd.read_csv(require_file(path), sep=r"\s+", skiprows=1)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from exc
    if frame.empty or not frame.isin([-1, 1]).all().all():
        raise DataError(f"{path} must hold a count line, a header of attribute names and rows of -1/1 values")
    return frame


def read_celeba_partition(path: Path) -> pd.Series:
    """``list_eval_partition.txt`` as a Series file name -> 0 (train), 1 (val), 2 (test)."""
    try:
        frame = pd.read_csv(require_file(path), sep=r"\s+", header=None, names=["image", "partition"], index_col="image")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from exc
    if not frame["partition"].isin(list(PARTITIONS)).all():
        raise DataError(f"{path} must map each image to 0 (train), 1 (val) or 2 (test)")
    return frame["partition"]


def celeba_task(
    data_dir: str | os.PathLike[str],
    *,
    target: str = "Wavy_Hair",
    sensitive: str = "Male",
    split: SplitConfig | None = None,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> Task:
    """CelebA as a :class:`Task`: label = ``target`` attribute is 1, groups = ``sensitive`` attribute.

    Attribute names are matched ignoring case and underscores (``WavyHair`` = ``Wavy_Hair``).
    The sensitive groups are named ``not_<attr>`` and ``<attr>``.
    """
    root = celeba_root(data_dir)
    attr_path, partition_path = root / "list_attr_celeba.txt", root / "list_eval_partition.txt"
    attributes = read_celeba_attributes(attr_path)
    target_column, sensitive_column = target_and_sensitive(target, sensitive, attributes.columns, source=str(attr_path))
    partition = read_celeba_partition(partition_path).reindex(attributes.index)
    if partition.isna().any():
        raise DataError(f"{int(partition.isna().sum())} image(s) of {attr_path} have no partition in {partition_path}")
    names = attributes.index.astype(str).tolist()
    check_files_exist(root / "img_align_celeba", names, source=str(attr_path))
    split = split or CELEBA_SPLIT
    codes = partition.to_numpy()
    pools = {name: np.flatnonzero(codes == code) for code, name in PARTITIONS.items()}
    return image_task(
        "celeba", ImageFiles(root / "img_align_celeba", names, image_transform(image_size)),
        (attributes[target_column].to_numpy() == 1).astype(np.int64),
        (attributes[sensitive_column].to_numpy() == 1).astype(np.int64),
        partition_split(pools, split, seed),
        group_names=(f"not_{sensitive_column}", sensitive_column), label_name=target_column, sensitive_name=sensitive_column,
        fingerprint=task_fingerprint("celeba", file_hash(attr_path), file_hash(partition_path), target_column, sensitive_column, split.model_dump(), seed, image_size),
    )
