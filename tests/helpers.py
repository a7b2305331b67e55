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


def more_examples(factor):
    """Hypothesis settings with ``factor`` times the profile's examples (tests/conftest.py), for cheap
    properties whose bugs hide in rare combinations of sizes, strides, paddings and dilations."""
    from hypothesis import settings
    return settings(max_examples=factor * settings().max_examples)


def require_torch():
    """The torch module, or skip the test with a visible reason."""
    return pytest.importorskip("torch", reason="PyTorch (the 'test' extra, torch==2.13.0) is not installed")


def require_torch_batchnorm_bias(torch):
    """Skip, naming the version, where torch's BatchNorm has no ``bias=`` argument (before 2.13)."""
    import inspect
    if "bias" not in inspect.signature(torch.nn.BatchNorm2d.__init__).parameters:
        pytest.skip(f"torch {torch.__version__}'s BatchNorm2d has no bias= argument (the pinned 2.13.0 has)")


def torchvision_vgg16_state(rng, width, batch_norm):
    """A dict with torchvision's vgg16 / vgg16_bn layout (features.N, classifier.0/3/6) at a small width."""
    cfg = [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"]
    state, index, channels = {}, 0, 3
    for item in cfg:
        if item == "M":
            index += 1
            continue
        out = item * width
        state[f"features.{index}.weight"] = rng.standard_normal((out, channels, 3, 3)).astype(np.float32)
        state[f"features.{index}.bias"] = rng.standard_normal(out).astype(np.float32)
        index += 1
        if batch_norm:
            state[f"features.{index}.weight"] = rng.uniform(0.5, 2, out).astype(np.float32)
            state[f"features.{index}.bias"] = rng.standard_normal(out).astype(np.float32)
            state[f"features.{index}.running_mean"] = rng.standard_normal(out).astype(np.float32)
            state[f"features.{index}.running_var"] = rng.uniform(0.5, 2, out).astype(np.float32)
            state[f"features.{index}.num_batches_tracked"] = np.array(7)
            index += 1
        index += 1
        channels = out
    fc = 64 * width
    for layer, shape in (("classifier.0", (fc, channels * 49)), ("classifier.3", (fc, fc)), ("classifier.6", (10, fc))):
        state[f"{layer}.weight"] = rng.standard_normal(shape).astype(np.float32)
        state[f"{layer}.bias"] = rng.standard_normal(shape[0]).astype(np.float32)
    return state
