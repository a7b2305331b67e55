"""Fast paths, beside the generic array code: one module per backend, the same function names on both.

- ``minigrad.kernels.cuda``: CUDA kernels compiled by CuPy, and cuBLAS products.
- ``minigrad.kernels.cpu``: CPU kernels compiled by numba (the optional ``cpu`` extra,
  ``pip install minigrad[cpu]``), parallel over the cores ``minigrad.set_num_threads`` allows.

The ops in ``minigrad.functional`` are argument checks, generic code on the array module
``xp`` (NumPy or CuPy) and one dispatch: ``kernels.get(name, array)`` returns the function
``name`` of ``array``'s backend, or None when there is none (that backend has no such kernel,
numba is not installed, the dtype is not float32/float64) or its switch is off. The generic
code is the reference; each kernel computes the same values (tests/test_kernels.py compares
them). Switches, read at import: ``MINIGRAD_CUDA_KERNELS=0`` and ``MINIGRAD_CPU_KERNELS=0``
turn every fast path of that backend off, cuBLAS products included; ``kernels.disabled()``
does the same for a block of code.
"""
import contextlib
import importlib
import os

import numpy as np

from ..backend import device_of

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_MODULES = {"cpu": "minigrad.kernels.cpu", "gpu": "minigrad.kernels.cuda"}
_enabled = {"cpu": os.environ.get("MINIGRAD_CPU_KERNELS", "1") != "0",
            "gpu": os.environ.get("MINIGRAD_CUDA_KERNELS", "1") != "0"}
_loaded = {}


def _module(device):
    module = _loaded.get(device)
    if module is None:
        module = _loaded[device] = importlib.import_module(_MODULES[device])
    return module


def get(name, array):
    """The fast path ``name`` for ``array``'s backend (a float32/float64 array), or None to run the generic code."""
    device = device_of(array)
    if not _enabled[device] or np.dtype(array.dtype) not in _FLOATS:
        return None
    module = _module(device)
    if device == "cpu" and not module.AVAILABLE:
        return None
    return getattr(module, name, None)


def spread(work, items, like, keys=None, cost=None):
    """``work(items)``, or where ``like``'s backend has a thread pool (the CPU kernels) ``work`` on each
    thread's share of the items at once. Returns the results in order, one per share (one share on a
    GPU and without the kernels: the generic loop). ``keys`` and ``cost``: see
    ``minigrad.kernels.cpu.run_in_shares``."""
    fast = get("run_in_shares", like)
    if fast is None:
        return [work(items)]
    return fast(work, items, keys, cost)


def enabled(device="cpu"):
    """Whether ``device``'s ('cpu' or 'gpu') fast paths are switched on (for the CPU: and numba is installed)."""
    if not _enabled[device]:
        return False
    return device != "cpu" or _module("cpu").AVAILABLE


@contextlib.contextmanager
def disabled(*devices):
    """Run a block on the generic code only: every fast path of ``devices`` (default: both) off."""
    devices = devices or ("cpu", "gpu")
    previous = {d: _enabled[d] for d in devices}
    try:
        for d in devices:
            _enabled[d] = False
        yield
    finally:
        _enabled.update(previous)
