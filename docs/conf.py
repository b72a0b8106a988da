"""Sphinx configuration of fairtune's documentation (``make docs``).

Everything here works offline: no intersphinx, MathJax served from the build
(``sphinx-mathjax-offline``), and the example gallery runs on bundled or generated data.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from sphinx.ext import autosummary
from sphinx.pycode import ModuleAnalyzer
from sphinx.errors import PycodeError

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "src"))
sys.path.insert(0, str(DOCS / "_ext"))
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The gallery's examples pre-train small models: keep them out of the user's cache.
os.environ.setdefault("FAIRTUNE_CACHE", str(DOCS / "_build" / "fairtune-cache"))

import fairtune  # noqa: E402

project = "fairtune"
author = "fairtune developers"
copyright = "2026, fairtune developers"
version = release = fairtune.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "cli_reference",  # docs/_ext: the fairtune-cli directive
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "results", "Thumbs.db", ".DS_Store", "auto_examples/*.ipynb",
                    "auto_examples/*.py", "auto_examples/*.zip", "auto_examples/*.md5", "auto_examples/*.json"]
templates_path = ["_templates"]
smartquotes = False  # "--flag" stays two hyphens, in help texts as in prose

# --- Markdown pages (MyST) ---------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# --- API reference -----------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"  # the signature shows them; numpydoc's sections carry the prose
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_validation_checks: set[str] = set()
numpydoc_xref_param_type = False


def _is_private(name: str) -> bool:
    return any(part.startswith("_") for part in name.split("."))


def _public_modules(package: ModuleType) -> list[str]:
    """Every importable module of ``package`` with no ``_`` in its dotted name, in walk order."""
    names = [package.__name__]
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
        if not _is_private(info.name):
            names.append(info.name)
    return names


def _kind(value: Any) -> str:
    if isinstance(value, type):
        return "exceptions" if issubclass(value, BaseException) else "classes"
    if isinstance(value, ModuleType):
        return "modules"
    return "functions" if inspect.isroutine(value) else "data"


def data_doc(key: str, value: Any, modules: list[str]) -> str:
    """The ``#:`` doc comment of public data (looked up in every module that holds the same
    object, since a package that re-exports it has none), else what it holds."""
    for name in modules:
        module = sys.modules.get(name)
        if module is None or vars(module).get(key) is not value:
            continue
        try:
            comment = ModuleAnalyzer.for_module(name).find_attr_docs().get(("", key))
        except PycodeError:
            comment = None
        if comment:
            return " ".join(line.strip() for line in comment if line.strip())
    if isinstance(value, dict):
        return "A mapping with the keys " + ", ".join(f"``{k}``" for k in value) + "."
    return f"``{value!r}``" if len(repr(value)) < 200 else f"A ``{type(value).__name__}``."


def api_members(package: ModuleType) -> tuple[dict[str, dict[str, list[str]]], dict[str, str]]:
    """The public names of each public module, each name documented once; and the text of
    each public data name (:func:`data_doc`), by its full name.

    A module's public names are its ``__all__``; without one, the public names defined in it.
    A name is documented on the page of the first module (in walk order: packages before
    their modules) that makes it public, so that ``fairtune.importance.group_fisher`` is not
    documented again as ``fairtune.importance.fisher.group_fisher`` (which would make every
    cross-reference to it ambiguous). A module hidden by a package attribute of the same name
    has no page of its own; its names are listed on the package's page.
    """
    seen: set[int] = set()
    pages: dict[str, dict[str, list[str]]] = {}
    data_docs: dict[str, str] = {}
    modules = _public_modules(package)
    for name in modules:
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        if exported is None:
            exported = [key for key, value in vars(module).items()
                        if not key.startswith("_") and getattr(value, "__module__", None) == name
                        and _kind(value) != "data"]
        page: dict[str, list[str]] = {"functions": [], "classes": [], "exceptions": [], "data": []}
        for key in exported:
            value = getattr(module, key)
            kind = _kind(value)
            if kind == "modules" or id(value) in seen and kind != "data":
                continue
            if kind != "data":
                seen.add(id(value))
            page[kind].append(key)
            if kind == "data":
                data_docs[f"{name}.{key}"] = data_doc(key, value, [m for m in sys.modules if m.startswith(package.__name__)])
        prefix = name + "."
        page["modules"] = [m[len(prefix):] for m in modules if m.startswith(prefix) and "." not in m[len(prefix):]]
        parent, _, short = name.rpartition(".")
        if parent in pages and getattr(sys.modules[parent], short) is not module:
            # The package exports a function of the module's name (fairtune.experiments.run):
            # the module's own names go on the package's page, as run.<name>.
            pages[parent]["modules"].remove(short)
            for kind, items in page.items():
                pages[parent][kind] += [f"{short}.{item}" for item in items]
            continue
        pages[name] = page
    return pages, data_docs


api_pages, api_data_docs = api_members(fairtune)
autosummary_context = {"api": api_pages, "data_docs": api_data_docs}
# A summary is a docstring's first sentence; "Eq. (1): ..." does not end at "Eq.".
autosummary.WELL_KNOWN_ABBREVIATIONS = (*autosummary.WELL_KNOWN_ABBREVIATIONS, "Eq.")


# --- Example gallery ---------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": ["../examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "min_reported_time": 0,
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
    # fairtune.report.figures returns pyplot-free Figures: docs/_ext/figure_scraper.py shows them.
    "image_scrapers": ("figure_scraper.pyplot_free_figures", "matplotlib"),
    # The timing page loads jQuery and DataTables from CDNs; the build log and each example's
    # page give the run times instead.
    "write_computation_times": False,
}

# --- HTML --------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"fairtune {release}"
html_static_path: list[str] = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 3,
    "icon_links": [],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_show_sourcelink = False
html_last_updated_fmt = None


def _skip_metadata_requests(app: Any, what: str, name: str, obj: Any, skip: bool, options: Any) -> bool | None:
    """scikit-learn adds ``set_{fit,predict,...}_request`` to every estimator class (metadata
    routing); their docstrings are scikit-learn's and point into its glossary."""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def setup(app: Any) -> None:
    app.connect("autodoc-skip-member", _skip_metadata_requests)
