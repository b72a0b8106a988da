"""Weight importance: per-group Fisher information (Eq. 1) and its neutralization (Eq. 2)."""

from .fisher import GroupFisher, feature_batches, group_fisher, inner_layer_fisher, squared_residuals
from .neutralize import OPERATORS, combine_groups, neutralized_fisher, normalize_groups, row_importance

__all__ = [
    "GroupFisher", "group_fisher", "inner_layer_fisher", "feature_batches", "squared_residuals",
    "OPERATORS", "normalize_groups", "combine_groups", "neutralized_fisher", "row_importance",
]
