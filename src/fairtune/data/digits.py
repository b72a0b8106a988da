"""digits-bias: an offline image benchmark with a sensitive attribute painted into the pixels.

Built from the 1,797 8x8 handwritten digits that scikit-learn ships
(:func:`sklearn.datasets.load_digits`), so it runs anywhere without a download:

* label ``y = 1`` for the digits 5-9, ``0`` for 0-4;
* sensitive attribute ``s`` in {0, 1}; images of group 1 carry a bright 2x2 patch in their
  top-left corner (a spot where the digits have no ink);
* on the pre-training (source) split ``s`` agrees with the label for a fraction
  ``source_agreement`` (default 0.9) of the images, so a model pre-trained there learns to
  use the patch (a bias); on the new task's train / val / test splits ``s`` is drawn
  independently of ``y`` (``task_agreement`` = 0.5), so relying on the patch is both an
  error and unfair there;
* images are scaled to [0, 1], given 3 channels and upsampled (bilinear) to ``image_size``:
  8 (native) by default for the default small CNN; e.g. 32 for ResNet-18, which is far too
  slow to pre-train 10 times on 2 CPU cores (about 20 s per epoch of the 899 source images).

Default split: new task 20 % / 10 % / 20 % of the images (359 / 180 / 359), the other
899 pre-train the model.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset

from ..config import SplitConfig
from ._types import Split, Task
from .image_folder import task_fingerprint
from .tabular import split_indices

DIGITS_SPLIT = SplitConfig(train=0.2, val=0.1, test=0.2)
DIGITS_IMAGE_SIZE = 8  # native; the small CNN needs no upsampling (ResNet-18: --image-size 32)
PATCH = (slice(0, 2), slice(0, 2))  # rows, columns of the 8x8 image


class Upsample:
    """``(1, h, w)`` in [0, 1] -> ``(3, size, size)``, bilinear, normalized to mean 0 (x - 0.5) / 0.5."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Tensor) -> Tensor:
        resized = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        return ((resized - 0.5) / 0.5).expand(3, -1, -1).contiguous()

    def __repr__(self) -> str:
        return f"Upsample(size={self.size}, channels=3, mode='bilinear', normalize=(0.5, 0.5))"


class PixelImages(Dataset):
    """Small in-memory images ``(n, 1, h, w)``; item ``i`` is ``transform(images[i])``."""

    def __init__(self, images: Tensor, transform: Upsample) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.transform(self.images[index])

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.images.numpy().tobytes()).hexdigest()


def with_patch(images: np.ndarray, s: np.ndarray) -> np.ndarray:
    """A copy of ``images`` ``(n, 8, 8)`` in [0, 1] where those of group ``s == 1`` get a bright corner patch."""
    marked = images.copy()
    marked[s == 1, PATCH[0], PATCH[1]] = 1.0
    return marked


def correlated_groups(y: np.ndarray, agreement: float, rng: np.random.Generator) -> np.ndarray:
    """Sensitive codes with ``P(s = y) = agreement``: ``s = y`` or ``1 - y`` at random."""
    agrees = rng.random(len(y)) < agreement
    return np.where(agrees, y, 1 - y).astype(np.int64)


def digits_task(
    *,
    seed: int = 0,
    split: SplitConfig | None = None,
    image_size: int = DIGITS_IMAGE_SIZE,
    source_agreement: float = 0.9,
    task_agreement: float = 0.5,
) -> Task:
    """The digits-bias task (see the module docstring), split and marked with ``seed``."""
    digits = load_digits()
    pixels = (digits.images / 16.0).astype(np.float32)
    y_all = (digits.target >= 5).astype(np.int64)
    split = split or DIGITS_SPLIT
    rng = np.random.default_rng(seed)
    transform = Upsample(image_size)
    splits = {}
    for name, rows in split_indices(len(y_all), split, seed).items():
        y = y_all[rows]
        s = correlated_groups(y, source_agreement if name == "source" else task_agreement, rng)
        images = torch.from_numpy(with_patch(pixels[rows], s))[:, None]
        splits[name] = Split(PixelImages(images, transform), y, s)
    return Task(
        name="digits-bias", **splits, group_names=("no_patch", "patch"), label_name="digit>=5", sensitive_name="patch",
        fingerprint=task_fingerprint("digits-bias", split.model_dump(), seed, image_size, source_agreement, task_agreement),
    )
