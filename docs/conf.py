"""Sphinx configuration for the dfcompress documentation."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dfcompress._version import __version__

project = "dfcompress"
author = "The dfcompress developers"
copyright = "2026, The dfcompress developers"
release = version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_heading_anchors = 3
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Type hints name torch / numpy classes that have no inventory offline.
nitpicky = False
suppress_warnings = ["autodoc.import_object"]
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"dfcompress {release}"
html_static_path = ["_static"]
