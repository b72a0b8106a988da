"""`fairtune study tradeoff` (issue 12): every method at every ε on a small task, the summary, front and verdict."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from fairtune.cli import app
from fairtune.errors import ConfigError
from fairtune.experiments.tradeoff import WITH_S, WITHOUT_S, TradeoffConfig, front, plan, summary, verdict

pytest.importorskip("error_parity")
pytest.importorskip("fairret")


def test_the_study_runs_every_method_at_every_tolerance_and_writes_its_report(write_csv, tmp_path) -> None:
    args = ["study", "tradeoff", "--dataset", "csv", "--csv", str(write_csv(n_rows=900)), "--target", "label",
            "--sensitive", "group", "--positive", "yes", "--seeds", "2", "--tolerances", "0.05,0.2", "--lrs", "0.05",
            "--epochs", "2", "--operators", "mean", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    rows = pd.read_csv(out / "tradeoff.csv")
    assert set(rows["tolerance"]) == {0.05, 0.2} and set(rows["seed"]) == {0, 1}
    settings = dict(zip(rows["method"], rows["setting"]))
    assert settings["tl-eo:0.05"] == WITHOUT_S and settings["tl-eo-thr:0.05"] == WITH_S
    assert settings["fairlearn-to-eo"] == WITH_S and settings["errorparity-eo:0.2"] == WITH_S and settings["tl"] == WITHOUT_S
    assert (rows["target_met"] == (rows["delta_eo"] <= rows["tolerance"])).all()
    # methods without ε run once per seed and are judged against every ε
    tl = rows[rows["method"] == "tl"]
    assert len(tl) == 4 and tl.groupby("seed")["err"].nunique().eq(1).all()
    markdown = (out / "tradeoff.md").read_text()
    assert "### ε = 0.05" in markdown and "### ε = 0.2" in markdown and markdown.count("](tradeoff_") == 2
    assert (out / "tradeoff_0.05.png").stat().st_size > 0
    assert json.loads((out / "tradeoff_config.json").read_text())["tolerances"] == [0.05, 0.2]
    units = sorted((out / "units").glob("*.json"))
    again = CliRunner().invoke(app, args)  # resumes: nothing recomputed
    assert again.exit_code == 0 and sorted((out / "units").glob("*.json")) == units


def test_the_study_in_two_processes_gives_the_rows_of_one(write_csv, tmp_path) -> None:
    common = ["study", "tradeoff", "--dataset", "csv", "--csv", str(write_csv(n_rows=600)), "--target", "label",
              "--sensitive", "group", "--positive", "yes", "--seeds", "2", "--tolerances", "0.1", "--lrs", "0.05",
              "--epochs", "2", "--methods", "tl,tl-{c}:{e},tl-{c}-rthr:{e},fairlearn-to-{c}",
              "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    for name, processes in (("one", "1"), ("two", "2")):
        result = CliRunner().invoke(app, [*common, "--out", str(tmp_path / name), "--processes", processes])
        assert result.exit_code == 0, result.output
    one, two = (pd.read_csv(tmp_path / name / "tradeoff.csv").drop(columns="fit_seconds") for name in ("one", "two"))
    pd.testing.assert_frame_equal(one, two)


def test_plan_runs_a_method_without_tolerance_once_per_seed() -> None:
    config = TradeoffConfig.model_validate({"run": {"seeds": (0, 1)}, "tolerances": (0.05, 0.1)})
    methods = [unit.method for unit in plan(config) if unit.seed == 0]
    assert methods.count("tl") == 1 and methods.count("pretrained") == 1
    assert "tl-eo:0.05" in methods and "tl-eo:0.1" in methods and "fairlearn-to-eo" in methods


@pytest.mark.parametrize(("tolerances", "message"), [((), "at least one tolerance"), ((0.0,), r"must be a number in \(0, 2\)")])
def test_bad_tolerances_are_config_errors(tolerances, message) -> None:
    with pytest.raises(ConfigError, match=message):
        TradeoffConfig.model_validate({"tolerances": tolerances})


def _rows(spec: str, setting: str, errs: list[float], gaps: list[float]) -> list[dict]:
    return [{"method": spec, "setting": setting, "seed": seed, "tolerance": 0.05, "err": err, "delta_eo": gap,
             "delta_dp": 0.0, "trainable_params": 1, "target_met": gap <= 0.05} for seed, (err, gap) in enumerate(zip(errs, gaps))]


def test_front_and_verdict_follow_their_definition() -> None:
    config = TradeoffConfig()
    rows = pd.DataFrame(
        _rows("tl-eo:0.05", WITHOUT_S, [16.0, 16.2], [0.04, 0.05]) + _rows("fairlearn-eg-eo", WITHOUT_S, [17.5, 17.3], [0.03, 0.04])
        + _rows("tl", WITHOUT_S, [15.0, 15.2], [0.15, 0.16]) + _rows("tl-eo-thr:0.05", WITH_S, [18.0, 18.0], [0.06, 0.07])
        + _rows("fairlearn-to-eo", WITH_S, [17.0, 17.2], [0.03, 0.02])
    )
    table = summary(rows, config, 0.05)
    assert set(front(table)["method"]) == {"tl-eo:0.05", "fairlearn-eg-eo", "tl", "fairlearn-to-eo"}
    lines = verdict(table, config, 0.05)
    assert "TL (ΔEO≤0.05) meets mean test ΔEO 0.045 ≤ ε at Err 16.10 %" in lines[0]
    assert "both meet ε; fairtune's method beats the peer (+1.30 Err points" in lines[0]
    assert "no fairtune method met mean test ΔEO ≤ ε" in lines[1] and "target not met" in lines[1]
