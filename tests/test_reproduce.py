"""`fairtune reproduce adult --quick` end to end: every file written, resumable, nothing recomputed twice."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fairtune.cli import app
from fairtune.errors import ConfigError
from fairtune.experiments.reproduce import UNKNOWN_STUDY, plan_tasks, plan_units, quick_config, study_config

TINY = ["reproduce", "adult", "--quick", "--seeds", "1", "--methods", "tl,svd,win", "--quiet"]
OUTPUTS = [
    "results.csv", "table3.csv", "table3.md", "table2.csv", "table2.md", "table2_results.csv", "ablation.csv",
    "ablation.md", "ablation_results.csv", "pareto_front.csv", "config.json", "report.md", "report.html",
    "figures/figure3_fisher.png", "figures/figure4_metrics.png", "figures/accuracy_fairness.png",
]


def invoke(args: list[str]):
    return CliRunner().invoke(app, args, env={"COLUMNS": "200"})


def unit_files(out: Path) -> dict[str, float]:
    return {path.name: path.stat().st_mtime_ns for path in (out / "units").glob("*.json")}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("reproduce")
    out, cache = root / "out", root / "cache"
    result = invoke([*TINY, "--out", str(out), "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    return out, cache, result.output


def test_plan_has_one_unit_per_method_setting_and_seed():
    config = quick_config(seeds=3)
    units = [unit for _, _, unit in plan_units(config)]
    per_seed = len(config.table3_methods()) + 1 + len(config.ablation_operators) * len(config.ablation_ranks)
    assert len(units) == 3 * per_seed
    # one key per distinct computation (the quick grid's ablation cell (mean, 1) is the win unit itself)
    assert len({unit.key for unit in units}) == len({(u.method, u.seed, u.finetune) for u in units}) == len(units) - 3
    tasks = plan_tasks(config)
    assert len(tasks) == 1 + 3 * len(config.constraints) * len(config.lambdas)  # Figure 3's Fisher + Table 2
    assert len({task.key for task in tasks}) == len(tasks)
    assert config.table3_methods()[:2] == ("retrain-eo:0.5", "retrain-dp:0.5")
    changed = config.model_copy(update={"finetune": config.finetune.model_copy(update={"lrs": (0.1,)})})
    assert not {u.key for study, _, u in plan_units(changed) if study == "table3"} & set(u.key for u in units)


def test_unknown_study_is_a_one_line_error():
    with pytest.raises(ConfigError, match="no reproduction for data set 'mnist'"):
        study_config("mnist")
    result = invoke(["reproduce", "mnist"])
    assert result.exit_code == ConfigError.exit_code
    assert result.output.strip() == "fairtune: error: " + UNKNOWN_STUDY.format(name="mnist")


def test_reproduce_writes_every_table_figure_and_report(reproduced):
    out, _, output = reproduced
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    results = pd.read_csv(out / "results.csv")
    assert list(dict.fromkeys(results["method"])) == ["pretrained", "retrain-eo:0.5", "retrain-dp:0.5", "tl", "svd", "win"]
    table3 = pd.read_csv(out / "table3.csv").set_index("method")
    assert table3.loc["pretrained", "paper_err"] == 16.165
    assert table3.loc["win", "err_mean"] == pytest.approx(results.loc[results["method"] == "win", "err"].mean())
    assert set(pd.read_csv(out / "table2.csv")["constraint"]) == {"eo", "dp"}
    assert set(pd.read_csv(out / "ablation.csv")["operator"]) == {"mean", "pooled"}
    report = (out / "report.md").read_text()
    for heading in ("## Table 3", "## Table 2", "## Ablation", "## Pareto front", "Paper (Figure 4)"):
        assert heading in report
    assert report.count("](figures/") == 3
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["seeds"] == [0] and config["units_computed"] == len(unit_files(out))
    assert config["cpu_capability"] and config["torch_version"]
    assert "units computed, 0 reused" in output


def test_a_second_invocation_recomputes_nothing(reproduced):
    out, cache, _ = reproduced
    before = unit_files(out)
    result = invoke([*TINY, "--out", str(out), "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    assert f"0 units computed, {len(before)} reused" in result.output
    assert unit_files(out) == before  # same files, none rewritten


def test_an_interrupted_run_resumes_with_the_missing_unit_only(reproduced):
    out, cache, _ = reproduced
    config = study_config("adult", quick=True, seeds=1, methods=("tl", "svd", "win"), cache_dir=str(cache))
    tl = next(u for study, _, u in plan_units(config) if study == "table3" and u.method == "tl")
    path = out / "units" / f"{tl.key}.json"
    row = json.loads(path.read_text())["row"]
    path.unlink()
    result = invoke([*TINY, "--out", str(out), "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    assert "1 units computed" in result.output
    again = json.loads(path.read_text())["row"]
    metrics = ("method", "seed", "err", "delta_dp", "delta_eo", "trainable_params")
    assert {k: again[k] for k in metrics} == {k: row[k] for k in metrics}  # seeded: the same result again


def test_two_processes_give_the_rows_of_one(reproduced, tmp_path):
    """Table 2's tasks and the units run in two processes, interleaved: the same rows as in this process."""
    out, _, _ = reproduced
    result = invoke([*TINY, "--out", str(tmp_path / "two"), "--cache-dir", str(tmp_path / "cache"), "--processes", "2"])
    assert result.exit_code == 0, result.output
    for name in ("results.csv", "table2_results.csv", "ablation_results.csv"):
        one, two = (pd.read_csv(folder / name) for folder in (out, tmp_path / "two"))
        pd.testing.assert_frame_equal(one.drop(columns="fit_seconds", errors="ignore"), two.drop(columns="fit_seconds", errors="ignore"))
    assert json.loads((tmp_path / "two" / "config.json").read_text())["units_computed"] == len(unit_files(out))
