"""Batched vs serial fine-tuning of the whole candidate grid on Adult features, measured in one run.

    PYTHONPATH=src .venv/bin/python benchmarks/batched.py [--seeds 10] [--epochs 5,20] [--cache-dir DIR] [--out FILE.json]

For each seed: the pre-trained MLP (cached in ``--cache-dir``) gives the last layer's input
features; TL, f+SVD and WIN give their candidate heads on the default grid (ranks 1, 2; lrs
0.001, 0.01; five operators: 26 heads) exactly as ``method.initial_head`` builds them. Then
each contender trains every head for ``max(epochs)`` epochs and predicts validation and test
labels at every checkpoint epoch:

serial        ``train_classifier`` per head, ``training.predict`` per head (today's path)
per seed      ``batched.train_candidates`` per seed, ``batched.predict_candidates``
all seeds     ``batched.train_candidate_sets``: every seed's heads in one loop

Reported: seconds (serial and per-seed batched alternate seed by seed, and "all seeds" runs
after every second seed, its median reported: so that the machine's load drifts over all of
them alike), ratios to serial, the load average, and the equality check: the largest |difference|
of any trained parameter between the serial and each batched path, how many validation/test
label vectors differ, and whether the candidate and epoch chosen on validation Err (and its test
labels) agree per method and seed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from fairtune.batched import CandidateSet, predict_candidates, train_candidate_sets, train_candidates
from fairtune.config import DataConfig, FinetuneGrid, PretrainConfig
from fairtune.data import load_task
from fairtune.factorization import find_linear
from fairtune.methods import build_method
from fairtune.metrics import evaluate
from fairtune.models import extract_features, pretrained_mlp
from fairtune.training import TrainingData, predict, train_classifier

METHODS = ("tl", "svd", "win")


def seed_features(seed: int, cache_dir: str) -> tuple[nn.Linear, dict[str, TrainingData]]:
    """Adult with the default split and MLP: the target layer and its input features per split."""
    task = load_task(DataConfig(dataset="adult"), seed=seed)
    model = pretrained_mlp(task, PretrainConfig(), seed=seed, cache_dir=cache_dir)
    _, layer = find_linear(model)
    splits = {name: split for name, split in task.splits().items() if name != "source"}
    return layer, {name: TrainingData.from_arrays(extract_features(model, layer, s.inputs), s.y, s.s) for name, s in splits.items()}


def candidates(layer: nn.Linear, train: TrainingData, grid: FinetuneGrid) -> list[tuple[str, Any, nn.Module]]:
    """(method, settings, initial head) of every candidate of TL, f+SVD and WIN."""
    out = []
    for name in METHODS:
        method = build_method(name, grid)
        context = method.prepare(layer, train, grid)
        out += [(name, params, method.initial_head(layer, context, params)) for params in method.candidates(layer, grid)]
    return out


Labels = dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]]  # (seed, candidate, epoch) -> (val, test)


def run_serial(seeds: list[dict], grid: FinetuneGrid) -> tuple[Labels, list[list[nn.Module]]]:
    labels: Labels = {}
    trained = []
    for s in seeds:
        heads = []
        for i, (_, params, head) in enumerate(s["candidates"]):
            def record(epoch: int, module: nn.Module, i: int = i) -> None:
                if epoch in grid.epochs:
                    labels[s["seed"], i, epoch] = (predict(module, s["data"]["val"].x), predict(module, s["data"]["test"].x))
            heads.append(train_classifier(copy.deepcopy(head), s["data"]["train"], epochs=max(grid.epochs), lr=params.lr,
                                          batch_size=grid.batch_size, seed=s["seed"], on_epoch=record))
        trained.append(heads)
    return labels, trained


def _record_batched(labels: Labels, s: dict, epoch: int, modules: list[nn.Module]) -> None:
    val, test = predict_candidates(modules, s["data"]["val"].x), predict_candidates(modules, s["data"]["test"].x)
    for i in range(len(modules)):
        labels[s["seed"], i, epoch] = (val[i], test[i])


def run_per_seed(seeds: list[dict], grid: FinetuneGrid) -> tuple[Labels, list[list[nn.Module]]]:
    labels: Labels = {}
    trained = []
    for s in seeds:
        heads = [copy.deepcopy(head) for _, _, head in s["candidates"]]
        trained.append(train_candidates(heads, [p.lr for _, p, _ in s["candidates"]], s["data"]["train"], epochs=max(grid.epochs),
                                        batch_size=grid.batch_size, seed=s["seed"], checkpoints=set(grid.epochs),
                                        on_checkpoint=lambda epoch, modules, s=s: _record_batched(labels, s, epoch, modules)))
    return labels, trained


def run_all_seeds(seeds: list[dict], grid: FinetuneGrid) -> tuple[Labels, list[list[nn.Module]]]:
    labels: Labels = {}
    sets = [CandidateSet([copy.deepcopy(h) for _, _, h in s["candidates"]], [p.lr for _, p, _ in s["candidates"]], s["data"]["train"], s["seed"])
            for s in seeds]

    def record(epoch: int, per_set: list[list[nn.Module]]) -> None:
        for s, modules in zip(seeds, per_set):
            _record_batched(labels, s, epoch, modules)

    trained = train_candidate_sets(sets, epochs=max(grid.epochs), batch_size=grid.batch_size, checkpoints=set(grid.epochs), on_checkpoint=record)
    return labels, trained


def selections(labels: Labels, seeds: list[dict]) -> dict[tuple[int, str], tuple[int, int, np.ndarray]]:
    """Per (seed, method): the (candidate, epoch) with the lowest validation Err (first on ties) and its test labels."""
    out: dict[tuple[int, str], tuple[float, int, int, np.ndarray]] = {}
    for s in seeds:
        val = s["data"]["val"]
        for (seed, i, epoch), (val_labels, test_labels) in sorted(labels.items(), key=lambda kv: kv[0]):
            if seed != s["seed"]:
                continue
            method = s["candidates"][i][0]
            err = evaluate(val.y.numpy(), val_labels, val.s.numpy())["err"]
            if (seed, method) not in out or err < out[seed, method][0]:
                out[seed, method] = (err, i, epoch, test_labels)
    return {key: value[1:] for key, value in out.items()}


def compare(serial: tuple[Labels, list[list[nn.Module]]], batched: tuple[Labels, list[list[nn.Module]]], seeds: list[dict]) -> dict[str, Any]:
    """Max |parameter difference|, differing label vectors, and agreement of the selections."""
    max_diff = max(float((p - q).detach().abs().max()) for a_heads, b_heads in zip(serial[1], batched[1])
                   for a, b in zip(a_heads, b_heads) for p, q in zip(a.parameters(), b.parameters()))
    unequal_heads = sum(not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
                        for a_heads, b_heads in zip(serial[1], batched[1]) for a, b in zip(a_heads, b_heads))
    differing = sum(not (np.array_equal(v[0], batched[0][k][0]) and np.array_equal(v[1], batched[0][k][1])) for k, v in serial[0].items())
    sel_a, sel_b = selections(serial[0], seeds), selections(batched[0], seeds)
    same_choice = sum(sel_a[k][:2] == sel_b[k][:2] for k in sel_a)
    same_test = sum(np.array_equal(sel_a[k][2], sel_b[k][2]) for k in sel_a)
    return {"max_abs_param_diff": max_diff, "heads_not_bitwise_equal": unequal_heads, "heads": sum(len(h) for h in serial[1]),
            "label_vectors_differing": differing, "label_vectors": len(serial[0]),
            "same_selection": f"{same_choice}/{len(sel_a)}", "same_test_predictions": f"{same_test}/{len(sel_a)}"}


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", default="5,20", help="checkpoint epochs (the grid's); training runs to the largest")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "fairtune-bench-cache"))
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    grid = FinetuneGrid(epochs=tuple(int(e) for e in args.epochs.split(",")))
    seeds = []
    for seed in range(args.seeds):
        layer, data = seed_features(seed, args.cache_dir)
        seeds.append({"seed": seed, "data": data, "candidates": candidates(layer, data["train"], grid)})
    print(f"{platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}, load average {os.getloadavg()}", flush=True)
    print(f"{len(seeds)} seeds x {len(seeds[0]['candidates'])} candidates, {max(grid.epochs)} epochs of "
          f"{-(-len(seeds[0]['data']['train']) // grid.batch_size)} batches, checkpoints {sorted(grid.epochs)}", flush=True)
    report: dict[str, Any] = {"load_average_start": os.getloadavg(), "seeds": len(seeds), "epochs": list(grid.epochs), "scopes": {}}
    # serial and per-seed batched alternate seed by seed (in alternating order), and every
    # second seed the all-seeds loop runs once: the machine's load drifts over all of them alike
    interleaved = {"serial": run_serial, "batched per seed": run_per_seed}
    seconds: dict[str, list[float]] = {name: [] for name in interleaved}
    results: dict[str, tuple[Labels, list[list[nn.Module]]]] = {name: ({}, []) for name in interleaved}
    stacked_seconds: list[float] = []
    for s in seeds:
        for name in (list(interleaved) if s["seed"] % 2 == 0 else list(reversed(interleaved))):
            elapsed, (labels, trained) = timed(lambda name=name: interleaved[name]([s], grid))
            seconds[name].append(elapsed)
            results[name][0].update(labels)
            results[name][1].extend(trained)
        if len(seeds) > 1 and s["seed"] % 2 == 1:
            elapsed, stacked = timed(lambda: run_all_seeds(seeds, grid))
            stacked_seconds.append(elapsed)
    scopes = {"1 seed": 1, f"{len(seeds)} seeds": len(seeds)} if len(seeds) > 1 else {"1 seed": 1}
    for scope, count in scopes.items():
        chosen = seeds[:count]
        rows = {name: {"seconds": round(sum(values[:count]), 3)} for name, values in seconds.items()}
        pick = {name: ({k: v for k, v in labels.items() if k[0] < count}, trained[:count]) for name, (labels, trained) in results.items()}
        rows["batched per seed"]["equality"] = compare(pick["serial"], pick["batched per seed"], chosen)
        if count > 1:
            rows["batched all seeds"] = {"seconds": round(float(np.median(stacked_seconds)), 3),
                                         "samples": [round(t, 2) for t in stacked_seconds],
                                         "equality": compare(pick["serial"], stacked, chosen)}
        for row in rows.values():
            row["ratio_to_serial"] = round(rows["serial"]["seconds"] / row["seconds"], 2)
        report["scopes"][scope] = rows
        print(f"\n{scope}: load average {os.getloadavg()}", flush=True)
        for name, row in rows.items():
            samples = f" (median of {row['samples']})" if "samples" in row else ""
            print(f"  {name:18s} {row['seconds']:9.2f} s   x{row['ratio_to_serial']:.1f}{samples}   {row.get('equality', '')}", flush=True)
    report["load_average_end"] = os.getloadavg()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2, default=str)


if __name__ == "__main__":
    main()
