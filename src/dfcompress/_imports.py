"""Import a ``"package.module:name"`` that the *user* named in their own code or command line.

Never for names read from a file: :func:`dfcompress.load` resolves a file's
constructor through its own registry and rules (``dfcompress.io``). Here the
name is one attribute defined at the module's top level, read from the
module's namespace: no attribute walk (``module:os.system`` is refused).

>>> import_attr("math:sqrt", "function")(16.0)
4.0
"""

from __future__ import annotations

import importlib
from typing import Any

from dfcompress.errors import DfcompressError

__all__ = ["import_attr"]


def import_attr(ref: str, what: str = "object") -> Any:
    """The top-level attribute ``name`` of ``package.module``, for ``"package.module:name"``."""
    module_name, _, attr = ref.partition(":") if isinstance(ref, str) else ("", "", "")
    if not module_name or not attr.isidentifier():
        raise DfcompressError(f"{what} {ref!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise DfcompressError(f"cannot import {module_name!r} for {what} {ref!r}: {e}") from e
    if attr not in vars(module):
        raise DfcompressError(f"{what} {ref!r}: {module_name!r} defines no {attr!r}")
    return vars(module)[attr]
