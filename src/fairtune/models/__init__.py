"""Pre-trained models: the tabular MLP, image classifiers, safe weight files, (cached) backbone features."""

from .checkpoint import default_cache_dir, load_weights_, save_weights
from .feature_cache import cached_features, cached_split_features
from .features import extract_features
from .mlp import MLP
from .pretraining import pretrained_mlp
from .vision import SmallCNN, pretrained_vision, vision_model

__all__ = ["MLP", "pretrained_mlp", "extract_features", "load_weights_", "save_weights", "default_cache_dir",
           "vision_model", "pretrained_vision", "SmallCNN", "cached_features", "cached_split_features"]
