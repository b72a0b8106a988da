"""The accuracy-fairness trade-off under a user-set target (issue 12): which method meets ε, at what Err.

Functions, independent of the command line: :func:`plan` (the targets x seeds to run),
:func:`run_on_features` (every method on one seed's frozen features), :func:`summary` (mean over
seeds, and in how many seeds the test gap met ε), :func:`front` (the methods no other beats on
both Err and gap) and :func:`verdict` (against the peers of the same setting).

Methods (``methods=``), each reported with the setting it needs: "s at prediction" (group
thresholds, ThresholdOptimizer, RelaxedThresholdOptimizer) or "no s at prediction":

=============  ================================================================================
tl, win        TL / WIN without a target (settings: lowest validation Err)
tl+thr         TL, then :func:`fairtune.constraints.fit_group_thresholds` fitted on train and
               validation pooled, for the gap expected on a new split; a second row ("sample")
               fits the gap on the pooled data itself
lagrange       TL's layer trained by :func:`fairtune.constraints.train_constrained` (the gap
               measured on train and validation pooled), settings by :func:`select_under_target`
               on validation; a second row selects on train and validation pooled, where the
               multipliers measured the gap (the validation gap alone is too noisy to select on)
lagrange+thr   the same model, then group thresholds as tl+thr
to, eg         fairlearn ThresholdOptimizer / ExponentiatedGradient (``fairlearn-to-*``, ``fairlearn-eg-*``)
rto            error-parity RelaxedThresholdOptimizer at ε (``l_p_norm=1``) on a logistic regression
fairret        fairret NormLoss on TL's layer, strength and settings by :func:`select_under_target`
=============  ================================================================================
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..config import FinetuneGrid
from ..constraints import FairnessTarget, fit_group_thresholds, select_under_target, train_constrained
from ..constraints.targets import bounded_gap
from ..errors import ConfigError
from ..methods import get_method
from ..methods.tolerance_peers import FAIRRET_STRENGTHS, FairretNormLossPeer, RelaxedThresholdPeer
from ..metrics import evaluate
from ..training import TrainingData, predict, predict_proba, train_classifier

WITH_S, WITHOUT_S = "s at prediction", "no s at prediction"
METHODS = ("tl", "tl+thr", "lagrange", "lagrange+thr", "to", "eg", "rto", "fairret", "win", "win+thr")
#: The peer each setting is judged against (issue 12).
PEERS = {WITH_S: "fairlearn ThresholdOptimizer", WITHOUT_S: "fairlearn ExponentiatedGradient"}
UNKNOWN_METHODS = "unknown trade-off method(s) {names}; available: {available}"


def metrics(y_pred: np.ndarray, data: TrainingData) -> dict[str, float]:
    return evaluate(data.y.numpy(), y_pred, data.s.numpy())


def pooled(a: TrainingData, b: TrainingData) -> TrainingData:
    return TrainingData(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]), torch.cat([a.s, b.s]))


def checkpoints(train_one: Callable[[float, Callable[[int, nn.Module], None]], None], grid: FinetuneGrid) -> list[nn.Module]:
    """One training run per learning rate of ``grid``, a copy of the module at each of the grid's epochs."""
    found = []
    for lr in grid.lrs:
        train_one(lr, lambda epoch, module: found.append(copy.deepcopy(module)) if epoch in grid.epochs else None)
    return found


def pick(found: list[nn.Module], data: TrainingData, rule: Callable[[list[dict[str, float]]], tuple[int, bool]],
         target: FairnessTarget | None = None) -> tuple[nn.Module, bool]:
    """The module ``rule`` keeps by the metrics of each module on ``data``, and whether it met the target.

    With ``target``, the candidates' gap is the one the target bounds (:func:`bounded_gap`: for
    ``estimate="expected"`` the gap expected on a new split), so that selection aims where training did.
    """
    candidates = []
    for module in found:
        y_pred = predict(module, data.x)
        candidates.append(metrics(y_pred, data))
        if target is not None:
            candidates[-1][target.metric] = bounded_gap(data.y.numpy(), y_pred, data.s.numpy(), target)
    index, met = rule(candidates)
    return found[index], met


def lowest_err(candidates: list[dict[str, float]]) -> tuple[int, bool]:
    return min(range(len(candidates)), key=lambda i: candidates[i]["err"]), True


def run_on_features(
    layer: nn.Linear, features: dict[str, TrainingData], target: FairnessTarget, *, methods: Sequence[str], grid: FinetuneGrid, seed: int,
) -> list[dict[str, Any]]:
    """One row per method (see the module docstring) fitted on ``features['train']`` from ``layer``, scored on 'test'.

    Rows: ``method, setting, seed, tolerance, err, delta_dp, delta_eo, val_met`` (whether the
    validation gap met ε; None where the method does not aim at ε) and ``fit_seconds``.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(UNKNOWN_METHODS.format(names=", ".join(unknown), available=", ".join(METHODS)))
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
        fitted = fit_group_thresholds(scores, fit_data.y, fit_data.s, FairnessTarget(target.constraint, target.tolerance, estimate, target.reference_size))
        val_pred = fitted.predict(predict_proba(module, val.x), val.s)
        record(name, WITH_S, fitted.predict(predict_proba(module, test.x), test.s), start,
               metrics(val_pred, val)[target.metric] <= target.tolerance)

    if {"tl", "tl+thr"} & set(methods):
        start = time.perf_counter()
        tl, _ = pick(checkpoints(lambda lr, keep: train_classifier(
            copy.deepcopy(layer), train, epochs=max(grid.epochs), lr=lr, seed=seed, on_epoch=keep), grid), val, lowest_err)
        record("TL", WITHOUT_S, predict(tl, test.x), start)
        if "tl+thr" in methods:
            thresholds("TL + thresholds", tl, start)
            thresholds("TL + thresholds (sample)", tl, start, "sample")
    if {"lagrange", "lagrange+thr"} & set(methods):
        start = time.perf_counter()
        found = checkpoints(lambda lr, keep: train_constrained(
            copy.deepcopy(layer), train, target=target, epochs=max(grid.epochs), lr=lr, seed=seed, on_epoch=keep, constraint_data=fit_data), grid)
        pooled_pick, pooled_met = pick(found, fit_data, within, target)
        fair, met = pick(found, val, within, target)
        record("TL constrained (Lagrangian)", WITHOUT_S, predict(fair, test.x), start, met)
        record("TL constrained (Lagrangian), selected on train+val", WITHOUT_S, predict(pooled_pick, test.x), start, pooled_met)
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
        found = [module for strength in FAIRRET_STRENGTHS for module in checkpoints(
            lambda lr, keep, strength=strength: FairretNormLossPeer(target, strength=strength, lr=lr, epochs=max(grid.epochs), seed=seed).fit(
                layer, train, on_epoch=lambda epoch, peer: keep(epoch, peer.module_)), grid)]
        module, met = pick(found, val, within, target)
        record("fairret NormLoss", WITHOUT_S, predict(module, test.x), start, met)
    if {"win", "win+thr"} & set(methods):
        start = time.perf_counter()
        method = get_method("win")
        context = method.prepare(layer, train, grid)
        found = []
        for params in method.candidates(layer, grid):
            method.fit(layer, train, context, params, epochs=max(grid.epochs), batch_size=grid.batch_size, seed=seed,
                       on_epoch=lambda epoch, fitted: found.append(copy.deepcopy(fitted.module)) if epoch in grid.epochs else None)
        win, _ = pick(found, val, lowest_err)
        record("WIN", WITHOUT_S, predict(win, test.x), start)
        if "win+thr" in methods:
            thresholds("WIN + thresholds", win, start)
    return rows


def plan(constraint: str, tolerances: Sequence[float], seeds: Sequence[int]) -> list[tuple[FairnessTarget, int]]:
    """The (target, seed) units of a trade-off study; every tolerance is checked before any work."""
    targets = [FairnessTarget(constraint, tolerance) for tolerance in tolerances]
    return [(target, seed) for target in targets for seed in seeds]


def summary(rows: pd.DataFrame, target: FairnessTarget) -> pd.DataFrame:
    """Per setting and method, over seeds: mean Err, ΔEO (mean, std), ΔDP; in how many seeds the
    test gap (``test_met``) and the validation gap (``val_met``, "-" where not aimed at ε) met ε;
    mean fit seconds. Only ``rows`` of ``target``'s tolerance count."""
    rows = rows[rows["tolerance"] == target.tolerance]
    grouped = rows.groupby(["setting", "method"], sort=False)
    return pd.DataFrame({
        "gap": grouped[target.metric].mean(),
        "err": grouped["err"].mean(),
        "delta_eo": grouped["delta_eo"].mean().round(3),
        "delta_eo_std": grouped["delta_eo"].std(ddof=1).round(3),
        "delta_dp": grouped["delta_dp"].mean().round(3),
        "test_met": grouped[target.metric].apply(lambda v: f"{int((v <= target.tolerance).sum())}/{len(v)}"),
        "val_met": grouped["val_met"].apply(lambda v: "-" if v.isna().all() else f"{int(v.fillna(False).astype(bool).sum())}/{len(v)}"),
        "fit_seconds": grouped["fit_seconds"].mean().round(1),
    }).reset_index()


def front(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a :func:`summary` that no row of the same setting beats on both mean Err and mean gap."""
    def undominated(group: pd.DataFrame) -> pd.Series:
        return group.apply(lambda row: not ((group["err"] <= row["err"]) & (group["gap"] <= row["gap"])
                                            & ((group["err"] < row["err"]) | (group["gap"] < row["gap"]))).any(), axis=1)

    keep = pd.concat([undominated(group) for _, group in table.groupby("setting", sort=False)])
    return table[keep.reindex(table.index)]


def verdict(table: pd.DataFrame, target: FairnessTarget, *, max_err: float, margin: float = 0.5) -> list[str]:
    """One line per setting: the lowest-Err method whose mean test gap met ε, against the setting's peer.

    The goal of issue 12 is met in a setting when that method's mean Err is at most ``max_err``
    and more than ``margin`` points below the peer's (:data:`PEERS`); a setting where no method
    met ε says so.
    """
    lines = []
    for setting, group in table.groupby("setting", sort=False):
        peer = group[group["method"] == PEERS[setting]]
        meeting = group[(group["gap"] <= target.tolerance) & (group["method"] != PEERS[setting])]
        peer_err = float(peer["err"].iloc[0]) if len(peer) else float("nan")
        peer_text = f"peer {PEERS[setting]} {peer_err:.2f} % at {float(peer['gap'].iloc[0]) if len(peer) else float('nan'):.3f}"
        if meeting.empty:
            lines.append(f"{setting}: no method but the peer met mean test {target.metric} <= {target.tolerance:g} ({peer_text}): goal not met")
            continue
        best = meeting.loc[meeting["err"].idxmin()]
        met = best["err"] <= max_err and best["err"] < peer_err - margin
        lines.append(
            f"{setting}: {best['method']} meets mean test {target.metric} {best['gap']:.3f} <= {target.tolerance:g} at Err "
            f"{best['err']:.2f} % (test met in {best['test_met']} seeds); {peer_text}: "
            f"goal {'met' if met else 'not met'} (Err <= {max_err:g} % and more than {margin:g} point below the peer)"
        )
    return lines


