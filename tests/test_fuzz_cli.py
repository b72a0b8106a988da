"""Property-based fuzzing of ``fairtune run`` on generated CSVs and flags (hypothesis).

Every run ends either in a complete, valid run folder (exit 0) or in one line on stderr with
exit code 2 and no output folder: never a traceback, never a partial folder.
"""

from __future__ import annotations

import shutil
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from fairtune.cli import app

RUN_FILES = {"results.csv", "summary.csv", "summary.md", "selections.json", "config.json"}
NAMES = st.text(alphabet=string.ascii_letters + "éß中 _-", min_size=1, max_size=6)
COLUMN_KINDS = ("float", "int", "text", "bool", "constant", "unicode")


#: One thing wrong with an otherwise valid case (None: nothing), with the fields it changes.
PERTURBATIONS: dict[str | None, dict] = {
    None: {},
    "header only": {"rows": 0}, "one row": {"rows": 1}, "seven rows": {"rows": 7},
    "one class": {"labels": "one class"}, "three classes": {"labels": "three classes"},
    "one group": {"group_weights": "one group"}, "continuous group": {"group_weights": "continuous"},
    "tiny group": {"group_weights": "one tiny"}, "some missing": {"missing": 0.02}, "all missing": {"missing": 1.0},
    "infinity": {"infinities": True}, "duplicate label": {"duplicate": "label"}, "duplicate group": {"duplicate": "group"},
    "duplicate feature": {"duplicate": "feature"}, "absent positive": {"positive": "nope"},
    "tiny split": {"split": "1,1,1"}, "split too large": {"split": "0.5,0.4,0.3"}, "negative split seed": {"split_seed": -1},
    "repeated method": {"methods": "tl,tl"}, "infinite anchor": {"methods": "win-anchor:inf"},
    "unknown method": {"methods": "nosuch"}, "rank 0": {"ranks": "0"}, "rank too large": {"ranks": "3"},
}


@st.composite
def csv_cases(draw: st.DrawFn) -> dict:
    """A valid table and flags, random in everything that may vary, with at most one thing made wrong.

    The table's values come from a seeded generator; its shape, column kinds and names, group
    names and the flags are drawn. About half the cases are valid and must run to the end.
    """
    case = {
        "seed": draw(st.integers(0, 2**16)),
        "rows": draw(st.sampled_from([60, 120, 200])),
        "features": draw(st.lists(st.tuples(NAMES, st.sampled_from(COLUMN_KINDS)), max_size=3)),
        "labels": draw(st.sampled_from(["yes/no", "0/1", "true/false"])),
        "groups": draw(st.lists(st.one_of(NAMES, st.integers(0, 99).map(str)), min_size=2, max_size=4, unique=True)),
        "group_weights": "even", "missing": 0.0, "infinities": False, "duplicate": None,
        "positive": None,
        "drop_missing": draw(st.booleans()),
        "keep_sensitive": draw(st.booleans()),
        "split": draw(st.sampled_from([None, "0.3,0.2,0.2"])),
        "split_seed": draw(st.sampled_from([None, 0, 3])),
        "min_group_size": draw(st.sampled_from([None, 5])),
        "methods": draw(st.sampled_from(["tl", "svd", "win", "win-anchor:0.5"])),
        "ranks": "1",
        "save_predictions": draw(st.booleans()),
    }
    case["positive"] = {"yes/no": "yes", "0/1": draw(st.sampled_from([None, "1"])), "true/false": None}[case["labels"]]
    pick = draw(st.integers(0, 2**16))  # spread evenly over the perturbations (sampled_from favours the first ones)
    wrong = None if pick % 2 else list(PERTURBATIONS)[1 + (pick // 2) % (len(PERTURBATIONS) - 1)]
    return {**case, **PERTURBATIONS[wrong], "wrong": wrong}


def column(kind: str, rows: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "float":
        return rng.normal(size=rows)
    if kind == "int":
        return rng.integers(-5, 5, rows)
    if kind == "text":
        return rng.choice(["red", "green", "blue"], rows)
    if kind == "bool":
        return rng.random(rows) < 0.5
    if kind == "unicode":
        return rng.choice(["ä", "中文", "emoji 🙂", "a,b", 'quote"d'], rows)
    return np.full(rows, 7.0)


def write_case(case: dict, path: Path) -> None:
    rng = np.random.default_rng(case["seed"])
    rows = case["rows"]
    x = rng.normal(size=rows)
    columns: list[tuple[str, np.ndarray]] = [("x", x)]
    columns += [(f"{name}{i}", column(kind, rows, rng)) for i, (name, kind) in enumerate(case["features"])]
    groups = np.array(case["groups"], dtype=object)
    if case["group_weights"] == "continuous":
        group = rng.normal(size=rows).round(4).astype(str)
    elif case["group_weights"] == "one group":
        group = np.full(rows, groups[0])
    else:
        weights = np.ones(len(groups))
        if case["group_weights"] == "one tiny":
            weights[-1] = 0.03
        group = rng.choice(groups, rows, p=weights / weights.sum())
    score = x + 0.3 * rng.normal(size=rows)
    label = {
        "yes/no": np.where(score > 0, "yes", "no"), "0/1": (score > 0).astype(int), "one class": np.full(rows, "yes"),
        "three classes": rng.choice(["a", "b", "c"], rows), "true/false": np.where(score > 0, "true", "false"),
    }[case["labels"]]
    columns += [("group", group), ("label", label)]
    frame = pd.DataFrame({f"c{i}": values for i, (_, values) in enumerate(columns)})
    names = [name for name, _ in columns]
    if case["missing"] and rows:
        frame = frame.astype(object)
        holes = rng.random(frame.shape) < case["missing"]
        frame = frame.mask(holes)
    if case["infinities"] and rows:
        frame.iloc[rng.integers(0, rows), 0] = np.inf
    if case["duplicate"] == "label":
        names[0] = "label"
    elif case["duplicate"] == "group":
        names[0] = "group"
    elif case["duplicate"] == "feature" and len(names) > 3:
        names[1] = names[0]
    frame.columns = names  # possibly duplicated: pandas writes them as they are
    frame.to_csv(path, index=False)


def flags(case: dict, csv: Path, out: Path) -> list[str]:
    args = ["run", "--dataset", "csv", "--csv", str(csv), "--target", "label", "--sensitive", "group", "--out", str(out),
            "--seeds", "1", "--pretrain-epochs", "1", "--hidden", "4", "--epochs", "1", "--lrs", "0.01",
            "--operators", "mean", "--methods", case["methods"], "--ranks", case["ranks"], "--quiet"]
    optional = {"--positive": case["positive"], "--split": case["split"], "--split-seed": case["split_seed"],
                "--min-group-size": case["min_group_size"]}
    args += [item for flag, value in optional.items() if value is not None for item in (flag, str(value))]
    args += [flag for flag, on in (("--drop-missing", case["drop_missing"]), ("--keep-sensitive", case["keep_sensitive"]),
                                   ("--save-predictions", case["save_predictions"])) if on]
    return args


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=csv_cases())
def test_every_run_ends_in_a_complete_folder_or_one_line(case: dict, workspace: Path) -> None:
    shutil.rmtree(workspace / "case", ignore_errors=True)
    (workspace / "case").mkdir()
    csv, out = workspace / "case" / "data.csv", workspace / "case" / "out"
    write_case(case, csv)
    result = CliRunner().invoke(app, flags(case, csv, out), env={"FAIRTUNE_CACHE": str(workspace / "cache")})
    assert result.exception is None or isinstance(result.exception, SystemExit), (case, repr(result.exception))
    assert "Traceback" not in result.output
    leftovers = [p.name for p in (workspace / "case").iterdir() if p.name.startswith(".out.") and not p.name.endswith(".lock")]
    assert not leftovers, leftovers
    if result.exit_code == 0:
        expected = RUN_FILES | ({"predictions.csv"} if case["save_predictions"] else set())
        assert {p.name for p in out.iterdir()} == expected
        results = pd.read_csv(out / "results.csv")
        assert len(results) >= 2 and results[["err", "delta_dp", "delta_eo"]].notna().all().all()
        assert np.isfinite(results[["err", "delta_dp", "delta_eo"]].to_numpy()).all()
    else:
        assert result.exit_code == 2, (case, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fairtune: error: "), (case, result.stderr)
        assert not out.exists()
