"""Check, before any work starts, that the optional extras a command needs are installed.

A command that needs an extra for its last step (the report of ``dfcompress
demo``, say) must not run for a minute and then die for lack of it: it calls
:func:`require_extras` first. The check finds each extra's top-level modules
without importing them, so it costs milliseconds.

>>> require_extras("report", what="a report")
>>> missing_extras("report")
()
"""

from __future__ import annotations

import importlib.util

from dfcompress.errors import DfcompressError, MissingExtraError

__all__ = ["EXTRAS", "missing_extras", "require_extras"]

EXTRAS: dict[str, tuple[str, ...]] = {
    "report": ("matplotlib", "jinja2"),
    "demo": ("skimage", "PIL"),
    "onnx": ("onnx", "onnxruntime", "onnxscript"),
    "zoo": ("timm",),
    "distributed": ("ray",),
    "mobile": ("executorch",),
    "video": ("transformers",),
}
"""The modules each runtime extra of ``pyproject.toml`` provides (import names)."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        return False


def missing_extras(*extras: str) -> tuple[str, ...]:
    """The extras among ``extras`` with at least one module that cannot be found, in order.

    Raises:
        DfcompressError: an extra dfcompress does not define.
    """
    unknown = [e for e in extras if e not in EXTRAS]
    if unknown:
        raise DfcompressError(
            f"extras={unknown!r} are unknown: use some of {', '.join(sorted(EXTRAS))}"
        )
    return tuple(e for e in dict.fromkeys(extras) if not all(map(_installed, EXTRAS[e])))


def require_extras(*extras: str, what: str) -> None:
    """Raise :class:`~dfcompress.errors.MissingExtraError` unless every extra is installed.

    Args:
        extras: Extra names, e.g. ``"report", "demo"``.
        what: What needs them, for the message (e.g. ``"dfcompress demo"``).

    Raises:
        MissingExtraError: naming the missing extras, their modules and the
            ``pip install`` command that adds them.

    >>> try:
    ...     require_extras("report", "nonexistent", what="x")
    ... except DfcompressError as e:
    ...     print(str(e).split(":")[0])
    extras=['nonexistent'] are unknown
    """
    missing = missing_extras(*extras)
    if not missing:
        return
    modules = sorted({m for e in missing for m in EXTRAS[e] if not _installed(m)})
    names = ", ".join(f"[{e}]" for e in missing)
    raise MissingExtraError(
        f"{what} needs the extra(s) {names}, which are not installed (missing modules: "
        f"{', '.join(modules)}): pip install 'dfcompress[{','.join(missing)}]'"
    )
