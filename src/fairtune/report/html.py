"""report.md and report.html of a reproduction, and the generated statements about the paper's claims.

The Markdown is the one source: report.html is that Markdown rendered by markdown-it-py
(CommonMark plus tables) inside a small HTML page. Figures are referenced by paths relative
to the report (``figures/*.png``), not embedded: the report folder is self-contained, both
files show the very same PNGs, the PNGs stay usable on their own, and the HTML stays small
and diffable. Move the folder, not the file.

Claims are computed from the numbers: a line states the claim, answers yes or no, and gives
the means ± std it was decided on.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd
from markdown_it import MarkdownIt

from .._io import write_text
from ..catalogue import MethodSpec
from . import paper
from .tables import method_label, to_markdown

_METRIC_TITLES = {"err": "Err", "delta_dp": "ΔDP", "delta_eo": "ΔEO"}


def _yes(value: bool) -> str:
    return "**yes**" if value else "**no**"


def _row(summary: pd.DataFrame, method: str) -> pd.Series | None:
    rows = summary[summary["method"] == method]
    return None if rows.empty else rows.iloc[0]


def _fmt(row: pd.Series, metric: str) -> str:
    std = row[f"{metric}_std"]
    return f"{method_label(row['method'])} {row[f'{metric}_mean']:.3f} ± {0.0 if pd.isna(std) else std:.3f}"


def lower_than(summary: pd.DataFrame, method: str, baseline: str, metric: str) -> str | None:
    """'<method> has lower <metric> than <baseline>: yes/no (a ± s vs b ± t)', or None if either is missing.

    Decided on the means; "(within 1 std)" marks a difference smaller than the larger std.
    """
    ours, theirs = _row(summary, method), _row(summary, baseline)
    if ours is None or theirs is None:
        return None
    difference = theirs[f"{metric}_mean"] - ours[f"{metric}_mean"]
    spread = max(ours[f"{metric}_std"], theirs[f"{metric}_std"])
    noise = " (within 1 std)" if not pd.isna(spread) and abs(difference) < spread else ""
    return (f"{method_label(method)} has lower {_METRIC_TITLES[metric]} than {method_label(baseline)}: {_yes(difference > 0)}"
            f"{noise} ({_fmt(ours, metric)} vs {_fmt(theirs, metric)})")


Claim = tuple[str, list[str]]  # a headline and the lines it was decided on


def figure4_claims(summary: pd.DataFrame) -> Claim:
    """Figure 4's claim: whether it holds on every metric and baseline, and each comparison."""
    lines = [line for metric in ("err", "delta_dp", "delta_eo") for baseline in paper.FIGURE4_BASELINES
             if (line := lower_than(summary, paper.FIGURE4_METHOD, baseline, metric)) is not None]
    holds = all("**yes**" in line for line in lines)
    return f"Paper (Figure 4): {paper.FIGURE4_CLAIM}. On our Adult runs: {_yes(holds and bool(lines))}.", lines


def lowest_err_claim(summary: pd.DataFrame, method: str = paper.FIGURE4_METHOD) -> str | None:
    """Whether ``method`` has the lowest mean Err of all fine-tuned methods (the pre-trained model excluded)."""
    tuned = summary[summary["method"] != "pretrained"]
    ours = _row(tuned, method)
    if ours is None:
        return None
    best = tuned.loc[tuned["err_mean"].idxmin()]
    return f"{method_label(method)} has the lowest Err of all methods: {_yes(best['method'] == method)} ({_fmt(ours, 'err')}; lowest: {_fmt(best, 'err')})"


def pretrained_claims(summary: pd.DataFrame) -> Claim | None:
    """Our pre-trained model's test metrics beside the paper's."""
    ours = _row(summary, "pretrained")
    if ours is None:
        return None
    lines = [f"{_METRIC_TITLES[m]}: ours {_fmt(ours, m).removeprefix(method_label('pretrained') + ' ')}, paper {getattr(paper.PRETRAINED, m):.3f}"
             for m in ("err", "delta_eo", "delta_dp")]
    return "The pre-trained model on the new task, ours vs the paper's:", lines


def lambda_trend_claim(summary: pd.DataFrame, name: str, metric: str) -> str | None:
    """Whether raising λ of ``name`` (e.g. 'retrain-eo') lowers ``metric`` monotonically (None if < 2 λ values)."""
    specs = [MethodSpec.parse(m) for m in summary["method"]]
    rows = summary[[spec.name == name and spec.value is not None for spec in specs]]
    if len(rows) < 2:
        return None
    rows = rows.assign(lam=[MethodSpec.parse(m).value for m in rows["method"]]).sort_values("lam")
    values = rows[f"{metric}_mean"].to_numpy()
    falling = bool((values[1:] < values[:-1]).all())
    listed = ", ".join(f"λ={lam:g}: {v:.3f}" for lam, v in zip(rows["lam"], values))
    return f"Raising λ of {method_label(name)} lowers {_METRIC_TITLES[metric]}: {_yes(falling)} ({listed})"


def table2_claims(table2: pd.DataFrame) -> Claim:
    """Table 2's claim per (constraint, λ): the targeted gap is larger after fine-tuning than before."""
    lines = [
        f"{row.constraint.upper()} λ={row['lambda']:g}: bias {row.pretrain_bias_mean:.3f} → {row.finetune_bias_mean:.3f} "
        f"(change {row.bias_change_mean:+.3f}): {_yes(row.bias_change_mean > 0)}"
        for _, row in table2.iterrows()
    ]
    holds = all("**yes**" in line for line in lines)
    return f"Paper (Table 2): {paper.TABLE2_CLAIM}. On our Adult runs: {_yes(holds and bool(lines))}.", lines


def _bullets(items: Sequence[str | Claim]) -> str:
    """A Markdown list; a (headline, lines) item becomes a headline with a nested list."""
    out = []
    for item in items:
        headline, lines = (item, []) if isinstance(item, str) else item
        out += [f"- {headline}", *(f"  - {line}" for line in lines)]
    return "\n".join(out) + "\n"


def reproduction_markdown(
    *,
    title: str,
    summary: pd.DataFrame,
    table3: pd.DataFrame,
    table2: pd.DataFrame | None,
    table2_numbers: pd.DataFrame | None,
    ablation: pd.DataFrame,
    pareto: dict[str, pd.DataFrame],
    figures: dict[str, str],
    config: dict[str, Any],
    facts: Sequence[str],
) -> str:
    """The whole report as Markdown.

    ``summary`` is Table 3's numbers per method (for the claims), ``table3``/``table2``/
    ``ablation``/``pareto`` the display tables, ``figures`` maps a caption to a PNG path
    relative to the report, ``facts`` are run facts (seeds, wall time, versions).
    """
    claims = [figure4_claims(summary), lowest_err_claim(summary),
              lambda_trend_claim(summary, "retrain-eo", "delta_eo"), lambda_trend_claim(summary, "retrain-dp", "delta_dp"),
              None if table2_numbers is None else table2_claims(table2_numbers), pretrained_claims(summary)]
    claims = [claim for claim in claims if claim is not None]
    parts = [f"# {title}\n", _bullets(facts),
             "## Where our results agree or disagree with the paper\n", _bullets(claims),
             "## Table 3: fine-tuning methods on Adult\n",
             "Test metrics, mean ± std over seeds; settings chosen on the validation split. " + paper.TABLE3_NOTE + "\n",
             to_markdown(table3),
             "## Pareto front: the lowest-Err method for each bias level\n",
             ("Read a row as: accepting a bias up to this level, this method has the lowest mean Err "
              "(a method is on the front if no other has both lower Err and lower bias).\n")]
    for gap, table in pareto.items():
        parts += [f"### Err vs {_METRIC_TITLES[gap]}\n", to_markdown(table)]
    if table2 is not None:
        parts += ["## Table 2: fair pre-training, then fine-tuning\n",
                  ("Pre-trained → fine-tuned, mean ± std over seeds. Bias is the gap the pre-training "
                   "regularizer targets: ΔEO for EO, ΔDP for DP. Paper columns from its Table 2.\n"),
                  to_markdown(table2)]
    parts += ["## Ablation: WIN's neutralization operator × rank\n",
              "WIN with the grid restricted to one operator and one rank (pooled = plain Fisher, no neutralization).\n",
              to_markdown(ablation),
              "## Figures\n"]
    parts += [f"### {caption}\n\n![{caption}]({path})\n" for caption, path in figures.items()]
    parts += ["## Configuration\n", "```json\n" + json.dumps(config, indent=2, sort_keys=True, default=str) + "\n```\n"]
    return "\n".join(parts)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
pre {{ background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""


def markdown_to_html(markdown: str, title: str) -> str:
    """A standalone HTML page of ``markdown`` (CommonMark + tables, raw HTML disabled)."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return _PAGE.format(title=html.escape(title), body=body)


def write_report(markdown: str, title: str, directory: str | os.PathLike[str]) -> None:
    """Write ``report.md`` and ``report.html`` into ``directory`` (atomically)."""
    write_text(markdown, os.path.join(directory, "report.md"))
    write_text(markdown_to_html(markdown, title), os.path.join(directory, "report.html"))
