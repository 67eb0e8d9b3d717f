"""Resolve what a pruning call applies to: which layers, with which amount."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Union

from torch import nn

from dfcompress.errors import DfcompressError
from dfcompress.select import CONV_TYPES, LINEAR_TYPES, SelectorLike, as_selector

__all__ = [
    "AmountSpec",
    "Select",
    "check_amount",
    "is_binary",
    "prunable_layers",
    "resolve_amounts",
]

AmountSpec = Union[float, Mapping[SelectorLike, float]]  # noqa: UP007 - runtime alias
Select = Union[SelectorLike, Sequence[SelectorLike]]  # noqa: UP007 - runtime alias
"""A selector, an exact module name, or a list of them (their union)."""

# Layers whose weights are binarized in the forward pass: zeroing a latent weight
# does not remove it (sign(0) is still +-1), so they are never pruned unstructured.
_BINARY_CLASS_NAMES = {"BinaryConv2d", "BinaryConv", "BinaryLinear", "HardBinaryConv"}


def is_binary(module: nn.Module) -> bool:
    """Whether ``module`` binarizes its weights (BNext's ``BinaryConv2d`` and kin).

    A class opts in by name (``BinaryConv2d``...) or by a true ``dfc_binary`` attribute.

    >>> from torch import nn
    >>> is_binary(nn.Conv2d(1, 1, 1))
    False
    """
    if bool(getattr(module, "dfc_binary", False)):
        return True
    return any(c.__name__ in _BINARY_CLASS_NAMES for c in type(module).__mro__)


def check_amount(amount: float, what: str = "amount") -> float:
    """Validate a pruning fraction: a number in [0, 1)."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise DfcompressError(f"{what}={amount!r} is not a number: use a fraction in [0, 1)")
    a = float(amount)
    if not 0.0 <= a < 1.0:
        raise DfcompressError(f"{what}={amount!r} is out of range: use a fraction in [0, 1)")
    return a


def prunable_layers(model: nn.Module, select: Select | None = None) -> dict[str, nn.Module]:
    """Conv and linear layers with a weight, minus binary layers, optionally narrowed."""
    base = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, CONV_TYPES + LINEAR_TYPES)
        and isinstance(getattr(m, "weight", None), nn.Parameter)
        and not is_binary(m)
    }
    if select is None:
        return base
    chosen = _resolve_key(model, select)
    return {n: m for n, m in base.items() if n in chosen}


def _resolve_key(model: nn.Module, key: Select) -> set[str]:
    if isinstance(key, (list, tuple, set)) and not (
        isinstance(key, tuple) and all(isinstance(k, type) for k in key)
    ):
        out: set[str] = set()
        for k in key:
            out |= _resolve_key(model, k)
        return out
    if isinstance(key, str):
        names = dict(model.named_modules())
        if key in names and key:
            return {key}
    return set(as_selector(key).resolve(model))  # type: ignore[arg-type]


def resolve_amounts(
    model: nn.Module, amount: AmountSpec, select: Select | None = None
) -> list[tuple[float, dict[str, nn.Module]]]:
    """Groups of layers sharing one amount.

    ``amount`` is a fraction (every prunable layer picked by ``select``) or a
    mapping from selector (preset, glob, type, or an exact module name) to a
    fraction; a later key overrides an earlier one for the layers both pick.
    Each key is its own group (one pool for global pruning). Layers with
    amount 0 are dropped.
    """
    layers = prunable_layers(model, select)
    if not isinstance(amount, Mapping):
        a = check_amount(amount)
        if not layers:
            raise DfcompressError(
                f"no prunable conv/linear layer in {type(model).__name__} for select={select!r}"
            )
        return [(a, layers)] if a > 0 else []
    if not amount:
        raise DfcompressError("amount={} is empty: give a fraction or {selector: fraction}")
    owner: dict[str, int] = {}
    values: list[float] = []
    for i, (key, value) in enumerate(amount.items()):
        values.append(check_amount(value, f"amount[{key!r}]"))
        hits = _resolve_key(model, key) & set(layers)
        if not hits:
            raise DfcompressError(
                f"amount key {key!r} matched no prunable conv/linear layer of "
                f"{type(model).__name__}"
            )
        for n in hits:
            owner[n] = i
    groups: dict[int, dict[str, nn.Module]] = {}
    for n, m in layers.items():
        if n in owner and values[owner[n]] > 0:
            groups.setdefault(owner[n], {})[n] = m
    return [(values[i], g) for i, g in sorted(groups.items())]
