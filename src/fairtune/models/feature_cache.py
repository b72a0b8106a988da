"""Backbone features of image data sets, computed once and kept on disk.

Everything before the target layer is frozen, so its inputs (the backbone features) are
the same for every method, seed and setting. They are computed once per (backbone weights,
data, transform) and stored as a ``.npy`` file under ``cache_dir/features/``; later runs
memory-map it (``np.load(mmap_mode="c")``), so neither the images nor all the features
need to be held in memory. Images are streamed through a DataLoader, and each batch's
features are written straight into the file.

A data set is cacheable when it has a ``fingerprint`` (a string identifying its samples)
and a ``transform`` (whose ``repr`` identifies the preprocessing), as fairtune's image data
sets do. The file is written atomically: it is either absent or complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .._io import atomic_path
from ..data._types import Split
from ..errors import ModelError
from ..training import TrainingData
from .checkpoint import default_cache_dir
from .features import extract_features

logger = logging.getLogger(__name__)
_FORMAT = 1  # bump when the extraction changes what a cached file holds
NOT_CACHEABLE = "cannot cache features of a {kind}: the data set needs a 'fingerprint' and a 'transform' attribute"


def backbone_hash(model: nn.Module, layer: nn.Linear) -> str:
    """SHA-256 of every parameter and buffer of ``model`` except those of ``layer``.

    The features ``layer`` receives depend on these tensors only, so a retrained head
    reuses the cached features of its backbone.
    """
    own = {id(t) for t in (*layer.parameters(), *layer.buffers())}
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
        if id(tensor) in own:
            continue
        values = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{values.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(values.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def feature_key(model: nn.Module, layer: nn.Linear, dataset: Dataset) -> str:
    """Cache key of ``layer``'s inputs on ``dataset``: weights hash, data fingerprint, transform."""
    fingerprint, transform = getattr(dataset, "fingerprint", None), getattr(dataset, "transform", None)
    if fingerprint is None or transform is None:
        raise ModelError(NOT_CACHEABLE.format(kind=type(dataset).__name__))
    payload = json.dumps({
        "weights": backbone_hash(model, layer), "data": fingerprint, "transform": repr(transform),
        "in_features": layer.in_features, "format": _FORMAT,
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _write_features(
    model: nn.Module, layer: nn.Linear, dataset: Dataset, path: Path, *,
    batch_size: int, workers: int, progress: bool, description: str,
) -> None:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(dataset), layer.in_features))
        start = 0
        with tqdm(total=len(dataset), desc=description, disable=not progress, leave=False, unit="image") as bar:
            for batch in loader:
                images = batch[0] if isinstance(batch, (list, tuple)) else batch
                out[start:start + len(images)] = extract_features(model, layer, images, batch_size=len(images)).numpy()
                start += len(images)
                bar.update(len(images))
        out.flush()
        del out


def cached_features(
    model: nn.Module,
    layer: nn.Linear,
    dataset: Dataset,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 128,
    workers: int = 0,
    progress: bool = False,
    description: str = "features",
) -> Tensor:
    """``layer``'s inputs on every item of ``dataset``, ``(n, layer.in_features)`` float32.

    Computed on the first call (streamed, written into ``cache_dir/features/<key>.npy``)
    and memory-mapped from that file on every call, so the result does not hold the data
    set in memory; it equals :func:`~fairtune.models.extract_features` on the same inputs.
    """
    path = Path(cache_dir or default_cache_dir()) / "features" / f"{feature_key(model, layer, dataset)}.npy"
    if path.is_file():
        logger.info("reusing cached features %s", path)
    else:
        _write_features(model, layer, dataset, path, batch_size=batch_size, workers=workers, progress=progress, description=description)
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def cached_split_features(
    model: nn.Module,
    layer: nn.Linear,
    splits: dict[str, Split],
    *,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    progress: bool = False,
) -> dict[str, TrainingData]:
    """:func:`cached_features` of each split, with its labels and groups."""
    return {
        name: TrainingData.from_arrays(
            cached_features(model, layer, split.inputs, cache_dir=cache_dir, workers=workers, progress=progress, description=f"features ({name})"),
            split.y, split.s,
        )
        for name, split in splits.items()
    }
