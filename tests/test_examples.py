"""Fast checks of the example notebooks (``nox -s examples`` executes them in full)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def _code_cells(path: Path) -> list[dict[str, Any]]:
    nb = json.loads(path.read_text())
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _source(cell: dict[str, Any]) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else str(src)


def test_the_documented_notebooks_exist() -> None:
    names = {p.stem for p in NOTEBOOKS}
    listed = [
        line.strip().removeprefix("_notebooks/")
        for line in (ROOT / "docs" / "examples.rst").read_text().splitlines()
        if line.strip().startswith("_notebooks/")
    ]
    assert len(listed) >= 7
    assert set(listed) == names, "docs/examples.rst and examples/ list different notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_executed_top_to_bottom_without_errors(path: Path) -> None:
    """The docs render the stored outputs, so they must come from one clean run."""
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    cells = _code_cells(path)
    counts = [c["execution_count"] for c in cells]
    assert None not in counts, f"{path.name} has cells that were never run"
    assert counts == list(range(1, len(cells) + 1)), f"{path.name} was not run top to bottom"
    errors = [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{path.name} stores an error: {errors[0].get('ename')}"
    assert any(c["outputs"] for c in cells), f"{path.name} has no outputs at all"


def test_notebooks_match_their_generator() -> None:
    """examples/_make_notebooks.py is the source: the stored notebooks have its cells."""
    pytest.importorskip("nbformat")
    spec = importlib.util.spec_from_file_location(
        "_make_notebooks", EXAMPLES / "_make_notebooks.py"
    )
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert {p.stem for p in NOTEBOOKS} == set(gen.NOTEBOOKS)
    for path in NOTEBOOKS:
        stored = json.loads(path.read_text())["cells"]
        kinds = ["code" if k == "py" else "markdown" for k, _ in gen.NOTEBOOKS[path.stem]]
        assert [c["cell_type"] for c in stored] == kinds, f"{path.name} is out of date"
        for cell, (kind, text) in zip(stored, gen.NOTEBOOKS[path.stem], strict=True):
            if kind == "md":
                assert _source(cell) == text, f"{path.name}: a markdown cell is out of date"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_imports_name_real_dfcompress_objects(path: Path) -> None:
    """Every ``from dfcompress... import x`` and ``dfc.x`` in the notebook exists."""
    code = "\n\n".join(_source(c) for c in _code_cells(path))
    tree = ast.parse(code, filename=str(path))
    missing: list[str] = []
    aliases = {"dfcompress", "dfc"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("dfcompress"):
                    importlib.import_module(a.name)
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dfcompress"):
            module = importlib.import_module(str(node.module))
            missing += [
                f"{node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)
            ]
    top = importlib.import_module("dfcompress")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and not hasattr(top, node.attr)
        ):
            missing.append(f"dfcompress.{node.attr}")
    assert not missing, f"{path.name} uses names that do not exist: {missing}"
