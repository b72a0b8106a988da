"""Reports: tables (and, with the baselines issue, figures and HTML)."""

from .tables import METHOD_LABELS, mean_std, summary_table, to_markdown

__all__ = ["METHOD_LABELS", "mean_std", "summary_table", "to_markdown"]
