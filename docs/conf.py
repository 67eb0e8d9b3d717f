"""Sphinx configuration for the dfcompress documentation."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

from dfcompress._version import __version__

project = "dfcompress"
author = "The dfcompress developers"
copyright = "2026, The dfcompress developers"
release = version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "backlinks",
    "sphinx.ext.mathjax",
    "myst_nb",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
# The example notebooks are committed with their outputs (written by
# `python examples/_make_notebooks.py --execute`) and re-executed by
# `nox -s examples`; the site renders the stored outputs.
nb_execution_mode = "off"
# Markdown outputs (the report's tables) go through the MyST parser, which has
# tables; myst-nb's default, plain CommonMark, prints them as raw "|---|" text.
nb_render_markdown_format = "myst"
myst_heading_anchors = 3
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Dataclass fields are documented by autodoc; render Attributes sections as :ivar:.
napoleon_use_ivar = True
# Type hints name torch / numpy classes that have no inventory offline.
nitpicky = False
suppress_warnings = ["autodoc.import_object"]
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"dfcompress {release}"
html_static_path = ["_static"]
# MathJax 3.2.2 (tex-svg.js, Apache-2.0, from the "mathjax" npm package) ships in
# _static, so formulas render offline and without a CDN; the SVG output needs
# no font files.
mathjax_path = "mathjax/tex-svg.js"


def _copy_notebooks() -> None:
    """Copy examples/*.ipynb into docs/_notebooks/ (Sphinx reads only its source dir)."""
    here = Path(__file__).resolve().parent
    target = here / "_notebooks"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    for nb in sorted((here.parent / "examples").glob("*.ipynb")):
        shutil.copy2(nb, target / nb.name)


_copy_notebooks()
