"""Shared test settings: hypothesis profiles and fixtures."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Hypothesis: every run of the suite, local or CI, draws the same examples ("deterministic":
# derandomized, a hash of each test picks them), so a property fails for everyone or for no one
# and a red CI run reproduces with the README's command. To hunt for new failures on demand:
# HYPOTHESIS_PROFILE=explore python -m pytest (random draws, 10x the examples; failures found are
# kept in .hypothesis/ and replayed first next time; each prints a @reproduce_failure blob).
# Cheap properties over geometry ask for more examples: tests.helpers.more_examples.
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("deterministic", max_examples=40, derandomize=True, **_COMMON)
settings.register_profile("ci", settings.get_profile("deterministic"))
settings.register_profile("explore", max_examples=400, derandomize=False, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


try:  # parity tests run tiny ops, where PyTorch's thread pool costs more than it gives
    import torch

    torch.set_num_threads(1)
except ImportError:
    pass
