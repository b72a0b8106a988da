"""Bad inputs end in one line on stderr and a non-zero exit, without a traceback, and leave earlier results alone."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import generated_frame
from typer.testing import CliRunner, Result

from fairtune import errors
from fairtune.cli import app
from fairtune.config import PretrainConfig, SplitConfig
from fairtune.data import split_indices, tabular_task
from fairtune.errors import ModelError, UndefinedMetricError
from fairtune.metrics import delta_dp, delta_eo
from fairtune.models import MLP, load_weights_, pretrained_mlp, save_weights

FAST = ["--ranks", "1", "--lrs", "0.01", "--epochs", "2", "--operators", "mean", "--seeds", "1",
        "--pretrain-epochs", "2", "--hidden", "8", "--quiet"]
CSV_COLUMNS = ["--dataset", "csv", "--target", "label", "--sensitive", "group", "--positive", "yes"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def fairtune(*args: str | Path, cache: Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], env={"FAIRTUNE_CACHE": str(cache)})


def run_csv(frame: pd.DataFrame, directory: Path, out: Path, *extra: str, cache: Path) -> Result:
    path = directory / "data.csv"
    frame.to_csv(path, index=False)
    return fairtune("run", *CSV_COLUMNS, "--csv", path, "--out", out, *FAST, "--overwrite", *extra, cache=cache)


def assert_one_line_error(result: Result, *fragments: str) -> str:
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fairtune: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def snapshot(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> tuple[Path, dict[str, str]]:
    """An output folder holding a finished run, and the hashes of its files."""
    directory = tmp_path_factory.mktemp("previous")
    out = directory / "out"
    result = run_csv(generated_frame(600), directory, out, cache=cache)
    assert result.exit_code == 0, result.output
    return out, snapshot(out)


def assert_untouched(previous: tuple[Path, dict[str, str]]) -> None:
    out, files = previous
    assert snapshot(out) == files


def test_missing_values_name_the_columns_unless_dropped(tmp_path: Path, previous, cache: Path) -> None:
    frame = generated_frame(600)
    frame.loc[[3, 50], "x2"] = np.nan
    frame.loc[7, "color"] = None
    assert_one_line_error(run_csv(frame, tmp_path, previous[0], cache=cache), "x2", "color", "--drop-missing")
    assert_untouched(previous)
    dropped = run_csv(frame, tmp_path, tmp_path / "dropped", "--drop-missing", cache=cache)
    assert dropped.exit_code == 0, dropped.output
    assert (tmp_path / "dropped" / "results.csv").is_file()


def test_category_unseen_in_pretraining_is_encoded_as_zeros_and_runs(tmp_path: Path, cache: Path) -> None:
    frame = generated_frame(600)
    test_rows = split_indices(len(frame), SplitConfig(), seed=0)["test"]
    frame.loc[test_rows[:5], "color"] = "purple"  # only in the new task's test split, never seen by the encoder
    task = tabular_task(frame, target="label", sensitive="group", positive="yes", seed=0, stratify=False)  # test_rows: the random split
    color_columns = [i for i, name in enumerate(task.feature_names) if name.startswith("color_")]
    assert "color_purple" not in task.feature_names
    purple = np.isin(test_rows, test_rows[:5])
    assert torch.all(task.test.inputs[purple][:, color_columns] == 0)
    result = run_csv(frame, tmp_path, tmp_path / "out", cache=cache)
    assert result.exit_code == 0, result.output


def test_single_sensitive_group_is_refused(tmp_path: Path, previous, cache: Path) -> None:
    frame = generated_frame(600).assign(group="a")
    assert_one_line_error(run_csv(frame, tmp_path, previous[0], cache=cache), errors.SINGLE_GROUP.format(name="group", group="a"))
    assert_untouched(previous)


def test_group_without_positive_labels_makes_eo_undefined(tmp_path: Path, previous, cache: Path) -> None:
    frame = generated_frame(600)
    frame.loc[frame["group"] == "b", "label"] = "no"
    line = assert_one_line_error(run_csv(frame, tmp_path, previous[0], cache=cache), "true positive rate", "undefined")
    assert "nan" not in line.lower()
    assert_untouched(previous)


def test_eo_is_undefined_not_nan_for_a_group_without_positives() -> None:
    y_true = np.array([1, 0, 1, 0, 0, 0])
    y_pred = np.array([1, 0, 0, 1, 0, 1])
    s = np.array([0, 0, 0, 1, 1, 1])
    assert delta_dp(y_pred, s) == pytest.approx(1 / 3)  # needs no label: still defined
    with pytest.raises(UndefinedMetricError, match="true positive rate"):
        delta_eo(y_true, y_pred, s)


def test_extremely_imbalanced_groups_run_and_report(tmp_path: Path, cache: Path) -> None:
    frame = generated_frame(10_000, seed=1)
    rng = np.random.default_rng(0)
    frame["group"] = np.where(rng.random(len(frame)) < 0.01, "minority", "majority")
    assert 0.005 < (frame["group"] == "minority").mean() < 0.015
    result = run_csv(frame, tmp_path, tmp_path / "out", cache=cache)
    assert result.exit_code == 0, result.output
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert results[["err", "delta_dp", "delta_eo"]].notna().all().all()
    assert "TL" in result.stdout and "WIN" in result.stdout


def test_corrupted_or_mismatched_checkpoint_is_a_model_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a weight file" * 10)
    with pytest.raises(ModelError, match="corrupted or not a weight file"):
        load_weights_(MLP(5, (8,)), garbage)
    truncated = tmp_path / "truncated.safetensors"
    save_weights(MLP(5, (8,)), truncated)
    truncated.write_bytes(truncated.read_bytes()[:-20])
    with pytest.raises(ModelError, match="corrupted"):
        load_weights_(MLP(5, (8,)), truncated)
    other = tmp_path / "other.safetensors"
    save_weights(MLP(5, (16,)), other)
    with pytest.raises(ModelError, match="do not match the model"):
        load_weights_(MLP(5, (8,)), other)


def test_corrupted_pretraining_cache_entry_is_rebuilt(tmp_path: Path) -> None:
    """Policy: the cache holds derived data, so a bad entry is pre-trained again (same seed, same weights)."""
    task = tabular_task(generated_frame(600), target="label", sensitive="group", positive="yes", seed=0)
    config = PretrainConfig(hidden=(8,), epochs=2)
    fresh = pretrained_mlp(task, config, seed=0, cache_dir=tmp_path / "fresh")
    pretrained_mlp(task, config, seed=0, cache_dir=tmp_path / "cache")
    (entry,) = (tmp_path / "cache" / "models").glob("*.safetensors")
    entry.write_bytes(b"corrupted")
    rebuilt = pretrained_mlp(task, config, seed=0, cache_dir=tmp_path / "cache")
    for name, value in fresh.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], value)
    assert torch.equal(load_weights_(MLP(task.source.inputs.shape[1], (8,)), entry).state_dict()["output.weight"],
                       fresh.state_dict()["output.weight"])


@pytest.mark.parametrize(("name", "text", "fragments"), [
    ("typo.yaml", "methods: [tl]\nsettings:\n  tiny: {lrz: [0.1]}\n", ["unknown key 'settings.tiny.lrz'"]),
    ("types.yaml", "seeds: many\n", ["invalid value for 'seeds'"]),
    ("types.toml", "methods = ['tl']\n[pretrain]\nepochs = 'ten'\n", ["invalid value for 'pretrain.epochs'"]),
    ("top.toml", "outdir = 'x'\n", ["unknown key 'outdir'"]),
    ("method.yaml", "methods: [tl, wim]\n", ["'methods'", "unknown method 'wim'"]),
    ("broken.yaml", "methods: [tl\n", ["cannot parse"]),
])
def test_sweep_config_problems_name_the_key(tmp_path: Path, previous, cache: Path, name: str, text: str, fragments: list[str]) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert_one_line_error(fairtune("sweep", path, "--out", previous[0], "--quiet", cache=cache), name, *fragments)
    assert_untouched(previous)


def test_unwritable_output_directory(tmp_path: Path, previous, cache: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # root ignores permission bits, but nothing is created under a file
    result = run_csv(generated_frame(600), tmp_path, blocker / "out", cache=cache)
    assert_one_line_error(result, "not writable", str(blocker / "out"))
    config = tmp_path / "sweep.yaml"
    config.write_text("methods: [tl]\nseeds: 1\n")
    assert_one_line_error(fairtune("sweep", config, "--out", blocker / "out", cache=cache), "not writable")
    assert blocker.read_text() == "not a folder"
    assert_untouched(previous)
