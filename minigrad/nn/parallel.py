"""DistributedDataParallel: one replica of a module per process, gradients averaged during backward.

The training loop stays the one-process loop (as with ``torch.nn.parallel``)::

    dist.init_process_group("mpi")
    model = DistributedDataParallel(net)          # rank 0's parameters and buffers everywhere
    for images, masks in loader:                  # each rank its own share of the data
        loss = F.cross_entropy(model(images), masks)
        optimizer.zero_grad()
        loss.backward()                           # gradients averaged over the ranks on return
        optimizer.step()

How. The parameters that require grad are packed, in reverse registration
order (roughly the order backward reaches them), into buckets of at most
``bucket_cap_mb`` MiB, the same on every rank. A post-accumulate hook on each
parameter marks it ready; when every parameter of a bucket is ready the
bucket's gradients are copied into one flat buffer and its all-reduce starts
without blocking (``Iallreduce``, or NCCL on the stream), so communication
overlaps the rest of the backward. Buckets start strictly in order, so every
rank issues the same collectives in the same order even when their graphs
differ. When the backward ends (a callback the first hook queues), the buckets
not yet started start, with zeros for parameters that got no gradient on this
rank, every one is waited for, and the averaged gradients are written back to
``.grad``. Each bucket also sums, per parameter, how many ranks produced a
gradient: a parameter no rank used keeps ``grad=None``, as in one process, so
an optimizer skips it exactly as it would there.

Where we differ from PyTorch: no ``device_ids`` (one process drives one device,
the one the module is on), no ``find_unused_parameters`` (unused parameters
are always handled as above) and no ``gradient_as_bucket_view``.
"""
import contextlib
import time

import numpy as np

from .. import backend
from ..tensor import Tensor, callback_queued, no_grad, queue_callback
from .module import Module


class _Bucket:
    def __init__(self, params):
        self.params = params
        self.sizes = [p.numel() for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int).tolist()
        self.numel = self.offsets[-1]
        self.dtype, self.device = params[0].dtype, params[0].device
        self.buffer = None  # allocated on first use: grads, then one "had a gradient" count per parameter
        self.ready = 0
        self.work = None

    def pack(self):
        """Copy the gradients (zeros where none) and the had-a-gradient flags into the flat buffer."""
        if self.buffer is None:
            self.buffer = backend.xp_for(self.device).empty(self.numel + len(self.params), dtype=self.dtype)
        for i, p in enumerate(self.params):
            region = self.buffer[self.offsets[i]:self.offsets[i + 1]]
            if p.grad is None:
                region[...] = 0
            else:
                region[...] = p.grad.data.reshape(-1)
            self.buffer[self.numel + i] = p.grad is not None

    def unpack(self, world_size):
        counts = backend.to_numpy(self.buffer[self.numel:])
        for i, p in enumerate(self.params):
            if counts[i] == 0:
                continue  # no rank had a gradient for it: it keeps None
            average = self.buffer[self.offsets[i]:self.offsets[i + 1]].reshape(p.shape) / world_size
            if p.grad is None:
                p.grad = Tensor._wrap(average.astype(p.dtype, copy=False))
            else:
                p.grad.data[...] = average


class DistributedDataParallel(Module):
    """Data parallelism over the ranks of ``minigrad.distributed``'s default group (see the module docstring).

    ``module`` must already be on its device. At construction its parameters and
    buffers are overwritten by rank 0's. With ``broadcast_buffers=True`` (the
    default, as in PyTorch) every training-mode forward first copies rank 0's
    buffers (batch-norm running statistics) to all ranks, in one message per dtype.
    """

    def __init__(self, module, bucket_cap_mb=25, broadcast_buffers=True):
        super().__init__()
        from .. import distributed as dist
        if not dist.is_initialized():
            raise RuntimeError("DistributedDataParallel: call minigrad.distributed.init_process_group() first")
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: module must be a minigrad.nn.Module, got {type(module).__name__}")
        if not bucket_cap_mb > 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be positive, got {bucket_cap_mb}")
        self.module = module
        self.bucket_cap_mb, self.broadcast_buffers = bucket_cap_mb, broadcast_buffers
        self._dist = dist
        self.world_size = dist.get_world_size()
        with no_grad():
            for tensor in list(module.parameters()) + [b for b in module.buffers() if b is not None]:
                dist.broadcast(tensor, src=0)
        params = [p for p in module.parameters() if p.requires_grad]
        self._buckets = self._make_buckets(list(reversed(params)), bucket_cap_mb * 2**20)
        self._handles = []
        for bucket in self._buckets:
            for p in bucket.params:
                self._handles.append(p.register_post_accumulate_grad_hook(self._make_hook(bucket)))
        self._require_sync = True
        self._in_backward = False
        self._next_bucket = 0
        self.wait_seconds = 0.0  # time backward() spent waiting for all-reduces to finish (for benchmarks)

    @staticmethod
    def _make_buckets(params, cap_bytes):
        buckets, current, size = [], [], 0
        for p in params:
            nbytes = p.numel() * p.dtype.itemsize
            if current and (size + nbytes > cap_bytes or (p.dtype, p.device) != (current[0].dtype, current[0].device)):
                buckets.append(_Bucket(current))
                current, size = [], 0
            current.append(p)
            size += nbytes
        if current:
            buckets.append(_Bucket(current))
        return buckets

    def bucket_sizes(self):
        """The number of parameters in each bucket, in reduction order (for tests and tuning)."""
        return [len(b.params) for b in self._buckets]

    def forward(self, *args, **kwargs):
        if self.broadcast_buffers and self.world_size > 1 and self.training:
            self._broadcast_buffers()
        return self.module(*args, **kwargs)

    def _broadcast_buffers(self):
        by_kind = {}
        for b in self.module.buffers():
            if b is not None:
                by_kind.setdefault((b.dtype, b.device), []).append(b)
        for (dtype, device), tensors in by_kind.items():
            xp = backend.xp_for(device)
            flat = xp.concatenate([t.data.reshape(-1) for t in tensors])
            self._dist.broadcast(flat, src=0)
            offset = 0
            for t in tensors:
                t.data[...] = flat[offset:offset + t.numel()].reshape(t.shape)
                offset += t.numel()

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside only accumulate local gradients (gradient accumulation); the
        first backward after it averages everything accumulated."""
        previous, self._require_sync = self._require_sync, False
        try:
            yield
        finally:
            self._require_sync = previous

    # ---------------------------------------------------------------- the backward's part
    def _make_hook(self, bucket):
        def hook(_param):
            if not self._require_sync:
                return
            if not self._in_backward or not callback_queued(self._finish_backward):
                self._reset()  # the first gradient of this backward (an earlier one may have raised half-way)
                self._in_backward = True
                queue_callback(self._finish_backward)
            bucket.ready += 1
            if bucket.ready == len(bucket.params):
                self._start_ready_buckets()
            for started in self._buckets[:self._next_bucket]:
                started.work.poll()  # MPI progresses a non-blocking collective only inside MPI calls
        return hook

    def _start(self, bucket):
        bucket.pack()
        bucket.work = self._dist.all_reduce(bucket.buffer, "sum", async_op=True)

    def _start_ready_buckets(self):
        """Start the next buckets in order while they are complete (the same order on every rank)."""
        while self._next_bucket < len(self._buckets):
            bucket = self._buckets[self._next_bucket]
            if bucket.ready < len(bucket.params):
                return
            self._start(bucket)
            self._next_bucket += 1

    def _finish_backward(self):
        try:
            for bucket in self._buckets[self._next_bucket:]:
                self._start(bucket)  # parameters that got no gradient here send zeros
            for bucket in self._buckets:
                start = time.perf_counter()
                bucket.work.wait()
                self.wait_seconds += time.perf_counter() - start
                bucket.work = None
                bucket.unpack(self.world_size)
        finally:
            self._reset()

    def _reset(self):
        for bucket in self._buckets:
            if bucket.work is not None:  # left by a backward that raised: finish it before the buffer is reused
                bucket.work.wait()
            bucket.ready, bucket.work = 0, None
        self._next_bucket = 0
        self._in_backward = False

    def extra_repr(self):
        return f"world_size={self.world_size}, buckets={len(self._buckets)}, bucket_cap_mb={self.bucket_cap_mb}"
