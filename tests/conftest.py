"""Test configuration shared by the whole suite."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# Hypothesis: bounded examples, no deadline (torch's first call is slow), the same
# examples on every run (derandomize) so a failure reproduces.
settings.register_profile(
    "default",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("default")

# Each xdist worker uses one thread: two workers on two cores, no oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state, whichever worker runs it and after what.

    A test that draws from the global generators without seeding them would otherwise see
    whatever the tests before it on its xdist worker left behind.
    """
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
