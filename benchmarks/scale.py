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
and its wall time and peak resident memory (``ru_maxrss`` of that process, from ``wait4``)
are reported, with the growth from each size to the next against linear growth in rows.
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


def run_once(csv: Path, out: Path, cache: Path, seeds: int, methods: str, extra: list[str]) -> dict[str, float]:
    """One `fairtune run` in a fresh process: wall seconds, peak RSS (MB) and its exit code."""
    command = [sys.executable, "-m", "fairtune.cli", "run", "--dataset", "csv", "--csv", str(csv), "--target", "income",
               "--sensitive", "sex", "--positive", ">50K", "--seeds", str(seeds), "--methods", methods,
               "--out", str(out), "--cache-dir", str(cache), *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    stderr = process.stderr.read() if process.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"fairtune run failed ({code}): {stderr[-2000:]}")
    return {"wall_s": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="12000,100000,1000000")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default="tl,svd,win")
    parser.add_argument("--extra", default="", help="more `fairtune run` options, e.g. \"--epochs 5\"")
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    parser.add_argument("--keep", default=None, help="folder for the CSVs and runs (default: a temporary one, removed)")
    args = parser.parse_args()
    sizes = [int(r) for r in args.rows.split(",")]
    print(f"{platform.node()}: {os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)
    print(f"`fairtune run` on Adult resampled with noise, {args.seeds} seeds, methods {args.methods} {args.extra}", flush=True)
    table = []
    with tempfile.TemporaryDirectory(prefix="fairtune-scale-") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        for rows in sizes:
            csv = root / f"adult-{rows}.csv"
            start = time.perf_counter()
            resampled_adult(rows).to_csv(csv, index=False)
            made = time.perf_counter() - start
            result = run_once(csv, root / f"run-{rows}", root / f"cache-{rows}", args.seeds, args.methods, shlex.split(args.extra))
            table.append({"rows": rows, "csv_mb": round(csv.stat().st_size / 2**20, 1), "csv_made_s": round(made, 1), **result,
                          "load_average": os.getloadavg()[0]})
            print(f"{rows:>9,d} rows: {result['wall_s']:8.1f} s  peak RSS {result['peak_rss_mb']:8.1f} MB"
                  f"   (CSV {table[-1]['csv_mb']} MB made in {made:.1f} s; load {os.getloadavg()[0]:.1f})", flush=True)
    for before, after in zip(table, table[1:]):
        rows_x = after["rows"] / before["rows"]
        print(f"{before['rows']:,} -> {after['rows']:,} rows (x{rows_x:.1f}): time x{after['wall_s'] / before['wall_s']:.2f} "
              f"({after['wall_s'] / before['wall_s'] / rows_x:.2f} of linear), peak RSS x{after['peak_rss_mb'] / before['peak_rss_mb']:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"seeds": args.seeds, "methods": args.methods, "extra": args.extra, "table": table}, indent=2))


if __name__ == "__main__":
    main()
