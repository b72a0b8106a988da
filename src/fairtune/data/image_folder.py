"""Image data sets on disk: the dataset type every image loader uses, and your own image folder.

Your own images: a CSV with one row per image and the columns ``path`` (relative to the
CSV's folder, or absolute), ``label`` and ``sensitive`` (other names via ``target`` /
``sensitive``). Labels must be 0/1-like unless ``positive`` names the positive value; the
sensitive attribute may have any number (>= 2) of groups. The rows are split as the
tabular loader splits them (:func:`~fairtune.data.split_indices`): the new-task sizes
train / val / test, the rest pre-trains the model.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .. import errors
from .._validation import binary_labels, check_groups_present
from ..config import SplitConfig
from ..errors import DataError
from ._types import Split, Task
from .tabular import group_split, read_csv

if TYPE_CHECKING:  # torchvision is imported where images are read: a tabular run does not load it
    from torchvision import transforms

#: ImageNet statistics, which torchvision's pre-trained backbones expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224
MISSING_IMAGES = "{count} image(s) listed in {source} are missing, e.g. {example}"
MISSING_ATTRIBUTE = "attribute {name!r} not found in {source}; available: {available}"


def image_transform(size: int = DEFAULT_IMAGE_SIZE) -> transforms.Compose:
    """Resize the shorter side to ``size``, center-crop ``size x size``, scale to [0, 1], normalize (ImageNet)."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class ImageFiles(Dataset):
    """Image files under ``root``, read one at a time: item ``i`` is ``transform(RGB image i)``.

    ``fingerprint`` identifies the files (root, relative paths, sizes and modification
    times) so that cached backbone features are reused only for the same images.
    """

    def __init__(self, root: str | os.PathLike[str], paths: Sequence[str], transform: transforms.Compose) -> None:
        self.root = Path(root)
        self.paths = tuple(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.root / self.paths[index]
        try:
            with Image.open(path) as image:
                return self.transform(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read image {path}: {exc.__class__.__name__}") from exc

    def subset(self, indices: np.ndarray) -> ImageFiles:
        return ImageFiles(self.root, [self.paths[i] for i in indices], self.transform)

    @cached_property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(str(self.root.resolve()).encode())
        for relative in self.paths:
            stat = (self.root / relative).stat()
            digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def normalized(name: str) -> str:
    """``'Heavy Makeup'``, ``'Heavy_Makeup'`` and ``'HeavyMakeup'`` all read as ``'heavymakeup'``."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def match_attribute(name: str, columns: Sequence[str], *, source: str) -> str:
    """The column of ``columns`` that ``name`` names, ignoring case, spaces and underscores."""
    by_key = {normalized(c): c for c in columns}
    try:
        return by_key[normalized(name)]
    except KeyError:
        raise DataError(MISSING_ATTRIBUTE.format(name=name, source=source, available=", ".join(map(str, columns)))) from None


def target_and_sensitive(target: str, sensitive: str, columns: Sequence[str], *, source: str) -> tuple[str, str]:
    """The attribute columns of the label and of the sensitive attribute, which must differ."""
    target_column = match_attribute(target, columns, source=source)
    sensitive_column = match_attribute(sensitive, columns, source=source)
    if target_column == sensitive_column:
        raise DataError("target and sensitive must be different attributes")
    return target_column, sensitive_column


def check_files_exist(root: Path, paths: Sequence[str], *, source: str) -> None:
    """Fail in one line when images listed in ``source`` are absent under ``root``."""
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        raise DataError(MISSING_IMAGES.format(count=len(missing), source=source, example=root / missing[0]))


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(errors.MISSING_FILE.format(path=path))
    return path


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _count(size: float, pool: int, *, what: str) -> int:
    count = round(size * pool) if isinstance(size, float) else size
    if count > pool:
        raise DataError(f"the {what} split asks for {count} images but only {pool} are available")
    return count


def partition_split(pools: dict[str, np.ndarray], split: SplitConfig, seed: int) -> dict[str, np.ndarray]:
    """Draw the new task's splits from fixed pools of row indices; the rest of the train pool pre-trains.

    ``val`` and ``test`` are seeded random samples of ``split.val`` / ``split.test`` rows of
    ``pools['val']`` / ``pools['test']``; ``train`` is a sample of ``split.train`` rows of
    ``pools['train']`` and ``source`` is every other row of that pool, so pre-training and the
    new task never share an image. A float size is a fraction of its pool.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, np.ndarray] = {}
    for name in ("val", "test"):
        pool = pools[name]
        parts[name] = np.sort(rng.choice(pool, _count(getattr(split, name), len(pool), what=name), replace=False))
    shuffled = rng.permutation(pools["train"])
    n_train = _count(split.train, len(shuffled), what="train")
    if n_train >= len(shuffled):
        raise DataError(f"train size {n_train} leaves none of the {len(shuffled)} training-pool images for pre-training")
    parts["train"], parts["source"] = np.sort(shuffled[:n_train]), np.sort(shuffled[n_train:])
    return {name: parts[name] for name in ("source", "train", "val", "test")}


def image_task(
    name: str,
    files: ImageFiles,
    y: np.ndarray,
    s: np.ndarray,
    parts: dict[str, np.ndarray],
    *,
    group_names: tuple[str, ...],
    label_name: str,
    sensitive_name: str,
    fingerprint: str,
) -> Task:
    """A :class:`Task` whose splits hold the images of ``parts`` (row indices into ``files``, ``y``, ``s``)."""

    def make(rows: np.ndarray, where: str) -> Split:
        check_groups_present(s[rows], len(group_names), where=where, names=group_names)
        return Split(files.subset(rows), y[rows], s[rows])

    return Task(
        name=name, **{where: make(rows, where) for where, rows in parts.items()},
        group_names=group_names, label_name=label_name, sensitive_name=sensitive_name, fingerprint=fingerprint,
    )


def task_fingerprint(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def image_folder_task(
    csv: str | os.PathLike[str],
    *,
    path_column: str = "path",
    target: str = "label",
    sensitive: str = "sensitive",
    positive: object | None = None,
    split: SplitConfig | None = None,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    stratify: bool = True,
    min_group_size: int | None = None,
) -> Task:
    """Your images, listed in ``csv`` (columns ``path, label, sensitive``), as a :class:`Task`.

    Split as the tabular loader does (default: Adult's proportions; the rest pre-trains),
    stratified by (group, label) unless ``stratify=False``; ``min_group_size`` merges smaller groups.
    """
    csv_path = Path(csv)
    frame = read_csv(csv_path)
    for column in (path_column, target, sensitive):
        if column not in frame.columns:
            raise DataError(errors.MISSING_COLUMN.format(column=column, source=csv_path, available=", ".join(map(str, frame.columns))))
    paths = frame[path_column].astype(str).tolist()
    root = csv_path.parent
    check_files_exist(root, paths, source=str(csv_path))
    y = binary_labels(frame[target], name=target, positive=positive)
    split = split or SplitConfig()
    s, group_names, parts = group_split(
        y, frame[sensitive], split, seed, stratify=stratify, min_group_size=min_group_size,
        column=sensitive, label=f"{target}={positive if positive is not None else 1}",
    )
    files = ImageFiles(root, paths, image_transform(image_size))
    split_id = (stratify, min_group_size) if stratify or min_group_size is not None else ()
    return image_task(
        "image-folder", files, y, s, parts,
        group_names=group_names, label_name=target, sensitive_name=sensitive,
        fingerprint=task_fingerprint("image-folder", str(csv_path.resolve()), file_hash(csv_path), split.model_dump(), seed, positive, image_size, *split_id),
    )
