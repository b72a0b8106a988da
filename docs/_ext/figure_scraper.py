"""A sphinx-gallery scraper for the matplotlib Figures that fairtune's report functions return.

``fairtune.report.figures`` builds ``matplotlib.figure.Figure`` objects without pyplot (so that
reports need no GUI backend); sphinx-gallery's own matplotlib scraper only sees pyplot's
figures. This one saves every pyplot-free Figure that an example holds in a variable, once.
"""

from __future__ import annotations

import weakref
from typing import Any

from matplotlib.figure import Figure
from sphinx_gallery.scrapers import figure_rst

_scraped: weakref.WeakSet[Figure] = weakref.WeakSet()


def pyplot_free_figures(block: Any, block_vars: dict[str, Any], gallery_conf: dict[str, Any]) -> str:
    """Save the new pyplot-free Figures in the example's namespace; return their reST."""
    figures = [value for value in block_vars["example_globals"].values()
               if isinstance(value, Figure) and value.canvas.manager is None and value not in _scraped]
    paths = []
    for figure, path in zip(figures, block_vars["image_path_iterator"]):
        figure.savefig(path, dpi=100)
        _scraped.add(figure)
        paths.append(path)
    return figure_rst(paths, gallery_conf["src_dir"])
