"""Data: the bundled Adult task (rows, Table 1 split, preprocessing) and the CSV loader's checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fairtune import errors
from fairtune.config import SplitConfig
from fairtune.data import adult_task as load_adult_task
from fairtune.data import csv_task, load_adult_frame, split_indices, tabular_task
from fairtune.data.adult import ADULT_SPLIT
from fairtune.errors import DataError

NUMERIC = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]


# ----- Adult -----------------------------------------------------------------------------------

def test_adult_has_45222_complete_rows() -> None:
    frame = load_adult_frame()
    assert len(frame) == 45222
    assert not frame.isna().any().any()
    assert set(frame["income"]) == {">50K", "<=50K"}  # adult.test's trailing "." removed
    assert set(frame["sex"]) == {"Female", "Male"}


def test_adult_default_split_follows_table_1(adult_task) -> None:
    assert adult_task.sizes() == {"source": 17620, "train": 12287, "val": 5000, "test": 10315}
    assert adult_task.group_names == ("Female", "Male")
    for split in adult_task.splits().values():
        assert split.inputs.shape == (len(split), len(adult_task.feature_names))
        assert split.inputs.dtype == torch.float32
        assert set(np.unique(split.y)) == {0, 1} and set(np.unique(split.s)) == {0, 1}
    labels = np.concatenate([split.y for split in adult_task.splits().values()])
    assert labels.sum() == (load_adult_frame()["income"] == ">50K").sum()


def test_split_is_a_seeded_partition() -> None:
    parts = split_indices(45222, ADULT_SPLIT, seed=0)
    assert [len(parts[k]) for k in ("source", "train", "val", "test")] == [17620, 12287, 5000, 10315]
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(45222))  # disjoint, complete
    again = split_indices(45222, ADULT_SPLIT, seed=0)
    other = split_indices(45222, ADULT_SPLIT, seed=1)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    assert not any(np.array_equal(parts[k], other[k]) for k in parts)


def test_adult_task_is_seeded(adult_task) -> None:
    other = load_adult_task(seed=1)
    assert not torch.equal(adult_task.test.inputs, other.test.inputs)
    assert adult_task.fingerprint != other.fingerprint


def test_tabular_task_same_seed_same_split(make_frame) -> None:
    frame = make_frame(300)
    first, second, third = (
        tabular_task(frame, target="label", sensitive="group", positive="yes", seed=seed) for seed in (3, 3, 4)
    )
    for name in ("source", "train", "val", "test"):
        assert torch.equal(first.splits()[name].inputs, second.splits()[name].inputs)
        assert np.array_equal(first.splits()[name].y, second.splits()[name].y)
    assert first.fingerprint == second.fingerprint != third.fingerprint
    assert not torch.equal(first.test.inputs, third.test.inputs)


def test_sex_is_kept_out_of_the_features_by_default(adult_task) -> None:
    assert not any(name.startswith("sex") for name in adult_task.feature_names)
    assert not any(name.startswith("income") for name in adult_task.feature_names)
    with_sex = load_adult_task(seed=0, keep_sensitive=True)
    assert {"sex_Female", "sex_Male"} <= set(with_sex.feature_names)
    assert len(with_sex.feature_names) == len(adult_task.feature_names) + 2


def test_preprocessing_is_fitted_on_the_source_split_only(adult_task) -> None:
    frame = load_adult_frame()
    parts = split_indices(len(frame), ADULT_SPLIT, seed=0)
    source = frame.iloc[parts["source"]][NUMERIC].to_numpy(float)
    train = frame.iloc[parts["train"]][NUMERIC].to_numpy(float)
    columns = [adult_task.feature_names.index(c) for c in NUMERIC]

    # the definition: standardize with the source rows' mean and (population) std
    expected_train = (train - source.mean(axis=0)) / source.std(axis=0)
    np.testing.assert_allclose(adult_task.train.inputs[:, columns].numpy(), expected_train, rtol=1e-4, atol=1e-4)

    source_x = adult_task.source.inputs[:, columns].numpy().astype(float)
    train_x = adult_task.train.inputs[:, columns].numpy().astype(float)
    np.testing.assert_allclose(source_x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(source_x.std(axis=0), 1, atol=1e-4)
    assert np.abs(train_x.mean(axis=0)).max() > 1e-3  # not re-centred on the new task's rows


# ----- CSV -------------------------------------------------------------------------------------

def test_csv_with_string_labels_and_three_groups(write_csv, make_frame) -> None:
    frame = make_frame(1500, groups=("a", "b", "c"))
    path = write_csv(frame)

    task = csv_task(path, target="label", sensitive="group", positive="yes")

    assert task.group_names == ("a", "b", "c") and task.n_groups == 3
    assert sum(task.sizes().values()) == 1500
    fractions = SplitConfig()
    assert task.sizes()["train"] == round(fractions.train * 1500)
    y = np.concatenate([split.y for split in task.splits().values()])
    s = np.concatenate([split.s for split in task.splits().values()])
    assert y.sum() == (frame["label"] == "yes").sum()
    assert np.bincount(s).tolist() == frame["group"].value_counts().sort_index().tolist()
    assert {"x1", "x2", "x3", "color_blue", "color_green", "color_red"} == set(task.feature_names)


@pytest.mark.parametrize("values", [(0, 1), (0.0, 1.0), (False, True), ("false", "true"), ("N", "Y")])
def test_csv_binary_labels_need_no_positive(write_csv, values, make_frame) -> None:
    frame = make_frame(200)
    positives = int((frame["label"] == "yes").sum())
    frame["label"] = np.where(frame["label"] == "yes", values[1], values[0])
    task = csv_task(write_csv(frame), target="label", sensitive="group")
    assert sum(int(split.y.sum()) for split in task.splits().values()) == positives


def test_csv_missing_values_need_drop_missing(write_csv, make_frame) -> None:
    frame = make_frame(400)
    frame.loc[[3, 10], "x2"] = np.nan
    frame.loc[[10, 20], "color"] = "?"
    path = write_csv(frame)

    with pytest.raises(DataError) as info:
        csv_task(path, target="label", sensitive="group", positive="yes")
    assert str(info.value) == errors.NAN_FEATURES.format(count=4, columns="x2, color") + "; pass --drop-missing to drop those rows"

    task = csv_task(path, target="label", sensitive="group", positive="yes", drop_missing=True)
    assert sum(task.sizes().values()) == 400 - 3


def test_csv_single_group_message(write_csv, make_frame) -> None:
    path = write_csv(make_frame(200, groups=("a",)))
    with pytest.raises(DataError) as info:
        csv_task(path, target="label", sensitive="group", positive="yes")
    assert str(info.value) == errors.SINGLE_GROUP.format(name="group", group="a")
    assert str(info.value) == "sensitive attribute 'group' has a single group ('a'); at least 2 are needed"


def test_csv_non_binary_label(write_csv, make_frame) -> None:
    frame = make_frame(200)
    frame["label"] = np.arange(200) % 3
    with pytest.raises(DataError) as info:
        csv_task(write_csv(frame), target="label", sensitive="group")
    assert str(info.value) == errors.NON_BINARY_LABELS.format(name="label", count=3, values="0, 1, 2")
    # with --positive it is binarized
    task = csv_task(write_csv(frame), target="label", sensitive="group", positive="2")
    assert sum(int(split.y.sum()) for split in task.splits().values()) == (frame["label"] == 2).sum()


def test_csv_positive_value_must_occur(write_csv, make_frame) -> None:
    with pytest.raises(DataError, match="positive value 'maybe' does not occur"):
        csv_task(write_csv(make_frame(200)), target="label", sensitive="group", positive="maybe")


def test_csv_missing_file(tmp_path) -> None:
    path = tmp_path / "nosuch.csv"
    with pytest.raises(DataError) as info:
        csv_task(path, target="label", sensitive="group")
    assert str(info.value) == errors.MISSING_FILE.format(path=path)


@pytest.mark.parametrize(("target", "sensitive", "missing"), [("nosuch", "group", "nosuch"), ("label", "race", "race")])
def test_csv_missing_column(write_csv, target, sensitive, missing, make_frame) -> None:
    path = write_csv(make_frame(100))
    with pytest.raises(DataError) as info:
        csv_task(path, target=target, sensitive=sensitive)
    assert str(info.value) == errors.MISSING_COLUMN.format(
        column=missing, source=str(path), available="x1, x2, x3, color, group, label"
    )


def test_csv_split_that_leaves_no_pretraining_rows(write_csv, make_frame) -> None:
    with pytest.raises(DataError, match="leave no rows for pre-training"):
        csv_task(write_csv(make_frame(100)), target="label", sensitive="group", positive="yes",
                 split=SplitConfig(train=50, val=30, test=20))


def test_csv_keep_sensitive_adds_the_group_columns(write_csv, make_frame) -> None:
    task = csv_task(write_csv(make_frame(300)), target="label", sensitive="group", positive="yes", keep_sensitive=True)
    assert {"group_a", "group_b"} <= set(task.feature_names)


def test_tabular_frame_is_not_modified(make_frame) -> None:
    frame = make_frame(300)
    frame.loc[5, "x1"] = np.nan
    before = frame.copy()
    tabular_task(frame, target="label", sensitive="group", positive="yes", drop_missing=True)
    pd.testing.assert_frame_equal(frame, before)
