"""The registry of fine-tuning methods, by name."""

from __future__ import annotations

from ..errors import ConfigError
from .base import FineTuningMethod, FittedHead, TransferLearning
from .lowrank import PlainSVD, WeightImportanceNeutralization

METHODS: dict[str, type[FineTuningMethod]] = {
    cls.name: cls for cls in (TransferLearning, PlainSVD, WeightImportanceNeutralization)
}


def get_method(name: str) -> FineTuningMethod:
    try:
        return METHODS[name]()
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(METHODS)}") from None


__all__ = ["METHODS", "get_method", "FineTuningMethod", "FittedHead"]
