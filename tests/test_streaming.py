"""Memory at scale: the tabular encoder written in row chunks, features written batch by batch, and a prepared
seed that keeps features but not inputs. Each gives the same numbers as the one-shot computation it replaced."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from fairtune._validation import binary_labels
from fairtune.config import DataConfig, FinetuneGrid, PretrainConfig, SplitConfig
from fairtune.data import load_adult_frame, load_task, split_indices
from fairtune.data.adult import ADULT_SPLIT
from fairtune.data.tabular import TableEncoder, factorize, group_split, read_csv
from fairtune.errors import DataError
from fairtune.experiments.engine import Environment, Unit, compare_on_features, execute, new_task_splits, prepare
from fairtune.models import MLP, extract_features
from fairtune.training import TrainingData

from conftest import generated_frame

ADULT_FEATURES = [c for c in load_adult_frame().columns if c not in ("income", "sex")]


def column_transformer(frame: pd.DataFrame) -> ColumnTransformer:
    """The preprocessing the loader used before :class:`TableEncoder`: the reference it must equal."""
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
    return ColumnTransformer(
        [("numeric", StandardScaler(), numeric),
         ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), [c for c in frame.columns if c not in numeric])],
        verbose_feature_names_out=False,
    )


def one_shot(frame: pd.DataFrame, fit_rows: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    reference = column_transformer(frame).fit(frame.iloc[fit_rows])
    return np.asarray(reference.transform(frame.iloc[rows]), dtype=np.float32), tuple(map(str, reference.get_feature_names_out()))


# ----- the encoder -----------------------------------------------------------------------------

def test_encoder_equals_the_column_transformer_on_adult() -> None:
    frame = load_adult_frame()[ADULT_FEATURES]
    parts = split_indices(len(frame), ADULT_SPLIT, seed=0)
    encoder = TableEncoder(frame.iloc[parts["source"]])
    for rows in parts.values():
        expected, names = one_shot(frame, parts["source"], rows)
        assert encoder.encode(frame, rows).tobytes() == expected.tobytes()
        assert encoder.feature_names == names


@pytest.mark.parametrize("chunk_rows", [1, 7, 256, 5000])
def test_any_chunk_size_gives_the_one_shot_encoding(chunk_rows: int) -> None:
    frame = generated_frame(1200, groups=("a", "b", "c")).drop(columns=["label"])
    frame["flag"] = frame["x3"] > 0  # a boolean column is one-hot encoded, like a string one
    fit_rows, rows = np.arange(0, 1200, 2), np.random.default_rng(1).permutation(1200)[:901]
    encoded = TableEncoder(frame.iloc[fit_rows]).encode(frame, rows, chunk_rows=chunk_rows)
    assert encoded.dtype == np.float32 and encoded.shape == (901, 3 + 3 + 3 + 2)
    assert encoded.tobytes() == one_shot(frame, fit_rows, rows)[0].tobytes()


def test_factorized_codes_give_the_same_encoding() -> None:
    """Codes of the whole frame (what a prepared table keeps for every seed) encode as the rows' values do,
    unseen categories and a boolean column included."""
    frame = generated_frame(900, groups=("a", "b", "c")).drop(columns=["label"])
    frame["flag"] = frame["x3"] > 0
    frame.loc[::7, "color"] = "purple"  # never in the rows the encoder is fitted on
    fit_rows = np.flatnonzero(frame["color"] != "purple")[::2]
    encoder = TableEncoder(frame.iloc[fit_rows])
    codes = factorize(frame, encoder.categorical)
    rows = np.random.default_rng(3).permutation(900)[:700]
    encoded = encoder.encode(frame, rows, chunk_rows=64, codes=codes)
    assert encoded.tobytes() == encoder.encode(frame, rows, chunk_rows=64).tobytes() == one_shot(frame, fit_rows, rows)[0].tobytes()


def test_adult_tasks_of_the_shared_table_equal_tasks_of_the_frame() -> None:
    """adult_task prepares Adult's rows once per process; each seed's task is the one tabular_task builds from the frame."""
    from fairtune.data import adult_task, tabular_task

    for seed in (0, 3):
        shared = adult_task(seed=seed, stratify=True)
        alone = tabular_task(load_adult_frame(), target="income", sensitive="sex", positive=">50K", split=ADULT_SPLIT, seed=seed,
                             stratify=True, name="adult", source="Adult")
        assert shared.fingerprint == alone.fingerprint and shared.feature_names == alone.feature_names
        for a, b in zip(shared.splits().values(), alone.splits().values()):
            assert torch.equal(a.inputs, b.inputs) and np.array_equal(a.y, b.y) and np.array_equal(a.s, b.s)


def test_unseen_categories_encode_as_zeros_and_tables_without_numbers_work() -> None:
    fit = pd.DataFrame({"color": ["red", "blue"], "size": ["s", "m"]})
    encoder = TableEncoder(fit)
    assert encoder.feature_names == ("color_blue", "color_red", "size_m", "size_s")
    new = pd.DataFrame({"color": ["green", "red"], "size": ["m", "xl"]})
    assert encoder.encode(new, np.arange(2), chunk_rows=1).tolist() == [[0, 0, 1, 0], [0, 1, 0, 0]]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_non_finite_entries_are_counted_over_all_chunks() -> None:
    fit = pd.DataFrame({"x": np.linspace(0.0, 1.0, 50), "y": np.linspace(0.0, 1.0, 50)})
    new = fit.copy()
    new.loc[[3, 20, 41], "y"] = 1e39  # finite in float64, beyond float32 once scaled
    with pytest.raises(DataError, match=r"^features contain 3 missing/NaN value\(s\) \(columns: y\)$"):
        TableEncoder(fit).encode(new, np.arange(50), chunk_rows=8)


def test_colliding_encoded_names_are_refused_as_the_column_transformer_did() -> None:
    """A numeric column ``color_red`` beside a category column ``color`` with value ``red``: two features, one name."""
    frame = pd.DataFrame({"color_red": [0.5, 1.5, 2.5], "color": ["red", "blue", "red"]})
    with pytest.raises(ValueError):  # scikit-learn's own refusal, before the encoder
        ColumnTransformer([("n", StandardScaler(), ["color_red"]), ("c", OneHotEncoder(sparse_output=False), ["color"])],
                          verbose_feature_names_out=False).fit(frame).get_feature_names_out()
    with pytest.raises(DataError, match="duplicate column name.*'color_red'"):
        TableEncoder(frame)


def test_chunk_rows_must_be_positive() -> None:
    frame = pd.DataFrame({"x": [0.0, 1.0]})
    with pytest.raises(ValueError, match="chunk_rows must be >= 1"):
        TableEncoder(frame).encode(frame, np.arange(2), chunk_rows=0)


def test_encoding_holds_one_float32_copy_and_a_chunk() -> None:
    """tracemalloc sees numpy's buffers: fitting and encoding 60,000 rows of 11 columns peak at the float32
    result plus chunk-sized blocks (1.1 times the result when measured); the one-shot ColumnTransformer peaked
    at 4 times. A first small call builds the frame's own caches (pandas consolidates its blocks), which stay."""
    frame = generated_frame(60_000, groups=("a", "b", "c")).drop(columns=["label"])
    rows = np.arange(len(frame))
    TableEncoder(frame).encode(frame, rows[:10])
    tracemalloc.start()
    try:
        encoded = TableEncoder(frame).encode(frame, rows, chunk_rows=1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * encoded.nbytes


# ----- the loader --------------------------------------------------------------------------------

def test_csv_task_splits_equal_the_one_shot_encoding(write_csv) -> None:
    """Each split of a CSV task holds its rows encoded as the one-shot transform encoded them (split as the loader splits)."""
    path = write_csv(generated_frame(3000, groups=("a", "b", "c")))
    task = load_task(DataConfig(dataset="csv", csv=str(path), target="label", sensitive="group", positive="yes"), seed=5)
    frame = read_csv(path)
    y = binary_labels(frame["label"], positive="yes")
    s, _, parts = group_split(y, frame["group"], SplitConfig(), 5, stratify=True, min_group_size=None, column="group", label="label=yes")
    features = frame.drop(columns=["label", "group"])
    for name, split in task.splits().items():
        expected, names = one_shot(features, parts["source"], parts[name])
        assert split.inputs.numpy().tobytes() == expected.tobytes()
        assert np.array_equal(split.y, y[parts[name]]) and np.array_equal(split.s, s[parts[name]])
    assert task.feature_names == names


# ----- features --------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1, 64, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_features_are_the_activations_of_each_batch(batch_size: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = MLP(5, (8, 4)).to(dtype).eval()
    x = torch.randn(333, 5, dtype=dtype)
    backbone = torch.nn.Sequential(*list(model.children())[:-1])
    with torch.no_grad():
        expected = torch.cat([backbone(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).float()
    features = extract_features(model, model.output, x, batch_size=batch_size)
    assert features.dtype == torch.float32 and torch.equal(features, expected)


# ----- a prepared seed ---------------------------------------------------------------------------

def small_unit(path, method: str) -> Unit:
    data = DataConfig(dataset="csv", csv=str(path), target="label", sensitive="group", positive="yes")
    return Unit(data=data, pretrain=PretrainConfig(epochs=2, hidden=(8, 4)), finetune=FinetuneGrid(epochs=(2,), lrs=(0.01,)),
                method=method, seed=1)


def test_a_prepared_seed_keeps_features_and_reloads_the_same_inputs(write_csv, tmp_path) -> None:
    unit = small_unit(write_csv(generated_frame(1500)), "retrain-eo")
    prepared = prepare(unit, Environment(cache_dir=str(tmp_path)))
    assert set(vars(prepared)) == {"group_names", "model", "layer", "features", "reload", "_inputs"}
    assert prepared._inputs is None  # nothing but the features until a whole-model method asks
    task = load_task(unit.data, seed=unit.data_seed)
    inputs = prepared.inputs(unit.method)
    assert prepared.group_names == task.group_names
    for name, split in new_task_splits(task).items():
        assert torch.equal(inputs[name].x, split.inputs)
        assert np.array_equal(inputs[name].y.numpy(), split.y) and np.array_equal(inputs[name].s.numpy(), split.s)
        assert torch.equal(prepared.features[name].x, extract_features(prepared.model, prepared.layer, split.inputs))


def test_a_whole_model_unit_equals_its_fit_on_freshly_loaded_inputs(write_csv, tmp_path) -> None:
    unit = small_unit(write_csv(generated_frame(1500)), "retrain-eo")
    env = Environment(cache_dir=str(tmp_path))
    (result,) = execute([unit], env)
    prepared = prepare(unit, env)
    task = load_task(unit.data, seed=unit.data_seed)
    inputs = {name: TrainingData.from_arrays(split.inputs, split.y, split.s) for name, split in new_task_splits(task).items()}
    expected = compare_on_features(prepared.layer, prepared.features, [unit.method], unit.finetune, seed=unit.seed,
                                   model=prepared.model, inputs=inputs)[-1]
    assert {k: v for k, v in result.row.items() if k != "fit_seconds"} == {k: v for k, v in expected.row.items() if k != "fit_seconds"}
    assert result.selection == expected.selection
