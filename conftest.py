"""Seeds every test and doctest, under tests/ and in the package's docstrings alike.

Doctests draw inputs with ``torch.rand``; without a fixed seed their printed
figures could change from run to run (a mean of ``-0.0`` instead of ``0.0``).
"""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest
import torch

collect_ignore_glob: list[str] = []
if importlib.util.find_spec("executorch") is None:
    # The xnnpack target's modules import ExecuTorch (the "mobile" extra).
    collect_ignore_glob += [
        "src/dfcompress/deploy/xnnpack.py",
        "src/dfcompress/deploy/_xnnpack_*.py",
        "src/dfcompress/deploy/_pt2e_*.py",
    ]


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
