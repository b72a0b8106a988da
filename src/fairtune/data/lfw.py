"""LFW+a: Labeled Faces in the Wild images with the LFW attribute table; task gender, sensitive HeavyMakeup.

Expected under ``data_dir``:

* the images in LFW's layout ``<folder>/<Person_Name>/<Person_Name>_0001.jpg``, where
  ``<folder>`` is ``lfw`` (the original, http://vis-www.cs.umass.edu/lfw/), or one of the
  aligned versions ``lfw2`` / ``lfw-a`` (LFW-a, Wolf et al. 2011, grayscale; converted to RGB),
  ``lfw-deepfunneled``, ``lfw_funneled``;
* ``lfw_attributes.txt``, the per-image attribute table of Kumar et al. (ICCV 2009,
  https://www.cs.columbia.edu/CAVE/databases/pubfig/download/lfw_attributes.txt):
  tab-separated, a comment line, then the header ``#\\tperson\\timagenum\\tMale\\tAsian ...``
  and one row per image (13,143 rows) with real-valued attribute-classifier scores.

Binary labels: an attribute holds when its score is > 0 (the classifiers' decision
threshold). Default: label ``Male`` (the paper's gender task), sensitive ``Heavy Makeup``.

Splits: Table 1's 6,885 / 1,000 / 5,258 add up to all 13,143 rows and leave nothing to
pre-train on. fairtune draws test (5,258) and val (1,000) rows at random (seeded) and
divides the other 6,885 rows into the new task's train split (by default half,
``split.train = 0.5``) and the disjoint pre-training (source) split.
"""

from __future__ import annotations

import csv
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

#: Table 1's val / test sizes; train = a fraction of the other rows, the rest pre-trains.
LFW_SIZES: tuple[int, int, int] = (6885, 1000, 5258)
LFW_SPLIT = SplitConfig(train=0.5, val=LFW_SIZES[1], test=LFW_SIZES[2])
IMAGE_FOLDERS = ("lfw", "lfw2", "lfw-a", "lfw-deepfunneled", "lfw_funneled")


def read_lfw_attributes(path: Path) -> pd.DataFrame:
    """``lfw_attributes.txt`` as a frame with columns ``person``, ``imagenum`` and one float per attribute."""
    with require_file(path).open(newline="") as handle:
        lines = [line for line in handle if line.strip()]
    header_at = next((i for i, line in enumerate(lines) if line.startswith("#") and "person" in line and "imagenum" in line), None)
    if header_at is None:
        raise DataError(f"{path} has no header line '#<TAB>person<TAB>imagenum<TAB>...'")
    header = [h.strip() for h in lines[header_at].rstrip("\n").split("\t")[1:]]
    rows = list(csv.reader(lines[header_at + 1:], delimiter="\t"))
    bad = next((i for i, row in enumerate(rows) if len(row) != len(header)), None)
    if bad is not None:
        raise DataError(f"{path}: row {header_at + bad + 2} has {len(rows[bad])} fields, the header has {len(header)}")
    frame = pd.DataFrame(rows, columns=header)
    try:
        frame["imagenum"] = frame["imagenum"].astype(int)
        scores = frame.columns.drop(["person", "imagenum"])
        frame[scores] = frame[scores].astype(float)
    except (ValueError, KeyError) as exc:
        raise DataError(f"cannot parse {path}: {exc}") from exc
    return frame


def lfw_image_folder(data_dir: Path) -> Path:
    """The first of :data:`IMAGE_FOLDERS` present under ``data_dir``."""
    for name in IMAGE_FOLDERS:
        if (data_dir / name).is_dir():
            return data_dir / name
    raise DataError(f"no LFW image folder in {data_dir}: expected one of {', '.join(IMAGE_FOLDERS)}")


def lfw_image_path(person: str, imagenum: int) -> str:
    """``'Aaron Eckhart', 1`` -> ``'Aaron_Eckhart/Aaron_Eckhart_0001.jpg'``."""
    name = person.strip().replace(" ", "_")
    return f"{name}/{name}_{imagenum:04d}.jpg"


def lfw_task(
    data_dir: str | os.PathLike[str],
    *,
    target: str = "Male",
    sensitive: str = "Heavy Makeup",
    split: SplitConfig | None = None,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> Task:
    """LFW+a as a :class:`Task`: label = ``target`` score > 0, groups = ``sensitive`` score > 0.

    Attribute names are matched ignoring case, spaces and underscores (``HeavyMakeup``).
    """
    root = Path(data_dir)
    attr_path = root / "lfw_attributes.txt"
    attributes = read_lfw_attributes(attr_path)
    score_columns = [c for c in attributes.columns if c not in ("person", "imagenum")]
    target_column, sensitive_column = target_and_sensitive(target, sensitive, score_columns, source=str(attr_path))
    images = lfw_image_folder(root)
    paths = [lfw_image_path(p, n) for p, n in zip(attributes["person"], attributes["imagenum"])]
    check_files_exist(images, paths, source=str(attr_path))
    split = split or LFW_SPLIT
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))
    n_test, n_val = (round(v * len(paths)) if isinstance(v, float) else v for v in (split.test, split.val))
    if n_test + n_val >= len(paths):
        raise DataError(f"val + test sizes {n_val} + {n_test} leave none of the {len(paths)} images for training")
    pools = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return image_task(
        "lfw", ImageFiles(images, paths, image_transform(image_size)),
        (attributes[target_column].to_numpy() > 0).astype(np.int64),
        (attributes[sensitive_column].to_numpy() > 0).astype(np.int64),
        partition_split(pools, SplitConfig(train=split.train, val=n_val, test=n_test), seed + 1),
        group_names=(f"not {sensitive_column}", sensitive_column), label_name=target_column, sensitive_name=sensitive_column,
        fingerprint=task_fingerprint("lfw", file_hash(attr_path), str(images), target_column, sensitive_column, split.model_dump(), seed, image_size),
    )
