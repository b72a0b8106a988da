"""The run folder: what a run writes, the same for the CLI and a Python caller.

- ``results.csv``: one row per method and seed: ``method, seed, err, delta_dp, delta_eo,
  trainable_params, fit_seconds`` (``pretrained`` = the model before fine-tuning; with a fairness
  target also ``target_met``);
- ``summary.csv``, ``summary.md``: mean and std over seeds per method;
- ``selections.json``: the settings chosen on validation per method and seed, with their
  validation metrics (and, with a target, the gaps reached and whether each met it);
- ``config.json``: every setting, the versions of fairtune and torch, torch's CPU capability,
  the code -> name map of the sensitive groups (``groups``), the command, the wall time and the
  seconds per stage: enough to rerun;
- ``predictions.csv`` (if kept): ``method, seed, y_true, y_pred, sensitive, group`` on the test
  split (``sensitive``: the group's code; ``group``: its name in the data).

Each file is written atomically (complete or absent).
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import BaseModel

from .. import __version__
from .._io import write_csv, write_json, write_text
from ..report.tables import summarize_by, summary_table, to_markdown


@dataclass
class RunResult:
    """Per (method, seed): test metrics; the settings chosen on validation; optional predictions."""

    results: pd.DataFrame
    selections: list[dict[str, Any]] = field(default_factory=list)
    predictions: pd.DataFrame | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    group_names: tuple[str, ...] = ()


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of each metric, one row per method (in run order)."""
    return summarize_by(results, ["method"])


def run_metadata(config: BaseModel) -> dict[str, Any]:
    """The settings and the software and processor they ran on (results are bit-identical only on the same)."""
    return {
        "fairtune_version": __version__, "torch_version": torch.__version__, "python_version": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "config": config.model_dump(mode="json"),
    }


def write_run(result: RunResult, config: BaseModel, directory: str | Path, *, wall_seconds: float,
              command: list[str] | None = None) -> list[str]:
    """Write the run folder's files into ``directory``; return their names."""
    out = Path(directory)
    summary = summarize(result.results)
    write_csv(result.results, out / "results.csv")
    write_csv(summary, out / "summary.csv")
    write_text(to_markdown(summary_table(summary)), out / "summary.md")
    write_json(result.selections, out / "selections.json")
    names = ["results.csv", "summary.csv", "summary.md", "selections.json"]
    if result.predictions is not None:
        write_csv(result.predictions, out / "predictions.csv")
        names.append("predictions.csv")
    groups = {str(code): name for code, name in enumerate(result.group_names)}
    write_json({**run_metadata(config), "groups": groups, "command": command if command is not None else sys.argv,
                "wall_seconds": round(wall_seconds, 2), "stage_seconds": result.stage_seconds}, out / "config.json")
    return [*names, "config.json"]
