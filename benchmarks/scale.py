"""How `fairtune run` grows with the rows of a tabular CSV: wall time and peak RSS, 12k to 1M rows.

    PYTHONPATH=src .venv/bin/python benchmarks/scale.py [--rows 12000,100000,1000000] [--seeds 3]
        [--methods tl,svd,win] [--extra "--epochs 5"] [--out FILE.json] [--keep DIR]

The CSV is made here, in a temporary folder: Adult's complete rows (bundled) drawn with
replacement to the requested size, every numeric column jittered with Gaussian noise of 5 %
of its standard deviation (rounded like the column), so that no two rows need be equal. Each
size then runs end to end through the command line in a fresh process,

    fairtune run --dataset csv --csv FILE --target income --sensitive sex --positive >50K
                 --seeds N --methods ... --out DIR --cache-dir DIR(empty) [extra]

(data loading, pre-training on the source split, features, fine-tuning, selection, writing),
with the grid's defaults unless ``--extra`` changes them. Per size it reports the wall time,
the CPU time, the peak resident memory (``ru_maxrss`` of that process, from ``wait4``), the
part of it above a process that only imports what `fairtune run` imports (the libraries: about
0.9 GB, the same at every size), and the seconds per stage from the run's ``config.json``.
Between each size and the next it reports time and memory against linear growth in rows
(1.0 = linear), and the figure issue 11 judges: the cost from 100k to 1M rows in multiples of
linear (at most 1.3), in wall time and in CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fairtune.data import load_adult_frame

NOISE = 0.05  # of each numeric column's standard deviation
#: The rows between which issue 11 judges the growth of the run's time, and its bound in multiples of linear.
JUDGED_ROWS, JUDGED_BOUND = (100_000, 1_000_000), 1.3
#: What `fairtune run` imports before it reads any data: the memory that does not grow with rows.
IMPORTS = "import fairtune.cli, fairtune.experiments.run"
#: Runs the command in its arguments and prints its peak RSS (kB) and CPU seconds (user + system) to stdout. On Linux a child's ``ru_maxrss``
#: starts at the resident memory of the process that started it (it is carried over at exec), so the
#: measured command is started from this small process, not from the benchmark, which holds pandas,
#: torch and the generated table (about 0.9 GB: more than `fairtune run` needs at 100k rows).
PEAK_RSS = ("import os, subprocess, sys; process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "_, status, usage = os.wait4(process.pid, 0); print(usage.ru_maxrss, usage.ru_utime + usage.ru_stime); "
            "sys.exit(os.waitstatus_to_exitcode(status))")


def resampled_adult(rows: int, seed: int = 0) -> pd.DataFrame:
    """``rows`` Adult rows drawn with replacement, numeric columns jittered (integers stay integers, ≥ 0)."""
    rng = np.random.default_rng(seed)
    frame = load_adult_frame()
    sample = frame.iloc[rng.integers(0, len(frame), size=rows)].reset_index(drop=True)
    for column in sample.select_dtypes("number").columns:
        values = sample[column].to_numpy(dtype=float)
        jittered = np.clip(values + rng.normal(0.0, NOISE * frame[column].std(), size=rows), 0, None)
        sample[column] = np.rint(jittered).astype(np.int64) if pd.api.types.is_integer_dtype(frame[column]) else jittered
    return sample


def measured(command: list[str]) -> dict[str, float]:
    """Run ``command`` in a fresh process: its wall seconds, CPU seconds and peak RSS (MB); a RuntimeError with its
    stderr if it fails.

    The CPU seconds are reported beside the wall time because a run at ``nice -n 19`` on a shared
    machine waits for every other job: its wall time then measures the other jobs as much as itself.
    Its stderr goes to a file: a pipe read only after the process ends would block it once full.
    """
    with tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        process = subprocess.run([sys.executable, "-c", PEAK_RSS, *command], stdout=subprocess.PIPE, stderr=stderr, text=True)
        seconds = time.perf_counter() - start
        if process.returncode != 0:
            stderr.seek(0)
            raise RuntimeError(f"{shlex.join(command[:4])} ... failed ({process.returncode}): {stderr.read()[-2000:]}")
    peak_kb, cpu_seconds = process.stdout.split()
    return {"wall_s": round(seconds, 1), "cpu_s": round(float(cpu_seconds), 1), "peak_rss_mb": round(int(peak_kb) / 1024, 1)}


def run_command(csv: Path, out: Path, cache: Path, seeds: int, methods: str, extra: list[str]) -> list[str]:
    """The `fairtune run` command of one size (a fresh output folder and an empty cache)."""
    return [sys.executable, "-m", "fairtune.cli", "run", "--dataset", "csv", "--csv", str(csv), "--target", "income",
            "--sensitive", "sex", "--positive", ">50K", "--seeds", str(seeds), "--methods", methods,
            "--out", str(out), "--cache-dir", str(cache), "--quiet", *extra]


def growth(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """From one size to a larger one: rows, time and memory as ratios, and each in multiples of linear growth."""
    rows_x = after["rows"] / before["rows"]
    ratios = {"from_rows": before["rows"], "to_rows": after["rows"], "rows_x": round(rows_x, 2)}
    for key, name in (("wall_s", "time"), ("cpu_s", "cpu"), ("peak_rss_mb", "peak_rss"), ("data_rss_mb", "data_rss")):
        x = after[key] / before[key]
        ratios |= {f"{name}_x": round(x, 2), f"{name}_vs_linear": round(x / rows_x, 3)}
    return ratios


def commit() -> str | None:
    """The measured code's git commit (None outside a git checkout), with ``+`` if it has uncommitted changes."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if dirty.strip() else "")


def machine() -> dict[str, object]:
    """The machine, for the record: host, CPU model and count, memory."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    return {"host": platform.node(), "cpus": os.cpu_count(), "cpu": cpu, "memory_gb": round(memory_kb / 2**20, 1),
            "python": platform.python_version()}


def measure_size(rows: int, root: Path, args: argparse.Namespace, imports_mb: float) -> dict[str, object]:
    """Make the CSV of ``rows`` rows, run `fairtune run` on it, and return its row of the table."""
    csv = root / f"adult-{rows}.csv"
    start = time.perf_counter()
    resampled_adult(rows).to_csv(csv, index=False)
    made = time.perf_counter() - start
    load_before = os.getloadavg()[0]
    result = measured(run_command(csv, root / f"run-{rows}", root / f"cache-{rows}", args.seeds, args.methods, shlex.split(args.extra)))
    stages = json.loads((root / f"run-{rows}" / "config.json").read_text())["stage_seconds"]
    return {"rows": rows, "csv_mb": round(csv.stat().st_size / 2**20, 1), "csv_made_s": round(made, 1), **result,
            "data_rss_mb": round(result["peak_rss_mb"] - imports_mb, 1), "stage_seconds": stages,
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def judged(table: list[dict[str, object]]) -> dict[str, object] | None:
    """Issue 11's figure: the cost from 100k to 1M rows in multiples of linear, wall time and CPU time, against
    its bound (None without both sizes)."""
    by_rows = {row["rows"]: row for row in table}
    if not all(rows in by_rows for rows in JUDGED_ROWS):
        return None
    ratios = growth(*(by_rows[rows] for rows in JUDGED_ROWS))
    return {**ratios, "bound": JUDGED_BOUND, "time_within_bound": ratios["time_vs_linear"] <= JUDGED_BOUND,
            "cpu_within_bound": ratios["cpu_vs_linear"] <= JUDGED_BOUND}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="12000,100000,1000000", help="comma-separated sizes, run in increasing order")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default="tl,svd,win")
    parser.add_argument("--extra", default="", help="more `fairtune run` options, e.g. \"--epochs 5\" (default: the grid's defaults)")
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    parser.add_argument("--keep", default=None, help="folder for the CSVs and runs (default: a temporary one, removed)")
    args = parser.parse_args()
    sizes = sorted(int(r) for r in args.rows.split(","))
    imports_mb = measured([sys.executable, "-c", IMPORTS])["peak_rss_mb"]
    print(f"{platform.node()}: {os.cpu_count()} CPUs, load average {os.getloadavg()}; imports alone {imports_mb:.0f} MB", flush=True)
    print(f"`fairtune run` on Adult resampled with noise, {args.seeds} seeds, methods {args.methods} {args.extra}", flush=True)
    table = []
    with tempfile.TemporaryDirectory(prefix="fairtune-scale-") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        for rows in sizes:
            table.append(measure_size(rows, root, args, imports_mb))
            row = table[-1]
            print(f"{rows:>9,d} rows: {row['wall_s']:8.1f} s ({row['cpu_s']:7.1f} s CPU)  peak RSS {row['peak_rss_mb']:7.1f} MB ({row['data_rss_mb']:7.1f} above imports)"
                  f"  load {row['load_average'][0]:.1f}-{row['load_average'][1]:.1f}", flush=True)
    steps = [growth(before, after) for before, after in zip(table, table[1:])]
    for step in steps:
        print(f"{step['from_rows']:,} -> {step['to_rows']:,} rows (x{step['rows_x']:g}): time x{step['time_x']:.2f} "
              f"({step['time_vs_linear']:.2f} of linear), CPU x{step['cpu_x']:.2f} ({step['cpu_vs_linear']:.2f}), peak RSS x{step['peak_rss_x']:.2f} ({step['peak_rss_vs_linear']:.2f} of linear), "
              f"above imports x{step['data_rss_x']:.2f} ({step['data_rss_vs_linear']:.2f} of linear)")
    verdict = judged(table)
    if verdict:
        print(f"100k -> 1M rows: time {verdict['time_vs_linear']:.2f} x linear, CPU {verdict['cpu_vs_linear']:.2f} x linear "
              f"(bound {JUDGED_BOUND}): {'within' if verdict['time_within_bound'] and verdict['cpu_within_bound'] else 'OVER'}")
    if args.out:
        record = {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "niceness": os.nice(0),
                  "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "commit": commit(), "machine": machine(), "seeds": args.seeds,
                  "methods": args.methods, "extra": args.extra, "imports_rss_mb": imports_mb, "table": table, "growth": steps,
                  "judged": verdict}
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
