"""Model selection under a fairness target (item 3 of issue 12).

Among the candidates' validation metrics keep the one with the lowest Err that meets the
target (``gap ≤ ε`` measured on validation); if none meets it, keep the one closest to it
(the smallest gap, then the lowest Err) and say so: ``met`` is False, never a silent pick.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import ConfigError
from .targets import FairnessTarget

NO_CANDIDATES = "selection under a fairness target needs at least one candidate"
MISSING_METRIC = "candidate {index} has no {metric!r} (has: {keys})"


def select_under_target(candidates: Sequence[Mapping[str, float]], target: FairnessTarget) -> tuple[int, bool]:
    """``(index, met)``: the lowest-``err`` candidate with ``candidate[target.metric] ≤ ε``, ``met=True``;
    if there is none, the candidate with the smallest gap (ties: lowest ``err``), ``met=False``.

    ``candidates``: validation metrics as :func:`fairtune.metrics.evaluate` returns them. Ties
    keep the earlier candidate.
    """
    if not candidates:
        raise ConfigError(NO_CANDIDATES)
    for index, metrics in enumerate(candidates):
        for key in ("err", target.metric):
            if key not in metrics:
                raise ConfigError(MISSING_METRIC.format(index=index, metric=key, keys=", ".join(metrics)))
    meeting = [i for i, m in enumerate(candidates) if m[target.metric] <= target.tolerance]
    if meeting:
        return min(meeting, key=lambda i: (candidates[i]["err"], i)), True
    return min(range(len(candidates)), key=lambda i: (candidates[i][target.metric], candidates[i]["err"], i)), False
