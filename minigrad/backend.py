"""The NumPy/CuPy seam: every op asks this module for its array module (``xp``).

CPU tensors hold NumPy arrays, GPU tensors hold CuPy arrays. CuPy is imported
lazily, the first time a GPU is asked for, so minigrad imports and runs on
machines without it.
"""
import numpy as np

_DEVICE_ALIASES = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu"}
_cupy = None


def normalize_device(device):
    """Map 'cpu' / 'gpu' / 'cuda' (and 'cuda:0') to 'cpu' or 'gpu'."""
    if device is None:
        return "cpu"
    name = str(device).split(":")[0].lower()
    if name not in _DEVICE_ALIASES:
        raise ValueError(f"device must be 'cpu', 'gpu' or 'cuda', got {device!r}")
    return _DEVICE_ALIASES[name]


def cupy():
    """Return the cupy module, or raise a clear error saying what to install."""
    global _cupy
    if _cupy is None:
        try:
            import cupy as cp
        except ImportError as e:
            raise RuntimeError(
                "device='gpu' needs CuPy and an NVIDIA GPU: install the CuPy wheel matching "
                "your CUDA version, e.g. `pip install cupy-cuda12x` (or `pip install -e .[gpu]`)"
            ) from e
        try:
            count = cp.cuda.runtime.getDeviceCount()
        except Exception as e:  # driver missing or broken
            raise RuntimeError(f"device='gpu' needs a working NVIDIA GPU and driver: {e}") from e
        if count == 0:
            raise RuntimeError("device='gpu' was asked for, but CuPy sees no GPU on this machine")
        _cupy = cp
    return _cupy


def gpu_available():
    """True when CuPy imports and sees at least one GPU."""
    try:
        cupy()
        return True
    except RuntimeError:
        return False


def xp_for(device):
    """Array module for a device name."""
    return np if normalize_device(device) == "cpu" else cupy()


def device_of(array):
    """'cpu' for NumPy arrays (and scalars), 'gpu' for CuPy arrays (also before minigrad asked for a GPU)."""
    if isinstance(array, np.ndarray):
        return "cpu"
    if _cupy is None:
        if not type(array).__module__.startswith("cupy"):
            return "cpu"
        cupy()  # a CuPy array made outside minigrad: CuPy is there, so load it
    return "gpu" if isinstance(array, _cupy.ndarray) else "cpu"


def get_array_module(array):
    """NumPy or CuPy, whichever owns ``array``."""
    return np if device_of(array) == "cpu" else _cupy


def to_device(array, device):
    """Move an array to 'cpu' (NumPy) or 'gpu' (CuPy); no copy when it is already there."""
    device = normalize_device(device)
    if device == "cpu":
        if device_of(array) == "gpu":
            return _cupy.asnumpy(array)
        return np.asarray(array)
    cp = cupy()
    return cp.asarray(array)


def to_numpy(array):
    """A NumPy array from an array on any device."""
    return to_device(array, "cpu")
