"""Sweeps: same results as ``run``, on local processes and on a Dask cluster; reproducible; resumable after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fairtune.experiments import RunConfig, run
from fairtune.experiments import ProcessExecutor, choose_executor
from fairtune.experiments.sweep import SweepConfig, completed_units, load_sweep_config, sweep

METRICS = ["err", "delta_dp", "delta_eo", "trainable_params"]
TINY_GRID = {"ranks": [1], "lrs": [0.01], "epochs": [2], "operators": ["mean"]}


def sweep_dict(csv: Path, cache: Path, *, seeds: int = 2, methods: tuple[str, ...] = ("tl", "win")) -> dict:
    return {
        "datasets": {"toy": {"dataset": "csv", "csv": str(csv), "target": "label", "sensitive": "group", "positive": "yes"}},
        "methods": list(methods),
        "settings": {"tiny": TINY_GRID},
        "seeds": seeds,
        "pretrain": {"hidden": [8], "epochs": 2},
        "cache_dir": str(cache),
    }


@pytest.fixture
def tiny(write_csv, tmp_path: Path) -> SweepConfig:
    return SweepConfig.model_validate(sweep_dict(write_csv(n_rows=600), tmp_path / "cache"))


def metrics_by_unit(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index(["method", "seed"])[METRICS].sort_index()


def test_sweep_equals_run_and_is_reproducible(tiny: SweepConfig, tmp_path: Path) -> None:
    first = sweep(tiny, tmp_path / "a")
    reference = run(RunConfig(data=tiny.datasets["toy"], pretrain=tiny.pretrain, finetune=tiny.settings["tiny"],
                              methods=tiny.methods, seeds=tiny.seeds, cache_dir=tiny.cache_dir), progress=False)
    # one pretrained row per seed, then one row per method and seed, in grid order
    assert list(first["method"]) == ["pretrained", "tl", "win"] * 2
    assert list(first["seed"]) == [0, 0, 0, 1, 1, 1]
    pd.testing.assert_frame_equal(metrics_by_unit(first), metrics_by_unit(reference.results))
    second = sweep(tiny, tmp_path / "b")
    pd.testing.assert_frame_equal(first.drop(columns="fit_seconds"), second.drop(columns="fit_seconds"))
    assert pd.read_csv(tmp_path / "a" / "results.csv").shape == first.shape


def test_sweep_on_dask_cluster_equals_local(tiny: SweepConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    distributed = pytest.importorskip("distributed")
    local = sweep(tiny, tmp_path / "local")
    with distributed.LocalCluster(n_workers=1, processes=True, threads_per_worker=1, dashboard_address=None,
                                  host="127.0.0.1") as cluster:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)  # the dask convention, no flag
        on_dask = sweep(tiny, tmp_path / "dask", executor=choose_executor(processes=1))
    pd.testing.assert_frame_equal(local.drop(columns="fit_seconds"), on_dask.drop(columns="fit_seconds"))


def test_sweep_killed_midway_resumes_without_recomputing(write_csv, tmp_path: Path) -> None:
    config = sweep_dict(write_csv(n_rows=600), tmp_path / "cache", seeds=6, methods=("tl", "svd"))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    units = out / "units"
    command = [sys.executable, "-m", "fairtune.cli", "sweep", str(path), "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (units.is_dir() and len(list(units.glob("*.json"))) >= 2):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no unit finished in time"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    stored = {p: p.stat().st_mtime_ns for p in units.glob("*.json")}
    assert 2 <= len(stored) < 18, "the sweep should be killed midway"
    assert not (out / "results.csv").exists()  # written only once every unit is done, atomically
    for unit_file in stored:  # complete JSON; a torn temporary file (.NAME.tmp) is never taken for a unit
        assert json.loads(unit_file.read_text())["row"]
    grid = load_sweep_config(path)
    assert len(completed_units(grid, out)) == len(stored)

    restarted = subprocess.run(command + ["--processes", "2"], capture_output=True, text=True, timeout=300)
    assert restarted.returncode == 0, restarted.stderr
    assert f"({len(stored)} reused" in restarted.stdout
    assert {p: p.stat().st_mtime_ns for p in stored} == stored  # no finished unit recomputed
    assert len(list(units.glob("*.json"))) == 18  # 6 seeds x (pretrained, tl, svd)
    resumed = pd.read_csv(out / "results.csv")
    uninterrupted = sweep(grid, tmp_path / "reference")
    pd.testing.assert_frame_equal(resumed.drop(columns="fit_seconds"),
                                  uninterrupted.drop(columns="fit_seconds"), check_dtype=False)


def test_run_in_processes_gives_the_rows_of_run(tiny: SweepConfig) -> None:
    config = RunConfig(data=tiny.datasets["toy"], pretrain=tiny.pretrain, finetune=tiny.settings["tiny"],
                       methods=("tl", "svd", "win"), seeds=(0, 1), cache_dir=tiny.cache_dir)
    serial = run(config, keep_predictions=True, progress=False)
    parallel = run(config, keep_predictions=True, progress=False, executor=ProcessExecutor(2))
    pd.testing.assert_frame_equal(parallel.results.drop(columns="fit_seconds"), serial.results.drop(columns="fit_seconds"))
    pd.testing.assert_frame_equal(parallel.predictions, serial.predictions)
    assert parallel.selections == serial.selections
