"""Helpers shared by tests: tie-free inputs and optional PyTorch."""
import numpy as np
import pytest


def distinct_values(rng, shape, dtype=np.float64):
    """A shuffled linspace: no ties, so max-pooling and relu never sit on a kink.

    The grid is shifted by a third of a step so that 0 and +-0.5 are never drawn.
    """
    n = int(np.prod(shape))
    step = 2.0 / max(n - 1, 1)
    values = np.linspace(-1.0, 1.0, n) + step / 3 if n > 1 else np.array([0.3])
    return rng.permutation(values).reshape(shape).astype(dtype)


def require_torch():
    """The torch module, or skip the test with a visible reason."""
    return pytest.importorskip("torch", reason="PyTorch (the 'test' extra, torch==2.13.0) is not installed")


def require_torch_batchnorm_bias(torch):
    """Skip, naming the version, where torch's BatchNorm has no ``bias=`` argument (before 2.13)."""
    import inspect
    if "bias" not in inspect.signature(torch.nn.BatchNorm2d.__init__).parameters:
        pytest.skip(f"torch {torch.__version__}'s BatchNorm2d has no bias= argument (the pinned 2.13.0 has)")
