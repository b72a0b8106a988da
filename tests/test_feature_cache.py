"""Feature cache: cached features equal fresh ones, are reused without reading an image, and are
keyed by backbone weights, data and transform (not by the head)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import TensorDataset

from fairtune.data.digits import PixelImages, Upsample, digits_task
from fairtune.data.image_folder import ImageFiles, image_transform
from fairtune.errors import ModelError
from fairtune.factorization import find_linear
from fairtune.models import cached_features, cached_split_features, extract_features
from fairtune.models.feature_cache import NOT_CACHEABLE, backbone_hash, feature_key
from fairtune.models.vision import vision_model


class CountingImages(PixelImages):
    """Digits images that count how many items were read."""

    reads = 0

    def __getitem__(self, index: int) -> Tensor:
        type(self).reads += 1
        return super().__getitem__(index)


@pytest.fixture
def model_and_head() -> tuple[torch.nn.Module, torch.nn.Linear]:
    torch.manual_seed(0)
    model = vision_model("small_cnn").eval()
    return model, find_linear(model)[1]


@pytest.fixture
def images() -> CountingImages:
    source = digits_task(seed=0).test.inputs
    return CountingImages(source.images[:70], source.transform)


def test_cached_features_equal_fresh_and_are_reused(tmp_path: Path, model_and_head, images: CountingImages) -> None:
    model, head = model_and_head
    fresh = extract_features(model, head, images)
    CountingImages.reads = 0
    cached = cached_features(model, head, images, cache_dir=tmp_path, batch_size=32)
    assert CountingImages.reads == len(images)
    torch.testing.assert_close(cached, fresh)
    [path] = (tmp_path / "features").iterdir()
    assert path.suffix == ".npy" and np.load(path, mmap_mode="r").shape == (70, head.in_features)
    stamp = path.stat().st_mtime_ns

    CountingImages.reads = 0
    again = cached_features(model, head, images, cache_dir=tmp_path)
    assert CountingImages.reads == 0 and path.stat().st_mtime_ns == stamp
    torch.testing.assert_close(again, fresh)


def test_head_changes_keep_the_key_backbone_data_and_transform_change_it(model_and_head, images: CountingImages) -> None:
    model, head = model_and_head
    key = feature_key(model, head, images)
    with torch.no_grad():
        head.weight.add_(1.0)
    assert feature_key(model, head, images) == key
    assert feature_key(model, head, PixelImages(images.images[:-1], images.transform)) != key
    assert feature_key(model, head, PixelImages(images.images, Upsample(16))) != key
    with torch.no_grad():
        model.conv1.weight.mul_(2.0)
    assert feature_key(model, head, images) != key


def test_buffers_change_the_backbone_hash(model_and_head) -> None:
    model, head = model_and_head
    before = backbone_hash(model, head)
    model.bn1.running_mean.add_(1.0)
    assert backbone_hash(model, head) != before


def test_image_files_are_cached_and_fingerprinted(tmp_path: Path, model_and_head) -> None:
    model, head = model_and_head
    for i in range(6):
        Image.fromarray(np.full((10, 12, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    files = ImageFiles(tmp_path, [f"{i}.png" for i in range(6)], image_transform(16))
    cached = cached_features(model, head, files, cache_dir=tmp_path / "cache", batch_size=4)
    torch.testing.assert_close(cached, extract_features(model, head, files))
    key = feature_key(model, head, files)
    Image.fromarray(np.zeros((11, 12, 3), dtype=np.uint8)).save(tmp_path / "3.png")  # a changed file
    assert feature_key(model, head, ImageFiles(tmp_path, files.paths, files.transform)) != key


def test_split_features_carry_labels(tmp_path: Path, model_and_head) -> None:
    model, head = model_and_head
    task = digits_task(seed=2)
    features = cached_split_features(model, head, {"val": task.val}, cache_dir=tmp_path)
    assert features["val"].x.shape == (180, head.in_features)
    np.testing.assert_array_equal(features["val"].y.numpy(), task.val.y)
    np.testing.assert_array_equal(features["val"].s.numpy(), task.val.s)


def test_dataset_without_fingerprint_is_refused(tmp_path: Path, model_and_head) -> None:
    model, head = model_and_head
    with pytest.raises(ModelError) as info:
        cached_features(model, head, TensorDataset(torch.zeros(4, 3, 8, 8)), cache_dir=tmp_path)
    assert str(info.value) == NOT_CACHEABLE.format(kind="TensorDataset")
