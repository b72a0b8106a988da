"""The trade-off study's functions (issue 12): every method on small generated features, summary, front, verdict."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from fairtune.config import FinetuneGrid
from fairtune.constraints import FairnessTarget
from fairtune.errors import ConfigError
from fairtune.experiments.tradeoff import PEERS, WITH_S, WITHOUT_S, front, plan, run_on_features, summary, verdict

from test_constraints import biased_task

pytest.importorskip("cooper")


def test_every_method_runs_on_features_and_is_reported_with_its_setting():
    features = {"train": biased_task(n=900, seed=1), "val": biased_task(n=500, seed=2), "test": biased_task(n=500, seed=3)}
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    target = FairnessTarget("eo", 0.1)
    grid = FinetuneGrid(lrs=(0.05,), epochs=(3, 6))
    rows = pd.DataFrame(run_on_features(layer, features, target, methods=("tl", "tl+thr", "lagrange", "to"), grid=grid, seed=0))
    assert dict(zip(rows["method"], rows["setting"])) == {
        "TL": WITHOUT_S, "TL + thresholds": WITH_S, "TL + thresholds (sample)": WITH_S,
        "TL constrained (Lagrangian)": WITHOUT_S, "TL constrained (Lagrangian), selected on train+val": WITHOUT_S,
        "fairlearn ThresholdOptimizer": WITH_S,
    }
    by_method = rows.set_index("method")
    assert by_method.loc["TL", "delta_eo"] > 0.2  # the task is unfair without a target
    assert by_method.loc["TL constrained (Lagrangian)", "delta_eo"] < by_method.loc["TL", "delta_eo"]
    assert by_method.loc["TL + thresholds", "delta_eo"] < by_method.loc["TL", "delta_eo"]
    with pytest.raises(ConfigError, match="unknown trade-off method"):
        run_on_features(layer, features, target, methods=("tl", "magic"), grid=grid, seed=0)


def test_plan_checks_every_tolerance_before_any_work():
    assert [(t.tolerance, seed) for t, seed in plan("eo", (0.02, 0.1), (0, 1))] == [(0.02, 0), (0.02, 1), (0.1, 0), (0.1, 1)]
    with pytest.raises(ConfigError):
        plan("eo", (0.05, 2.0), (0,))


def table_rows() -> pd.DataFrame:
    rows = []
    for seed, noise in enumerate((-0.01, 0.01)):
        rows += [
            {"method": PEERS[WITH_S], "setting": WITH_S, "err": 17.1, "delta_eo": 0.03 + noise},
            {"method": "A", "setting": WITH_S, "err": 16.0, "delta_eo": 0.035 + noise},
            {"method": "B", "setting": WITH_S, "err": 16.5, "delta_eo": 0.065 + noise},
            {"method": PEERS[WITHOUT_S], "setting": WITHOUT_S, "err": 17.4, "delta_eo": 0.04 + noise},
            {"method": "C", "setting": WITHOUT_S, "err": 16.2, "delta_eo": 0.07 + noise},
        ]
        for row in rows[-5:]:
            row.update(seed=seed, tolerance=0.05, delta_dp=0.1, val_met=None, fit_seconds=1.0)
    return pd.DataFrame(rows)


def test_summary_front_and_verdict():
    target = FairnessTarget("eo", 0.05)
    table = summary(table_rows(), target).set_index("method")
    assert table.loc["A", "err"] == pytest.approx(16.0) and table.loc["A", "delta_eo"] == pytest.approx(0.035)
    assert table.loc["A", "test_met"] == "2/2" and table.loc["B", "test_met"] == "0/2" and table.loc["A", "val_met"] == "-"
    table = table.reset_index()
    assert set(front(table)["method"]) == {PEERS[WITH_S], "A", PEERS[WITHOUT_S], "C"}  # B is beaten by A on both
    lines = verdict(table, target, max_err=16.5)
    assert lines[0].startswith(f"{WITH_S}: A meets") and lines[0].endswith("goal met (Err <= 16.5 % and more than 0.5 point below the peer)")
    assert lines[1].startswith(f"{WITHOUT_S}: no method but the peer met") and lines[1].endswith("goal not met")
