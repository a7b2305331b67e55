"""Shared test settings: hypothesis profiles and fixtures."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


try:  # parity tests run tiny ops, where PyTorch's thread pool costs more than it gives
    import torch

    torch.set_num_threads(1)
except ImportError:
    pass
