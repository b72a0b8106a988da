"""`fairtune run` end to end on a small generated CSV: output files, user errors, help, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from fairtune import __version__, errors
from fairtune.cli import app

METHODS = ["pretrained", "tl", "svd", "win"]
TINY_GRID = ["--seeds", "2", "--epochs", "2", "--lrs", "0.01", "--pretrain-epochs", "2", "--hidden", "8,4", "--quiet"]


def csv_args(csv: Path, *extra: str, target: str = "label") -> list[str]:
    return ["run", "--dataset", "csv", "--csv", str(csv), "--target", target, "--sensitive", "group", *extra]


def invoke(args: list[str]):
    return CliRunner().invoke(app, args, env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory) -> Path:
    from conftest import generated_frame

    path = tmp_path_factory.mktemp("data") / "data.csv"
    generated_frame(1500, seed=0).to_csv(path, index=False)
    return path


def good_run(csv: Path, root: Path, cache: Path | None = None):
    out, cache = root / "out", cache or root / "cache"
    result = invoke(csv_args(csv, "--positive", "yes", *TINY_GRID, "--cache-dir", str(cache), "--out", str(out), "--save-predictions"))
    assert result.exit_code == 0, result.output
    return out, result


@pytest.fixture(scope="module")
def finished_run(data_csv, tmp_path_factory):
    return good_run(data_csv, tmp_path_factory.mktemp("run1"))


def test_run_writes_results_for_every_method_and_seed(finished_run) -> None:
    out, result = finished_run
    results = pd.read_csv(out / "results.csv")
    assert {"method", "seed", "err", "delta_dp", "delta_eo", "trainable_params"} <= set(results.columns)
    assert sorted(zip(results["method"], results["seed"])) == sorted((m, s) for m in METHODS for s in (0, 1))
    assert results[["err", "delta_dp", "delta_eo"]].notna().all().all()
    assert results["err"].between(0, 100).all()
    assert results[["delta_dp", "delta_eo"]].ge(0).all().all()
    # the head is Linear(4, 2): TL trains 4*2+2 = 10; svd/win at r in {1, 2} train r*(4+2)+2 <= 14
    params = results.groupby("method")["trainable_params"].first()
    assert params["tl"] == params["pretrained"] == 10
    assert params["svd"] in (8, 14) and params["win"] in (8, 14)

    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["method"]) == METHODS
    assert (summary["seeds"] == 2).all()
    np.testing.assert_allclose(summary["err_mean"], results.groupby("method", sort=False)["err"].mean()[METHODS])

    config = json.loads((out / "config.json").read_text())
    assert config["fairtune_version"] == __version__
    assert config["config"]["finetune"]["lrs"] == [0.01]
    assert {"selections.json", "summary.md"} <= {p.name for p in out.iterdir()}
    assert "WIN" in result.stdout and "results.csv" in result.stdout


def test_run_saves_predictions_on_the_test_split(finished_run, data_csv) -> None:
    out, _ = finished_run
    predictions = pd.read_csv(out / "predictions.csv")
    assert list(predictions.columns) == ["method", "seed", "y_true", "y_pred", "sensitive", "group"]
    assert set(zip(predictions["sensitive"], predictions["group"])) == {(0, "a"), (1, "b")}  # the user's group names
    sizes = predictions.groupby(["method", "seed"]).size()
    assert len(sizes) == 8 and sizes.nunique() == 1
    assert set(predictions["y_pred"]) <= {0, 1} and set(predictions["sensitive"]) == {0, 1}
    # the metrics in results.csv are those of the saved predictions, computed with fairlearn
    from conftest import reference_metrics

    results = pd.read_csv(out / "results.csv").set_index(["method", "seed"])
    for (method, seed), rows in predictions.groupby(["method", "seed"]):
        metrics = reference_metrics(rows["y_true"], rows["y_pred"], rows["sensitive"])
        for name, value in metrics.items():
            assert results.loc[(method, seed), name] == pytest.approx(value)


def test_same_config_and_seed_give_identical_results(finished_run, data_csv, tmp_path) -> None:
    out, _ = finished_run
    again, _ = good_run(data_csv, tmp_path)  # fresh cache: pre-training is repeated too
    first = pd.read_csv(out / "results.csv").drop(columns="fit_seconds")
    second = pd.read_csv(again / "results.csv").drop(columns="fit_seconds")
    pd.testing.assert_frame_equal(first, second)
    pd.testing.assert_frame_equal(pd.read_csv(out / "predictions.csv"), pd.read_csv(again / "predictions.csv"))
    assert json.loads((out / "selections.json").read_text()) == json.loads((again / "selections.json").read_text())


def test_a_cached_pretrained_model_gives_the_same_results(finished_run, data_csv, tmp_path) -> None:
    out, _ = finished_run
    cache = out.parent / "cache"
    models = sorted((cache / "models").glob("mlp-*.safetensors"))
    assert len(models) == 2  # one pre-trained model per seed
    stamps = [m.stat().st_mtime_ns for m in models]
    again, _ = good_run(data_csv, tmp_path, cache=cache)
    assert [m.stat().st_mtime_ns for m in models] == stamps  # reused, not retrained
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "results.csv").drop(columns="fit_seconds"), pd.read_csv(again / "results.csv").drop(columns="fit_seconds"),
    )


def _assert_one_line_error(result, out: Path, expected: str | None = None) -> str:
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fairtune: error: ")
    assert "Traceback" not in result.output
    if expected is not None:
        assert lines[0] == f"fairtune: error: {expected}"
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    return lines[0]


def test_single_sensitive_group(write_csv, tmp_path) -> None:
    csv = write_csv(n_rows=300, groups=("a",))
    result = invoke(csv_args(csv, "--positive", "yes", *TINY_GRID, "--out", str(tmp_path / "out")))
    _assert_one_line_error(result, tmp_path / "out", errors.SINGLE_GROUP.format(name="group", group="a"))


def test_nan_features(write_csv, make_frame, tmp_path) -> None:
    frame = make_frame(300)
    frame.loc[[1, 2], "x3"] = np.nan
    result = invoke(csv_args(write_csv(frame), "--positive", "yes", *TINY_GRID, "--out", str(tmp_path / "out")))
    line = _assert_one_line_error(result, tmp_path / "out")
    assert "2 missing/NaN value(s) (columns: x3)" in line and "--drop-missing" in line


def test_non_binary_label(write_csv, make_frame, tmp_path) -> None:
    frame = make_frame(300)
    frame["label"] = np.arange(300) % 3
    result = invoke(csv_args(write_csv(frame), *TINY_GRID, "--out", str(tmp_path / "out")))
    _assert_one_line_error(result, tmp_path / "out", errors.NON_BINARY_LABELS.format(name="label", count=3, values="0, 1, 2"))


def test_missing_file(tmp_path) -> None:
    csv = tmp_path / "nosuch.csv"
    result = invoke(csv_args(csv, *TINY_GRID, "--out", str(tmp_path / "out")))
    _assert_one_line_error(result, tmp_path / "out", errors.MISSING_FILE.format(path=csv))


def test_missing_column(data_csv, tmp_path) -> None:
    result = invoke(csv_args(data_csv, "--positive", "yes", *TINY_GRID, "--out", str(tmp_path / "out"), target="income"))
    line = _assert_one_line_error(result, tmp_path / "out")
    assert "column 'income' not found" in line and "available: x1, x2, x3, color, group, label" in line


def test_no_such_layer(data_csv, tmp_path) -> None:
    args = csv_args(data_csv, "--positive", "yes", *TINY_GRID, "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    result = invoke([*args, "--layer", "nosuch"])
    _assert_one_line_error(result, tmp_path / "out", errors.NO_LINEAR_LAYER.format(name="nosuch", available="hidden1, hidden2, output"))


def test_rank_too_large_for_a_binary_head(data_csv, tmp_path) -> None:
    args = csv_args(data_csv, "--positive", "yes", *TINY_GRID, "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    result = invoke([*args, "--ranks", "3"])
    _assert_one_line_error(result, tmp_path / "out", errors.RANK_TOO_LARGE.format(rank=3, rows=4, cols=2, max_rank=2))


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--lrs", "fast"], "--lrs must be a comma-separated list of numbers"),
        (["--operators", "median"], "invalid value for 'finetune.operators.0'"),
        (["--methods", "nosuch"], "unknown method 'nosuch'"),
        (["--split", "a,b,c"], "--split needs three sizes TRAIN,VAL,TEST"),
        (["--epochs", "0"], "invalid value for 'finetune.epochs': epochs must be >= 1"),
        (["--lrs", "-1"], "invalid value for 'finetune.lrs': learning rates must be > 0 and finite"),
        (["--lrs", "0.01,nan"], "invalid value for 'finetune.lrs': learning rates must be > 0 and finite"),
        (["--hidden", "0"], "invalid value for 'pretrain.hidden': hidden widths must be >= 1"),
        (["--selection", "accuracy"], "invalid value for 'finetune.selection'"),
        (["--methods", ","], "invalid value for 'methods': Tuple should have at least 1 item"),
    ],
)
def test_bad_settings(data_csv, tmp_path, flags, fragment) -> None:
    args = csv_args(data_csv, "--positive", "yes", *TINY_GRID, "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    line = _assert_one_line_error(invoke([*args, *flags]), tmp_path / "out")
    assert fragment in line


def _flags(command) -> set[str]:
    return {opt for param in command.params for opt in param.opts + param.secondary_opts if opt.startswith("-")}


def test_help_mentions_every_flag() -> None:
    group = typer.main.get_command(app)
    top = invoke(["--help"])
    assert top.exit_code == 0
    for flag in _flags(group) | {"run"}:
        assert flag in top.stdout, flag

    run_help = invoke(["run", "--help"])
    assert run_help.exit_code == 0
    flags = _flags(group.commands["run"])
    assert {"--csv", "--target", "--sensitive", "--positive", "--layer", "--ranks", "--save-predictions", "--cache-dir"} <= flags
    for flag in flags:
        assert flag in run_help.stdout, flag


def test_version() -> None:
    result = invoke(["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"fairtune {__version__}"


def test_error_without_quiet_is_still_one_line(tmp_path) -> None:
    """With the default progress setting, nothing but the error reaches a non-terminal stderr."""
    csv, out = tmp_path / "nosuch.csv", tmp_path / "out"
    result = invoke(csv_args(csv, "--out", str(out)))
    assert result.exit_code == 2
    assert result.stderr == f"fairtune: error: {errors.MISSING_FILE.format(path=csv)}\n"
    assert result.stdout == "" and not out.exists()


def test_console_script_is_the_typer_app() -> None:
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "fairtune"]
    assert script.value == "fairtune.cli:main"


def test_device_flag_gives_the_same_results_on_cpu_and_refuses_an_unknown_device(finished_run, data_csv, tmp_path) -> None:
    out, _ = finished_run
    on_cpu, _ = good_run(data_csv, tmp_path, cache=tmp_path / "cache")
    named = invoke(csv_args(data_csv, "--positive", "yes", *TINY_GRID, "--cache-dir", str(tmp_path / "cache"),
                            "--out", str(tmp_path / "named"), "--device", "cpu"))
    assert named.exit_code == 0, named.output
    pd.testing.assert_frame_equal(pd.read_csv(on_cpu / "results.csv").drop(columns="fit_seconds"),
                                  pd.read_csv(tmp_path / "named" / "results.csv").drop(columns="fit_seconds"))
    assert json.loads((tmp_path / "named" / "config.json").read_text())["config"]["device"] == "cpu"
    args = csv_args(data_csv, "--positive", "yes", *TINY_GRID, "--out", str(tmp_path / "bad"), "--device", "nosuch")
    assert "device 'nosuch' is not available" in _assert_one_line_error(invoke(args), tmp_path / "bad")


def test_the_methods_help_lists_every_catalogued_method() -> None:
    from fairtune.catalogue import METHOD_NAMES

    from fairtune.catalogue import CATALOGUE

    (methods,) = [p for p in typer.main.get_command(app).commands["run"].params if p.name == "methods"]
    for name in METHOD_NAMES:
        assert (CATALOGUE[name].base or name) in methods.help, name


def test_config_json_records_versions_and_the_cpu_capability(finished_run) -> None:
    import torch

    out, _ = finished_run
    config = json.loads((out / "config.json").read_text())
    assert config["torch_version"] == torch.__version__
    assert config["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_verbose_run_reports_seconds_per_stage(data_csv, tmp_path, caplog) -> None:
    caplog.set_level("INFO", logger="fairtune")
    args = csv_args(data_csv, "--positive", "yes", *TINY_GRID, "--methods", "tl,logreg", "--cache-dir", str(tmp_path / "cache"),
                    "--out", str(tmp_path / "out"))
    result = CliRunner().invoke(app, ["-v", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    stages = json.loads((tmp_path / "out" / "config.json").read_text())["stage_seconds"]
    assert set(stages) == {"load", "pre-train", "features", "fine-tune", "select", "peers"}
    assert stages["pre-train"] > 0 and stages["fine-tune"] > 0 and stages["peers"] > 0
    assert "seconds per stage: load" in caplog.text and " write " in caplog.text


# --- fairness targets -----------------------------------------------------------------------------

def test_a_fairness_target_is_selected_under_and_recorded(data_csv, tmp_path) -> None:
    args = csv_args(data_csv, "--positive", "yes", "--seeds", "2", "--epochs", "3", "--lrs", "0.05", "--pretrain-epochs", "2",
                    "--hidden", "8,4", "--quiet", "--methods", "tl,win", "--constraint", "eo", "--tolerance", "0.1",
                    "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    result = invoke(args)
    assert result.exit_code == 0, result.output
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(dict.fromkeys(results["method"])) == ["pretrained", "tl-eo:0.1", "win-eo:0.1"]
    targeted = results[results["method"] != "pretrained"]
    np.testing.assert_array_equal(targeted["target_met"], targeted["delta_eo"] <= 0.1)
    selections = json.loads((tmp_path / "out" / "selections.json").read_text())
    for record in selections:
        assert record["target"] == {"constraint": "eo", "tolerance": 0.1}
        assert record["met_on_val"] == (record["val_gap"] <= 0.1) and record["met_on_test"] == (record["test_gap"] <= 0.1)
        assert record["val_gap"] == record["val"]["delta_eo"]
    assert "test met ε" in (tmp_path / "out" / "summary.md").read_text()


def test_randomized_thresholds_are_asked_for_by_name_and_recorded(data_csv, tmp_path) -> None:
    args = csv_args(data_csv, "--positive", "yes", "--seeds", "1", "--epochs", "3", "--lrs", "0.05", "--pretrain-epochs", "2",
                    "--hidden", "8,4", "--quiet", "--methods", "tl", "--constraint", "eo", "--tolerance", "0.1",
                    "--thresholds", "randomized", "--cache-dir", str(tmp_path / "cache"), "--save-predictions")
    first, again = (invoke([*args, "--out", str(tmp_path / name)]) for name in ("out", "again"))
    assert first.exit_code == 0 and again.exit_code == 0, first.output
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(results["method"]) == ["pretrained", "tl-eo-rthr:0.1"]
    [record] = json.loads((tmp_path / "out" / "selections.json").read_text())
    assert len(record["thresholds"]) == len(record["probabilities"]) == 2  # per group: its cuts and P(Ŷ=1) from each on
    assert all(len(cuts) == len(p) for cuts, p in zip(record["thresholds"], record["probabilities"]))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out" / "predictions.csv"), pd.read_csv(tmp_path / "again" / "predictions.csv"))


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--constraint", "eo", "--thresholds", "random"], "thresholds must be 'deterministic', 'randomized' or 'proxy', got 'random'"),
    (["--constraint", "eo", "--tolerance", "0"], "fairness tolerance ε must be a number in (0, 2), got 0.0"),
    (["--constraint", "eo", "--tolerance", "2"], "fairness tolerance ε must be a number in (0, 2), got 2.0"),
    (["--constraint", "equal"], "invalid value for 'constraint'"),
    (["--tolerance", "0.05"], "give --constraint eo or --constraint dp too"),
    (["--thresholds", "randomized"], "give --constraint eo or --constraint dp too"),
    (["--methods", "logreg-eo:0.05"], "unknown method 'logreg-eo:0.05'"),
    (["--methods", "win-eo:nan"], "ε of 'win-eo' must be a finite number > 0 and < 2"),
])
def test_bad_fairness_targets_are_one_line_errors(data_csv, tmp_path, flags, fragment) -> None:
    args = csv_args(data_csv, "--positive", "yes", *TINY_GRID, "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    assert fragment in _assert_one_line_error(invoke([*args, *flags]), tmp_path / "out")
