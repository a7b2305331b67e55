"""minigrad.distributed: collectives over MPI (NumPy or CuPy arrays) and NCCL (CuPy arrays).

Named and behaving like ``torch.distributed`` for the parts data parallelism needs::

    # mpiexec -n 4 python train.py
    import minigrad.distributed as dist
    dist.init_process_group("mpi")             # or "nccl": one GPU per process
    x = minigrad.tensor([float(dist.get_rank())])
    dist.all_reduce(x)                          # in place: x == 0 + 1 + 2 + 3 on every rank

The processes come from an MPI launcher (``mpiexec``); rank and world size are
MPI's, so there is no ``init_method``/``world_size``/``rank`` to pass. mpi4py is
imported only here (``pip install -e ".[mpi]"``).

Backends:
  * ``"mpi"``: mpi4py's buffer interface (``Allreduce``/``Iallreduce`` on the
    array's memory, never pickled). CuPy arrays are copied through host memory
    (after the stream is synchronised), unless the MPI is CUDA-aware and
    ``MINIGRAD_MPI_CUDA_AWARE=1`` says so; then the device pointer goes to MPI.
  * ``"nccl"``: ``cupy.cuda.nccl``; the communicator's unique id is made on rank
    0 and broadcast over MPI after each process has chosen its GPU (the local
    rank modulo the GPUs it sees, unless ``device=K`` is passed). Collectives are
    queued on the current CUDA stream, so later work on that stream sees their
    result; CPU arrays on this backend go through MPI.

Where we differ from PyTorch: ``op`` is a string, ``"sum"``, ``"mean"`` or
``"max"`` (``ReduceOp.SUM`` etc. are those strings); ``"mean"`` works on every
backend. ``init_process_group`` by default makes an unhandled exception (or
Ctrl-C) on any rank print the error once, naming the rank, and abort every
process (``MPI_Abort``), so a failing rank never leaves the others hanging in
a collective; pass ``abort_on_exception=False`` to keep Python's own handling.
"""
import os
import sys
import time
import traceback

import numpy as np

from .. import backend
from ..tensor import Tensor

__all__ = ["ReduceOp", "init_process_group", "is_available", "is_initialized", "get_backend", "get_rank",
           "get_world_size", "get_local_rank", "all_reduce", "broadcast", "all_gather", "barrier",
           "destroy_process_group", "abort", "launched_world_size", "broadcast_object_list", "install_excepthook"]

_group = None  # the default process group


class ReduceOp:
    SUM = "sum"
    MEAN = "mean"
    MAX = "max"


_OPS = (ReduceOp.SUM, ReduceOp.MEAN, ReduceOp.MAX)
# what MPI launchers put in each process's environment: the number of processes
_LAUNCHER_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS",
                            "MV2_COMM_WORLD_SIZE")


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise RuntimeError("minigrad.distributed needs mpi4py and an MPI library: "
                           "`pip install -e \".[mpi]\"` (or `pip install mpi4py mpich`)") from e
    return MPI


def is_available():
    """True when mpi4py imports (it brings MPI up, as importing it does)."""
    try:
        _mpi()
        return True
    except RuntimeError:
        return False


def launched_world_size():
    """The number of processes an MPI launcher started this one among (1 when not under a launcher).

    Read from the launcher's environment (MPICH/Hydra, Open MPI, PMIx, MVAPICH), so it
    needs no mpi4py: a multi-process launch without mpi4py can be told what to install.
    """
    for name in _LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


class Work:
    """A started collective; ``wait()`` finishes it (the result is in the array afterwards)."""

    def __init__(self, request=None, finish=None):
        self._request, self._finish = request, finish

    def wait(self):
        if self._request is not None:
            self._request.Wait()
            self._request = None
        if self._finish is not None:
            finish, self._finish = self._finish, None
            finish()
        return True

    def poll(self):
        """Let MPI make progress on it (a test, never a wait); True once the transfer is done."""
        if self._request is not None and self._request.Test():
            self._request = None
        return self._request is None

    def is_completed(self):
        return self._request is None and self._finish is None


def _divide(array, count):
    """In place; integer arrays round toward minus infinity (floor division), as they must stay integers."""
    if array.dtype.kind == "f":
        array /= count
    else:
        array //= count


# ---------------------------------------------------------------------------- process groups
class _MPIGroup:
    """Collectives on an mpi4py communicator, on the arrays' buffers."""

    name = "mpi"

    def __init__(self, comm, cuda_aware):
        self.comm, self.cuda_aware = comm, cuda_aware
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def _staged(self, array):
        """(buffer MPI reads and writes, copy_back): a host copy for GPU arrays unless MPI is CUDA-aware."""
        if backend.device_of(array) == "gpu":
            cp = backend.cupy()
            if self.cuda_aware and array.flags.c_contiguous:
                cp.cuda.get_current_stream().synchronize()  # MPI reads the memory outside the stream
                return array, None
            host = cp.asnumpy(array)  # synchronises the stream
            return host, lambda: array.set(host)
        if array.flags.c_contiguous:
            return array, None
        buffer = np.ascontiguousarray(array)
        return buffer, lambda: np.copyto(array, buffer)

    def all_reduce(self, array, op):
        MPI = _mpi()
        buffer, copy_back = self._staged(array)
        request = self.comm.Iallreduce(MPI.IN_PLACE, buffer, op=MPI.MAX if op == ReduceOp.MAX else MPI.SUM)

        def finish():
            if op == ReduceOp.MEAN:
                _divide(buffer, self.size)
            if copy_back is not None:
                copy_back()
        return Work(request, finish)

    def broadcast(self, array, src):
        buffer, copy_back = self._staged(array)
        self.comm.Bcast(buffer, root=src)
        if copy_back is not None:
            copy_back()

    def all_gather(self, array):
        buffer, _ = self._staged(array)
        out = np.empty((self.size,) + tuple(buffer.shape), dtype=buffer.dtype)
        self.comm.Allgather(buffer, out)
        return out if backend.device_of(array) == "cpu" else backend.cupy().asarray(out)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code):
        self.comm.Abort(code)


class _NCCLGroup:
    """NCCL collectives on CuPy arrays (current stream); CPU arrays go through the MPI group."""

    name = "nccl"

    def __init__(self, comm, device):
        cp = backend.cupy()
        from cupy.cuda import nccl
        self.mpi = _MPIGroup(comm, cuda_aware=False)
        self.rank, self.size = self.mpi.rank, self.mpi.size
        count = cp.cuda.runtime.getDeviceCount()
        self.device = get_local_rank(comm) % count if device is None else int(device)
        if not 0 <= self.device < count:
            raise ValueError(f"init_process_group: device={device} but this process sees {count} GPU(s)")
        cp.cuda.Device(self.device).use()  # before the communicator: NCCL binds it to the current device
        unique_id = nccl.get_unique_id() if self.rank == 0 else None
        unique_id = comm.bcast(unique_id, root=0)  # a small tuple of ints, once
        self.nccl_module = nccl
        self.comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)
        self._dtypes = {np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.float32): nccl.NCCL_FLOAT32,
                        np.dtype(np.float64): nccl.NCCL_FLOAT64, np.dtype(np.int32): nccl.NCCL_INT32,
                        np.dtype(np.int64): nccl.NCCL_INT64, np.dtype(np.uint8): nccl.NCCL_UINT8}

    def _device_array(self, array, what):
        if array.dtype not in self._dtypes:
            raise TypeError(f"{what}: NCCL has no type for dtype {array.dtype}")
        if not array.flags.c_contiguous:
            raise ValueError(f"{what}: NCCL needs a contiguous array")
        return self._dtypes[array.dtype], backend.cupy().cuda.get_current_stream().ptr

    def all_reduce(self, array, op):
        if backend.device_of(array) == "cpu":
            return self.mpi.all_reduce(array, op)
        nccl = self.nccl_module
        dtype, stream = self._device_array(array, "all_reduce")
        nccl_op = nccl.NCCL_MAX if op == ReduceOp.MAX else nccl.NCCL_SUM
        self.comm.allReduce(array.data.ptr, array.data.ptr, array.size, dtype, nccl_op, stream)
        if op == ReduceOp.MEAN:
            _divide(array, self.size)  # queued on the same stream, after the reduction
        return Work()  # stream-ordered: later work on the stream sees the result

    def broadcast(self, array, src):
        if backend.device_of(array) == "cpu":
            return self.mpi.broadcast(array, src)
        dtype, stream = self._device_array(array, "broadcast")
        self.comm.bcast(array.data.ptr, array.size, dtype, src, stream)

    def all_gather(self, array):
        if backend.device_of(array) == "cpu":
            return self.mpi.all_gather(array)
        cp = backend.cupy()
        array = cp.ascontiguousarray(array)
        dtype, stream = self._device_array(array, "all_gather")
        out = cp.empty((self.size,) + array.shape, dtype=array.dtype)
        self.comm.allGather(array.data.ptr, out.data.ptr, array.size, dtype, stream)
        return out

    def barrier(self):
        backend.cupy().cuda.get_current_stream().synchronize()
        self.mpi.barrier()

    def abort(self, code):
        try:
            self.comm.abort()
        finally:
            self.mpi.abort(code)


# ---------------------------------------------------------------------------- the API
def init_process_group(backend="mpi", *, device=None, abort_on_exception=True):
    """Join the processes the MPI launcher started: ``backend`` is "mpi" or "nccl".

    ``device`` (nccl only): the GPU index for this process; default: the rank among the
    processes on this machine modulo the GPUs it sees. Calling it twice raises, as in PyTorch.
    """
    global _group
    if backend not in ("mpi", "nccl"):
        raise ValueError(f"init_process_group: backend must be 'mpi' or 'nccl', got {backend!r}")
    if _group is not None:
        raise RuntimeError("init_process_group: the default process group is already initialized")
    MPI = _mpi()
    comm = MPI.COMM_WORLD
    if backend == "mpi":
        if device is not None:
            raise ValueError("init_process_group: device= is for the 'nccl' backend; with 'mpi' choose the "
                             "GPU before (cupy.cuda.Device(k).use())")
        cuda_aware = os.environ.get("MINIGRAD_MPI_CUDA_AWARE", "0") == "1"
        _group = _MPIGroup(comm, cuda_aware)
    else:
        _group = _NCCLGroup(comm, device)
    if abort_on_exception:
        install_excepthook()


def is_initialized():
    return _group is not None


def _default_group():
    if _group is None:
        raise RuntimeError("minigrad.distributed: the default process group has not been initialized; "
                           "call init_process_group() first")
    return _group


def get_backend():
    return _default_group().name


def get_rank():
    return _default_group().rank


def get_world_size():
    return _default_group().size


def get_local_rank(comm=None):
    """This process's rank among the processes on the same machine (MPI shared-memory split)."""
    MPI = _mpi()
    comm = comm if comm is not None else MPI.COMM_WORLD
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return local.Get_rank()
    finally:
        local.Free()


def _array_of(tensor, what):
    if isinstance(tensor, Tensor):
        return tensor.data
    if isinstance(tensor, np.ndarray) or backend.device_of(tensor) == "gpu":
        return tensor
    raise TypeError(f"{what}: expected a minigrad.Tensor (or an array), got {type(tensor).__name__}")


def all_reduce(tensor, op=ReduceOp.SUM, async_op=False):
    """Reduce ``tensor`` over every rank, in place; with ``async_op=True`` return a Work to ``wait()`` on.

    Until that wait the tensor's memory belongs to the collective (don't read or write it).
    """
    if op not in _OPS:
        raise ValueError(f"all_reduce: op must be one of {_OPS}, got {op!r}")
    work = _default_group().all_reduce(_array_of(tensor, "all_reduce"), op)
    if async_op:
        return work
    work.wait()
    return None


def broadcast(tensor, src=0):
    """Overwrite ``tensor`` on every rank with rank ``src``'s, in place."""
    group = _default_group()
    if not 0 <= src < group.size:
        raise ValueError(f"broadcast: src must be a rank in [0, {group.size}), got {src}")
    group.broadcast(_array_of(tensor, "broadcast"), src)


def all_gather(tensor_list, tensor):
    """Fill ``tensor_list`` (one tensor per rank, like ``tensor``) with every rank's ``tensor``."""
    group = _default_group()
    if len(tensor_list) != group.size:
        raise ValueError(f"all_gather: tensor_list has {len(tensor_list)} entries, the world size is {group.size}")
    gathered = group.all_gather(_array_of(tensor, "all_gather"))
    for i, out in enumerate(tensor_list):
        target = _array_of(out, "all_gather")
        if tuple(target.shape) != tuple(gathered[i].shape):
            raise ValueError(f"all_gather: tensor_list[{i}] has shape {tuple(target.shape)}, "
                             f"the tensor has shape {tuple(gathered[i].shape)}")
        target[...] = gathered[i]


def broadcast_object_list(object_list, src=0):
    """Replace every entry of ``object_list`` by rank ``src``'s, in place (pickled: for small objects,
    a path or an id; arrays go through ``broadcast``)."""
    group = _default_group()
    mpi_comm = group.mpi.comm if isinstance(group, _NCCLGroup) else group.comm
    object_list[:] = mpi_comm.bcast(list(object_list), root=src)


def barrier():
    """Return once every rank has called it (with NCCL, after this GPU's queued work is done)."""
    _default_group().barrier()


def destroy_process_group():
    """Forget the default group (MPI itself is finalised by mpi4py at exit)."""
    global _group
    _group = None


def abort(code=1):
    """Stop every process of the job now with exit status ``code`` (``MPI_Abort``); never returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    if _group is not None:
        _group.abort(code)
    _mpi().COMM_WORLD.Abort(code)


def install_excepthook():
    """An unhandled exception or Ctrl-C on any rank: print it (to the real stderr), naming the rank, and
    abort every process of the job, so none is left waiting in a collective. ``init_process_group`` calls it."""
    previous = sys.excepthook
    if getattr(previous, "_minigrad_aborts", False):
        return

    def hook(kind, value, tb):
        comm = _mpi().COMM_WORLD
        rank, size = comm.Get_rank(), comm.Get_size()
        if size == 1:
            return previous(kind, value, tb)
        if rank != 0:
            time.sleep(1.0)  # the same error on every rank: rank 0's report and abort come first
        if issubclass(kind, KeyboardInterrupt):
            print(f"rank {rank}: interrupted; stopping every rank", file=sys.__stderr__)
        else:
            text = "".join(traceback.format_exception(kind, value, tb))
            print(f"error on rank {rank} of {size}; stopping every rank\n{text}", end="", file=sys.__stderr__)
        abort(130 if issubclass(kind, KeyboardInterrupt) else 1)

    hook._minigrad_aborts = True
    sys.excepthook = hook
