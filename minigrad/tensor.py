"""Tensor and the reverse-mode graph walk.

Every op is a function that computes its output array and hands ``_result`` a
closure ``backward(grad) -> tuple of parent gradients`` (None where a parent
needs none). ``Tensor.backward`` sorts the graph topologically and calls those
closures from the output back to the leaves; gradients of intermediate tensors
live only in that walk, so calling backward twice never double-counts them.
As in PyTorch, the walk frees the graph as it goes (each node drops its closure and
its parents once its gradient has been passed on, so activations are released
during the backward, not after it) unless ``retain_graph=True``.
"""
import contextlib
import sys

import numpy as np

from . import backend

_grad_enabled = True


def is_grad_enabled():
    return _grad_enabled


@contextlib.contextmanager
def _grad_mode(enabled):
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, enabled
    try:
        yield
    finally:
        _grad_enabled = previous


def no_grad():
    """Context manager: ops inside record no graph (like ``torch.no_grad``)."""
    return _grad_mode(False)


def enable_grad():
    return _grad_mode(True)


def _default_dtype(array):
    """Python floats become float32, Python ints int64, as in PyTorch."""
    if array.dtype == np.float64:
        return np.float32
    if array.dtype.kind in "iu":
        return np.int64
    return array.dtype


def _as_array(data, dtype, device):
    xp = backend.xp_for(device)
    if isinstance(data, Tensor):
        data = data.data
    if hasattr(data, "__array__") or hasattr(data, "__cuda_array_interface__"):
        if dtype is None and not np.isscalar(data):
            dtype = data.dtype  # arrays keep their dtype, like torch.tensor(ndarray)
        _check_numeric(np.dtype(dtype) if dtype is not None else data.dtype, data)
        return xp.array(backend.to_device(data, device), dtype=dtype, copy=True)
    host = np.asarray(data)
    _check_numeric(host.dtype if dtype is None else dtype, data)
    return xp.asarray(host, dtype=dtype if dtype is not None else _default_dtype(host))


def _check_numeric(dtype, data):
    """TypeError for data that are not numbers or bools (strings, None, objects), as torch.tensor."""
    if dtype.kind not in "biufc":
        raise TypeError(f"Tensor: data must be numbers or bools, got {type(data).__name__} of dtype {dtype}")


class Tensor:
    """An n-dimensional array on 'cpu' (NumPy) or 'gpu' (CuPy) that records its history.

    >>> x = Tensor([[1.0, 2.0]], requires_grad=True)
    >>> (x * x).sum().backward()
    >>> x.grad.numpy()
    array([[2., 4.]], dtype=float32)
    """

    __array_priority__ = 1000  # numpy scalars defer to our operators

    def __init__(self, data, requires_grad=False, dtype=None, device="cpu"):
        device = backend.normalize_device(device)
        self.data = _as_array(data, None if dtype is None else np.dtype(dtype), device)
        self.grad = None
        self._parents = ()
        self._backward = None
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _wrap(cls, array):
        """A tensor around an existing array, no copy."""
        t = cls.__new__(cls)
        t.data, t.grad, t._parents, t._backward, t.requires_grad = array, None, (), None, False
        return t

    # ----------------------------------------------------------------- attributes
    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self):
        return backend.device_of(self.data)

    @property
    def xp(self):
        return backend.get_array_module(self.data)

    @property
    def is_leaf(self):
        return self._backward is None

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self):
        return self.ndim

    def numel(self):
        return int(self.data.size)

    def __len__(self):
        return self.shape[0]

    def numpy(self):
        """A NumPy copy of the data, from any device."""
        return np.array(backend.to_numpy(self.data), copy=True)

    def item(self):
        if self.numel() != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        return backend.to_numpy(self.data).tolist()

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        dev = ", device='gpu'" if self.device == "gpu" else ""
        return f"Tensor({backend.to_numpy(self.data)!r}{dev}{grad})"

    def requires_grad_(self, requires_grad=True):
        if requires_grad and self.dtype.kind != "f":
            raise ValueError(f"only floating-point tensors can require gradients, got dtype {self.dtype}")
        self.requires_grad = requires_grad
        return self

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor._wrap(self.data)

    def to(self, device=None, dtype=None):
        """A tensor on ``device`` and/or of ``dtype``; differentiable, like ``Tensor.to`` in PyTorch."""
        array = self.data
        if device is not None:
            array = backend.to_device(array, device)
        if dtype is not None:
            array = array.astype(dtype, copy=False)
        if array is self.data:
            return self
        source_dtype, source_device = self.dtype, self.device
        return _result(array, (self,), lambda g: (
            backend.to_device(g, source_device).astype(source_dtype, copy=False),))

    def cpu(self):
        return self.to("cpu")

    def gpu(self):
        return self.to("gpu")

    cuda = gpu

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    def long(self):
        return Tensor._wrap(self.data.astype(np.int64))

    def astype(self, dtype):
        return self.to(dtype=dtype)

    # ----------------------------------------------------------------- autograd
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into ``.grad`` of every leaf that requires grad.

        Like PyTorch, frees the graph on the way (a second backward through it raises)
        unless ``retain_graph=True``.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no graph was recorded)")
        if grad is None:
            if self.numel() != 1:
                raise RuntimeError(f"backward() without a gradient needs a scalar output, got shape {self.shape}")
            grad = self.xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else self.xp.asarray(grad, dtype=self.dtype)
            if tuple(grad.shape) != self.shape:
                raise ValueError(f"backward(grad): grad has shape {tuple(grad.shape)}, output has shape {self.shape}")

        global _walks
        pending = {id(self): grad}
        order = _topological_order(self)
        _walks += 1
        try:
            self._walk(order, pending, retain_graph)
        except BaseException:
            if _walks == 1:
                _end_callbacks.clear()  # a failed backward runs none of them
            raise
        finally:
            _walks -= 1
        while _walks == 0 and _end_callbacks:  # the outermost walk ended: run what hooks queued
            _end_callbacks.pop(0)()

    def _walk(self, order, pending, retain_graph):
        while order:
            node = order.pop()  # children before parents; popping drops the walk's reference
            g = pending.pop(id(node), None)
            if node._backward is None:
                if g is not None:
                    owned = _unshared(g)   # (before the call below puts a second reference to g on the stack)
                    node._accumulate(g, owned)
                    for hook in node.__dict__.get("_grad_hooks", ()):
                        hook(node)
                continue
            parents, backward = node._parents, node._backward
            if not retain_graph:
                node._parents, node._backward = (), _graph_freed
            if g is None:
                continue
            for parent, parent_grad in zip(parents, backward(g)):
                if parent_grad is None or not parent.requires_grad:
                    continue
                key = id(parent)
                pending[key] = parent_grad if key not in pending else pending[key] + parent_grad
            del parents, backward, g
            parent = parent_grad = None   # keep no reference to a gradient still pending

    def _accumulate(self, g, owned=False):
        """Add ``g`` into ``.grad``; ``owned``: no other array or tensor refers to ``g``'s memory, so the
        first gradient is kept as it is (else copied: it may alias another tensor's data or gradient)."""
        if g.dtype != self.dtype:
            g, owned = g.astype(self.dtype), True
        if self.grad is None:
            self.grad = Tensor._wrap(g if owned else g.copy())
        else:
            self.grad.data += g

    def zero_grad(self):
        self.grad = None

    def register_post_accumulate_grad_hook(self, hook):
        """Call ``hook(self)`` each time a backward has accumulated into this leaf's ``.grad``.

        As in PyTorch: once per backward (after the contributions of every path
        are summed), only on leaves that require grad; returns a handle whose
        ``remove()`` unregisters it. ``queue_callback`` runs code after the whole
        backward, e.g. to wait for the communication a hook started.
        """
        if not self.requires_grad or not self.is_leaf:
            raise RuntimeError("register_post_accumulate_grad_hook: only leaf tensors that require grad "
                               "accumulate a gradient")
        hooks = self.__dict__.setdefault("_grad_hooks", [])
        hooks.append(hook)
        return _HookHandle(hooks, hook)


def _unshared(g):
    """Whether nothing but the caller's one name refers to the memory of the array ``g`` (a gradient the
    walk hands to a leaf): then the leaf keeps it without a copy, as PyTorch's AccumulateGrad steals an
    unshared gradient. ``g`` may be a view spanning all of a base that only it refers to (a product's
    output reshaped to the weight's shape)."""
    if sys.getrefcount(g) != 3:   # the caller's name, this function's argument, getrefcount's argument
        return False
    base = g.base
    return base is None or (base.base is None and base.size == g.size and sys.getrefcount(base) == 3)


_walks = 0           # backward walks in progress (a hook may start another)
_end_callbacks = []  # run once the outermost walk has ended


def queue_callback(callback):
    """Run ``callback()`` when the backward in progress ends (PyTorch's engine ``queue_callback``).

    Only valid from inside a backward (a grad hook); callbacks run in the order queued,
    once, after the last leaf's gradient is accumulated and only if the walk succeeded.
    """
    if _walks == 0:
        raise RuntimeError("queue_callback: no backward is running")
    _end_callbacks.append(callback)


def callback_queued(callback):
    """Whether ``callback`` waits to run at the end of the backward in progress."""
    return any(c == callback for c in _end_callbacks)


class _HookHandle:
    def __init__(self, hooks, hook):
        self._hooks, self._hook = hooks, hook

    def remove(self):
        if self._hook in self._hooks:
            self._hooks.remove(self._hook)


def _graph_freed(_):
    raise RuntimeError("backward through a graph that an earlier backward() already freed; "
                       "call the first backward(retain_graph=True) to walk it again")


def _topological_order(root):
    """Nodes that require grad, each after all of its parents (iterative DFS)."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node._parents:
            if parent.requires_grad and id(parent) not in visited:
                stack.append((parent, False))
    return order


def _result(array, parents, backward):
    """Wrap an op's output; record ``backward`` when grad mode is on and a parent needs it."""
    out = Tensor._wrap(array)
    if _grad_enabled and any(p.requires_grad for p in parents):
        out.requires_grad = True
        out._parents = tuple(parents)
        out._backward = backward
    return out


def as_tensor(value, like=None):
    """``value`` as a Tensor; Python scalars take ``like``'s dtype and device."""
    if isinstance(value, Tensor):
        return value
    if like is None:
        return Tensor(value)
    if np.isscalar(value) and (like.dtype.kind == "f" or isinstance(value, (int, np.integer, bool))):
        return Tensor._wrap(like.xp.asarray(value, dtype=like.dtype))
    return Tensor(value, device=like.device)


def tensor(data, requires_grad=False, dtype=None, device="cpu"):
    """Same as ``Tensor(...)``, spelled like ``torch.tensor``."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


# ---------------------------------------------------------------- operators and methods
# The ops live in minigrad.functional, one file per family; Tensor only points at them.
from .functional import activation as _act  # noqa: E402
from .functional import elementwise as _ew  # noqa: E402
from .functional import reduction as _red  # noqa: E402
from .functional import shape as _shape  # noqa: E402


def _compare(op):
    def method(self, other):
        other = other.data if isinstance(other, Tensor) else other
        return Tensor._wrap(op(self.data, other))
    return method


Tensor.__add__ = _ew.add
Tensor.__radd__ = lambda self, other: _ew.add(other, self)
Tensor.__sub__ = _ew.sub
Tensor.__rsub__ = lambda self, other: _ew.sub(other, self)
Tensor.__mul__ = _ew.mul
Tensor.__rmul__ = lambda self, other: _ew.mul(other, self)
Tensor.__truediv__ = _ew.div
Tensor.__rtruediv__ = lambda self, other: _ew.div(other, self)
Tensor.__pow__ = _ew.pow
Tensor.__rpow__ = lambda self, other: _ew.pow(other, self)
Tensor.__matmul__ = _ew.matmul
Tensor.__rmatmul__ = lambda self, other: _ew.matmul(other, self)
Tensor.__neg__ = _ew.neg
Tensor.__abs__ = _ew.abs
Tensor.__getitem__ = _shape.getitem
Tensor.__eq__ = _compare(lambda a, b: a == b)
Tensor.__ne__ = _compare(lambda a, b: a != b)
Tensor.__lt__ = _compare(lambda a, b: a < b)
Tensor.__le__ = _compare(lambda a, b: a <= b)
Tensor.__gt__ = _compare(lambda a, b: a > b)
Tensor.__ge__ = _compare(lambda a, b: a >= b)
Tensor.__hash__ = object.__hash__

Tensor.abs = _ew.abs
Tensor.exp = _ew.exp
Tensor.log = _ew.log
Tensor.sqrt = _ew.sqrt
Tensor.clamp = _ew.clamp
Tensor.matmul = _ew.matmul
Tensor.relu = _act.relu
Tensor.sigmoid = _act.sigmoid
Tensor.tanh = _act.tanh
Tensor.softmax = _act.softmax
Tensor.log_softmax = _act.log_softmax
Tensor.sum = _red.sum
Tensor.mean = _red.mean
Tensor.max = _red.max
Tensor.min = _red.min
Tensor.argmax = _red.argmax
Tensor.reshape = _shape.reshape
Tensor.view = _shape.reshape
Tensor.flatten = _shape.flatten
Tensor.permute = _shape.permute
Tensor.transpose = _shape.transpose
Tensor.squeeze = _shape.squeeze
Tensor.unsqueeze = _shape.unsqueeze
Tensor.expand = _shape.expand
Tensor.T = property(lambda self: _shape.permute(self, tuple(reversed(range(self.ndim)))))
