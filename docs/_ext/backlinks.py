"""Give every object the anchor its ``[docs]`` back-link (sphinx.ext.viewcode) points to.

viewcode links each object of a module's source page back to
``api.html#<prefix>.<name>``, with one ``<prefix>`` per module: the name the
module's first documented object was documented under. When a module's first
object is a top-level re-export (``dfcompress.compare``) and its others are
documented under the module (``dfcompress.report.compare.collect``), their
back-links point to anchors (``dfcompress.collect``) that no page defines.
This adds those anchors, as extra ids of the objects' own signatures, when the
page defines them nowhere else.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.ext.viewcode import _get_full_modname


def _add_backlink_anchors(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    modules: dict[str, Any] = getattr(app.env, "_viewcode_modules", {})
    taken = {i for node in doctree.findall(nodes.Element) for i in node.get("ids", [])}
    for sig in doctree.findall(addnodes.desc_signature):
        modname, fullname = sig.get("module"), sig.get("fullname")
        if not modname or not fullname or not sig.get("ids"):
            continue  # not a Python object, or documented with :no-index:
        entry = modules.get(_get_full_modname(modname, fullname) or "")
        if not entry:
            continue
        anchor = f"{entry[3]}.{fullname}"
        if anchor not in taken:
            sig["ids"].append(anchor)
            taken.add(anchor)


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.viewcode")
    app.connect("doctree-resolved", _add_backlink_anchors)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
