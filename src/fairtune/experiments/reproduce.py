"""``fairtune reproduce adult``: the paper's Adult study, resumable, and its report.

The study is cut into units, each one (study, method or setting, seed):

- ``pretrained`` and ``table3``: the pre-trained model, and one method spec (``tl``, ``win``,
  ``retrain-eo:0.1``, a peer, ...), on one seed: units of the engine
  (:mod:`fairtune.experiments.engine`), computed exactly as ``fairtune run`` computes them;
- ``ablation``: WIN with the grid restricted to one neutralization operator and one rank,
  also an engine unit;
- ``table2``: a fair pre-trained model (one constraint and λ), before and after fine-tuning,
  a row of :func:`fairtune.experiments.fair_pretraining.fair_pretraining_study`;
- ``fisher``: the per-group Fisher of the pre-trained model's final layer (Figure 3).

The units and tasks run in this process or in local processes (``--processes``), with the same
results: the tasks as jobs of the engine's :func:`~fairtune.experiments.engine.execute`, beside
the units, so that every process stays busy.

Each finished unit is stored in one :class:`~fairtune.experiments.store.ResultStore` under
``DIR/units/``, keyed by every setting it depends on, so an interrupted run resumes where it
stopped and a changed setting is recomputed instead of reused. The tables, figures and
report are then written from the stored results alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field
from tqdm.auto import tqdm

from .._io import ensure_writable_dir, write_csv, write_json, write_text
from ..catalogue import PRETRAINED
from ..config import DataConfig, FinetuneGrid, Operator, PretrainConfig, SplitConfig, _Settings
from ..data import load_task
from ..errors import ConfigError
from ..importance import feature_batches, group_fisher
from ..report import figures, html, tables
from ..report import paper as paper_figures
from ..training import single_threaded
from .engine import Environment, Unit, data_seed, execute, prepare
from .fair_pretraining import fair_pretraining_rows
from .outputs import run_metadata
from .scheduling import SerialExecutor
from .store import ResultStore, unit_key

logger = logging.getLogger(__name__)

#: Table 3's methods besides Retrain+EO/DP (which come from ``constraints`` x ``lambdas``).
TABLE3_METHODS: tuple[str, ...] = (
    "tl", "svd", "win", "logreg", "fairlearn-eg-eo", "fairlearn-eg-dp", "fairlearn-to-eo", "fairlearn-to-dp",
)
FIGURE4_METHODS: tuple[str, ...] = ("pretrained", "tl", "svd", "win")
TITLE = "fairtune reproduction of Zhang & Zhou (2024) on Adult"


class ReproduceConfig(_Settings):
    """The whole Adult study: Table 3 methods, Table 2 fair pre-training, WIN ablation, Figure 3."""

    data: DataConfig = Field(default_factory=DataConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneGrid = Field(default_factory=FinetuneGrid)
    seeds: tuple[int, ...] = tuple(range(10))
    constraints: tuple[str, ...] = Field(("eo", "dp"), description="fairness regularizers of Retrain and fair pre-training")
    lambdas: tuple[float, ...] = Field((0.1, 0.5, 0.9), description="regularizer intensities λ (the paper's)")
    methods: tuple[str, ...] = Field(TABLE3_METHODS, description="Table 3's methods besides Retrain+EO/DP")
    ablation_operators: tuple[Operator, ...] = ("mean", "geometric", "min", "harmonic", "pooled")
    ablation_ranks: tuple[int, ...] = (1, 2)
    fisher_seed: int = Field(0, description="seed whose pre-trained model Figure 3 shows")
    cache_dir: str | None = None

    def table3_methods(self) -> tuple[str, ...]:
        """Retrain+EO/DP at every λ, then ``methods``: Table 3's rows after the pre-trained model."""
        return (*(f"retrain-{kind}:{lam:g}" for kind in self.constraints for lam in self.lambdas), *self.methods)

    def unit(self, method: str, seed: int, finetune: FinetuneGrid | None = None) -> Unit:
        """The engine unit of ``method`` on ``seed`` (with ``finetune`` instead of the study's grid)."""
        return Unit(data=self.data, pretrain=self.pretrain, finetune=finetune or self.finetune, method=method, seed=seed)


def quick_config(seeds: int = 2, cache_dir: str | None = None) -> ReproduceConfig:
    """A tiny study for tests and CI: small splits, one λ, a one-point grid, two ablation cells."""
    return ReproduceConfig(
        data=DataConfig(split=SplitConfig(train=1200, val=600, test=1200)),
        pretrain=PretrainConfig(hidden=(16, 8), epochs=2),
        finetune=FinetuneGrid(ranks=(1,), lrs=(0.01,), epochs=(2,), operators=("mean",)),
        seeds=tuple(range(seeds)), lambdas=(0.5,),
        ablation_operators=("mean", "pooled"), ablation_ranks=(1,), cache_dir=cache_dir,
    )


UNKNOWN_STUDY = "no reproduction for data set {name!r}; available: adult"


def study_config(
    dataset: str,
    *,
    seeds: int | None = None,
    quick: bool = False,
    methods: tuple[str, ...] | None = None,
    lambdas: tuple[float, ...] | None = None,
    cache_dir: str | None = None,
) -> ReproduceConfig:
    """The study for ``dataset`` (only 'adult'): the paper's (10 seeds), or :func:`quick_config` (2 seeds)."""
    if dataset != "adult":
        raise ConfigError(UNKNOWN_STUDY.format(name=dataset))
    config = quick_config(cache_dir=cache_dir) if quick else ReproduceConfig(cache_dir=cache_dir)
    update: dict[str, Any] = {}
    if seeds is not None:
        update["seeds"] = tuple(range(seeds))
    if methods is not None:
        update["methods"] = methods
    if lambdas is not None:
        update["lambdas"] = lambdas
    return ReproduceConfig.model_validate({**config.model_dump(), **update})


@dataclass(frozen=True)
class StudyTask:
    """A unit that is not a fine-tuning run: Table 2's fair pre-training, or Figure 3's Fisher."""

    study: str
    seed: int
    fields: dict[str, Any]
    settings: dict[str, Any]

    @property
    def key(self) -> str:
        return unit_key(study=self.study, seed=self.seed, **self.fields, settings=self.settings)


def ablation_grid(config: ReproduceConfig, operator: str, rank: int) -> FinetuneGrid:
    """The fine-tuning grid restricted to one neutralization operator and one rank."""
    return config.finetune.model_copy(update={"operators": (operator,), "ranks": (rank,)})


def plan_units(config: ReproduceConfig) -> list[tuple[str, dict[str, Any], Unit]]:
    """The engine's units, labelled ``(study, fields, unit)``, seed by seed."""
    planned = []
    for seed in config.seeds:
        planned.append(("pretrained", {}, config.unit(PRETRAINED, seed)))
        planned += [("table3", {}, config.unit(method, seed)) for method in config.table3_methods()]
        planned += [("ablation", {"operator": op, "rank": r}, config.unit("win", seed, ablation_grid(config, op, r)))
                    for op in config.ablation_operators for r in config.ablation_ranks]
    return planned


def plan_tasks(config: ReproduceConfig) -> list[StudyTask]:
    """Figure 3's Fisher, then Table 2's fair pre-training per seed, constraint and λ."""
    settings = {"data": config.data.model_dump(mode="json"), "pretrain": config.pretrain.model_dump(mode="json"),
                "finetune": config.finetune.model_dump(mode="json")}
    fisher_settings = {"data": settings["data"], "pretrain": settings["pretrain"], "kind": config.finetune.fisher}
    tasks = [StudyTask("fisher", config.fisher_seed, {}, fisher_settings)]
    tasks += [StudyTask("table2", seed, {"constraint": kind, "lambda": lam}, settings)
              for seed in config.seeds for kind in config.constraints for lam in config.lambdas]
    return tasks


def compute_fisher(config: ReproduceConfig, seed: int) -> dict[str, Any]:
    """Eq. (1) per group for the final layer of the seed's pre-trained model, on the new task's train split.

    The seed is prepared as for its units (:func:`~fairtune.experiments.engine.prepare`), so that
    they reuse it in this process. Returns ``{"weight": (G, k, d) nested lists, "group_names": [...]}``.
    """
    prepared = prepare(config.unit(PRETRAINED, seed), Environment(cache_dir=config.cache_dir))
    train = prepared.features["train"]
    fisher = group_fisher(prepared.layer, feature_batches(train.x, train.y, train.s), len(prepared.group_names),
                          kind=config.finetune.fisher)
    return {"weight": fisher.weight.tolist(), "group_names": list(prepared.group_names)}


@dataclass(frozen=True)
class TaskJob:
    """Tasks of one study and seed, computed in one call (Table 2's rows of a seed share its data split, loaded
    once, and the loop of their TL fine-tuning): a job of :func:`~fairtune.experiments.engine.execute`, which runs
    it in its processes beside the units."""

    config: ReproduceConfig
    tasks: tuple[StudyTask, ...]

    def __call__(self) -> dict[str, dict[str, Any]]:
        """Each task's store record (its row, and the job's seconds shared by its tasks), by key; with one thread,
        as the units run."""
        config, (first, *_) = self.config, self.tasks
        started = time.perf_counter()
        with single_threaded():
            if first.study == "fisher":
                rows = [compute_fisher(config, first.seed)]
            else:
                task_data = load_task(config.data, seed=data_seed(config.data, first.seed))
                rows = fair_pretraining_rows(task_data, config.data, config.pretrain, config.finetune,
                                             [(task.fields["constraint"], task.fields["lambda"]) for task in self.tasks],
                                             first.seed, cache_dir=config.cache_dir)
        seconds = round((time.perf_counter() - started) / len(self.tasks), 3)
        return {task.key: {"study": task.study, "seed": task.seed, "fields": task.fields, "row": row, "seconds": seconds}
                for task, row in zip(self.tasks, rows, strict=True)}


def task_jobs(config: ReproduceConfig, tasks: list[StudyTask]) -> list[TaskJob]:
    """``tasks`` as jobs, one per study and seed, in their order."""
    groups: dict[tuple[str, int], list[StudyTask]] = {}
    for task in tasks:
        groups.setdefault((task.study, task.seed), []).append(task)
    return [TaskJob(config, tuple(group)) for group in groups.values()]


@dataclass
class ReproduceResult:
    """Stored results of every unit, by study, and how many units this call computed."""

    results: pd.DataFrame  # Table 3: method, seed, err, delta_dp, delta_eo, trainable_params, ...
    ablation: pd.DataFrame  # operator, rank, seed, err, delta_dp, delta_eo, ...
    fair_pretraining: pd.DataFrame  # fair_pretraining_study's columns
    fisher: np.ndarray  # (G, k, d)
    group_names: tuple[str, ...]
    computed: int  # units computed by this call (including by-products)
    reused: int  # units found in the store
    unit_seconds: float  # fit time of all stored units, whichever call computed them


def reproduce(config: ReproduceConfig, directory: str | Path, *, progress: bool = True,
              executor: SerialExecutor | None = None) -> ReproduceResult:
    """Run every unit and task of the study not yet in ``directory/units`` (a progress bar over them) on ``executor``
    (default this process), the tasks as jobs beside the units (:func:`task_jobs`); return all results."""
    store = ResultStore(Path(directory) / "units")
    planned, tasks = plan_units(config), plan_tasks(config)
    units = [unit for _, _, unit in planned]
    done_before = {unit.key for unit in units if unit.key in store} | {task.key for task in tasks if task.key in store}
    total = len({unit.key for unit in units}) + len(tasks)
    with tqdm(total=total, initial=len(done_before), desc="reproduce adult", unit="unit", disable=not progress) as bar:
        def finished(unit: Unit) -> None:
            bar.set_postfix_str(f"seed {unit.seed} {unit.method}")
            bar.update(1)

        def finished_job(records: dict[str, dict[str, Any]]) -> None:
            record = next(iter(records.values()))
            bar.set_postfix_str(f"{record['study']} seed {record['seed']}")
            bar.update(len(records))

        results = execute(units, Environment(cache_dir=config.cache_dir), executor=executor, store=store, on_unit=finished,
                          jobs=task_jobs(config, [task for task in tasks if task.key not in store]), on_job=finished_job)
    records = {task.key: store.get(task.key) for task in tasks}

    def rows(study: str) -> pd.DataFrame:
        return pd.DataFrame([{**fields, **result.row} for (kind, fields, _), result in zip(planned, results) if kind == study])

    order = [PRETRAINED, *config.table3_methods()]
    table3 = pd.concat([rows("pretrained"), rows("table3")], ignore_index=True)
    table3 = table3.sort_values(["method", "seed"], key=lambda c: c.map(order.index) if c.name == "method" else c, kind="stable")
    fisher = records[tasks[0].key]["row"]
    unit_seconds = sum(result.row["fit_seconds"] for result in results) + sum(r.get("seconds", 0.0) for r in records.values())
    return ReproduceResult(
        results=table3.reset_index(drop=True), ablation=rows("ablation"),
        fair_pretraining=pd.DataFrame([records[t.key]["row"] for t in tasks if t.study == "table2"]),
        fisher=np.asarray(fisher["weight"]), group_names=tuple(fisher["group_names"]),
        computed=total - len(done_before), reused=len(done_before), unit_seconds=unit_seconds,
    )


def _table(frame: pd.DataFrame, display: pd.DataFrame, directory: Path, name: str) -> None:
    write_csv(frame, directory / f"{name}.csv")
    write_text(tables.to_markdown(display), directory / f"{name}.md")


def write_reproduction(
    result: ReproduceResult, config: ReproduceConfig, directory: str | Path, *, facts: list[str], metadata: dict[str, Any],
) -> dict[str, pd.DataFrame]:
    """Write the tables (CSV + Markdown), figures (PNG) and report (md + html) from ``result``.

    Returns the display tables by name (``table3``, ``table2``, ``ablation``, the Pareto fronts).
    """
    directory = Path(directory)
    summary = tables.summarize_by(result.results, ["method"])
    table3 = tables.table3_frame(summary, {"pretrained": paper_figures.PRETRAINED})
    shown = {"table3": tables.table3_display(table3)}
    write_csv(result.results, directory / "results.csv")
    _table(table3, shown["table3"], directory, "table3")

    table2 = tables.table2_frame(result.fair_pretraining) if not result.fair_pretraining.empty else None
    if table2 is not None:
        shown["table2"] = tables.table2_display(table2)
        write_csv(result.fair_pretraining, directory / "table2_results.csv")
        _table(table2, shown["table2"], directory, "table2")

    ablation = tables.summarize_by(result.ablation, ["operator", "rank"])
    shown["ablation"] = tables.ablation_display(ablation)
    write_csv(result.ablation, directory / "ablation_results.csv")
    _table(ablation, shown["ablation"], directory, "ablation")

    pareto = {gap: tables.pareto_table(summary, gap) for gap in ("delta_eo", "delta_dp")}
    shown.update({f"Pareto front, Err vs {table.columns[-1]}": table for table in pareto.values()})
    write_csv(pd.concat([t.assign(gap=gap) for gap, t in pareto.items()], ignore_index=True), directory / "pareto_front.csv")

    drawings: dict[str, tuple[str, Callable[[], Any]]] = {
        "Accuracy-fairness trade-off (Pareto front ringed)": ("figures/accuracy_fairness.png", lambda: figures.accuracy_fairness(summary)),
        "Figure 4: Err, ΔDP, ΔEO per method (mean ± std)": (
            "figures/figure4_metrics.png", lambda: figures.metric_bars(summary[summary["method"].isin(FIGURE4_METHODS)])),
        "Figure 3: per-group Fisher information of the final layer": (
            "figures/figure3_fisher.png",
            lambda: figures.fisher_heatmaps(result.fisher, result.group_names,
                                            title=f"Per-group Fisher of the final layer, pre-trained model of seed {config.fisher_seed} (Figure 3)")),
    }
    for path, draw in drawings.values():
        figures.save_png(draw(), directory / path)

    markdown = html.reproduction_markdown(
        title=TITLE, summary=summary, table3=shown["table3"], table2=shown.get("table2"), table2_numbers=table2,
        ablation=shown["ablation"], pareto=pareto, figures={caption: path for caption, (path, _) in drawings.items()},
        config=metadata, facts=facts,
    )
    html.write_report(markdown, TITLE, directory)
    write_json(metadata, directory / "config.json")
    return shown


def reproduce_adult(config: ReproduceConfig, directory: str | Path, *, progress: bool = True, command: list[str] | None = None,
                    executor: SerialExecutor | None = None) -> dict[str, Any]:
    """Run (or resume) the study on ``executor`` (default this process) and write everything; return the display
    tables and run facts."""
    directory = ensure_writable_dir(directory)
    started = time.perf_counter()
    result = reproduce(config, directory, progress=progress, executor=executor)
    wall = time.perf_counter() - started
    metadata = {**run_metadata(config), "command": command or [],
                "wall_seconds": round(wall, 2), "unit_seconds": round(result.unit_seconds, 2), "units_computed": result.computed, "units_reused": result.reused}
    facts = [f"seeds: {len(config.seeds)} ({', '.join(map(str, config.seeds))}); every number is mean ± std over them",
             f"units computed by this call: {result.computed}, reused from `units/`: {result.reused}",
             f"wall time of this call: {wall:.1f} s; fit time of all units (summed over calls): {result.unit_seconds:.1f} s",
             f"fairtune {metadata['fairtune_version']}, torch {metadata['torch_version']}"]
    shown = write_reproduction(result, config, directory, facts=facts, metadata=metadata)
    return {"tables": shown, "wall_seconds": wall, "computed": result.computed, "reused": result.reused}
