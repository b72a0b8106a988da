"""The reproduction's figures, drawn with matplotlib's Agg backend and saved as PNG (atomically).

Figures are built with the object-oriented API (``Figure``, no pyplot), so no global state or
interactive backend is involved and nothing needs closing.

One colour per method across every figure (from :mod:`fairtune.catalogue`); Err is in %, the gaps ΔDP and
ΔEO are differences of rates (unitless, in [0, 1] resp. [0, 2]).

- :func:`fisher_heatmaps` — the paper's Figure 3: per-group diagonal Fisher of the final layer,
  side by side on one colour scale, plus their difference.
- :func:`metric_bars` — Figure 4: Err, ΔDP, ΔEO per method, mean with std error bars.
- :func:`accuracy_fairness` — Err against ΔEO and against ΔDP, error bars over seeds, the
  Pareto front (lower Err and lower gap) marked.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .._io import atomic_path
from ..catalogue import MethodSpec
from ..errors import ConfigError
from .tables import method_label, pareto_front

DPI = 120

#: Colours of method names that are not in the catalogue.
_SPARE = ("#000000", "#4d4d4d", "#ff00ff", "#00ffff", "#800000", "#008080", "#808000", "#000080")
_GAPS = (("delta_eo", "ΔEO (TPR gap + FPR gap)"), ("delta_dp", "ΔDP (selection-rate gap)"))


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    """Colour of each method spec, from the catalogue; text that names no method gets the next spare colour."""
    spare, colours = itertools.cycle(_SPARE), {}
    for method in methods:
        try:
            colours[method] = MethodSpec.parse(method).colour
        except ConfigError:
            colours[method] = next(spare)
    return colours


def save_png(figure: Figure, path: str | os.PathLike[str]) -> None:
    """Render ``figure`` with the Agg backend and write it as PNG to ``path``, atomically."""
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")


def _std(values: pd.Series) -> np.ndarray:
    return values.fillna(0.0).to_numpy(dtype=float)


def fisher_heatmaps(fisher: np.ndarray, group_names: Sequence[str], *, title: str = "") -> Figure:
    """Per-group diagonal Fisher ``fisher`` ``(G, k, d)`` of a layer as heat maps, plus the difference.

    Each group's F_g is drawn as a ``d x k`` map (inputs down, outputs across) on one shared
    colour scale; the last panel is F_1 − F_2 for two groups (max_g F_g − min_g F_g for more),
    on a diverging scale centred at 0.
    """
    fisher = np.asarray(fisher, dtype=float)
    n_groups, k, d = fisher.shape
    vmax = float(fisher.max()) or 1.0
    figure = Figure(figsize=(2.6 * (n_groups + 1) + 2.0, 0.14 * d + 2.6), layout="constrained")
    axes = figure.subplots(1, n_groups + 1, sharey=True, squeeze=False)[0]
    for g in range(n_groups):
        image = axes[g].imshow(fisher[g].T, aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
        axes[g].set_title(f"F_{g + 1} ({group_names[g]})")
    figure.colorbar(image, ax=list(axes[:n_groups]), label="mean squared gradient", shrink=0.9)
    if n_groups == 2:
        difference, what = fisher[0] - fisher[1], f"F_1 − F_2 ({group_names[0]} − {group_names[1]})"
    else:
        difference, what = fisher.max(axis=0) - fisher.min(axis=0), "max − min over groups"
    limit = float(np.abs(difference).max()) or 1.0
    diff_image = axes[-1].imshow(difference.T, aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -limit, limit), interpolation="nearest")
    axes[-1].set_title(what)
    figure.colorbar(diff_image, ax=axes[-1], label="difference", shrink=0.9)
    for ax in axes:
        ax.set_xticks(range(k))
        ax.set_xlabel("output unit (class)")
    axes[0].set_ylabel(f"layer input (hidden unit, d = {d})")
    figure.suptitle(title or "Per-group Fisher information of the final layer (Figure 3)")
    return figure


def metric_bars(summary: pd.DataFrame, *, title: str = "") -> Figure:
    """Err (%), ΔDP and ΔEO per method: bars at the mean over seeds, error bars ±1 std.

    ``summary`` has columns ``method, err_mean, err_std, delta_dp_mean, ..., seeds``.
    """
    methods = list(summary["method"])
    colors = method_colors(methods)
    labels = [method_label(m) for m in methods]
    figure = Figure(figsize=(4.0 + 0.9 * len(methods), 3.8))
    axes = figure.subplots(1, 3)
    for ax, (key, ylabel) in zip(axes, (("err", "Err (%) = 100 − weighted F1"), ("delta_dp", "ΔDP"), ("delta_eo", "ΔEO"))):
        ax.bar(range(len(methods)), summary[f"{key}_mean"], yerr=_std(summary[f"{key}_std"]), capsize=4,
               color=[colors[m] for m in methods], edgecolor="black", linewidth=0.5)
        ax.set_xticks(range(len(methods)), labels, rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_title(ylabel.split(" ")[0] + " (lower is better)")
        if key == "err":
            low = float((summary["err_mean"] - _std(summary["err_std"])).min())
            ax.set_ylim(max(0.0, low - 1.0), None)
    seeds = int(summary["seeds"].min())
    figure.suptitle(title or f"Test metrics per method, mean ± std over {seeds} seed(s) (Figure 4)")
    figure.tight_layout()
    return figure


def accuracy_fairness(summary: pd.DataFrame, *, title: str = "") -> Figure:
    """Err against ΔEO (left) and against ΔDP (right): one point per method, ±1 std bars, Pareto front.

    A point is on the front if no other method has both lower (or equal) Err and lower (or
    equal) gap; front points are ringed in black and joined by a dashed staircase.
    """
    methods = list(summary["method"])
    colors = method_colors(methods)
    figure = Figure(figsize=(12, 5))
    axes = figure.subplots(1, 2, sharey=True)
    for ax, (gap, xlabel) in zip(axes, _GAPS):
        x, y = summary[f"{gap}_mean"].to_numpy(float), summary["err_mean"].to_numpy(float)
        front = pareto_front(y, x)
        for i, method in enumerate(methods):
            ax.errorbar(x[i], y[i], xerr=_std(summary[f"{gap}_std"])[i], yerr=_std(summary["err_std"])[i],
                        fmt="o", color=colors[method], ecolor=colors[method], capsize=3, markersize=8,
                        markeredgecolor="black" if front[i] else colors[method], markeredgewidth=2 if front[i] else 0.5)
        order = np.argsort(x[front])
        ax.step(x[front][order], y[front][order], where="post", linestyle="--", color="black", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_title(f"Err vs {xlabel.split(' ')[0]} (lower-left is better)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Err (%) = 100 − weighted F1")
    handles = [Line2D([], [], marker="o", linestyle="", color=colors[m], markersize=8, label=method_label(m)) for m in methods]
    handles.append(Line2D([], [], marker="o", linestyle="--", color="black", markerfacecolor="white", markeredgewidth=2, label="Pareto front"))
    figure.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), title="method")
    seeds = int(summary["seeds"].min())
    figure.suptitle(title or f"Accuracy-fairness trade-off, mean ± std over {seeds} seed(s); ringed: Pareto front")
    figure.tight_layout()
    return figure
