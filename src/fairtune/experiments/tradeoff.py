"""``fairtune study tradeoff``: which method meets a fairness target ε, at what Err, against the peers.

For each tolerance ε of a constraint (``eo`` or ``dp``), every method of :data:`METHODS` runs on
every seed as a unit of the engine (:mod:`fairtune.experiments.engine`): fairtune's targets
(``tl-eo:ε``, ``win-eo:ε`` and their ``-pthr``, ``-thr`` and ``-rthr`` forms), the tolerance peers (``errorparity-eo:ε``,
``fairret-eo:ε``), fairlearn's ThresholdOptimizer and ExponentiatedGradient, and TL and WIN
without a target. Methods without ε run once per seed and appear in every ε's table.

Each method belongs to a setting: whether it needs the sensitive attribute at prediction time
(per-group thresholds, randomized or not, ThresholdOptimizer, RelaxedThresholdOptimizer) or not. The report gives,
per ε and setting: mean Err and gaps, in how many seeds the test gap met ε, the methods no other
of the setting beats on both mean Err and mean gap (the front), and a verdict against the
setting's fairlearn peer, generated from the numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field, field_validator

from .._io import ensure_writable_dir, write_csv, write_json, write_text
from ..catalogue import CATALOGUE, PRETRAINED, MethodSpec
from ..config import _Settings
from ..constraints.targets import BAD_TOLERANCE
from ..errors import ConfigError
from ..report import figures, tables
from .engine import Unit, execute
from .scheduling import SerialExecutor
from .fair_pretraining import BIAS_METRIC
from .run import RunConfig
from .store import ResultStore

WITH_S, WITHOUT_S = "s at prediction", "no s at prediction"
GAP_NAMES: dict[str, str] = {"eo": "ΔEO", "dp": "ΔDP"}
#: The study's methods; ``{c}`` is the constraint and ``{e}`` the tolerance ε.
METHODS: tuple[str, ...] = (
    "tl", "win", "tl-{c}:{e}", "win-{c}:{e}", "fairret-{c}:{e}", "fairlearn-eg-{c}", "tl-{c}-pthr:{e}", "win-{c}-pthr:{e}",
    "tl-{c}-thr:{e}", "win-{c}-thr:{e}", "tl-{c}-rthr:{e}", "win-{c}-rthr:{e}", "errorparity-{c}:{e}", "fairlearn-to-{c}",
)
#: The peer each setting is judged against.
PEERS: dict[str, str] = {WITHOUT_S: "fairlearn-eg-{c}", WITH_S: "fairlearn-to-{c}"}
NO_TOLERANCE = "a trade-off study needs at least one tolerance ε"


def setting(spec: MethodSpec) -> str:
    """Whether ``spec`` needs the sensitive attribute to predict (``WITH_S``) or not."""
    return WITH_S if spec.info.sensitive_at_prediction else WITHOUT_S


class TradeoffConfig(_Settings):
    """The study: a base run (data, pre-training, grid, seeds), a constraint and its tolerances."""

    run: RunConfig = Field(default_factory=RunConfig)
    constraint: Literal["eo", "dp"] = "eo"
    tolerances: tuple[float, ...] = Field((0.02, 0.05, 0.1, 0.2), description="tolerances ε of the constraint")
    methods: tuple[str, ...] = Field(METHODS, description="method specs; {c} = constraint, {e} = ε")

    @field_validator("tolerances")
    @classmethod
    def _tolerances(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ConfigError(NO_TOLERANCE)
        for tolerance in value:
            if not 0 < tolerance < 2:
                raise ConfigError(BAD_TOLERANCE.format(value=tolerance))
        return value

    def specs(self, tolerance: float) -> list[MethodSpec]:
        """The methods at one ε (each spec checked)."""
        return [MethodSpec.parse(m.format(c=self.constraint, e=f"{tolerance:g}")) for m in self.methods]

    def peer(self, name: str) -> str:
        return str(MethodSpec.parse(PEERS[name].format(c=self.constraint)))


def plan(config: TradeoffConfig) -> list[Unit]:
    """Per seed: the pre-trained model, then every distinct method spec over all tolerances."""
    base = config.run
    specs = list(dict.fromkeys(str(spec) for tolerance in config.tolerances for spec in config.specs(tolerance)))
    return [Unit(data=base.data, pretrain=base.pretrain, finetune=base.finetune, method=method, seed=seed,
                 target_layer=base.target_layer)
            for seed in base.seeds for method in (PRETRAINED, *specs)]


def tradeoff_study(config: TradeoffConfig, directory: str | Path, *, progress: bool = True,
                   executor: SerialExecutor | None = None) -> pd.DataFrame:
    """Run every unit not yet stored under ``directory/units`` (on ``executor``, default this process); one row
    per (ε, method, seed).

    A method without ε is reported under every ε (its ``target_met`` then judged against that ε).
    """
    units = plan(config)
    results = execute(units, config.run.environment(), executor=executor, store=ResultStore(Path(directory) / "units"),
                      progress="trade-off study" if progress else None)
    rows_by_method = {}
    for unit, result in zip(units, results):
        rows_by_method.setdefault(unit.method, []).append(result.row)
    metric = BIAS_METRIC[config.constraint]
    rows = []
    for tolerance in config.tolerances:
        for spec in config.specs(tolerance):
            for row in rows_by_method[str(spec)]:
                rows.append({**row, "tolerance": tolerance, "setting": setting(spec),
                             "target_met": bool(row[metric] <= tolerance)})
    return pd.DataFrame(rows)


def summary(rows: pd.DataFrame, config: TradeoffConfig, tolerance: float) -> pd.DataFrame:
    """Per setting and method at one ε, over seeds: mean (std) Err and gaps, seeds whose test gap met ε."""
    metric = BIAS_METRIC[config.constraint]
    part = rows[rows["tolerance"] == tolerance]
    table = tables.summarize_by(part, ["setting", "method"], ("err", "delta_dp", "delta_eo", "trainable_params", "target_met"))
    table["gap"] = table[f"{metric}_mean"]
    table["test_met"] = [f"{round(m * n)}/{n}" for m, n in zip(table["target_met_mean"], table["seeds"])]
    return table


def front(table: pd.DataFrame) -> pd.DataFrame:
    """The rows no row of the same setting beats on both mean Err and mean gap."""
    keep = []
    for _, group in table.groupby("setting", sort=False):
        err, gap = group["err_mean"].to_numpy(float), group["gap"].to_numpy(float)
        keep += list(group.index[tables.pareto_front(err, gap)])
    return table.loc[sorted(keep)]


def verdict(table: pd.DataFrame, config: TradeoffConfig, tolerance: float, margin: float = 0.5) -> list[str]:
    """Per setting: the lowest-Err method of fairtune's whose mean test gap met ε, against the setting's peer.

    It *beats* the peer when both meet ε in the mean (comparable fairness) and its mean Err is more
    than ``margin`` points lower; a peer that misses ε, and a setting where no fairtune method
    meets it, are said as such.
    """
    gap = GAP_NAMES[config.constraint]
    lines = []
    for name, group in table.groupby("setting", sort=False):
        peer = group[group["method"] == config.peer(name)]
        own = group[[CATALOGUE[MethodSpec.parse(m).name].family == "target" for m in group["method"]]]
        meeting = own[own["gap"] <= tolerance]
        peer_text = ("no peer" if peer.empty else
                     f"peer {tables.method_label(config.peer(name))}: Err {peer['err_mean'].iloc[0]:.2f} %, "
                     f"{gap} {peer['gap'].iloc[0]:.3f}, test met in {peer['test_met'].iloc[0]} seeds")
        if meeting.empty:
            closest = own.loc[own["gap"].idxmin()] if not own.empty else None
            near = "" if closest is None else (f"; closest: {tables.method_label(closest['method'])} {gap} "
                                               f"{closest['gap']:.3f} at Err {closest['err_mean']:.2f} %")
            lines.append(f"- {name}, ε = {tolerance:g}: no fairtune method met mean test {gap} ≤ ε{near} ({peer_text}): target not met.")
            continue
        best = meeting.loc[meeting["err_mean"].idxmin()]
        found = (f"- {name}, ε = {tolerance:g}: {tables.method_label(best['method'])} meets mean test {gap} "
                 f"{best['gap']:.3f} ≤ ε at Err {best['err_mean']:.2f} % (test met in {best['test_met']} seeds); {peer_text}")
        if peer.empty or peer["gap"].iloc[0] > tolerance:
            lines.append(f"{found}: the peer misses ε, fairtune's method meets it.")
            continue
        ahead = peer["err_mean"].iloc[0] - best["err_mean"]
        verb = "beats" if ahead > margin else "does not beat"
        lines.append(f"{found}: both meet ε; fairtune's method {verb} the peer ({ahead:+.2f} Err points, "
                     f"more than {margin:g} needed).")
    return lines


def write_tradeoff(rows: pd.DataFrame, config: TradeoffConfig, directory: str | Path) -> str:
    """tradeoff.csv, a summary per ε, the fronts, one Err-vs-gap figure per ε and tradeoff.md; return the markdown."""
    directory = Path(directory)
    write_csv(rows, directory / "tradeoff.csv")
    sections, summaries = [], []
    for tolerance in config.tolerances:
        table = summary(rows, config, tolerance)
        summaries.append(table.assign(tolerance=tolerance))
        name = f"tradeoff_{tolerance:g}.png"
        by_method = tables.summarize_by(rows[rows["tolerance"] == tolerance], ["method"])
        figures.save_png(figures.accuracy_fairness(by_method, title=f"Err against the test gaps, ε = {tolerance:g} "
                                                   f"({config.constraint}), mean ± std over {len(config.run.seeds)} seeds"),
                         directory / name)
        shown = tables.summary_table(table.drop(columns=["setting", "gap", "test_met"]))
        shown.insert(0, "setting", list(table["setting"]))
        on_front = set(front(table)["method"] + "|" + front(table)["setting"])
        shown["front"] = ["yes" if f"{m}|{s}" in on_front else "" for m, s in zip(table["method"], table["setting"])]
        sections.append(f"### ε = {tolerance:g}\n\n" + "\n".join(verdict(table, config, tolerance)) + f"\n\n![trade-off]({name})\n\n"
                        + tables.to_markdown(shown))
    write_csv(pd.concat(summaries, ignore_index=True), directory / "tradeoff_summary.csv")
    gap = GAP_NAMES[config.constraint]
    markdown = (
        f"## Fairness target trade-off: {gap} ≤ ε\n\n"
        f"Data set `{config.run.data.dataset}`, {len(config.run.seeds)} seeds; settings chosen on validation (under the "
        "target for the methods that take one), metrics on test. `test met ε`: seeds whose test gap met ε. "
        "`front`: no method of the same setting has both lower mean Err and lower mean gap.\n\n" + "\n\n".join(sections)
    )
    write_text(markdown, directory / "tradeoff.md")
    write_json(config.model_dump(mode="json"), directory / "tradeoff_config.json")
    return markdown


def run_tradeoff(config: TradeoffConfig, directory: str | Path, *, progress: bool = True,
                 executor: SerialExecutor | None = None) -> str:
    """Run (or resume) the study into ``directory`` and write its report; return the markdown."""
    out = ensure_writable_dir(directory)
    return write_tradeoff(tradeoff_study(config, out, progress=progress, executor=executor), config, out)
