"""fairtune: fair and efficient fine-tuning of pre-trained models.

Implements weight importance neutralization (WIN) from Zhang & Zhou, "Bias Mitigation in
Fine-tuning Pre-trained Models for Enhanced Fairness and Efficiency" (arXiv 2403.00625),
with its baselines (TL, f+SVD), data sets and metrics.
"""

__version__ = "0.1.0"

from .errors import FairtuneError  # noqa: E402
from .finetune import FairFineTuner, compare  # noqa: E402
from .metrics import delta_dp, delta_eo, err, evaluate  # noqa: E402

__all__ = ["__version__", "FairFineTuner", "compare", "FairtuneError", "delta_dp", "delta_eo", "err", "evaluate"]
