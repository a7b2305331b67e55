"""save/load: nested state dicts as one ``.npz`` file, without pickle.

Layout of the file: every array is an npz entry named ``a0``, ``a1``, ...; the
structure around them (dicts, lists, tuples, numbers, strings, None) is one JSON
document in the entry ``__structure__``, where an array appears as
``{"tensor": "a0"}`` (a minigrad Tensor) or ``{"array": "a0"}`` (a NumPy/CuPy
array). Dicts are stored as lists of [key, value] pairs, so int keys (an
optimizer's state) and insertion order come back exactly.

Differences from ``torch.save``: only these types are accepted (anything else
raises TypeError naming where it sits), a Tensor comes back as a plain Tensor
(not a Parameter, without its grad), and the file is written exactly at
``path`` (np.savez's ``.npz`` suffix is not added).
"""
import json
import os
import secrets

import numpy as np

from . import backend
from .tensor import Tensor

STRUCTURE_ENTRY = "__structure__"  # the npz entry that marks a file written by save
_FORMAT = "minigrad-npz-1"


def save(obj, path):
    """Write ``obj`` to ``path`` atomically: a crash mid-write leaves any old file intact.

    GPU arrays are copied to the host, so the file loads on either device.
    """
    arrays = {}
    structure = {"format": _FORMAT, "root": _encode(obj, arrays, "obj")}
    text = json.dumps(structure)
    arrays[STRUCTURE_ENTRY] = np.array(text)
    _write_atomically(os.fspath(path), arrays)


def load(path, device="cpu"):
    """Read what ``save`` wrote; Tensors and arrays are placed on ``device``.

    A truncated or corrupt file raises RuntimeError naming the path.
    """
    path = os.fspath(path)
    device = backend.normalize_device(device)
    try:
        with np.load(path, allow_pickle=False) as npz:
            entries = {name: npz[name] for name in npz.files}  # read all now: CRC errors surface here
        structure = json.loads(str(entries.pop(STRUCTURE_ENTRY)[()]))
        if structure.get("format") != _FORMAT:
            raise ValueError(f"unknown format {structure.get('format')!r}")
        return _decode(structure["root"], entries, device)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # a damaged file can fail in zipfile, numpy's header parser or json
        raise RuntimeError(f"{path}: not a readable minigrad checkpoint (truncated or corrupt?): "
                           f"{type(e).__name__}: {e}") from e


# ---------------------------------------------------------------- encoding
def _encode(obj, arrays, where):
    """JSON-able form of ``obj``; arrays go into ``arrays``. ``where`` names the spot for errors."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)):
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return {"scalar": _store(np.asarray(obj), arrays)}
    if isinstance(obj, Tensor):
        return {"tensor": _store(obj.data, arrays)}
    if hasattr(obj, "__array__") or hasattr(obj, "__cuda_array_interface__"):
        return {"array": _store(obj, arrays)}
    if isinstance(obj, list):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {"tuple": [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, dict):
        return {"dict": [[_encode(k, arrays, f"{where} key"), _encode(v, arrays, f"{where}[{k!r}]")]
                         for k, v in obj.items()]}
    raise TypeError(f"save: cannot store {where} of type {type(obj).__name__}; supported are Tensors, arrays, "
                    "numbers, strings, None, and lists/tuples/dicts of them")


def _store(array, arrays):
    name = f"a{len(arrays)}"
    host = backend.to_numpy(array)
    if host.dtype.kind not in "biufc":
        raise TypeError(f"save: arrays of dtype {host.dtype} cannot be stored without pickle")
    arrays[name] = host
    return name


def _decode(node, entries, device):
    if isinstance(node, list):
        return [_decode(v, entries, device) for v in node]
    if not isinstance(node, dict):
        return node
    (kind, value), = node.items()
    if kind == "tuple":
        return tuple(_decode(v, entries, device) for v in value)
    if kind == "dict":
        return {_decode(k, entries, device): _decode(v, entries, device) for k, v in value}
    if kind == "scalar":
        return entries[value][()]
    array = backend.to_device(entries[value], device)
    return Tensor._wrap(array) if kind == "tensor" else array


# ---------------------------------------------------------------- atomic write
def _write_atomically(path, arrays):
    """Write to a temp file in the same directory, fsync it, then rename over ``path``.

    The temp file is created with mode 0666 like ``open(path, "w")``, so the result gets the
    permission bits the process's umask (read when the file is made) gives any new file;
    ``tempfile.mkstemp`` would leave 0600.
    """
    directory = os.path.dirname(os.path.abspath(path))
    prefix = os.path.join(directory, ".tmp-" + os.path.basename(path) + "-")
    while True:
        tmp = prefix + secrets.token_hex(4)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory):
    """Make the rename itself durable (POSIX); harmless to skip where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
