"""Pre-trained models: the tabular MLP, safe weight files, backbone features."""

from .checkpoint import default_cache_dir, load_weights_, save_weights
from .features import extract_features
from .mlp import MLP
from .pretraining import pretrained_mlp

__all__ = ["MLP", "pretrained_mlp", "extract_features", "load_weights_", "save_weights", "default_cache_dir"]
