"""Pre-train the MLP on a task's source split, cached on disk by configuration and seed."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from ..config import PretrainConfig
from ..data._types import Task
from ..errors import ModelError
from ..training import Penalty, TrainingData, train_classifier
from .checkpoint import default_cache_dir, load_weights_, save_weights
from .mlp import MLP

logger = logging.getLogger(__name__)
_FORMAT = 1  # bump when the pre-training code changes what a cached model holds


def pretrain_key(task: Task, config: PretrainConfig, seed: int, extra: dict[str, object] | None = None) -> str:
    """Hash of everything the pre-trained weights depend on."""
    payload = json.dumps(
        {"task": task.fingerprint, "config": config.model_dump(), "seed": seed, "extra": extra or {}, "format": _FORMAT},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def pretrained_mlp(
    task: Task,
    config: PretrainConfig | None = None,
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    penalty: Penalty | None = None,
    penalty_id: dict[str, object] | None = None,
    progress: bool = False,
) -> MLP:
    """The MLP trained on ``task.source`` (reused from the cache when present).

    A cached file that cannot be loaded (corrupted, or written for another architecture) is
    logged and replaced by pre-training again; explicit checkpoints given by a user
    (:func:`~fairtune.models.checkpoint.load_weights_`) fail with :class:`ModelError` instead.

    ``penalty`` (with ``penalty_id`` naming it in the cache key) adds a term to the loss,
    e.g. a fairness regularizer for a fair pre-trained model.
    """
    config = config or PretrainConfig()
    if not isinstance(task.source.inputs, torch.Tensor):
        raise ModelError("the MLP is pre-trained on tabular (tensor) inputs only")
    torch.manual_seed(seed)
    model = MLP(task.source.inputs.shape[1], config.hidden)
    key = pretrain_key(task, config, seed, penalty_id)
    path = Path(cache_dir or default_cache_dir()) / "models" / f"mlp-{key}.safetensors"
    if path.is_file():
        logger.info("reusing pre-trained model %s", path)
        try:
            return load_weights_(model, path).eval()
        except ModelError as exc:  # a cache entry is derived data: rebuild it (same seed, same result), don't fail
            logger.warning("%s; pre-training again and replacing it", exc)
            torch.manual_seed(seed)
            model = MLP(task.source.inputs.shape[1], config.hidden)
    train_classifier(
        model, TrainingData.from_arrays(task.source.inputs, task.source.y, task.source.s),
        epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, seed=seed,
        weight_decay=config.weight_decay, penalty=penalty, progress=progress, description="pre-training",
    )
    save_weights(model, path, {"task": task.name, "config": config.model_dump(), "seed": seed, "penalty": penalty_id})
    return model.eval()
