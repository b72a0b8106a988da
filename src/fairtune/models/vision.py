"""Pre-trained image classifiers: ResNet-18 (or any torchvision classifier with a linear head).

The model is built with ``weights=None`` (fairtune never downloads) and its last
``nn.Linear`` is replaced by ``nn.Linear(in_features, 2)``. Its weights come either

* from a local file (``weights=PATH``, safetensors or a PyTorch state dict, loaded safely by
  :func:`~fairtune.models.checkpoint.load_weights_`): a file for the two-class model is used
  as is; a file for the architecture's standard head (e.g. torchvision's ImageNet
  checkpoint ``resnet18-f37072fd.pth``) gives the backbone, and the new two-class head is
  trained on the task's source split (on cached backbone features); or
* from pre-training on the task's disjoint source split, cached on disk like the MLP
  (:func:`~fairtune.models.pretraining.pretrain_key`).
"""

from __future__ import annotations

import copy
import logging
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..config import PretrainConfig
from ..data._types import Split, Task
from ..errors import ModelError
from ..factorization import find_linear, replace_module_
from ..training import Penalty, TrainingData, train_classifier
from .checkpoint import default_cache_dir, load_weights_, save_weights
from .feature_cache import cached_features
from .pretraining import pretrain_key

logger = logging.getLogger(__name__)

#: fairtune's own architecture for small images on a CPU (see :class:`SmallCNN`).
SMALL_CNN = "small_cnn"
UNKNOWN_ARCH = "unknown architecture {arch!r}; use small_cnn or a torchvision classification model ({examples}, ...)"


class SmallCNN(nn.Sequential):
    r"""Three 3x3 conv blocks (conv -> batch norm -> ReLU, max-pooling after the first two),
    global average pooling, then the linear head ``fc``: like ResNet's, ``(N, 4w) -> (N, n_classes)``.

    A CPU-friendly stand-in for ResNet-18 on tiny images (the digits benchmark).

    Shape: ``(N, 3, H, W) -> (N, n_classes)``.
    """

    def __init__(self, n_classes: int = 2, width: int = 32) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = 3
        for i, out in enumerate((width, 2 * width, 4 * width), start=1):
            layers[f"conv{i}"] = nn.Conv2d(channels, out, 3, padding=1, bias=False)
            layers[f"bn{i}"] = nn.BatchNorm2d(out)
            layers[f"relu{i}"] = nn.ReLU()
            if i < 3:
                layers[f"pool{i}"] = nn.MaxPool2d(2)
            channels = out
        layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(channels, n_classes)
        super().__init__(layers)


def _torchvision_model(arch: str, **kwargs: object) -> nn.Module:
    import torchvision  # imported on use: a tabular run does not load it

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ModelError(UNKNOWN_ARCH.format(arch=arch, examples="resnet18, resnet34, mobilenet_v3_small, efficientnet_b0"))
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def with_new_head_(model: nn.Module, n_classes: int = 2) -> nn.Module:
    """Replace the last ``nn.Linear`` of ``model`` by a fresh ``nn.Linear(in_features, n_classes)``, in place."""
    name, head = find_linear(model)
    replace_module_(model, name, nn.Linear(head.in_features, n_classes))
    return model


def vision_model(arch: str = "resnet18", n_classes: int = 2) -> nn.Module:
    """An untrained ``arch`` (``small_cnn`` or a torchvision classifier) with an ``nn.Linear(·, n_classes)`` head."""
    if arch == SMALL_CNN:
        return SmallCNN(n_classes)
    return with_new_head_(_torchvision_model(arch), n_classes)


class LabelledSplit(Dataset):
    """``(inputs[i], y[i], s[i])`` for training on a split whose inputs are a Dataset."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        return self.split.inputs[index], int(self.split.y[index]), int(self.split.s[index])


def train_on_images(
    model: nn.Module,
    split: Split,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.0,
    penalty: Penalty | None = None,
    workers: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Train all of ``model`` on a split of images streamed from a DataLoader, in place.

    :func:`~fairtune.training.train_classifier` (cross-entropy plus an optional penalty, Adam)
    on batches read one by one instead of held in memory. Seeded shuffling; a last batch of
    a single image is dropped (batch norm cannot train on it). Torch's thread setting is left
    as it is (convolutions gain from threads).
    """
    loader = DataLoader(
        LabelledSplit(split), batch_size=batch_size, shuffle=True, num_workers=workers,
        drop_last=len(split) % batch_size == 1, generator=torch.Generator().manual_seed(seed),
    )
    train_classifier(model, loader, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, weight_decay=weight_decay,
                     penalty=penalty, progress=progress, description="pre-training", threads=None)
    return model.eval()


def _load_backbone_weights(model: nn.Module, arch: str, weights: str | os.PathLike[str]) -> bool:
    """Load ``weights`` into ``model``; return True if the head came from the file too.

    A file for the two-class model is loaded strictly; otherwise the file must fit the
    architecture with its standard head, whose backbone is then copied into ``model``.
    """
    try:
        load_weights_(model, weights)
        return True
    except ModelError as two_class_error:
        if arch == SMALL_CNN:
            raise
        standard = _torchvision_model(arch)
        try:
            load_weights_(standard, weights)
        except ModelError:
            raise two_class_error from None
    head_name, _ = find_linear(model)
    backbone = {k: v for k, v in standard.state_dict().items() if not k.startswith(f"{head_name}.")}
    model.load_state_dict(backbone, strict=False)
    return False


def pretrained_vision(
    task: Task,
    config: PretrainConfig | None = None,
    *,
    arch: str = "resnet18",
    weights: str | os.PathLike[str] | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    penalty: Penalty | None = None,
    penalty_id: dict[str, object] | None = None,
    workers: int = 0,
    progress: bool = False,
) -> nn.Module:
    """The image classifier for ``task``, in eval mode, its head an ``nn.Linear(·, 2)``.

    With ``weights``: loaded from the file (a backbone-only match trains the new head for
    ``config.epochs`` on the source split's cached features). Without: ``arch`` trained from
    scratch on ``task.source`` with ``config`` (epochs, lr, batch size, weight decay) and the
    optional ``penalty``, cached under ``cache_dir/models`` by task, configuration and seed.
    """
    config = config or PretrainConfig()
    if isinstance(task.source.inputs, Tensor):
        raise ModelError("vision models need image inputs (a Dataset); this task has tabular tensors")
    torch.manual_seed(seed)
    model = vision_model(arch)
    cache = Path(cache_dir or default_cache_dir())
    if weights is not None:
        if not _load_backbone_weights(model, arch, weights):
            _train_head_on_source(model, task, config, seed=seed, cache_dir=cache, penalty=penalty, workers=workers, progress=progress)
        return model.eval()
    key = pretrain_key(task, config, seed, {"arch": arch, "penalty": penalty_id})
    path = cache / "models" / f"{arch}-{key}.safetensors"
    if path.is_file():
        logger.info("reusing pre-trained model %s", path)
        try:
            return load_weights_(model, path).eval()
        except ModelError as exc:  # a cache entry is derived data: rebuild it (same seed, same result), don't fail
            logger.warning("%s; pre-training again and replacing it", exc)
            torch.manual_seed(seed)
            model = vision_model(arch)
    train_on_images(
        model, task.source, epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, seed=seed,
        weight_decay=config.weight_decay, penalty=penalty, workers=workers, progress=progress,
    )
    save_weights(model, path, {"task": task.name, "arch": arch, "config": config.model_dump(), "seed": seed, "penalty": penalty_id})
    return model.eval()


def _train_head_on_source(
    model: nn.Module, task: Task, config: PretrainConfig, *, seed: int, cache_dir: Path,
    penalty: Penalty | None, workers: int, progress: bool,
) -> None:
    """Fit a new two-class head on the source split's (cached) backbone features, in place."""
    _, head = find_linear(model)
    features = cached_features(model, head, task.source.inputs, cache_dir=cache_dir, workers=workers, progress=progress, description="features (source)")
    trainable = copy.deepcopy(head).requires_grad_(True)
    train_classifier(
        trainable, TrainingData.from_arrays(features, np.asarray(task.source.y), np.asarray(task.source.s)),
        epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, seed=seed,
        weight_decay=config.weight_decay, penalty=penalty, description="training the head",
    )
    head.load_state_dict(trainable.state_dict())


#: Data sets whose default model is not ResNet-18 (ResNet-18 trains too slowly on a CPU for them).
DEFAULT_ARCHS: dict[str, str] = {"digits-bias": SMALL_CNN}


def default_arch(task_name: str) -> str:
    """The model a data set uses unless ``arch`` is given: ResNet-18 (the paper's), or :data:`DEFAULT_ARCHS`."""
    return DEFAULT_ARCHS.get(task_name, "resnet18")
