"""The registry of fine-tuning methods, by name.

A method spec is a registered name, optionally with ``:value`` for the methods that take one:
``retrain-eo:0.1`` is Retrain+EO with λ = 0.1 (``retrain-eo`` alone: λ = 0.5);
``win-anchor:2`` anchors with strength μ = 2 (alone: μ = 1).
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import FineTuningMethod, Fitted, FittedHead, TransferLearning
from .deep import DEEP_VARIANTS
from .lowrank import PlainSVD, WeightImportanceNeutralization
from .peers import PEERS, FittedPeer
from .retrain import RetrainDP, RetrainEO

METHODS: dict[str, type[FineTuningMethod]] = {
    cls.name: cls for cls in (TransferLearning, PlainSVD, WeightImportanceNeutralization, RetrainEO, RetrainDP, *PEERS, *DEEP_VARIANTS)
}
UNKNOWN_METHOD = "unknown method {name!r}; available: {available} (retrain-* take an optional ':λ', *-anchor an optional ':μ')"
NO_INTENSITY = "method {name!r} takes no ':value' suffix (only retrain-* take ':λ' and *-anchor ':μ'), got {spec!r}"


def get_method(spec: str) -> FineTuningMethod:
    """The method named by ``spec`` (``name`` or ``name:value``), a fresh instance."""
    name, has_value, value = spec.partition(":")
    try:
        cls = METHODS[name]
    except KeyError:
        raise ConfigError(UNKNOWN_METHOD.format(name=spec, available=", ".join(METHODS))) from None
    if not has_value:
        return cls()
    if not cls.takes_value:
        raise ConfigError(NO_INTENSITY.format(name=name, spec=spec))
    return cls(value)


__all__ = ["METHODS", "FineTuningMethod", "Fitted", "FittedHead", "FittedPeer", "get_method"]
