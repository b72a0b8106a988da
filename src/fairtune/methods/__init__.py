"""Fine-tuning methods, built from their catalogue entry (:mod:`fairtune.catalogue`).

:func:`build_method` turns a spec (``name[:value]``) into a :class:`HeadMethod` (trains a
replacement of the target layer on cached features) or a :class:`ModelMethod` (trains part of
the whole model on its inputs).
"""

from __future__ import annotations

from ..catalogue import MethodSpec
from ..config import FinetuneGrid
from .base import Fitted, FittedHead, HeadMethod, Method, ModelMethod, params_record
from .peers import FittedPeer


def build_method(spec: str | MethodSpec, grid: FinetuneGrid | None = None) -> Method:
    """The method named by ``spec``, a fresh instance (``grid`` decides e.g. Retrain's scope)."""
    parsed = spec if isinstance(spec, MethodSpec) else MethodSpec.parse(spec)
    return parsed.info.load()(parsed, grid or FinetuneGrid())


__all__ = ["Fitted", "FittedHead", "FittedPeer", "HeadMethod", "Method", "ModelMethod", "build_method", "params_record"]
