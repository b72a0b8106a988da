"""Safe weight files: safetensors, or ``torch.load(weights_only=True)`` for ``.pt``/``.pth``."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .. import errors
from .._io import atomic_path
from ..errors import ModelError


def default_cache_dir() -> Path:
    """``$FAIRTUNE_CACHE``, else ``~/.cache/fairtune``."""
    return Path(os.environ.get("FAIRTUNE_CACHE") or Path.home() / ".cache" / "fairtune")


def save_weights(module: nn.Module, path: str | os.PathLike[str], metadata: dict[str, object] | None = None) -> None:
    """Write ``module.state_dict()`` as safetensors, atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"fairtune": json.dumps(metadata or {}, default=str)})


def load_weights_(module: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a safetensors or PyTorch weight file into ``module`` (strictly), in place."""
    weights = Path(path)
    if not weights.is_file():
        raise ModelError(errors.MISSING_FILE.format(path=weights))
    try:
        if weights.suffix == ".safetensors":
            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
    except pickle.UnpicklingError as exc:  # weights_only refused a pickled object (code), e.g. torch.save(model)
        raise ModelError(errors.NOT_A_STATE_DICT.format(path=weights)) from exc
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ModelError(f"cannot read weights {weights}: corrupted or not a weight file ({str(exc).splitlines()[0][:120]})") from exc
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ModelError(f"weights {weights} do not match the model: {str(exc).splitlines()[0][:160]}") from exc
    return module
