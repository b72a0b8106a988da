"""The registry of fine-tuning methods, by name.

A method spec is a registered name, optionally with ``:λ`` for the fairness-regularized
methods: ``retrain-eo:0.1`` is Retrain+EO with λ = 0.1 (``retrain-eo`` alone: λ = 0.5).
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import FineTuningMethod, Fitted, FittedHead, TransferLearning
from .lowrank import PlainSVD, WeightImportanceNeutralization
from .peers import PEERS, FittedPeer
from .retrain import Retrain, RetrainDP, RetrainEO

METHODS: dict[str, type[FineTuningMethod]] = {
    cls.name: cls for cls in (TransferLearning, PlainSVD, WeightImportanceNeutralization, RetrainEO, RetrainDP, *PEERS)
}
UNKNOWN_METHOD = "unknown method {name!r}; available: {available} (retrain-eo/retrain-dp take an optional ':λ', e.g. retrain-eo:0.1)"
NO_INTENSITY = "method {name!r} takes no ':value' suffix (only retrain-eo and retrain-dp take ':λ'), got {spec!r}"


def get_method(spec: str) -> FineTuningMethod:
    """The method named by ``spec`` (``name`` or ``name:λ``), a fresh instance."""
    name, has_value, value = spec.partition(":")
    try:
        cls = METHODS[name]
    except KeyError:
        raise ConfigError(UNKNOWN_METHOD.format(name=spec, available=", ".join(METHODS))) from None
    if not has_value:
        return cls()
    if not issubclass(cls, Retrain):
        raise ConfigError(NO_INTENSITY.format(name=name, spec=spec))
    return cls(value)


__all__ = ["METHODS", "get_method", "FineTuningMethod", "Fitted", "FittedHead", "FittedPeer"]
