"""Weighted SVD (Eq. 4) and the layer surgery that puts its factors into a model."""

from .surgery import (
    FactorizedLinear, count_parameters, factorize_linear_, find_linear, freeze_all_but_,
    linear_layer_names, replace_module_,
)
from .wsvd import LowRankFactors, check_rank, max_rank, weighted_error, weighted_svd

__all__ = [
    "LowRankFactors", "weighted_svd", "weighted_error", "check_rank", "max_rank",
    "FactorizedLinear", "factorize_linear_", "find_linear", "replace_module_",
    "freeze_all_but_", "count_parameters", "linear_layer_names",
]
