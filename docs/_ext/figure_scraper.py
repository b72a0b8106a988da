"""A sphinx-gallery scraper for the matplotlib Figures that fairtune's report functions return.

``fairtune.report.figures`` builds ``matplotlib.figure.Figure`` objects without pyplot (so that
reports need no GUI backend); sphinx-gallery's own matplotlib scraper only sees pyplot's
figures. This one saves every pyplot-free Figure that an example holds in a variable, once.
It must run before the matplotlib scraper: a pyplot figure still has its manager then, and is
remembered as pyplot's, so that it is not saved again once pyplot has closed it.
"""

from __future__ import annotations

import weakref
from typing import Any

from matplotlib.figure import Figure
from sphinx_gallery.scrapers import figure_rst

from fairtune.report.figures import save_png

_scraped: weakref.WeakSet[Figure] = weakref.WeakSet()


def pyplot_free_figures(block: Any, block_vars: dict[str, Any], gallery_conf: dict[str, Any]) -> str:
    """Save the new pyplot-free Figures in the example's namespace; return their reST."""
    figures = []
    for value in block_vars["example_globals"].values():
        if not isinstance(value, Figure) or value in _scraped:
            continue
        if value.canvas.manager is not None:  # pyplot's: the matplotlib scraper saves it
            _scraped.add(value)
        else:
            figures.append(value)
    paths = []
    for figure, path in zip(figures, block_vars["image_path_iterator"]):
        save_png(figure, path)  # as fairtune's reports save it (the legend may lie outside the axes)
        _scraped.add(figure)
        paths.append(path)
    return figure_rst(paths, gallery_conf["src_dir"])
