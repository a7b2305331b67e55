"""``set_num_threads`` / ``get_num_threads``, as in PyTorch: every thread pool minigrad uses on the CPU.

With the CPU kernels (``minigrad.kernels.cpu``, numba installed) one pool of ``n`` threads does
all of minigrad's CPU work: im2col and col2im, pooling, batch norm, ReLU, the optimizer, and
the convolutions' matrix products, split into single-threaded OpenBLAS calls; NumPy's OpenBLAS
is then put on one thread (its idle threads spin after every product, on the cores the pool
needs: see ``kernels.cpu.matmul``). Without the kernels, ``set_num_threads(n)`` gives NumPy's
OpenBLAS ``n`` threads, and everything but the products runs on one core. OpenBLAS is reached
through ctypes, as threadpoolctl does: the library NumPy loaded (a scipy-openblas wheel names
its symbols ``scipy_openblas_set_num_threads64_``). Where no OpenBLAS is found (NumPy built on
MKL or Accelerate), set ``OMP_NUM_THREADS`` before starting Python.

The default is every core this process may use (``OMP_NUM_THREADS`` when set), as in PyTorch.
"""
import ctypes
import glob
import os

import numpy as np


def _default_threads():
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may run on (taskset, containers)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_threads = _default_threads()
_openblas = {}


def _openblas_libraries():
    """Paths of the OpenBLAS libraries in this process (Linux: from /proc/self/maps) or shipped in NumPy's wheel."""
    paths = set()
    try:
        with open("/proc/self/maps") as maps:
            paths |= {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        pass
    root = os.path.dirname(np.__file__)
    for folder in (os.path.join(root, ".dylibs"), root + ".libs", os.path.join(root, "..", "numpy.libs")):
        paths |= set(glob.glob(os.path.join(folder, "*openblas*")))
    return sorted(paths)


def openblas_function(name):
    """A function of NumPy's OpenBLAS by its plain name (``set_num_threads``), or None when there is none."""
    if name in _openblas:
        return _openblas[name]
    found = None
    for path in _openblas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in (f"scipy_openblas_{name}64_", f"scipy_openblas_{name}", f"openblas_{name}64_",
                       f"openblas_{name}"):
            found = getattr(lib, symbol, None)
            if found is not None:
                break
        if found is not None:
            break
    _openblas[name] = found
    return found


def openblas_threads():
    """The thread count NumPy's OpenBLAS uses, read from the library; None without OpenBLAS."""
    getter = openblas_function("get_num_threads")
    if getter is None:
        return None
    getter.restype = ctypes.c_int
    return int(getter())


def set_openblas_threads(n):
    """Tell NumPy's OpenBLAS to use ``n`` threads; False when no OpenBLAS is found."""
    setter = openblas_function("set_num_threads")
    if setter is None:
        return False
    setter.argtypes = [ctypes.c_int]
    setter(int(n))
    return openblas_threads() == int(n)


def set_num_threads(n):
    """Use ``n`` threads for CPU work: NumPy's OpenBLAS and minigrad's CPU kernels (``torch.set_num_threads``)."""
    global _threads
    try:
        n = int(n)
    except (TypeError, ValueError):
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}") from None
    if n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n}")
    _threads = n
    from . import kernels
    if kernels.enabled("cpu"):  # one pool for all the work: the kernels split the products themselves
        from .kernels import cpu
        cpu._blas_claimed[0] = False
        cpu.claim_blas()
    else:
        set_openblas_threads(n)


def get_num_threads():
    """The thread count ``set_num_threads`` set (by default every core, as in PyTorch)."""
    return _threads
