"""Shared hypothesis strategies: tensors with edge values and small random networks."""

from __future__ import annotations

import math
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

FINITE = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)
EDGE_VALUES = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1e-8, -1e-8, 1e4, -1e4])


@st.composite
def shapes(
    draw: st.DrawFn, min_dims: int = 1, max_dims: int = 4, max_side: int = 6
) -> tuple[int, ...]:
    """A tensor shape with small sides."""
    n = draw(st.integers(min_dims, max_dims))
    return tuple(draw(st.integers(1, max_side)) for _ in range(n))


@st.composite
def tensors(
    draw: st.DrawFn,
    shape: tuple[int, ...] | None = None,
    *,
    edge: bool = True,
    zeros: float = 0.0,
) -> torch.Tensor:
    """A float32 tensor mixing ordinary values with edge values (and, if asked, many zeros)."""
    shp = shape if shape is not None else draw(shapes())
    n = math.prod(shp)
    elem = st.one_of(FINITE, EDGE_VALUES) if edge else FINITE
    values = draw(st.lists(elem, min_size=n, max_size=n))
    t = torch.tensor(values, dtype=torch.float32).reshape(shp)
    if zeros > 0:
        seed = draw(st.integers(0, 2**31 - 1))
        g = torch.Generator().manual_seed(seed)
        t[torch.rand(shp, generator=g) < zeros] = 0.0
    return t


class SmallNet(nn.Module):
    """A conv/BN/linear net whose widths come from a hypothesis draw."""

    def __init__(self, c1: int = 4, c2: int = 8, hidden: int = 6, classes: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, groups=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(c2, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc2(torch.relu(self.fc1(self.pool(x).flatten(1))))


@st.composite
def small_nets(draw: st.DrawFn) -> SmallNet:
    """A randomly sized, randomly initialised SmallNet (seeded by the draw).

    It records its constructor, so ``dfcompress.save`` knows its sizes.
    """
    import dfcompress as dfc

    torch.manual_seed(draw(st.integers(0, 2**31 - 1)))
    sizes = {
        "c1": draw(st.integers(1, 8)),
        "c2": draw(st.integers(1, 8)),
        "hidden": draw(st.integers(1, 8)),
        "classes": draw(st.integers(1, 3)),
    }
    return dfc.set_constructor(SmallNet(**sizes), SmallNet, **sizes).eval()


# --------------------------------------------------------------------------- file fuzzing

_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 3]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(
        ["os:system", "torch.nn.modules.linear:Linear", "dense", "csr", "bitmask", "int8", "uint8"]
    ),
)
json_values = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(["__tuple__", "alias", "shape", "x"]), inner, max_size=3),
    ),
    max_leaves=8,
)


@st.composite
def file_edits(draw: st.DrawFn) -> tuple[str, Any]:
    """One corruption of a saved file, applied by :func:`apply_file_edit`.

    Byte flips, truncations and insertions (half of them in the header, where
    the structure is), or a change to one field of the manifest.
    """
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "manifest", "manifest"]))
    where = draw(st.floats(0, 1, exclude_max=True))
    header = draw(st.booleans())
    if kind == "flip":
        return kind, (where, header, draw(st.integers(0, 7)))
    if kind == "truncate":
        return kind, (where, header)
    if kind == "insert":
        return kind, (where, header, draw(st.binary(min_size=1, max_size=16)))
    op = draw(st.sampled_from(["replace", "delete"]))
    return kind, (where, op, draw(json_values))


def _manifest_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _manifest_paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _manifest_paths(v, (*prefix, i))
    return out


def apply_file_edit(raw: bytes, edit: tuple[str, Any]) -> bytes:
    """``raw`` (a file written by dfcompress.save) with ``edit`` applied."""
    import base64
    import json
    import struct
    import zlib

    kind, args = edit
    (n,) = struct.unpack("<Q", raw[:8])
    if kind != "manifest":
        span = 8 + n if args[1] else len(raw)
        pos = int(args[0] * span)
        if kind == "flip":
            return raw[:pos] + bytes([raw[pos] ^ (1 << args[2])]) + raw[pos + 1 :]
        if kind == "truncate":
            return raw[:pos]
        return raw[:pos] + args[2] + raw[pos:]
    where, op, value = args
    header = json.loads(raw[8 : 8 + n])
    manifest = json.loads(
        zlib.decompress(base64.b64decode(header["__metadata__"].pop("dfcompress-zlib")))
    )
    paths = _manifest_paths(manifest)[1:]
    path = paths[int(where * len(paths))]
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    if op == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    header["__metadata__"]["dfcompress"] = json.dumps(manifest)
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    return struct.pack("<Q", len(new)) + new + raw[8 + n :]


# --- bad values for the verbs' arguments --------------------------------------------------

WRONG_TYPES = st.sampled_from([None, "x", b"x", 3, -1, 2.5, float("nan"), [], {}, object(), print])
"""Values of the wrong type for almost any argument (a model, a path, a flag, data)."""

NOT_BOOLS = st.sampled_from(["yes", "", 2, None, 1.0, [True], object()])
"""Values that are not True or False (for flags such as ``inplace=``, ``progress=``)."""


def bad_fractions(*, high_open: bool = True) -> st.SearchStrategy[object]:
    """Amounts outside [0, 1) (or [0, 1] with ``high_open=False``), NaN, Inf, non-numbers."""
    outside = st.one_of(
        st.floats(max_value=-1e-6, allow_nan=False, allow_infinity=False),
        st.floats(min_value=1.0 if high_open else 1.0 + 1e-6, allow_infinity=False),
    )
    return st.one_of(
        outside,
        st.sampled_from([float("nan"), float("inf"), -float("inf"), "half", None, True, [0.5]]),
    )


def bad_counts(low: int = 1) -> st.SearchStrategy[object]:
    """Integer options (samples, steps, repeats) below ``low`` or not integers (None excluded)."""
    return st.one_of(
        st.integers(max_value=low - 1),
        st.sampled_from([1.5, "8", True, float("nan"), [4]]),
    )


def _filled(value: float) -> torch.Tensor:
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x[1, 0, 2, 3] = value
    return x


@st.composite
def bad_calibration(draw: st.DrawFn) -> object:
    """Calibration data no verb can use: empty, NaN/Inf, mixed shapes/dtypes, not data at all.

    Samples are (3, 8, 8) images; each draw builds fresh objects (generators are one-shot).
    """
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    kind = draw(
        st.sampled_from(
            [
                "empty list",
                "empty tensor",
                "empty generator",
                "nan",
                "inf",
                "nan in a generator",
                "mixed shapes",
                "mixed dtypes",
                "scalar",
                "bool",
                "string",
                "dict",
                "number",
                "module",
            ]
        )
    )
    built: dict[str, object] = {
        "empty list": [],
        "empty tensor": torch.empty(0, 3, 8, 8),
        "empty generator": (t for t in ()),
        "nan": _filled(float("nan")),
        "inf": [x, _filled(draw(st.sampled_from([float("inf"), -float("inf")])))],
        "nan in a generator": (t for t in (x, _filled(float("nan")))),
        "mixed shapes": [x, torch.rand(4, 3, 6, 6)],
        "mixed dtypes": [x, x.double()],
        "scalar": torch.tensor(1.0),
        "bool": x > 0.5,
        "string": "images/",
        "dict": {"image": x},
        "number": 4,
        "module": nn.Linear(2, 2),
    }
    return built[kind]


@st.composite
def bad_models(draw: st.DrawFn, *, needs_layers: bool = True) -> object:
    """Things that are not a usable model: other types, meta tensors, nothing to compress."""
    kind = draw(st.sampled_from(["type", "meta", "buffers only", "no layers"]))
    if kind == "type" or (not needs_layers and kind in ("buffers only", "no layers")):
        return draw(WRONG_TYPES)
    if kind == "meta":
        with torch.device("meta"):
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 1))
    if kind == "buffers only":
        m = nn.Module()
        m.register_buffer("table", torch.ones(3))
        return m
    return nn.Sequential(nn.ReLU(), nn.Flatten())


BAD_RECIPES = st.sampled_from(
    ["q9", "", "  ", "p0", "p100", "s150", "ise8-4", "q8--p50", "q8-x", "int8", 5, None, ["q8"]]
)
"""Recipe strings (and non-strings) :func:`dfcompress.parse_recipe` refuses."""

BAD_SELECTORS = st.sampled_from(["nope", "convv", 5, [], object(), ("conv", 3)])
"""Selectors that name no preset, are of the wrong type, or select nothing."""


@st.composite
def scored_samples(
    draw: st.DrawFn, *, rows: int = 1, max_size: int = 20
) -> tuple[list[int], list[list[float]]]:
    """Labels (both classes, at least two of each) and ``rows`` score vectors on them.

    Scores come from a few distinct levels, so ties within and across classes are common.
    """
    n = draw(st.integers(4, max_size))
    labels = draw(
        st.lists(st.integers(0, 1), min_size=n, max_size=n).filter(
            lambda y: 2 <= sum(y) <= len(y) - 2
        )
    )
    levels = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0, -3.0, 7.5])
    scores = [draw(st.lists(levels, min_size=n, max_size=n)) for _ in range(rows)]
    return labels, scores


_SPECIAL_FLOATS = [0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-30, 65504.0]


@st.composite
def sparse_arrays(draw: st.DrawFn) -> Any:
    """A float32/float16/int8/uint8 numpy array of a random shape, mostly one value.

    The common value is 0 (or -0.0, or uint8's zero point 128) and fills a random
    fraction; float arrays also hold NaN, infinities and signed zeros.
    """
    import numpy as np

    dtype = np.dtype(draw(st.sampled_from(["float32", "float16", "int8", "uint8"])))
    shape = draw(shapes(min_dims=1, max_dims=4, max_side=9))
    fill_fraction = draw(st.floats(0.0, 1.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype.kind == "f":
        w = rng.standard_normal(shape).astype(dtype)
        special = rng.random(shape) < 0.05
        w[special] = rng.choice(np.array(_SPECIAL_FLOATS, dtype), int(special.sum()))
        fill = draw(st.sampled_from([0.0, -0.0]))
    else:
        info = np.iinfo(dtype)
        w = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
        fill = draw(st.sampled_from([0, 128] if dtype == np.uint8 else [0, -1]))
    w[rng.random(shape) < fill_fraction] = fill
    return w
