"""fairtune: fair and efficient fine-tuning of pre-trained models.

Implements weight importance neutralization (WIN) from Zhang & Zhou, "Bias Mitigation in
Fine-tuning Pre-trained Models for Enhanced Fairness and Efficiency" (arXiv 2403.00625),
with its baselines (TL, f+SVD, Retrain+EO/DP, fair pre-training), data sets and metrics.

The public names are imported on first use (PEP 562), so that ``fairtune --help`` and
``import fairtune.metrics`` do not pay for torch, torchvision and fairlearn.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "FairFineTuner": "finetune", "compare": "finetune", "FairtuneError": "errors",
    "delta_dp": "metrics", "delta_eo": "metrics", "err": "metrics", "evaluate": "metrics",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'fairtune' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
