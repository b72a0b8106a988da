"""Experiments: the methods x seeds comparison with validation-based selection."""

from .fair_pretraining import fair_pretraining_study, summarize_fair_pretraining
from .run import RunConfig, RunResult, compare_on_features, run, run_metadata, split_features, summarize

__all__ = ["RunConfig", "RunResult", "run", "compare_on_features", "split_features", "summarize", "run_metadata",
           "fair_pretraining_study", "summarize_fair_pretraining"]
