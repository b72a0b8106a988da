"""One entry to the decision rules a fairness target can be met by after fine-tuning (:data:`~fairtune.catalogue.ThresholdRule`)."""

from __future__ import annotations

import numpy as np

from ..catalogue import ThresholdRule
from ..errors import ConfigError
from .proxy import ProxyThresholds, fit_proxy_thresholds
from .targets import FairnessTarget
from .thresholds import GroupThresholds, RandomizedThresholds, fit_group_thresholds, fit_randomized_thresholds, threshold_grid

DecisionRule = GroupThresholds | RandomizedThresholds | ProxyThresholds
NEEDS_INPUTS = "the 'proxy' rule infers the groups from the inputs: pass them (x)"


def fit_threshold_rule(
    scores: np.ndarray, y: np.ndarray, s: np.ndarray, target: FairnessTarget, rule: ThresholdRule, *, seed: int = 0,
    x: np.ndarray | None = None,
) -> DecisionRule:
    """The ``rule`` with the least Err meeting ``target`` on ``(scores, y, s)``: :func:`fit_group_thresholds`,
    :func:`fit_randomized_thresholds` (on :func:`threshold_grid` candidates per group) or, deciding by cells of
    the inputs ``x`` instead of ``s``, :func:`~fairtune.constraints.proxy.fit_proxy_thresholds`. Randomized rules
    draw their labels from ``seed``."""
    if rule == "proxy":
        if x is None:
            raise ConfigError(NEEDS_INPUTS)
        return fit_proxy_thresholds(scores, x, y, s, target, seed=seed)
    grid = threshold_grid(int(np.max(s)) + 1)
    if rule == "randomized":
        return fit_randomized_thresholds(scores, y, s, target, grid=grid, seed=seed)
    return fit_group_thresholds(scores, y, s, target, grid=grid)


def predict_with_rule(rule: DecisionRule, scores: np.ndarray, s: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
    """Labels of a fitted rule: from the scores and the groups ``s``, or the inputs ``x`` for a :class:`ProxyThresholds`."""
    if isinstance(rule, ProxyThresholds):
        if x is None:
            raise ConfigError(NEEDS_INPUTS)
        return rule.predict(scores, x)
    return rule.predict(scores, s)
