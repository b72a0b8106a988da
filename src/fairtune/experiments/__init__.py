"""Experiments: one engine of units (method x seed x data x settings) and its configurations.

``run``, ``sweep``, ``reproduce`` and ``study`` are lists of :class:`Unit` computed by
:func:`execute`; :mod:`.outputs` defines the run folder they write.
"""

from .engine import Environment, Unit, UnitResult, compare_on_features, data_seed, execute, split_features
from .fair_pretraining import fair_pretraining_study, summarize_fair_pretraining
from .outputs import RunResult, run_metadata, summarize, write_run
from .run import RunConfig, run
from .scheduling import DaskExecutor, ProcessExecutor, SerialExecutor, choose_executor

__all__ = [
    # the engine
    "Unit", "UnitResult", "Environment", "execute", "data_seed", "compare_on_features", "split_features",
    "SerialExecutor", "ProcessExecutor", "DaskExecutor", "choose_executor",
    # fairtune run and its run folder
    "RunConfig", "RunResult", "run", "summarize", "run_metadata", "write_run",
    # the paper's fair pre-training (Table 2)
    "fair_pretraining_study", "summarize_fair_pretraining",
]
