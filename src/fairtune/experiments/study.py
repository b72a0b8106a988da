"""``fairtune study neutralization``: where does the neutralized importance change the outcome?

Runs, on one data set, over seeds and pre-training conditions:

- the paper's WIN and its baselines (TL, f+SVD, Retrain+EO/DP, fairlearn's methods);
- WIN variants that let the importance matter (:mod:`fairtune.methods.deep`): deeper target
  layers (last hidden, all), and the importance as an EWC-style anchor, alone and combined;
- a rank sweep of WIN and plain SVD on the last hidden layer (rank fraction f of min(d, k));
- pre-training on the source split as drawn, and on one balanced to equal base rates
  (``source_balance="base_rate"``), so that fine-tuning has bias to add.

Every (condition, seed, method, rank fraction) is a unit of the engine
(:mod:`fairtune.experiments.engine`) kept in a :class:`ResultStore`, so an interrupted study
resumes; the pre-trained model is reported once per (condition, seed). The report states, from the numbers, whether any WIN variant
reaches a point that no baseline dominates.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from .._io import ensure_writable_dir, write_csv, write_json, write_text
from ..catalogue import PRETRAINED, MethodSpec
from ..config import FinetuneGrid, SourceBalance, _Settings
from ..report import figures, tables
from .engine import Unit, execute
from .scheduling import SerialExecutor
from .run import RunConfig
from .store import ResultStore

BASELINES: tuple[str, ...] = ("tl", "svd", "retrain-eo:0.5", "retrain-dp:0.5", "logreg", "fairlearn-eg-eo", "fairlearn-to-eo")
VARIANTS: tuple[str, ...] = ("win", "win-hidden", "svd-hidden", "win-all", "svd-all", "tl-anchor", "win-anchor", "win-hidden-anchor")
RANK_SWEEP_METHODS: tuple[str, ...] = ("win-hidden", "svd-hidden")


def is_win_variant(method: str) -> bool:
    """WIN and the variants that use the neutralized importance (factorization or anchor)."""
    return MethodSpec.parse(method).info.uses_importance


#: The study's fine-tuning grid: one learning rate, three operators, two rank fractions.
STUDY_GRID = FinetuneGrid(lrs=(0.01,), epochs=(5, 20), operators=("mean", "min", "pooled"), rank_fractions=(0.25, 1.0))


class StudyConfig(_Settings):
    """The neutralization study: a base run configuration and what to vary."""

    run: RunConfig = Field(default_factory=lambda: RunConfig(finetune=STUDY_GRID))
    baselines: tuple[str, ...] = BASELINES
    variants: tuple[str, ...] = VARIANTS
    sources: tuple[SourceBalance, ...] = ("none", "base_rate")
    rank_sweep: tuple[float, ...] = Field((1 / 32, 1 / 8, 1 / 4, 1 / 2, 1.0), description="rank fractions of the sweep")


    @classmethod
    def from_options(cls, *, data: dict[str, Any] | None = None, grid: dict[str, Any] | None = None, seeds: tuple[int, ...] | None = None,
                     cache_dir: str | None = None, **study: Any) -> StudyConfig:
        """The config of ``fairtune study``'s options: only those given change the defaults."""
        run = {"data": data or {}, "finetune": {**STUDY_GRID.model_dump(), **(grid or {})}, "cache_dir": cache_dir}
        if seeds is not None:
            run["seeds"] = seeds
        return cls.model_validate({"run": run, **study})


def plan(config: StudyConfig) -> list[tuple[str, MethodSpec, Unit]]:
    """Units ``(source, spec, unit)``: per (source, seed), the pre-trained model, the baselines and the
    variants, then each rank-sweep method at each rank fraction (``spec.fraction``)."""
    base, planned = config.run, []
    for source in config.sources:
        data = base.data.model_copy(update={"source_balance": source})
        for seed in base.seeds:
            def unit(method: str, finetune: FinetuneGrid = base.finetune) -> Unit:
                return Unit(data=data, pretrain=base.pretrain, finetune=finetune, method=method, seed=seed,
                            target_layer=base.target_layer)

            for method in (PRETRAINED, *config.baselines, *config.variants):
                planned.append((source, MethodSpec.parse(method), unit(method)))
            for fraction in config.rank_sweep:
                grid = base.finetune.model_copy(update={"rank_fractions": (fraction,)})
                for method in RANK_SWEEP_METHODS:
                    spec = MethodSpec.parse(method)
                    planned.append((source, MethodSpec(spec.name, spec.value, fraction), unit(method, grid)))
    return planned


def neutralization_study(config: StudyConfig, directory: str | Path, *, progress: bool = True,
                         executor: SerialExecutor | None = None) -> pd.DataFrame:
    """Run every unit not yet stored under ``directory/units`` (on ``executor``, default this process); return one
    row per (source, method, seed)."""
    planned = plan(config)
    results = execute([unit for _, _, unit in planned], config.run.environment(), executor=executor,
                      store=ResultStore(Path(directory) / "units"),
                      progress="neutralization study" if progress else None)
    return pd.DataFrame([{**result.row, "source": source, "method": str(spec)}
                         for (source, spec, _), result in zip(planned, results)])


def dominance(summary: pd.DataFrame, gap: str) -> pd.DataFrame:
    """For each WIN variant, the baselines that dominate it on (Err, ``gap``), and by how much.

    Baseline b *dominates* variant v if b's mean Err ≤ v's and b's mean gap ≤ v's (one
    strictly). v is *clearly undominated* if, against every baseline, it is better by more
    than one standard deviation (the larger of the two methods' stds) in Err or in the gap.
    """
    baselines = summary[~summary["method"].map(is_win_variant)]
    rows = []
    for _, v in summary[summary["method"].map(is_win_variant)].iterrows():
        dominated_by, margins = [], []
        for _, b in baselines.iterrows():
            if b["err_mean"] <= v["err_mean"] and b[f"{gap}_mean"] <= v[f"{gap}_mean"] and (
                    b["err_mean"] < v["err_mean"] or b[f"{gap}_mean"] < v[f"{gap}_mean"]):
                dominated_by.append(b["method"])
            err_margin = (b["err_mean"] - v["err_mean"]) / max(b["err_std"], v["err_std"], 1e-12)
            gap_margin = (b[f"{gap}_mean"] - v[f"{gap}_mean"]) / max(b[f"{gap}_std"], v[f"{gap}_std"], 1e-12)
            margins.append(max(err_margin, gap_margin))
        rows.append({"variant": v["method"], "gap": gap, "dominated_by": ", ".join(dominated_by),
                     "worst_margin_std": float(np.min(margins)) if margins else np.nan,
                     "clearly_undominated": not dominated_by and bool(margins) and float(np.min(margins)) > 1.0})
    return pd.DataFrame(rows)


def verdict(dominance_tables: Sequence[pd.DataFrame]) -> str:
    """One plain sentence per (condition, gap) from the dominance tables."""
    lines = []
    for table in dominance_tables:
        source, gap = table.attrs["source"], table.attrs["gap"]
        clear = table[table["clearly_undominated"]]["variant"].tolist()
        undominated = table[table["dominated_by"] == ""]["variant"].tolist()
        if clear:
            lines.append(f"- source={source}, Err vs {gap}: {', '.join(clear)} reach(es) a point no baseline dominates, "
                         "by more than one std against every baseline.")
        elif undominated:
            verb = "is" if len(undominated) == 1 else "are"
            lines.append(f"- source={source}, Err vs {gap}: {', '.join(undominated)} {verb} not dominated in the means, "
                         "but not by more than one std against every baseline: no clear win.")
        else:
            lines.append(f"- source={source}, Err vs {gap}: every WIN variant is dominated by a baseline.")
    return "\n".join(lines)


def run_study(config: StudyConfig, directory: str | Path, *, progress: bool = True, executor: SerialExecutor | None = None) -> str:
    """Run (or resume) the study into ``directory`` and write its report; return the markdown."""
    out = ensure_writable_dir(directory)
    return write_study(neutralization_study(config, out, progress=progress, executor=executor), config, out)


def write_study(results: pd.DataFrame, config: StudyConfig, directory: str | Path) -> str:
    """Write study.csv, summary, dominance tables, the accuracy-fairness plots and study.md; return the markdown."""
    directory = Path(directory)
    write_csv(results, directory / "study.csv")
    summary = tables.summarize_by(results, ["source", "method"])
    write_csv(summary, directory / "study_summary.csv")
    sections, dominance_tables = [], []
    for source, part in summary.groupby("source", sort=False):
        part = part.drop(columns="source").reset_index(drop=True)
        swept = part["method"].map(lambda m: MethodSpec.parse(m).fraction is not None)
        main, sweep = part[~swept], part[swept]
        figures.save_png(figures.accuracy_fairness(main, title=f"Neutralization study, source={source}: "
                                                   f"mean ± std over {int(main['seeds'].min())} seeds"),
                         directory / f"pareto_{source}.png")
        for gap in ("delta_eo", "delta_dp"):
            table = dominance(main, gap)
            table.attrs.update(source=source, gap=gap)
            dominance_tables.append(table)
        sections.append(
            f"### Pre-training source: {source}\n\n![accuracy-fairness](pareto_{source}.png)\n\n"
            + tables.to_markdown(tables.summary_table(main))
            + ("" if sweep.empty else "\nRank sweep on the last hidden layer (rank = ceil(f · min(d, k))):\n\n"
               + tables.to_markdown(tables.summary_table(sweep)))
        )
    dominance_all = pd.concat([t.assign(source=t.attrs["source"]) for t in dominance_tables], ignore_index=True)
    write_csv(dominance_all, directory / "dominance.csv")
    markdown = (
        "## Neutralization study\n\n"
        f"Data set `{config.run.data.dataset}`, {len(config.run.seeds)} seeds, settings chosen on validation, "
        "metrics on test. Baselines: " + ", ".join(config.baselines) + "; WIN variants: " + ", ".join(config.variants) + ".\n\n"
        "**Does any WIN variant reach a point no baseline dominates?**\n\n" + verdict(dominance_tables) + "\n\n"
        + "\n\n".join(sections)
    )
    write_text(markdown, directory / "study.md")
    write_json(config.model_dump(mode="json"), directory / "study_config.json")
    return markdown
