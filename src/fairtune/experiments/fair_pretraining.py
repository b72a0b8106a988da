"""The fair pre-trained model f_F (the paper's Table 2): fair pre-training, then ordinary fine-tuning.

For each constraint (EO, DP), intensity λ and seed: pre-train the MLP on the source split
with ``cross_entropy + λ · relaxed gap`` (:func:`fairtune.methods.fairness.fairness_penalty`;
cached like any pre-trained model, the penalty is part of the cache key), score it on the new
task's test split, then fine-tune its last layer with TL (settings chosen on validation, as
in :func:`fairtune.experiments.engine.compare_on_features`) and score again. The paper's point:
fine-tuning re-introduces the bias that fair pre-training removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ..config import DataConfig, FinetuneGrid, PretrainConfig
from ..data import load_task
from ..data._types import Task
from ..factorization import find_linear
from ..methods.fairness import Constraint, check_constraint, check_intensity, fairness_penalty
from ..models import pretrained_mlp
from ..catalogue import PRETRAINED
from .engine import MethodFit, data_seed, fit_method, new_task_splits, split_features, train_together

#: The bias each constraint targets, as a results column suffix.
BIAS_METRIC: dict[str, str] = {"eo": "delta_eo", "dp": "delta_dp"}
STUDY_COLUMNS = [
    "constraint", "lambda", "seed", "pretrain_err", "pretrain_delta_eo", "pretrain_delta_dp",
    "finetune_err", "finetune_delta_eo", "finetune_delta_dp",
]


def fair_pretraining_study(
    data: DataConfig,
    pretrain: PretrainConfig,
    grid: FinetuneGrid,
    *,
    constraints: Sequence[Constraint] = ("eo", "dp"),
    lambdas: Sequence[float] = (0.1, 0.5, 0.9),
    seeds: Iterable[int] = range(10),
    cache_dir: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Test-split metrics of f_F before and after TL fine-tuning, one row per (constraint, λ, seed).

    Columns: ``constraint, lambda, seed, pretrain_err, pretrain_delta_eo, pretrain_delta_dp,
    finetune_err, finetune_delta_eo, finetune_delta_dp`` (Err in %, gaps as in
    :mod:`fairtune.metrics`). Each seed splits the data (unless ``data.split_seed`` fixes it)
    and seeds pre-training and fine-tuning.
    """
    lambdas = [check_intensity(lam) for lam in lambdas]
    constraints = [check_constraint(kind) for kind in constraints]
    seeds = list(seeds)
    rows = []
    with tqdm(total=len(seeds) * len(constraints) * len(lambdas), desc="fair pre-training", disable=not progress) as bar:
        for seed in seeds:
            task = load_task(data, seed=data_seed(data, seed))
            rows += fair_pretraining_rows(task, data, pretrain, grid, [(kind, lam) for kind in constraints for lam in lambdas],
                                          seed, cache_dir=cache_dir)
            bar.update(len(constraints) * len(lambdas))
    return pd.DataFrame(rows, columns=STUDY_COLUMNS)


def fair_pretraining_rows(
    task: Task, data: DataConfig, pretrain: PretrainConfig, grid: FinetuneGrid, settings: Sequence[tuple[Constraint, float]],
    seed: int, *, cache_dir: str | None = None,
) -> list[dict[str, Any]]:
    """The rows of :func:`fair_pretraining_study` for one seed: f_F pre-trained with each (constraint, λ) of ``settings``
    on ``task`` (the seed's data split, loaded once by the caller), before and after TL fine-tuning. The TL candidates
    of every model train in one loop (:func:`~fairtune.experiments.engine.train_together`), each as in its own."""
    before, tuned = [], []
    for kind, lam in settings:
        model = pretrained_mlp(
            task, pretrain, seed=data_seed(data, seed), cache_dir=cache_dir,
            penalty=fairness_penalty(kind, lam), penalty_id={"fairness": kind, "lambda": lam},
        )
        _, layer = find_linear(model)
        features = split_features(model, layer, new_task_splits(task))
        before.append(fit_method(PRETRAINED, grid, layer, features, seed=seed).row)
        tuned.append(MethodFit.start("tl", grid, layer, features, seed=seed))
    train_together([fit for fit in tuned if fit.trains_alike])
    after = [(fit if fit.trains_alike else fit.train()).result().row for fit in tuned]
    return [{
        "constraint": kind, "lambda": lam, "seed": seed,
        **{f"pretrain_{k}": first[k] for k in ("err", "delta_eo", "delta_dp")},
        **{f"finetune_{k}": last[k] for k in ("err", "delta_eo", "delta_dp")},
    } for (kind, lam), first, last in zip(settings, before, after)]


def summarize_fair_pretraining(study: pd.DataFrame) -> pd.DataFrame:
    """Table 2's layout: one row per (constraint, λ), pre-train → fine-tune, mean and std over seeds.

    Columns: ``constraint, lambda, seeds, err_pretrain_mean, err_pretrain_std,
    err_finetune_mean, err_finetune_std, bias_metric, bias_pretrain_mean, bias_pretrain_std,
    bias_finetune_mean, bias_finetune_std, bias_change_mean, bias_change_std``. The bias is
    the gap the constraint targets (ΔEO for eo, ΔDP for dp); its change is fine-tune minus
    pre-train, per seed, then averaged (positive: fine-tuning re-introduced bias).
    """
    rows = []
    for (kind, lam), group in study.groupby(["constraint", "lambda"], sort=False):
        metric = BIAS_METRIC[kind]
        change = group[f"finetune_{metric}"] - group[f"pretrain_{metric}"]
        row = {"constraint": kind, "lambda": lam, "seeds": len(group)}
        for stage in ("pretrain", "finetune"):
            row[f"err_{stage}_mean"] = group[f"{stage}_err"].mean()
            row[f"err_{stage}_std"] = group[f"{stage}_err"].std(ddof=1)
        row["bias_metric"] = metric
        for stage in ("pretrain", "finetune"):
            row[f"bias_{stage}_mean"] = group[f"{stage}_{metric}"].mean()
            row[f"bias_{stage}_std"] = group[f"{stage}_{metric}"].std(ddof=1)
        row["bias_change_mean"] = change.mean()
        row["bias_change_std"] = change.std(ddof=1)
        rows.append(row)
    return pd.DataFrame(rows)
