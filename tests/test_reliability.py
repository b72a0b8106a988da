"""Issue 13: every case a new user hit, by behaviour: run folders, duplicate columns, strengths,
small groups, group names, tracebacks turned into one line, API inputs, reproducibility records."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import generated_frame
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner, Result

from fairtune import errors
from fairtune.cli import app
from fairtune.config import SplitConfig
from fairtune.data import adult_task, split_indices, tabular_task
from fairtune.errors import ConfigError, DataError, ModelError
from fairtune.experiments.run_folder import LOCKED, folder_lock, recover
from fairtune.finetune import FairFineTuner, compare
from fairtune.methods import build_method
from fairtune.metrics import delta_eo, false_positive_rates, true_positive_rates
from fairtune.models import MLP, load_weights_

FAST = ["--ranks", "1", "--lrs", "0.01", "--epochs", "2", "--operators", "mean", "--seeds", "1",
        "--pretrain-epochs", "1", "--hidden", "8", "--methods", "tl", "--quiet"]
CSV_COLUMNS = ["--dataset", "csv", "--target", "label", "--sensitive", "group", "--positive", "yes"]
RUN_FILES = {"results.csv", "summary.csv", "summary.md", "selections.json", "config.json"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def fairtune(*args: str | Path, cache: Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], env={"FAIRTUNE_CACHE": str(cache)})


def run_csv(csv: Path, out: Path, *extra: str, cache: Path) -> Result:
    return fairtune("run", *CSV_COLUMNS, "--csv", csv, "--out", out, *FAST, *extra, cache=cache)


def one_line_error(result: Result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fairtune: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    return write(generated_frame(600), tmp_path / "data.csv")


# 1. run folders ----------------------------------------------------------------------------------

def test_rerun_into_a_results_folder_is_refused_naming_overwrite(csv: Path, tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "out"
    assert run_csv(csv, out, cache=cache).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    one_line_error(run_csv(csv, out, cache=cache), str(out), "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_overwrite_leaves_exactly_one_runs_files(csv: Path, tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "out"
    assert run_csv(csv, out, "--save-predictions", cache=cache).exit_code == 0
    assert (out / "predictions.csv").is_file()
    result = run_csv(csv, out, "--overwrite", "--methods", "svd", cache=cache)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == RUN_FILES  # the earlier predictions.csv is gone
    assert set(pd.read_csv(out / "results.csv")["method"]) == {"pretrained", "svd"}
    assert not list(tmp_path.glob(".out.staging-*")) and not list(tmp_path.glob(".out.old-*"))


def test_folder_with_foreign_files_is_refused_even_with_overwrite(csv: Path, tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    one_line_error(run_csv(csv, out, "--overwrite", cache=cache), "notes.txt", "did not write")
    assert (out / "notes.txt").read_text() == "keep me"


def test_a_second_run_into_a_locked_folder_is_refused(csv: Path, tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "out"
    with folder_lock(out):  # what a first, still running, run holds
        one_line_error(run_csv(csv, out, cache=cache), LOCKED.format(path=out))
    assert not out.exists()


def test_failed_run_writes_nothing(tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "new"
    one_line_error(run_csv(tmp_path / "missing.csv", out, cache=cache), "file not found")
    frame = generated_frame(600)
    one_line_error(run_csv(write(frame[[*frame.columns, "label"]], tmp_path / "dup.csv"), out, cache=cache), "duplicate")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dup.csv"]  # no folder, no staging folder, no lock file


def test_output_files_get_the_umask_permissions(csv: Path, tmp_path: Path, cache: Path) -> None:
    previous = os.umask(0o022)
    try:
        assert run_csv(csv, tmp_path / "out", cache=cache).exit_code == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    for path in (tmp_path / "out").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_a_swap_killed_between_its_renames_is_recovered(tmp_path: Path) -> None:
    out = tmp_path / "out"
    old = tmp_path / ".out.old-123"  # the fallback swap renamed the old folder away, then was killed
    old.mkdir()
    (old / "results.csv").write_text("old")
    (tmp_path / ".out.staging-abc").mkdir()
    recover(out)
    assert (out / "results.csv").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("exchange", [True, False])
def test_swap_in_replaces_the_folder_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool) -> None:
    from fairtune.experiments import run_folder

    if not exchange:  # a system without renameat2(RENAME_EXCHANGE): two renames
        monkeypatch.setattr(run_folder, "_exchange", lambda first, second: False)
    out, staging = tmp_path / "out", tmp_path / ".out.staging-1"
    out.mkdir()
    (out / "predictions.csv").write_text("old")
    staging.mkdir()
    (staging / "results.csv").write_text("new")
    run_folder.swap_in(staging, out)
    assert [p.name for p in out.iterdir()] == ["results.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def sweep_yaml(path: Path, csv: Path, cache: Path, *, epochs: int = 1) -> Path:
    path.write_text(
        f"datasets:\n  toy: {{dataset: csv, csv: '{csv}', target: label, sensitive: group, positive: 'yes'}}\n"
        f"methods: [tl]\nsettings:\n  tiny: {{ranks: [1], lrs: [0.01], epochs: [{epochs}], operators: [mean]}}\n"
        f"seeds: 1\npretrain: {{hidden: [8], epochs: 1}}\ncache_dir: '{cache}'\n"
    )
    return path


def test_failed_sweep_keeps_the_previous_sweep_and_names_its_data_set(csv: Path, tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "sweep"
    assert fairtune("sweep", sweep_yaml(tmp_path / "a.yaml", csv, cache), "--out", out, "--quiet", cache=cache).exit_code == 0
    recorded = (out / "sweep.json").read_bytes()
    broken = sweep_yaml(tmp_path / "b.yaml", tmp_path / "missing.csv", cache)
    one_line_error(fairtune("sweep", broken, "--out", out, "--quiet", cache=cache), "data set 'toy'", "file not found")
    assert (out / "sweep.json").read_bytes() == recorded


def test_sweep_of_another_grid_is_refused_unless_overwrite(csv: Path, tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "sweep"
    assert fairtune("sweep", sweep_yaml(tmp_path / "a.yaml", csv, cache), "--out", out, "--quiet", cache=cache).exit_code == 0
    other = sweep_yaml(tmp_path / "b.yaml", csv, cache, epochs=2)
    one_line_error(fairtune("sweep", other, "--out", out, "--quiet", cache=cache), "different sweep", "--overwrite")
    result = fairtune("sweep", other, "--out", out, "--quiet", "--overwrite", cache=cache)
    assert result.exit_code == 0, result.output
    assert len(list((out / "units").glob("*.json"))) == 2  # the pre-trained and tl units of this grid; the earlier grid's are gone
    assert json.loads((out / "sweep.json").read_text())["sweep"]["settings"]["tiny"]["epochs"] == [2]


def test_sweep_error_in_a_unit_names_its_data_set(tmp_path: Path, cache: Path) -> None:
    frame = generated_frame(600).assign(label="yes")  # one class: fails when the unit loads it
    path = sweep_yaml(tmp_path / "a.yaml", write(frame, tmp_path / "one.csv"), cache)
    one_line_error(fairtune("sweep", path, "--out", tmp_path / "out", "--quiet", cache=cache), "data set 'toy'", "single class")


def test_a_sweep_into_a_locked_folder_is_refused(csv: Path, tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "sweep"
    with folder_lock(out):
        one_line_error(fairtune("sweep", sweep_yaml(tmp_path / "a.yaml", csv, cache), "--out", out, "--quiet", cache=cache),
                       LOCKED.format(path=out))
    assert not out.exists()


def test_unit_errors_name_their_data_set_from_a_worker_process() -> None:
    import pickle

    import functools

    from fairtune.config import DataConfig
    from fairtune.data import NamedDatasetErrors
    from fairtune.experiments import Environment, Unit
    from fairtune.experiments.engine import prepare_seed

    data = DataConfig(dataset="csv", csv="no-such.csv", target="label", sensitive="group")
    function = functools.partial(prepare_seed, env=Environment())
    task = pickle.loads(pickle.dumps(NamedDatasetErrors(function, {data.model_dump_json(): "mine"})))  # as sent to a worker
    with pytest.raises(DataError, match="^data set 'mine': file not found: no-such.csv$"):
        task(Unit(data=data, method="tl", seed=0))


def test_sweep_seed_count_must_be_positive(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("methods: [tl]\nseeds: -2\n")
    one_line_error(fairtune("sweep", path, "--out", tmp_path / "out", cache=cache), "'seeds'", "must be >= 1, got -2")


# 2. duplicate columns -----------------------------------------------------------------------------

@pytest.mark.parametrize("column", ["label", "group"])
def test_duplicate_column_names_are_refused(column: str, tmp_path: Path, cache: Path) -> None:
    frame = generated_frame(600)
    path = tmp_path / "dup.csv"
    frame[[*frame.columns, column]].to_csv(path, index=False)  # pandas writes the name twice
    assert path.read_text().splitlines()[0].count(column) == 2
    one_line_error(run_csv(path, tmp_path / "out", cache=cache), "duplicate column name(s)", repr(column))
    with pytest.raises(DataError, match="duplicate"):
        tabular_task(frame[[*frame.columns, column]], target="label", sensitive="group", positive="yes")


# 3. strengths ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["win-anchor:inf", "win-anchor:nan", "tl-anchor:-1", "retrain-eo:nan", "retrain-dp:inf"])
def test_anchor_and_fairness_strengths_must_be_finite_and_non_negative(spec: str) -> None:
    with pytest.raises(ConfigError, match="must be a finite number >= 0"):
        build_method(spec)


def test_infinite_anchor_is_refused_before_any_work(csv: Path, tmp_path: Path, cache: Path) -> None:
    one_line_error(run_csv(csv, tmp_path / "out", "--methods", "win-anchor:inf", cache=cache), "μ of 'win-anchor'", "'inf'")
    assert not (tmp_path / "out").exists()


# 4. splits that respect groups -------------------------------------------------------------------

def six_groups(n_rows: int = 7000, smallest: int = 20, seed: int = 0) -> pd.DataFrame:
    """Six groups, the smallest with ``smallest`` rows of both labels (a recidivism-like race column)."""
    frame = generated_frame(n_rows, seed=seed, groups=("A", "B", "C", "D", "E", "F"))
    tiny = frame.index[frame["group"] == "F"]
    frame.loc[tiny[smallest:], "group"] = "A"
    frame.loc[tiny[:smallest // 2], "label"] = "no"
    frame.loc[tiny[smallest // 2:smallest], "label"] = "yes"
    return frame


@pytest.mark.parametrize("seed", range(5))
def test_stratified_split_puts_both_labels_of_every_group_in_every_split(seed: int) -> None:
    task = tabular_task(six_groups(), target="label", sensitive="group", positive="yes", seed=seed)
    assert task.group_names == ("A", "B", "C", "D", "E", "F")
    for name, split in task.splits().items():
        table = pd.crosstab(split.s, split.y)
        assert table.shape == (6, 2) and (table.to_numpy() >= 1).all(), name


def test_stratified_split_keeps_exact_sizes_and_partitions_the_rows() -> None:
    rng = np.random.default_rng(0)
    strata = rng.integers(0, 6, 1000)
    parts = split_indices(1000, SplitConfig(train=300, val=100, test=200), seed=1, strata=strata)
    assert [len(parts[k]) for k in ("source", "train", "val", "test")] == [400, 300, 100, 200]
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(1000))
    for rows in parts.values():  # each stratum in proportion to the split's size, within a row or two
        shares = np.bincount(strata[rows], minlength=6) / len(rows)
        assert np.abs(shares - np.bincount(strata, minlength=6) / 1000).max() < 0.02


def test_bundled_adult_keeps_its_random_split() -> None:
    task = adult_task(seed=0)
    random_test = split_indices(45222, SplitConfig(train=12287, val=5000, test=10315), seed=0)["test"]
    from fairtune.data import load_adult_frame

    expected = (load_adult_frame()["income"].iloc[random_test] == ">50K").to_numpy()
    assert np.array_equal(task.test.y, expected.astype(np.int64))


def test_too_small_group_is_named_with_its_rows_and_min_group_size(tmp_path: Path, cache: Path) -> None:
    frame = six_groups(smallest=6)  # F: 3 positive, 3 negative
    small_e = frame.index[frame["group"] == "E"]
    frame.loc[small_e[5:], "group"] = "A"
    frame.loc[small_e[:5], "label"] = ["yes", "yes", "yes", "no", "no"]  # E: 3 positive, 2 negative
    path = write(frame, tmp_path / "d.csv")
    # merged, E and F have 6 positives and 5 negatives: enough for one of each label in each of the 4 splits
    line = one_line_error(run_csv(path, tmp_path / "out", cache=cache),
                          "group 'E' of 'group' has 5 rows (3 positive, 2 negative)", "--min-group-size 7")
    assert "'other'" in line
    result = run_csv(path, tmp_path / "out", "--min-group-size", "7", cache=cache)
    assert result.exit_code == 0, result.output
    assert "merged 2 group(s) of 'group' with fewer than 7 rows ('E', 'F') into 'other' (11 rows)" in result.stderr  # a notice
    groups = json.loads((tmp_path / "out" / "config.json").read_text())["groups"]
    assert groups == {"0": "A", "1": "B", "2": "C", "3": "D", "4": "other"}


def test_a_notice_before_a_failure_is_not_printed_beside_the_error(tmp_path: Path, cache: Path) -> None:
    frame = generated_frame(600)  # both groups under 1000 rows: merged into one, a single group
    line = one_line_error(run_csv(write(frame, tmp_path / "d.csv"), tmp_path / "out", "--min-group-size", "1000", cache=cache),
                          "has a single group ('other')")
    assert "merged" not in line


def test_min_group_size_that_leaves_the_merged_group_too_small_suggests_one_that_works() -> None:
    frame = six_groups(smallest=6)  # F alone: 3 + 3 rows, too few even when "merged"
    with pytest.raises(DataError) as info:
        tabular_task(frame, target="label", sensitive="group", positive="yes", min_group_size=7)
    assert "group 'other' of 'group' has 6 rows" in str(info.value)
    suggested = int(str(info.value).split("--min-group-size ")[1].split()[0])
    merged = tabular_task(frame, target="label", sensitive="group", positive="yes", min_group_size=suggested)
    assert merged.group_names[-1] == "other" and merged.n_groups < 6


def test_group_without_positives_names_the_undefined_rate() -> None:
    frame = six_groups()
    frame.loc[frame["group"] == "F", "label"] = "no"
    with pytest.raises(DataError, match="group 'F' of 'group' has no positive .* true positive rate is undefined"):
        tabular_task(frame, target="label", sensitive="group", positive="yes")


def test_gaps_over_more_than_two_groups_use_the_groups_present() -> None:
    y_true = np.array([1, 0, 1, 0, 0, 0, 1, 0])
    y_pred = np.array([1, 0, 0, 0, 1, 0, 1, 1])
    s = np.array([0, 0, 1, 1, 2, 2, 3, 3])  # group 2 has no positive: its TPR is undefined, as in MetricFrame
    assert set(true_positive_rates(y_true, y_pred, s)) == {0, 1, 3}
    assert set(false_positive_rates(y_true, y_pred, s)) == {0, 1, 2, 3}
    # pairs among groups 0, 1, 3: (1,3): |0 - 1| + |0 - 1| = 2
    assert delta_eo(y_true, y_pred, s) == pytest.approx(2.0)


def test_six_group_data_set_runs_end_to_end_and_reports_max_pairwise_gaps(tmp_path: Path, cache: Path) -> None:
    path = write(six_groups(), tmp_path / "six.csv")
    result = fairtune("run", *CSV_COLUMNS, "--csv", path, "--out", tmp_path / "out", *FAST[:-5], "--seeds", "2",
                      "--methods", "tl,win", "--save-predictions", "--quiet", cache=cache)
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    results = pd.read_csv(tmp_path / "out" / "results.csv").set_index(["method", "seed"])
    for (method, seed), rows in predictions.groupby(["method", "seed"]):
        assert set(rows["group"]) == {"A", "B", "C", "D", "E", "F"}
        positive = rows[rows["y_true"] == 1].groupby("group")["y_pred"].mean()
        negative = rows[rows["y_true"] == 0].groupby("group")["y_pred"].mean()
        rates = rows.groupby("group")["y_pred"].mean()
        assert results.loc[(method, seed), "delta_dp"] == pytest.approx(rates.max() - rates.min())
        pairs = [abs(positive[g] - positive[h]) + abs(negative[g] - negative[h]) for g in positive.index for h in positive.index]
        assert results.loc[(method, seed), "delta_eo"] == pytest.approx(max(pairs))


# 5. names, not codes -----------------------------------------------------------------------------

def test_predictions_and_config_name_numeric_groups(tmp_path: Path, cache: Path) -> None:
    frame = generated_frame(600).assign(group=lambda f: np.where(f["group"] == "a", 56, 37))  # e.g. ages
    out = tmp_path / "out"
    assert run_csv(write(frame, tmp_path / "d.csv"), out, "--save-predictions", cache=cache).exit_code == 0
    predictions = pd.read_csv(out / "predictions.csv")
    assert set(zip(predictions["sensitive"], predictions["group"])) == {(0, 37), (1, 56)}
    assert json.loads((out / "config.json").read_text())["groups"] == {"0": "37", "1": "56"}


def test_absent_group_is_named_not_coded() -> None:
    from fairtune._validation import check_groups_present

    with pytest.raises(DataError, match="the val split has no sample of group\\(s\\) '56'"):
        check_groups_present(np.array([0, 0, 2]), 3, where="val", names=("37", "56", "60"))


# 6. one line instead of a traceback --------------------------------------------------------------

def test_weights_that_pickle_code_are_explained_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(MLP(5, (8,)), path)  # a whole module object, not a state dict
    with pytest.raises(ModelError) as info:
        load_weights_(MLP(5, (8,)), path)
    message = str(info.value)
    assert "not a plain state dict" in message and ".state_dict()" in message and "\n" not in message


def test_header_only_csv_is_one_line(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("x1,color,group,label\n")
    one_line_error(run_csv(path, tmp_path / "out", cache=cache), "no data rows")


def test_all_missing_column_with_drop_missing_is_one_line(tmp_path: Path, cache: Path) -> None:
    frame = generated_frame(600).assign(x2=np.nan)
    one_line_error(run_csv(write(frame, tmp_path / "d.csv"), tmp_path / "out", "--drop-missing", cache=cache),
                   "column 'x2' has no value in any row")


def test_infinite_feature_counts_as_missing(tmp_path: Path, cache: Path) -> None:
    frame = generated_frame(600)
    frame.loc[:2, "x3"] = np.inf
    path = write(frame, tmp_path / "d.csv")
    one_line_error(run_csv(path, tmp_path / "out", cache=cache), "3 missing/NaN value(s) (columns: x3)", "--drop-missing")
    result = run_csv(path, tmp_path / "out", "--drop-missing", cache=cache)
    assert result.exit_code == 0, result.output


def test_negative_split_seed_is_one_line(csv: Path, tmp_path: Path, cache: Path) -> None:
    one_line_error(run_csv(csv, tmp_path / "out", "--split-seed", "-1", cache=cache), "split_seed", "greater than or equal to 0")


# 7. API inputs --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def api_data() -> tuple[nn.Module, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    s = rng.integers(0, 2, 300)
    y = (x[:, 0] + 0.5 * s > 0).astype(np.int64)
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2)), x, y, s


def test_api_accepts_float64_inputs_and_float64_models(api_data) -> None:
    model, x, y, s = api_data
    from_float64_x = FairFineTuner(model, epochs=2).fit(torch.tensor(x), y, sensitive_features=s)
    from_float32_x = FairFineTuner(model, epochs=2).fit(torch.tensor(x, dtype=torch.float32), y, sensitive_features=s)
    np.testing.assert_array_equal(from_float64_x.predict(torch.tensor(x)), from_float32_x.predict(x))
    double = FairFineTuner(copy_double(model), epochs=2).fit(x, y, sensitive_features=s)
    assert {p.dtype for p in double.model_.parameters()} == {torch.float64}  # runs in the model's dtype
    assert (double.predict(x) == from_float32_x.predict(x)).mean() > 0.95
    assert compare(copy_double(model), (x, y, s), (x, y, s), (x, y, s), methods=("tl",), seeds=[0]).shape[0] == 2


def copy_double(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double()


def test_api_refuses_a_continuous_sensitive_attribute(api_data) -> None:
    model, x, y, _ = api_data
    with pytest.raises(DataError, match="300 distinct values, more than the 50 groups .* bin it"):
        FairFineTuner(model).fit(x, y, sensitive_features=np.random.default_rng(1).normal(size=300))


@pytest.mark.parametrize(("case", "error", "fragment"), [
    ("empty", DataError, errors.NO_SAMPLES),
    ("pairs", DataError, "each batch must be (x, y, s), got 2 item(s)"),
    ("one-hot", DataError, "got shape (300, 2); for one-hot labels pass y.argmax(1)"),
    ("zero-two", DataError, "map it to 0/1 first"),
])
def test_api_input_mistakes_get_a_message_that_fits_the_api(api_data, case: str, error: type, fragment: str) -> None:
    model, x, y, s = api_data
    calls = {
        "empty": lambda: FairFineTuner(model).fit(np.zeros((0, 5)), np.zeros(0), sensitive_features=np.zeros(0)),
        "pairs": lambda: FairFineTuner(model).fit(DataLoader(TensorDataset(torch.tensor(x).float(), torch.tensor(y)), batch_size=50)),
        "one-hot": lambda: FairFineTuner(model).fit(x, np.eye(2)[y], sensitive_features=s),
        "zero-two": lambda: FairFineTuner(model).fit(x, 2 * y, sensitive_features=s),
    }
    with pytest.raises(error) as info:
        calls[case]()
    assert fragment in str(info.value)
    assert "--positive" not in str(info.value)  # no CLI flag in an API message


def test_compare_refuses_no_seeds_and_repeated_methods(api_data) -> None:
    model, x, y, s = api_data
    with pytest.raises(ConfigError, match="seeds is empty"):
        compare(model, (x, y, s), (x, y, s), (x, y, s), seeds=[])
    with pytest.raises(ConfigError, match="tl listed more than once"):
        compare(model, (x, y, s), (x, y, s), (x, y, s), seeds=[0], methods=("tl", "tl"))


# 8-9. reproducibility record, minor cases -------------------------------------------------------

def test_config_records_versions_and_cpu_capability(csv: Path, tmp_path: Path, cache: Path) -> None:
    assert run_csv(csv, tmp_path / "out", cache=cache).exit_code == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert config["torch_version"] == torch.__version__


def test_repeated_methods_are_refused(csv: Path, tmp_path: Path, cache: Path) -> None:
    one_line_error(run_csv(csv, tmp_path / "out", "--methods", "tl,tl", cache=cache), "tl listed more than once")


def test_csv_that_is_a_folder_is_named_as_a_folder(tmp_path: Path, cache: Path) -> None:
    one_line_error(run_csv(tmp_path, tmp_path / "out", cache=cache), "is a folder, not a file")
