"""Reports: tables, figures and the HTML/Markdown report of a reproduction.

``fairtune.report.figures`` (matplotlib) and ``fairtune.report.html`` are imported on use,
so that ``fairtune run`` does not pay for matplotlib; ``fairtune.report.paper`` holds the
paper's published figures.
"""

from .tables import (
    ablation_display,
    mean_std,
    method_label,
    pareto_front,
    pareto_table,
    summarize_by,
    summary_table,
    table2_display,
    table2_frame,
    table3_display,
    table3_frame,
    to_markdown,
)

__all__ = [
    # labels and formatting
    "method_label", "mean_std", "to_markdown",
    # summaries and tables
    "summarize_by", "summary_table", "table2_frame", "table2_display", "table3_frame", "table3_display", "ablation_display",
    # accuracy-fairness trade-off
    "pareto_front", "pareto_table",
]
