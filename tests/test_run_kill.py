"""``fairtune run --overwrite`` killed with SIGKILL at random points: the old folder intact, or the new one complete."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from conftest import generated_frame

RUN_FILES = {"results.csv", "summary.csv", "summary.md", "selections.json", "config.json"}


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def command(csv: Path, out: Path, methods: str, cache: Path) -> list[str]:
    return [sys.executable, "-m", "fairtune.cli", "run", "--dataset", "csv", "--csv", str(csv), "--target", "label",
            "--sensitive", "group", "--positive", "yes", "--out", str(out), "--overwrite", "--seeds", "1",
            "--pretrain-epochs", "1", "--hidden", "8", "--epochs", "2", "--lrs", "0.01", "--ranks", "1",
            "--operators", "mean", "--methods", methods, "--cache-dir", str(cache), "--quiet"]


def one_complete_run(out: Path) -> str:
    """The methods of the run that ``out`` holds, after checking that its files are all there and agree."""
    assert {p.name for p in out.iterdir()} == RUN_FILES
    methods = json.loads((out / "config.json").read_text())["config"]["methods"]
    assert set(pd.read_csv(out / "results.csv")["method"]) == {"pretrained", *methods}
    assert set(pd.read_csv(out / "summary.csv")["method"]) == {"pretrained", *methods}
    assert {s["method"] for s in json.loads((out / "selections.json").read_text())} == set(methods)
    return ",".join(methods)


def test_run_killed_at_random_points_leaves_the_old_folder_or_the_new_one(tmp_path: Path) -> None:
    csv = tmp_path / "data.csv"
    generated_frame(600).to_csv(csv, index=False)
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.run(command(csv, out, "tl", cache), capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    rng = random.Random(0)
    for attempt in range(6):
        before, before_methods = snapshot(out), one_complete_run(out)
        methods = "svd" if before_methods == "tl" else "tl"
        process = subprocess.Popen(command(csv, out, methods, cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
        if attempt % 2:  # kill while the new files are written or swapped in: the riskiest moment
            deadline = time.monotonic() + 120
            while not list(tmp_path.glob(".out.staging-*")) and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.1))  # writing and swapping took 70-80 ms here
        else:  # at any moment of the run
            time.sleep(rng.uniform(0.5, 6.0))
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        now = one_complete_run(out)  # never a partial folder
        if now == before_methods:
            assert snapshot(out) == before, "the old folder changed"
        else:
            assert now == methods
    final = subprocess.run(command(csv, out, "win", cache), capture_output=True, text=True, env=env, timeout=300)
    assert final.returncode == 0, final.stderr  # the lock died with the killed process; leftovers are cleaned
    assert one_complete_run(out) == "win"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []  # no staging, old folder or lock left


def test_ctrl_c_with_local_processes_ends_in_one_line_and_no_folder(tmp_path: Path) -> None:
    csv = tmp_path / "data.csv"
    generated_frame(600).to_csv(csv, index=False)
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    args = command(csv, out, "tl,svd,win", cache) + ["--processes", "2"]
    args[args.index("--seeds") + 1] = "4"
    # Ctrl-C's default disposition, also where this test itself runs with SIGINT ignored (a shell's background job)
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while not list(cache.glob("models/*.safetensors")):  # pre-trained in a worker: the workers are busy
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does in a terminal: the whole process group
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 130
    assert "Traceback" not in stderr and "fairtune: interrupted" in stderr
    assert not out.exists()
