"""Fairness the user can set: a target ``gap ≤ ε``, and the ways to meet it.

- :class:`FairnessTarget`: the constraint (eo, dp), the tolerance ε and how it is made to hold on new data;
- :func:`fit_group_thresholds`: per-group thresholds with the least Err that meet it (post-processing);
  :func:`fit_randomized_thresholds`: randomized per-group rules (mixtures of thresholds), only if asked for;
  :func:`fit_proxy_thresholds`: randomized rules per cell of the groups inferred from the inputs, which
  need no sensitive attribute at prediction time; :func:`fit_threshold_rule`: any of them by name;
- :func:`train_constrained`: cross-entropy subject to the target, by Lagrange multipliers (in-processing);
- :func:`select_under_target`: the candidate with the lowest validation Err among those that meet it.
"""

from __future__ import annotations

from .lagrangian import train_constrained
from .selection import select_under_target
from .targets import FairnessTarget
from .proxy import InferredGroups, ProxyThresholds, fit_inferred_groups, fit_proxy_thresholds
from .rules import DecisionRule, fit_threshold_rule, predict_with_rule
from .thresholds import GroupThresholds, RandomizedThresholds, fit_group_thresholds, fit_randomized_thresholds

__all__ = [
    "DecisionRule", "FairnessTarget", "GroupThresholds", "InferredGroups", "ProxyThresholds", "RandomizedThresholds",
    "fit_group_thresholds", "fit_inferred_groups", "fit_proxy_thresholds", "fit_randomized_thresholds", "fit_threshold_rule",
    "predict_with_rule", "select_under_target", "train_constrained",
]
