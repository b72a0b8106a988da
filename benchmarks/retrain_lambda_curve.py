"""Issue 12 item 4: does raising Retrain's λ lower the measured gap? The λ curve, old vs new surrogate, on Adult.

    PYTHONPATH=src python benchmarks/retrain_lambda_curve.py [--seeds 0-9] [--constraint eo]
        [--lambdas 0.1,0.5,0.9] [--surrogates 1:0,0.3:0.95] [--cache-dir /tmp/fair-cache]

Retrain as ``fairtune run`` fits it (``retrain_scope="all"``): every parameter of the pre-trained
MLP trained on the raw inputs with ``cross_entropy + λ · relaxed gap``, one run per learning rate
of the default grid, checkpoints at its epochs, the lowest validation Err kept, scored on test.
A surrogate is ``τ:momentum`` of :func:`fairtune.methods.fairness.fairness_penalty` (``1:0``:
the softmax probability, as before issue 12). Prints mean ± std over seeds per surrogate and λ.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from fairtune.config import DataConfig
from fairtune.data import load_task
from fairtune.experiments.run import RunConfig, pretrained_model, split_inputs
from fairtune.methods.base import train_fitted
from fairtune.methods.fairness import fairness_penalty
from fairtune.metrics import evaluate
from fairtune.training import predict


def curve_point(model: torch.nn.Module, inputs: dict, constraint: str, lam: float, tau: float, momentum: float, seed: int) -> dict[str, float]:
    grid = RunConfig().finetune
    best: list = []
    for lr in grid.lrs:
        tuned = copy.deepcopy(model).requires_grad_(True)

        def keep(epoch: int, fitted) -> None:  # noqa: ANN001
            if epoch in grid.epochs:
                val = evaluate(inputs["val"].y.numpy(), predict(fitted.module, inputs["val"].x), inputs["val"].s.numpy())
                if not best or val["err"] < best[0]["err"]:
                    best[:] = [val, evaluate(inputs["test"].y.numpy(), predict(fitted.module, inputs["test"].x), inputs["test"].s.numpy())]

        train_fitted(tuned, inputs["train"], lr=lr, epochs=max(grid.epochs), batch_size=grid.batch_size, seed=seed,
                     penalty=fairness_penalty(constraint, lam, temperature=tau, momentum=momentum), on_epoch=keep)
    return best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--constraint", default="eo", choices=("eo", "dp"))
    parser.add_argument("--lambdas", default="0.1,0.5,0.9")
    parser.add_argument("--surrogates", default="1:0,0.3:0.95")
    parser.add_argument("--cache-dir", default="/tmp/fair-cache")
    args = parser.parse_args()
    torch.set_num_threads(1)
    first, _, last = args.seeds.partition("-")
    seeds = range(int(first), int(last or first) + 1)
    lambdas = [float(v) for v in args.lambdas.split(",")]
    surrogates = [tuple(float(v) for v in s.split(":")) for s in args.surrogates.split(",")]
    config = RunConfig(cache_dir=args.cache_dir)
    results: dict[tuple, list[dict[str, float]]] = {}
    for seed in seeds:
        task = load_task(DataConfig(), seed=seed)
        model = pretrained_model(task, config, seed)
        inputs = split_inputs({k: v for k, v in task.splits().items() if k != "source"})
        for tau, momentum in surrogates:
            for lam in lambdas:
                results.setdefault((tau, momentum, lam), []).append(curve_point(model, inputs, args.constraint, lam, tau, momentum, seed))
        print(f"seed {seed} done", flush=True)
    metric = "delta_" + args.constraint
    for (tau, momentum, lam), rows in results.items():
        err, gap = np.array([r["err"] for r in rows]), np.array([r[metric] for r in rows])
        print(f"τ {tau:g} momentum {momentum:g} λ {lam:g}: Err {err.mean():.2f} ± {err.std(ddof=1) if len(rows) > 1 else 0:.2f} "
              f"{metric} {gap.mean():.3f} ± {gap.std(ddof=1) if len(rows) > 1 else 0:.3f} ({len(rows)} seeds)")


if __name__ == "__main__":
    main()
