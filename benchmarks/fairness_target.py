"""Issue 12's goal table: fairness the user can set, on Adult (10 seeds, a constraint and a tolerance ε).

    PYTHONPATH=src python benchmarks/fairness_target.py [--seeds 0-9] [--constraint eo] [--tolerance 0.05]
        [--methods tl,tl+thr,lagrange,lagrange+thr,to,eg,rto,fairret,win,win+thr] [--out runs/fairness-target]

Per seed, as ``fairtune run`` does: split Adult, pre-train the MLP (cached under ``--cache-dir``),
take the last layer's inputs per split, fine-tune on train, choose settings on validation, score
on test. Every row is one method; "s at prediction" says whether it needs the sensitive attribute
to predict (group thresholds, ThresholdOptimizer, RelaxedThresholdOptimizer) or not.

=============  ================================================================================
tl, win        TL / WIN without a target (settings: lowest validation Err)
tl+thr         TL, then group thresholds (:func:`fairtune.constraints.fit_group_thresholds`) fitted on
               train + validation pooled, for the gap expected on a new split (``thr-sample``: the
               gap on the fitting data itself)
lagrange       TL's layer trained by :func:`fairtune.constraints.train_constrained` (gap measured on
               train + validation pooled), settings chosen by :func:`select_under_target` on validation
lagrange+thr   the same model, then group thresholds as tl+thr
to, eg         fairlearn ThresholdOptimizer / ExponentiatedGradient (today's peers, ``fairlearn-to-eo``...)
rto            error-parity RelaxedThresholdOptimizer at ε (``l_p_norm=1``) on a logistic regression
fairret        fairret NormLoss on TL's layer, strength and settings by :func:`select_under_target`
=============  ================================================================================

Each seed's rows are stored in ``OUT/seed<k>.json`` as soon as they are measured (a rerun skips
them); the table is printed from all stored rows: mean Err, test ΔEO (mean ± std), test ΔDP, seeds
whose test gap met ε, seeds whose validation gap met ε (the selection's flag), mean fit seconds.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from fairtune.config import DataConfig, FinetuneGrid
from fairtune.constraints import FairnessTarget, fit_group_thresholds, select_under_target, train_constrained
from fairtune.data import load_task
from fairtune.experiments.run import RunConfig, pretrained_model, split_features
from fairtune.factorization import find_linear
from fairtune.methods import get_method
from fairtune.methods.tolerance_peers import FAIRRET_STRENGTHS, FairretNormLossPeer, RelaxedThresholdPeer
from fairtune.metrics import evaluate
from fairtune.training import TrainingData, predict, predict_proba, train_classifier

WITH_S, WITHOUT_S = "s at prediction", "no s at prediction"
ALL_METHODS = ("tl", "tl+thr", "lagrange", "lagrange+thr", "to", "eg", "rto", "fairret", "win", "win+thr")


def metrics(y_pred: np.ndarray, data: TrainingData) -> dict[str, float]:
    return evaluate(data.y.numpy(), y_pred, data.s.numpy())


def pooled(a: TrainingData, b: TrainingData) -> TrainingData:
    return TrainingData(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]), torch.cat([a.s, b.s]))


def best_by_epochs(train_one: Callable[[float, Callable[[int, nn.Module], None]], None], grid: FinetuneGrid,
                   val: TrainingData, pick: Callable[[list[dict[str, float]]], tuple[int, bool]]) -> tuple[nn.Module, bool]:
    """Train one run per learning rate, checkpoint at the grid's epochs, and keep ``pick``'s choice by validation metrics."""
    checkpoints, found = set(grid.epochs), []

    def keep(epoch: int, module: nn.Module) -> None:
        if epoch in checkpoints:
            found.append((metrics(predict(module, val.x), val), copy.deepcopy(module)))

    for lr in grid.lrs:
        train_one(lr, keep)
    index, met = pick([m for m, _ in found])
    return found[index][1], met


def lowest_err(candidates: list[dict[str, float]]) -> tuple[int, bool]:
    return min(range(len(candidates)), key=lambda i: candidates[i]["err"]), True


def run_seed(seed: int, methods: tuple[str, ...], target: FairnessTarget, cache_dir: str) -> list[dict[str, Any]]:
    config = RunConfig(cache_dir=cache_dir)
    grid = config.finetune
    task = load_task(DataConfig(), seed=seed)
    model = pretrained_model(task, config, seed)
    _, layer = find_linear(model, None)
    features = split_features(model, layer, {k: v for k, v in task.splits().items() if k != "source"})
    train, val, test = features["train"], features["val"], features["test"]
    fit_data = pooled(train, val)
    torch.manual_seed(seed)
    rows: list[dict[str, Any]] = []
    within = lambda candidates: select_under_target(candidates, target)  # noqa: E731

    def record(method: str, setting: str, y_pred: np.ndarray, start: float, val_met: bool | None = None) -> None:
        rows.append({"method": method, "setting": setting, "seed": seed, "tolerance": target.tolerance, **metrics(y_pred, test),
                     "val_met": val_met, "fit_seconds": round(time.perf_counter() - start, 2)})

    def thresholds(name: str, module: nn.Module, start: float, estimate: str = "expected") -> None:
        scores = predict_proba(module, fit_data.x)
        fitted = fit_group_thresholds(scores, fit_data.y, fit_data.s, FairnessTarget(target.constraint, target.tolerance, estimate))
        val_pred = fitted.predict(predict_proba(module, val.x), val.s)
        record(name, WITH_S, fitted.predict(predict_proba(module, test.x), test.s), start,
               metrics(val_pred, val)[target.metric] <= target.tolerance)

    if {"tl", "tl+thr"} & set(methods):
        start = time.perf_counter()
        tl, _ = best_by_epochs(lambda lr, keep: train_classifier(copy.deepcopy(layer), train, epochs=max(grid.epochs), lr=lr, seed=seed, on_epoch=keep),
                               grid, val, lowest_err)
        record("TL", WITHOUT_S, predict(tl, test.x), start)
        if "tl+thr" in methods:
            thresholds("TL + thresholds", tl, start)
            thresholds("TL + thresholds (sample)", tl, start, "sample")
    if {"lagrange", "lagrange+thr"} & set(methods):
        start = time.perf_counter()
        fair, met = best_by_epochs(lambda lr, keep: train_constrained(
            copy.deepcopy(layer), train, target=target, epochs=max(grid.epochs), lr=lr, seed=seed, on_epoch=keep, constraint_data=fit_data),
            grid, val, within)
        record("TL constrained (Lagrangian)", WITHOUT_S, predict(fair, test.x), start, met)
        if "lagrange+thr" in methods:
            thresholds("TL constrained + thresholds", fair, start)
    for name, spec, setting in (("fairlearn ThresholdOptimizer", "fairlearn-to-" + target.constraint, WITH_S),
                                ("fairlearn ExponentiatedGradient", "fairlearn-eg-" + target.constraint, WITHOUT_S)):
        if spec.split("-")[1] in methods:
            start = time.perf_counter()
            method = get_method(spec)
            fitted = [method.fit(layer, train, None, params, epochs=1, batch_size=grid.batch_size, seed=seed) for params in method.candidates(layer, grid)]
            best = min(fitted, key=lambda f: metrics(f.predict(val.x, val.s), val)["err"])
            record(name, setting, best.predict(test.x, test.s), start)
    if "rto" in methods:
        start = time.perf_counter()
        peer = RelaxedThresholdPeer(target, seed=seed).fit(train)
        record("error-parity RelaxedThresholdOptimizer", WITH_S, peer.predict(test.x, test.s), start,
               metrics(peer.predict(val.x, val.s), val)[target.metric] <= target.tolerance)
    if "fairret" in methods:
        start = time.perf_counter()
        found = []
        for strength in FAIRRET_STRENGTHS:
            for lr in grid.lrs:
                FairretNormLossPeer(target, strength=strength, lr=lr, epochs=max(grid.epochs), seed=seed).fit(
                    layer, train, on_epoch=lambda epoch, peer: found.append((metrics(peer.predict(val.x), val), copy.deepcopy(peer.module_)))
                    if epoch in grid.epochs else None)
        index, met = within([m for m, _ in found])
        record("fairret NormLoss", WITHOUT_S, predict(found[index][1], test.x), start, met)
    if {"win", "win+thr"} & set(methods):
        start = time.perf_counter()
        method = get_method("win")
        context = method.prepare(layer, train, grid)
        found = []
        for params in method.candidates(layer, grid):
            method.fit(layer, train, context, params, epochs=max(grid.epochs), batch_size=grid.batch_size, seed=seed,
                       on_epoch=lambda epoch, f: found.append((metrics(f.predict(val.x), val), copy.deepcopy(f.module))) if epoch in grid.epochs else None)
        index, _ = lowest_err([m for m, _ in found])
        record("WIN", WITHOUT_S, predict(found[index][1], test.x), start)
        if "win+thr" in methods:
            thresholds("WIN + thresholds", found[index][1], start)
    return rows


def summary(rows: pd.DataFrame, target: FairnessTarget) -> pd.DataFrame:
    """Mean Err, ΔEO (mean, std), ΔDP; seeds meeting ε on test and on validation; mean fit seconds."""
    grouped = rows.groupby(["setting", "method"], sort=False)
    return pd.DataFrame({
        "err": grouped["err"].mean().round(2),
        "delta_eo": grouped["delta_eo"].mean().round(3),
        "delta_eo_std": grouped["delta_eo"].std(ddof=1).round(3),
        "delta_dp": grouped["delta_dp"].mean().round(3),
        "test_met": grouped[target.metric].apply(lambda v: f"{int((v <= target.tolerance).sum())}/{len(v)}"),
        "val_met": grouped["val_met"].apply(lambda v: "-" if v.isna().all() else f"{int(v.fillna(False).astype(bool).sum())}/{len(v)}"),
        "fit_seconds": grouped["fit_seconds"].mean().round(1),
    }).reset_index()


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--constraint", default="eo", choices=("eo", "dp"))
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--cache-dir", default="/tmp/fair-cache")
    parser.add_argument("--out", default="runs/fairness-target")
    args = parser.parse_args()
    torch.set_num_threads(1)
    target = FairnessTarget(args.constraint, args.tolerance)
    methods = tuple(args.methods.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in parse_seeds(args.seeds):
        path = out / f"seed{seed}-{args.constraint}-{args.tolerance}-{'_'.join(methods)}.json"
        if not path.exists():
            path.write_text(json.dumps(run_seed(seed, methods, target, args.cache_dir)))
            print(f"seed {seed} done", flush=True)
    rows = pd.DataFrame([row for path in sorted(out.glob("seed*.json")) for row in json.loads(path.read_text())])
    rows = rows[rows["tolerance"] == args.tolerance]
    print(summary(rows, target).to_string(index=False))


if __name__ == "__main__":
    main()
