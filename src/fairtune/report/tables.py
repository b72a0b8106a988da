"""Plain-text and Markdown tables of results (mean ± std over seeds)."""

from __future__ import annotations

import pandas as pd

#: Display names of methods in tables and figures.
METHOD_LABELS: dict[str, str] = {"pretrained": "pre-trained", "tl": "TL", "svd": "f+SVD", "win": "WIN"}

_COLUMNS = (("err", "Err (%)", 3), ("delta_dp", "ΔDP", 3), ("delta_eo", "ΔEO", 3))


def mean_std(mean: float, std: float, digits: int = 3) -> str:
    return f"{mean:.{digits}f} ± {0.0 if pd.isna(std) else std:.{digits}f}"


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary (from ``experiments.summarize``) with 'mean ± std' strings, for display."""
    table = pd.DataFrame({"method": [METHOD_LABELS.get(m, m) for m in summary["method"]], "seeds": summary["seeds"]})
    for key, title, digits in _COLUMNS:
        table[title] = [mean_std(m, s, digits) for m, s in zip(summary[f"{key}_mean"], summary[f"{key}_std"])]
    table["trainable params"] = summary["trainable_params_mean"].round(1).map(lambda v: f"{v:g}")
    return table


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (hand-written: pandas' needs the optional 'tabulate')."""
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    rows = ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"
