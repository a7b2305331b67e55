"""One seeded generator per device, so runs repeat and resumes continue the same stream."""
import numpy as np

from . import backend

_generators = {}


def manual_seed(seed):
    """Seed every device's generator (like ``torch.manual_seed``)."""
    _generators.clear()
    _generators["cpu"] = np.random.default_rng(seed)
    if backend._cupy is not None:
        _generators["gpu"] = backend._cupy.random.default_rng(seed)
    _generators["seed"] = seed


def generator(device="cpu"):
    """The generator that ops on ``device`` draw from (dropout, init, shuffling)."""
    device = backend.normalize_device(device)
    if device not in _generators:
        seed = _generators.get("seed")
        _generators[device] = (np.random.default_rng(seed) if device == "cpu"
                               else backend.cupy().random.default_rng(seed))
    return _generators[device]


def get_rng_state():
    """A JSON-able snapshot of the CPU generator.

    CuPy's generators expose no state to save, so a resumed GPU run repeats the
    CPU stream (data order, augmentation, init) but not its dropout masks.
    """
    return {"cpu": generator("cpu").bit_generator.state, "seed": _generators.get("seed")}


def set_rng_state(state):
    gen = np.random.default_rng()
    gen.bit_generator.state = state["cpu"]
    _generators["cpu"] = gen
    _generators["seed"] = state.get("seed")
