"""The docs' own checks: internal anchors, offline math, rendered notebook tables, packaging."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _check_anchors() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_anchors", ROOT / "docs" / "check_anchors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _site(tmp_path: Path) -> Path:
    (tmp_path / "api").mkdir()
    (tmp_path / "index.html").write_text(
        '<h1 id="top">x</h1><a href="api/q.html#dfcompress.quantize">ok</a>'
        '<a href="api/q.html#dfcompress.gone">missing anchor</a>'
        '<a href="nope.html">missing page</a><a href="#top">self</a>'
        '<a href="https://example.org/#x">external</a><a href="_static/a.css">asset</a>'
    )
    (tmp_path / "api" / "q.html").write_text(
        '<dt id="dfcompress.quantize"></dt><a href="../index.html#top">back</a>'
        '<a href="../index.html#nowhere">bad back-link</a>'
    )
    return tmp_path


def test_anchor_check_lists_exactly_the_broken_internal_links(tmp_path: Path) -> None:
    broken = _check_anchors().broken_links(_site(tmp_path))
    assert sorted(broken) == [
        "api/q.html: ../index.html#nowhere",
        "index.html: _static/a.css",
        "index.html: api/q.html#dfcompress.gone",
        "index.html: nope.html",
    ]


def test_anchor_check_exit_status(tmp_path: Path, capsys: object) -> None:
    tool = _check_anchors()
    assert tool.main([str(_site(tmp_path))]) == 1
    assert tool.main([str(tmp_path / "missing")]) == 2
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "index.html").write_text('<p id="a"></p><a href="#a">a</a>')
    assert tool.main([str(clean)]) == 0


def test_math_is_served_from_the_docs_not_a_cdn() -> None:
    conf = (ROOT / "docs" / "conf.py").read_text()
    assert 'mathjax_path = "mathjax/tex-svg.js"' in conf
    script = ROOT / "docs" / "_static" / "mathjax" / "tex-svg.js"
    assert script.stat().st_size > 1_000_000  # the whole bundle, not a stub


def test_notebook_markdown_outputs_go_through_a_parser_with_tables() -> None:
    assert 'nb_render_markdown_format = "myst"' in (ROOT / "docs" / "conf.py").read_text()


def test_the_all_extra_names_every_runtime_extra_but_zoo() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    (line,) = extras["all"]
    named = set(line.removeprefix("dfcompress[").removesuffix("]").split(","))
    assert named == set(extras) - {"all", "dev", "docs", "zoo"}
    assert {"Homepage", "Documentation", "Source", "Changelog"} <= set(project["urls"])
