"""Per-group decision rules at a fairness target on Adult: which model, fitting data, aim and rule, in one run.

    PYTHONPATH=src .venv/bin/python benchmarks/threshold_variants.py [--seeds 10] [--tolerance 0.05]
        [--bases tl,win] [--constrained tl] [--aims AIM,...] [--out FILE.json]

Per base method and seed, the model is selected as ``fairtune run`` selects it
(:class:`fairtune.experiments.engine.Selection` on the default grid):

plain         fine-tuned without the target, the candidate of lowest validation Err (``tl``);
constrained   fine-tuned subject to ΔEO ≤ ε, selected under the target (``tl-eo:ε``; its
              thresholded form was ``tl-eo-thr:ε`` before post-processing-only thresholds).

Its scores P(Y=1|x) are then post-processed by per-group rules, each a combination of

rule          deterministic (one threshold per group), randomized (a mixture of thresholds), or proxy
              (a mixture per cell of the group inferred from the model's inputs: no s at prediction);
fitted on     train+val pooled, train, val, or cross-fitted: five heads with the selected
              settings, each trained on four fifths of train+val, score the fifth left out; the
              rule is fitted on those out-of-fold scores and applied to the selected model;
aim           expected (the gap expected on a new split of the fitting data's size, the
              default), expected-test (a new split of the test split's size), upper and upper-test
              (the fitted gap plus the new split's whole mean noise: ``estimate="upper"``), or
              sample ε' (the fitting data's own gap ≤ ε' < ε).

Reported per variant over seeds: test Err, ΔEO, ΔDP (mean ± std), seeds whose test ΔEO met ε,
the model's fit seconds and the rule's. Randomized rules draw their test labels from the seed.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fairtune.config import FinetuneGrid
from fairtune.constraints import FairnessTarget, fit_threshold_rule, predict_with_rule
from fairtune.experiments.engine import Environment, MethodFit, Selection, Unit, pooled, prepare, proxy_inputs_of
from fairtune.methods import params_record
from fairtune.metrics import evaluate
from fairtune.training import TrainingData, intra_op_threads

FOLDS = 5
#: (rule, fitted on, aim) of the plain model; the constrained model gets the first, deterministic and randomized.
VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("deterministic", "train+val", "expected"), ("randomized", "train+val", "expected"),
    ("deterministic", "train+val", "expected-test"), ("randomized", "train+val", "expected-test"),
    ("deterministic", "train", "expected"), ("randomized", "train", "expected"),
    ("deterministic", "val", "expected"), ("randomized", "val", "expected"),
    ("deterministic", "cross-fit", "expected"), ("randomized", "cross-fit", "expected"),
    ("deterministic", "train+val", "sample 1"), ("randomized", "train+val", "sample 1"),
    ("deterministic", "train+val", "sample 0.6"), ("randomized", "train+val", "sample 0.6"),
    ("deterministic", "train+val", "sample 0.4"), ("randomized", "train+val", "sample 0.4"),
    ("deterministic", "train+val", "upper"), ("randomized", "train+val", "upper"),
    ("deterministic", "train+val", "upper-test"), ("randomized", "train+val", "upper-test"),
    ("proxy", "train+val", "upper"), ("proxy", "train+val", "expected"),
)


def arrays(data: TrainingData) -> tuple[np.ndarray, np.ndarray]:
    return data.y.numpy(), data.s.numpy()


def selected(base: str, seed: int, grid: FinetuneGrid, target: FairnessTarget, constrained: bool) -> dict[str, Any]:
    """The model ``fairtune run`` keeps for ``base`` (subject to ``target`` if ``constrained``): its scores per split,
    the model's inputs per split (for proxy rules), settings, fit seconds, and a function that trains the same
    settings on other data and scores a split."""
    unit = Unit(method=base, seed=seed)
    with intra_op_threads(1):
        prepared = prepare(unit, Environment())
    spec = f"{base}-eo:{target.tolerance}" if constrained else base
    fit = MethodFit.start(spec, grid, prepared.layer, prepared.features, seed=seed)
    fit.selection = Selection(fit.data, grid, target, "deterministic", constrained, seed)  # keeps every candidate's scores
    started = time.perf_counter()
    with intra_op_threads(1):
        fit.train(batched=False)
        best = fit.selection.chosen()
    seconds = time.perf_counter() - started
    settings = dict(best["params"])
    epochs = settings.pop("epochs")
    params = next(p for p in fit.candidates if params_record(p) == settings)

    def refit_scores(train: TrainingData, scored: TrainingData) -> np.ndarray:
        with intra_op_threads(1), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fit.method.prepare(fit.target, train, grid)
            return fit.method.fit(fit.target, train, fit.context, params, epochs=epochs, batch_size=grid.batch_size,
                                  seed=seed).scores(scored.x)

    return {"scores": best["scores"], "data": fit.data, "inputs": proxy_inputs_of(fit.data, prepared.inputs(base)),
            "params": best["params"], "seconds": seconds, "refit_scores": refit_scores}


def cross_fitted_scores(model: dict[str, Any], seed: int) -> np.ndarray:
    """Out-of-fold scores of train+val: fold k scored by a head trained on the other folds."""
    both = pooled(model["data"]["train"], model["data"]["val"])
    folds = np.random.default_rng(seed).permutation(len(both)) % FOLDS
    scores = np.zeros(len(both))
    for k in range(FOLDS):
        inside, left_out = torch.from_numpy(folds != k), torch.from_numpy(folds == k)
        part = lambda mask: TrainingData(both.x[mask], both.y[mask], both.s[mask])  # noqa: E731
        scores[folds == k] = model["refit_scores"](part(inside), part(left_out))
    return scores


def fitting_data(model: dict[str, Any], fitted_on: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scores, labels, groups and the model's inputs of the data a rule is fitted on."""
    data, scores, inputs = model["data"], model["scores"], model["inputs"]
    x = np.concatenate([inputs["train"], inputs["val"]])
    if fitted_on == "cross-fit":
        if "oof" not in model:
            model["oof"] = cross_fitted_scores(model, seed)
        y, s = (np.concatenate(pair) for pair in zip(arrays(data["train"]), arrays(data["val"])))
        return model["oof"], y, s, x
    names = fitted_on.split("+")
    return (np.concatenate([scores[n] for n in names]), np.concatenate([arrays(data[n])[0] for n in names]),
            np.concatenate([arrays(data[n])[1] for n in names]), np.concatenate([inputs[n] for n in names]))


def rule_target(tolerance: float, aim: str, test_size: int) -> FairnessTarget:
    """``expected``/``upper`` (``-test``: for a new split of the test split's size), or ``sample f`` (ε' = f·ε)."""
    if aim.startswith("sample"):
        return FairnessTarget("eo", tolerance * float(aim.split()[1]), estimate="sample")
    estimate, _, test = aim.partition("-")
    return FairnessTarget("eo", tolerance, estimate=estimate, reference_size=test_size if test else None)


def evaluate_variant(model: dict[str, Any], rule: str, fitted_on: str, aim: str, tolerance: float, seed: int) -> dict[str, float]:
    test = model["data"]["test"]
    y_test, s_test = arrays(test)
    scores, y, s, x = fitting_data(model, fitted_on, seed)
    target = rule_target(tolerance, aim, len(y_test))
    started = time.perf_counter()
    fitted = fit_threshold_rule(scores, y, s, target, rule, seed=seed, x=x)
    seconds = time.perf_counter() - started
    metrics = evaluate(y_test, predict_with_rule(fitted, model["scores"]["test"], s_test, model["inputs"]["test"]), s_test)
    return {**metrics, "rule_seconds": seconds, "fit_bound": fitted.fit_bound, "fit_err": fitted.fit_err}


def summarize(rows: list[dict[str, Any]], tolerance: float) -> list[dict[str, Any]]:
    table = []
    keys = list(dict.fromkeys((r["base"], r["model"], r["rule"], r["fitted_on"], r["aim"]) for r in rows))
    for key in keys:
        part = [r for r in rows if (r["base"], r["model"], r["rule"], r["fitted_on"], r["aim"]) == key]
        column = lambda name: np.array([r[name] for r in part], dtype=float)  # noqa: E731
        table.append({
            "base": key[0], "model": key[1], "rule": key[2], "fitted_on": key[3], "aim": key[4], "seeds": len(part),
            **{f"{m}_{stat}": float(getattr(np, stat)(column(m), **({"ddof": 1} if stat == "std" else {})))
               for m in ("err", "delta_eo", "delta_dp") for stat in ("mean", "std")},
            "test_met": int((column("delta_eo") <= tolerance).sum()),
            "model_seconds": float(column("model_seconds").mean()), "rule_seconds": float(column("rule_seconds").mean()),
        })
    return table


def markdown(table: list[dict[str, Any]], tolerance: float) -> str:
    lines = [f"| base | model | rule | fitted on | aim (ε = {tolerance:g}) | Err (%) | test ΔEO | test ΔDP | test met | fit s (model + rule) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        aim = r["aim"] if not r["aim"].startswith("sample") else f"sample ε' = {tolerance * float(r['aim'].split()[1]):.3g}"
        lines.append(f"| {r['base']} | {r['model']} | {r['rule']} | {r['fitted_on']} | {aim} | {r['err_mean']:.2f} ± {r['err_std']:.2f} | "
                     f"{r['delta_eo_mean']:.3f} ± {r['delta_eo_std']:.3f} | {r['delta_dp_mean']:.3f} | {r['test_met']}/{r['seeds']} | "
                     f"{r['model_seconds']:.1f} + {r['rule_seconds']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--bases", default="tl,win")
    parser.add_argument("--constrained", default="tl", help="bases also measured fine-tuned subject to the target")
    parser.add_argument("--aims", default=None, help="only the variants of these aims (comma-separated), e.g. upper,upper-test")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    grid, rows = FinetuneGrid(), []
    target = FairnessTarget("eo", args.tolerance)
    for base in args.bases.split(","):
        for constrained in (False, True) if base in args.constrained.split(",") else (False,):
            variants = [v for v in (VARIANTS if not constrained else VARIANTS[:2]) if not args.aims or v[2] in args.aims.split(",")]
            for seed in range(args.seeds):
                model = selected(base, seed, grid, target, constrained)
                for rule, fitted_on, aim in variants:
                    rows.append({"base": base, "model": "constrained" if constrained else "plain", "rule": rule,
                                 "fitted_on": fitted_on, "aim": aim, "seed": seed, "model_seconds": model["seconds"],
                                 "params": model["params"], **evaluate_variant(model, rule, fitted_on, aim, args.tolerance, seed)})
                print(f"{base} {'constrained' if constrained else 'plain'} seed {seed} done", flush=True)
    table = summarize(rows, args.tolerance)
    print(markdown(table, args.tolerance))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"tolerance": args.tolerance, "rows": rows, "summary": table}, handle, indent=1)


if __name__ == "__main__":
    main()
