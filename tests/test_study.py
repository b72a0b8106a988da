"""The neutralization study: end to end on a generated CSV, resume, and the dominance verdict."""

import pandas as pd
import pytest

from fairtune.experiments.study import StudyConfig, dominance, neutralization_study, verdict, write_study


@pytest.fixture
def tiny_study(write_csv, tmp_path):
    csv = write_csv(n_rows=900)
    return StudyConfig.model_validate({
        "run": {
            "data": {"dataset": "csv", "csv": str(csv), "target": "label", "sensitive": "group", "positive": "yes"},
            "pretrain": {"hidden": (8, 4), "epochs": 2},
            "finetune": {"lrs": (0.01,), "epochs": (2,), "operators": ("mean",), "rank_fractions": (1.0,)},
            "seeds": (0, 1), "cache_dir": str(tmp_path / "cache"),
        },
        "baselines": ("tl",), "variants": ("win", "win-hidden", "tl-anchor"), "sources": ("none", "base_rate"),
        "rank_sweep": (0.5,),
    })


def test_study_runs_writes_and_resumes(tiny_study, tmp_path):
    out = tmp_path / "study"
    results = neutralization_study(tiny_study, out, progress=False)
    methods = {"pretrained", "tl", "win", "win-hidden", "tl-anchor", "win-hidden@0.5", "svd-hidden@0.5"}
    assert set(results["method"]) == methods
    assert len(results) == 2 * 2 * len(methods)  # sources x seeds x methods
    units = sorted((out / "units").glob("*.json"))
    assert len(units) == 2 * 2 * len(methods)  # one unit per source, seed and method
    stamps = [u.stat().st_mtime_ns for u in units]
    again = neutralization_study(tiny_study, out, progress=False)
    assert [u.stat().st_mtime_ns for u in units] == stamps  # nothing recomputed
    pd.testing.assert_frame_equal(results, again)
    markdown = write_study(results, tiny_study, out)
    assert "Does any WIN variant reach a point no baseline dominates?" in markdown
    for name in ("study.md", "study.csv", "study_summary.csv", "dominance.csv", "pareto_none.png", "pareto_base_rate.png"):
        assert (out / name).stat().st_size > 0


def _summary(rows):
    return pd.DataFrame(rows, columns=["method", "err_mean", "err_std", "delta_eo_mean", "delta_eo_std"])


def test_dominance_definition():
    summary = _summary([
        ("tl", 15.0, 0.1, 0.20, 0.01),
        ("win", 15.0, 0.1, 0.10, 0.01),      # lower gap by 10 stds: clearly undominated
        ("win-all", 15.5, 0.1, 0.25, 0.01),  # worse on both: dominated by tl
        ("win-anchor", 14.99, 0.1, 0.199, 0.01),  # undominated in the means, margin < 1 std
    ])
    table = dominance(summary, "delta_eo").set_index("variant")
    assert table.loc["win", "clearly_undominated"] and table.loc["win", "dominated_by"] == ""
    assert table.loc["win-all", "dominated_by"] == "tl" and not table.loc["win-all", "clearly_undominated"]
    assert table.loc["win-anchor", "dominated_by"] == "" and not table.loc["win-anchor", "clearly_undominated"]
    table = table.reset_index()
    table.attrs.update(source="none", gap="delta_eo")
    assert "win reach(es) a point no baseline dominates" in verdict([table])
