"""Module selection: which layers a quantization rule or a pruning amount applies to.

A :class:`Selector` resolves against a model into an ordered ``{name: module}``
mapping (registration order, which is forward order for the models this
library targets). Selectors are built from

- a preset name: ``"conv"``, ``"linear"``, ``"stem"``, ``"head"``, ``"se"``,
  ``"bn"``, ``"all"`` (every conv and linear);
- a name glob: ``by_name("features.*")`` (any string containing ``* ? [ .`` is
  treated as a glob by :func:`as_selector`);
- module types: ``by_type(nn.Conv2d)``;
- a predicate ``(name, module) -> bool``: ``where(lambda n, m: ...)``;

and combine with ``|`` (union), ``&`` (intersection) and ``~`` (complement
within all modules).

>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Flatten(),
...                     nn.LazyLinear(2))
>>> list(as_selector("conv").resolve(net))
['0', '2']
>>> list((preset("conv") & ~preset("stem")).resolve(net))
['2']
>>> list(as_selector("head").resolve(net))
['4']

The ``"se"`` preset returns the conv/linear layers of every
squeeze-and-excitation branch. Branches are found by structure, whatever the
classes are called: the model runs once on a probe input and its dataflow is
searched for global average pooling -> conv/linear -> activation ->
conv/linear -> sigmoid or hard-sigmoid -> multiplication with the pooled
tensor (or close kin of it); one-layer gates (ECA, EffectiveSE) count too.
The probe input is guessed from the first conv or linear layer (a
``(2, C, 64, 64)`` image for a ``Conv2d`` with ``C`` input channels, then
``(1, C, 224, 224)`` and ``(1, C, 256, 256)``); give one with
``preset("se", example=x)`` (a tensor or a shape). Classes registered with
:func:`register_se` always count, and are all that is used, with a
:class:`SelectionWarning`, when the forward cannot run on the probe.
:func:`find_se` lists the branches.

>>> class Gate(nn.Module):  # any names: found by what the forward does
...     def __init__(self, c: int) -> None:
...         super().__init__()
...         self.squeeze, self.excite = nn.Conv2d(c, 2, 1), nn.Conv2d(2, c, 1)
...     def forward(self, x):
...         w = self.excite(self.squeeze(x.mean((2, 3), keepdim=True)).relu())
...         return x * w.sigmoid()
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3), Gate(8), nn.Conv2d(8, 8, 1))
>>> list(preset("se").resolve(net))
['1.squeeze', '1.excite']
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

import torch
from torch import nn

from dfcompress._se import find_se as find_se
from dfcompress._se import is_se_module as is_se_module
from dfcompress._se import register_se as register_se
from dfcompress._se import se_layer_names
from dfcompress._se_trace import SEBranch as SEBranch
from dfcompress._se_trace import SelectionWarning as SelectionWarning
from dfcompress.errors import DfcompressError

__all__ = [
    "PRESETS",
    "SEBranch",
    "SelectionWarning",
    "Selector",
    "SelectorLike",
    "as_selector",
    "by_name",
    "by_type",
    "find_se",
    "is_se_module",
    "preset",
    "register_se",
    "select",
    "where",
]

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear,)
BN_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class Selector(ABC):
    """Picks named submodules of a model. Combine with ``|``, ``&``, ``~``."""

    @abstractmethod
    def resolve(self, model: nn.Module) -> dict[str, nn.Module]:
        """The selected submodules of ``model``, in registration order."""

    def names(self, model: nn.Module) -> list[str]:
        """The selected module names."""
        return list(self.resolve(model))

    def __or__(self, other: SelectorLike) -> Selector:
        return _Combine("|", self, as_selector(other))

    def __ror__(self, other: SelectorLike) -> Selector:
        return _Combine("|", as_selector(other), self)

    def __and__(self, other: SelectorLike) -> Selector:
        return _Combine("&", self, as_selector(other))

    def __rand__(self, other: SelectorLike) -> Selector:
        return _Combine("&", as_selector(other), self)

    def __invert__(self) -> Selector:
        return _Not(self)


SelectorLike = (
    Selector
    | str
    | type[nn.Module]
    | tuple[type[nn.Module], ...]
    | Callable[[str, nn.Module], bool]
)


def _all_named(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n]


class _Predicate(Selector):
    def __init__(self, fn: Callable[[str, nn.Module], bool], label: str) -> None:
        self._fn = fn
        self._label = label

    def resolve(self, model: nn.Module) -> dict[str, nn.Module]:
        return {n: m for n, m in _all_named(model) if self._fn(n, m)}

    def __repr__(self) -> str:
        return self._label


class _Combine(Selector):
    def __init__(self, op: str, a: Selector, b: Selector) -> None:
        self._op, self._a, self._b = op, a, b

    def resolve(self, model: nn.Module) -> dict[str, nn.Module]:
        a, b = self._a.resolve(model), self._b.resolve(model)
        keep = set(a) | set(b) if self._op == "|" else set(a) & set(b)
        return {n: m for n, m in _all_named(model) if n in keep}

    def __repr__(self) -> str:
        return f"({self._a!r} {self._op} {self._b!r})"


class _Not(Selector):
    def __init__(self, a: Selector) -> None:
        self._a = a

    def resolve(self, model: nn.Module) -> dict[str, nn.Module]:
        drop = set(self._a.resolve(model))
        return {n: m for n, m in _all_named(model) if n not in drop}

    def __repr__(self) -> str:
        return f"~{self._a!r}"


class _Preset(Selector):
    def __init__(self, name: str, example: torch.Tensor | tuple[int, ...] | None = None) -> None:
        self.name = name
        self.example = example

    def resolve(self, model: nn.Module) -> dict[str, nn.Module]:
        named = _all_named(model)
        weighted = [(n, m) for n, m in named if isinstance(m, CONV_TYPES + LINEAR_TYPES)]
        if self.name == "conv":
            return {n: m for n, m in named if isinstance(m, CONV_TYPES)}
        if self.name == "linear":
            return {n: m for n, m in named if isinstance(m, LINEAR_TYPES)}
        if self.name == "all":
            return dict(weighted)
        if self.name == "bn":
            return {n: m for n, m in named if isinstance(m, BN_TYPES)}
        if self.name == "stem":
            return dict(weighted[:1])
        if self.name == "head":
            linears = [(n, m) for n, m in weighted if isinstance(m, LINEAR_TYPES)]
            return dict(linears[-1:])
        if self.name == "se":
            found = se_layer_names(model, self.example) if weighted else set()
            return {n: m for n, m in weighted if n in found}
        raise AssertionError(self.name)  # pragma: no cover - guarded in preset()

    def __repr__(self) -> str:
        return f"preset({self.name!r})"


PRESETS: dict[str, str] = {
    "conv": "every Conv1d/Conv2d/Conv3d",
    "linear": "every Linear",
    "all": "every conv and linear layer",
    "bn": "every BatchNorm1d/2d/3d",
    "stem": "the first conv or linear layer (registration order)",
    "head": "the last Linear layer (the classifier)",
    "se": "the convs/linears of squeeze-and-excitation branches (found by structure)",
}


def preset(name: str, *, example: torch.Tensor | tuple[int, ...] | None = None) -> Selector:
    """A named preset selector; see :data:`PRESETS`.

    Args:
        name: The preset.
        example: Only for ``"se"``: the input tensor, or input shape, the
            model is probed with to find its SE branches (guessed from the
            first conv or linear layer when omitted).
    """
    if name not in PRESETS:
        raise DfcompressError(
            f"unknown selector preset {name!r}: use one of {', '.join(sorted(PRESETS))}, "
            "a name glob such as 'features.*', a module type, or a predicate"
        )
    if example is not None and name != "se":
        raise DfcompressError(f"example= is only used by preset('se'), not preset({name!r})")
    if (
        example is not None
        and not isinstance(example, torch.Tensor)
        and not (
            isinstance(example, tuple)
            and example
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in example)
        )
    ):
        raise DfcompressError(
            f"example={example!r} must be an input tensor or a shape of positive ints, "
            "e.g. (1, 3, 224, 224)"
        )
    return _Preset(name, example)


def by_name(*patterns: str) -> Selector:
    """Modules whose qualified name matches any of the shell-style globs."""
    if not patterns:
        raise DfcompressError("by_name needs at least one pattern, e.g. by_name('blocks.*')")
    bad = [p for p in patterns if not isinstance(p, str)]
    if bad:
        raise DfcompressError(
            f"by_name patterns must be strings such as 'blocks.*', got {bad[0]!r}"
        )
    pats = tuple(patterns)
    return _Predicate(
        lambda n, _m: any(fnmatch.fnmatchcase(n, p) for p in pats), f"by_name{pats!r}"
    )


def by_type(*types: type[nn.Module]) -> Selector:
    """Modules that are instances of any of ``types``."""
    if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
        raise DfcompressError(f"by_type expects nn.Module subclasses, got {types!r}")
    tt = tuple(types)
    return _Predicate(lambda _n, m: isinstance(m, tt), f"by_type{tuple(t.__name__ for t in tt)}")


def where(fn: Callable[[str, nn.Module], bool]) -> Selector:
    """Modules for which ``fn(name, module)`` is true."""
    if not callable(fn):
        raise DfcompressError(f"where expects a callable (name, module) -> bool, got {fn!r}")
    return _Predicate(fn, f"where({getattr(fn, '__name__', 'fn')})")


_GLOB_CHARS = set("*?[.")


def as_selector(x: SelectorLike) -> Selector:
    """Coerce a preset name, glob, type, tuple of types or predicate to a Selector."""
    if isinstance(x, Selector):
        return x
    if isinstance(x, str):
        if x in PRESETS:
            return preset(x)
        if _GLOB_CHARS & set(x):
            return by_name(x)
        return preset(x)  # raises with the list of presets
    if isinstance(x, type) and issubclass(x, nn.Module):
        return by_type(x)
    if isinstance(x, tuple):
        return by_type(*x)
    if callable(x):
        return where(x)  # type: ignore[arg-type]
    raise DfcompressError(
        f"cannot use {x!r} as a module selector: give a preset name "
        f"({', '.join(sorted(PRESETS))}), a name glob, an nn.Module type, or a predicate"
    )


def select(
    model: nn.Module,
    selector: SelectorLike | Iterable[SelectorLike],
    *,
    required: bool = False,
) -> dict[str, nn.Module]:
    """Resolve ``selector`` (or the union of several) against ``model``.

    With ``required=True`` an empty result is a :class:`DfcompressError`.
    """
    if not isinstance(model, nn.Module):
        raise DfcompressError(
            f"select() needs an nn.Module to select from, got {type(model).__name__}"
        )
    if isinstance(selector, (list, set, frozenset)):
        items = list(selector)
        if not items:
            raise DfcompressError("an empty list of selectors selects nothing")
        sel = as_selector(items[0])
        for s in items[1:]:
            sel = sel | as_selector(s)
    else:
        sel = as_selector(selector)  # type: ignore[arg-type]
    out = sel.resolve(model)
    if required and not out:
        raise DfcompressError(f"selector {sel!r} matched no module of {type(model).__name__}")
    return out
