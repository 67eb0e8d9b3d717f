"""The one error type dfcompress raises for bad input, and its subclasses.

Every message repeats the value the user gave and says what is allowed, e.g.
``bits=1 is out of range: use 2..16``.
"""

from __future__ import annotations

__all__ = ["DfcompressError", "MissingExtraError", "UnsafeFileError", "require"]


class DfcompressError(ValueError):
    """Raised for invalid input or an operation dfcompress cannot perform.

    It subclasses :class:`ValueError` so code that already catches bad-value
    errors keeps working.
    """


class MissingExtraError(DfcompressError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class UnsafeFileError(DfcompressError):
    """A file was refused by :func:`dfcompress.load` (pickle, tampering, unknown factory)."""


def require(module: str, extra: str) -> object:
    """Import an optional dependency or raise :class:`MissingExtraError` naming the extra.

    >>> require("math", "none").__name__
    'math'
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{module!r} is needed here but is not installed: pip install 'dfcompress[{extra}]'"
        ) from e
