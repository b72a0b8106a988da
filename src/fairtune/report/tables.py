"""Plain-text and Markdown tables of results (mean ± std over seeds)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..catalogue import method_label
from . import paper as paper_figures

_COLUMNS = (("err", "Err (%)", 3), ("delta_dp", "ΔDP", 3), ("delta_eo", "ΔEO", 3))


def mean_std(mean: float, std: float, digits: int = 3) -> str:
    return f"{mean:.{digits}f} ± {0.0 if pd.isna(std) else std:.{digits}f}"


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary (from ``experiments.summarize``) with 'mean ± std' strings, for display."""
    table = pd.DataFrame({"method": [method_label(m) for m in summary["method"]], "seeds": summary["seeds"]})
    for key, title, digits in _COLUMNS:
        table[title] = [mean_std(m, s, digits) for m, s in zip(summary[f"{key}_mean"], summary[f"{key}_std"])]
    table["trainable params"] = summary["trainable_params_mean"].round(1).map(lambda v: f"{v:g}")
    if "target_met_mean" in summary:  # fairness targets: in how many seeds the test gap met ε
        table["test met ε"] = [
            "" if pd.isna(met) else f"{round(met * seeds)}/{seeds}" for met, seeds in zip(summary["target_met_mean"], summary["seeds"])
        ]
    return table


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (hand-written: pandas' needs the optional 'tabulate')."""
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    rows = ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


#: Summarized per method: the metrics, the size, and (fairness targets only) whether test met ε.
METRICS: tuple[str, ...] = ("err", "delta_dp", "delta_eo", "trainable_params", "target_met")
_GAP_TITLES = {"delta_eo": "ΔEO", "delta_dp": "ΔDP"}


def summarize_by(results: pd.DataFrame, by: list[str], metrics: tuple[str, ...] = METRICS) -> pd.DataFrame:
    """Mean and sample std (ddof=1) over seeds of each metric, one row per ``by`` group, in first-seen order.

    Columns: ``*by, seeds, {metric}_mean, {metric}_std`` (std is NaN for a single seed).
    """
    metrics = tuple(m for m in metrics if m in results.columns)
    grouped = results.groupby(by, sort=False)[list(metrics)]
    summary = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_std")).join(grouped.size().rename("seeds"))
    summary = summary.reset_index()
    return summary[[*by, "seeds", *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))]]


def pareto_front(err: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """Mask of the points no other point dominates (lower is better on both axes).

    Point i is dominated if some j has ``err_j <= err_i`` and ``gap_j <= gap_i`` with at
    least one strict inequality. Ties (identical points) all stay on the front.
    """
    err, gap = np.asarray(err, dtype=float), np.asarray(gap, dtype=float)
    no_worse = (err[None, :] <= err[:, None]) & (gap[None, :] <= gap[:, None])
    better = (err[None, :] < err[:, None]) | (gap[None, :] < gap[:, None])
    return ~(no_worse & better).any(axis=1)


def pareto_table(summary: pd.DataFrame, gap: str) -> pd.DataFrame:
    """The methods on the Err-``gap`` Pareto front, by increasing bias level.

    Row i reads: "accepting a bias up to this level, this method has the lowest Err".
    """
    on_front = summary[pareto_front(summary["err_mean"], summary[f"{gap}_mean"])]
    on_front = on_front.sort_values([f"{gap}_mean", "err_mean"])
    title = _GAP_TITLES[gap]
    return pd.DataFrame({
        "bias level": [f"{title} ≤ {v:.3f}" for v in on_front[f"{gap}_mean"]],
        "method": [method_label(m) for m in on_front["method"]],
        "Err (%)": [mean_std(m, s) for m, s in zip(on_front["err_mean"], on_front["err_std"])],
        title: [mean_std(m, s) for m, s in zip(on_front[f"{gap}_mean"], on_front[f"{gap}_std"])],
    })


def table3_frame(summary: pd.DataFrame, paper: dict[str, paper_figures.Figures]) -> pd.DataFrame:
    """Table 3 as numbers: the summary per method, with the paper's figures where it has them (else NaN)."""
    frame = summary.copy()
    frame.insert(1, "label", [method_label(m) for m in frame["method"]])
    for key in ("err", "delta_eo", "delta_dp"):
        frame[f"paper_{key}"] = [getattr(paper[m], key) if m in paper else np.nan for m in frame["method"]]
    return frame


def _paper(value: float) -> str:
    return "—" if pd.isna(value) else f"{value:.3f}"


def table3_display(frame: pd.DataFrame) -> pd.DataFrame:
    """Table 3 for reading: 'mean ± std' strings, ours beside the paper's."""
    table = pd.DataFrame({"method": frame["label"], "seeds": frame["seeds"]})
    for key, title in (("err", "Err (%)"), ("delta_eo", "ΔEO"), ("delta_dp", "ΔDP")):
        table[title] = [mean_std(m, s) for m, s in zip(frame[f"{key}_mean"], frame[f"{key}_std"])]
        table[f"paper {title}"] = frame[f"paper_{key}"].map(_paper)
    table["trainable params"] = frame["trainable_params_mean"].round(1).map(lambda v: f"{v:g}")
    return table


def table2_frame(study: pd.DataFrame) -> pd.DataFrame:
    """Table 2 as numbers from ``fair_pretraining_study``'s rows (one per constraint, λ, seed).

    ``bias`` is the gap each row's constraint targets (ΔEO for 'eo', ΔDP for 'dp');
    ``bias_change`` = fine-tuned − pre-trained bias, per seed. Paper columns are NaN where
    the paper has no such row.
    """
    rows = study.assign(
        pretrain_bias=np.where(study["constraint"] == "eo", study["pretrain_delta_eo"], study["pretrain_delta_dp"]),
        finetune_bias=np.where(study["constraint"] == "eo", study["finetune_delta_eo"], study["finetune_delta_dp"]),
    )
    rows["bias_change"] = rows["finetune_bias"] - rows["pretrain_bias"]
    frame = summarize_by(rows, ["constraint", "lambda"], ("pretrain_err", "finetune_err", "pretrain_bias", "finetune_bias", "bias_change"))
    published = [paper_figures.table2_row(c, lam) for c, lam in zip(frame["constraint"], frame["lambda"])]
    for key in ("pretrain_err", "finetune_err", "finetune_err_std", "pretrain_bias", "finetune_bias", "finetune_bias_std"):
        frame[f"paper_{key}"] = [np.nan if row is None else getattr(row, key) for row in published]
    return frame


def table2_display(frame: pd.DataFrame) -> pd.DataFrame:
    """Table 2 for reading: pre-trained → fine-tuned Err and bias, ours beside the paper's."""

    def arrow(pre: str, post: str) -> str:
        return f"{pre} → {post}"

    def paper(pre: float, post: float, std: float) -> str:
        return "—" if pd.isna(pre) else arrow(f"{pre:.3f}", mean_std(post, std))

    return pd.DataFrame({
        "constraint": frame["constraint"].str.upper(),
        "λ": frame["lambda"].map(lambda v: f"{v:g}"),
        "seeds": frame["seeds"],
        "Err (%) ours": [arrow(mean_std(a, b), mean_std(c, d)) for a, b, c, d in zip(
            frame["pretrain_err_mean"], frame["pretrain_err_std"], frame["finetune_err_mean"], frame["finetune_err_std"])],
        "Err (%) paper": [paper(*v) for v in zip(frame["paper_pretrain_err"], frame["paper_finetune_err"], frame["paper_finetune_err_std"])],
        "bias ours": [arrow(mean_std(a, b), mean_std(c, d)) for a, b, c, d in zip(
            frame["pretrain_bias_mean"], frame["pretrain_bias_std"], frame["finetune_bias_mean"], frame["finetune_bias_std"])],
        "bias change ours": [mean_std(m, s) for m, s in zip(frame["bias_change_mean"], frame["bias_change_std"])],
        "bias paper": [paper(*v) for v in zip(frame["paper_pretrain_bias"], frame["paper_finetune_bias"], frame["paper_finetune_bias_std"])],
    })


def ablation_display(frame: pd.DataFrame) -> pd.DataFrame:
    """The WIN ablation (from :func:`summarize_by` over operator, rank) for reading."""
    table = pd.DataFrame({"operator": frame["operator"], "rank": frame["rank"], "seeds": frame["seeds"]})
    for key, title, digits in _COLUMNS:
        table[title] = [mean_std(m, s, digits) for m, s in zip(frame[f"{key}_mean"], frame[f"{key}_std"])]
    return table
