"""The ONNX graph being built: nodes, initializers and names, plus the tracer that fills it.

The tracer wraps every public function of ``minigrad.functional`` (and the same
functions where ``minigrad`` and ``Tensor`` re-export them as methods and
operators) for the length of one forward pass. A call whose tensor arguments
include a value computed from the graph input is handed to its converter in
``_ops.py``, which emits ONNX nodes; calls on constants only (weights, buffers)
run as usual and their results become initializers if the graph reads them.
Calls made *inside* a traced op are not recorded (the outer op stands for them).

Each traced output tensor carries its ONNX value name in ``tensor.__dict__``
(nothing else of the tensor changes). The example input requires grad during the
trace and the parameters do not, so a tensor computed from the input by code
the tracer did not see (a function imported by name before the trace, a kernel
called directly) has ``requires_grad`` set but no name: reading it is an error,
never a silently baked-in constant.
"""
import inspect
import os
import sys

import numpy as np

from .. import functional as _functional
from ..tensor import Tensor

_NAME = "_onnx_value"
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../minigrad
_ONNX_DIR = os.path.dirname(os.path.abspath(__file__))
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


class ExportError(RuntimeError):
    """The model cannot be written as ONNX (the message names the op and where it was called)."""


class UnsupportedOperatorError(ExportError):
    """An op on the traced path has no ONNX mapping (``torch.onnx.errors.UnsupportedOperatorError``)."""


class Graph:
    """Nodes and initializers in the order they are emitted, with unique names."""

    def __init__(self, opset):
        from onnx import helper, numpy_helper
        self.helper, self.numpy_helper = helper, numpy_helper
        self.opset = opset
        self.nodes, self.initializers = [], []
        self._used, self._counts = set(), {}
        self._params = {}   # id(tensor) -> (name, tensor): the model's parameters and buffers
        self._consts = {}   # id(tensor) -> (name, tensor): other constant tensors read by the graph
        self.scope = []     # module path of the call in progress
        self.frame = None   # the frame that called the op being converted (``location`` reads it on an error)
        self._location = None
        self.pool_switches = {}  # per-plane switches -> (ONNX flat indices, pooled input, its shape)
        self.symbolic = False   # sizes read from traced shapes are SymInts (dynamic height/width)
        self._dims = {}         # (value name, axis) -> its Shape/Gather node's output

    @property
    def location(self):
        """'at path:line in function' of the op being converted (computed only for error messages)."""
        if self._location is None:
            self._location = where_called(self.frame) if self.frame is not None else "?"
        return self._location

    @location.setter
    def location(self, text):
        self.frame, self._location = None, text

    def calling(self, frame):
        self.frame, self._location = frame, None

    # ------------------------------------------------------------------ names
    def fresh(self, base):
        base = base.replace(".", "_") or "v"
        n = self._counts.get(base, 0)
        name = base if n == 0 and base not in self._used else f"{base}_{n}"
        while name in self._used:
            n += 1
            name = f"{base}_{n}"
        self._counts[base] = n + 1
        self._used.add(name)
        return name

    def reserve(self, name):
        if name in self._used:
            raise ExportError(f"minigrad.onnx.export: the name {name!r} is used twice")
        self._used.add(name)
        return name

    # ------------------------------------------------------------------ values
    def register_parameters(self, model):
        for name, tensor in _named_tensors(model):
            self._params.setdefault(id(tensor), (name, tensor, False))

    def const(self, array, base="const"):
        """A new initializer holding ``array`` (NumPy); returns its name."""
        name = self.fresh(base)
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ints(self, values, base="ints"):
        return self.const(np.asarray(list(values), dtype=np.int64), base)

    def int_vector(self, values, base="ints"):
        """A 1-D int64 value: a constant, or the Concat of the SymInts' expressions (dynamic sizes)."""
        values = list(values)
        if not any(isinstance(v, SymInt) for v in values):
            return self.ints([int(v) for v in values], base)
        return self.node("Concat", [sym_value(self, v) for v in values], axis=0)

    def dim(self, name, axis):
        key = (name, axis)
        if key not in self._dims:
            self._dims[key] = self.node("Gather", [self.node("Shape", [name]), self.ints([axis], "axis")], axis=0)
        return self._dims[key]

    def scalar(self, value, dtype, base="scalar"):
        return self.const(np.asarray(value, dtype=dtype), base)

    def value(self, tensor):
        """The ONNX name of a tensor argument: traced value, parameter, or constant."""
        name = tensor.__dict__.get(_NAME)
        if name is not None:
            return name
        key = id(tensor)
        if key in self._params:
            name, t, emitted = self._params[key]
            if not emitted:
                self.reserve(name)
                self.initializers.append(self.numpy_helper.from_array(_host(t), name))
                self._params[key] = (name, t, True)
            return name
        if tensor.requires_grad and not tensor.is_leaf:
            raise ExportError(
                f"minigrad.onnx.export: a tensor of shape {tensor.shape} computed from the input by an op the "
                f"exporter did not see reaches the op called {self.location}; call minigrad ops through "
                "minigrad.functional (F.op) or Tensor methods so they can be recorded")
        if key not in self._consts:
            self._consts[key] = (self.const(_host(tensor), "const"), tensor)  # keep the tensor: ids stay unique
        return self._consts[key][0]

    def node(self, op_type, inputs, outputs=1, **attrs):
        """Emit one node; returns its output name (or the list of names when ``outputs`` > 1)."""
        scope = "/".join(self.scope)
        base = f"{scope}/{op_type}" if scope else op_type
        out_names = [self.fresh(base) for _ in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(self.helper.make_node(op_type, list(inputs), out_names, name=self.fresh("n:" + base),
                                                **attrs))
        return out_names[0] if outputs == 1 else out_names

    def reduce(self, op_type, x, axes, keepdims):
        """ReduceX over ``axes`` (None: all), with axes as an attribute before the opset that made them an input."""
        axes_as_input = op_type == "ReduceSum" and self.opset >= 13 or self.opset >= 18
        if axes is None:
            return self.node(op_type, [x], keepdims=int(keepdims))
        if axes_as_input:
            return self.node(op_type, [x, self.ints(axes, "axes")], keepdims=int(keepdims))
        return self.node(op_type, [x], axes=list(axes), keepdims=int(keepdims))


def _host(tensor):
    return np.ascontiguousarray(tensor.numpy())


def _named_tensors(model):
    seen = set()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t is not None and id(t) not in seen:
            seen.add(id(t))
            yield name, t


def set_name(tensor, name):
    tensor.__dict__[_NAME] = name


def name_of(tensor):
    return tensor.__dict__.get(_NAME) if isinstance(tensor, Tensor) else None


def is_traced(value):
    return isinstance(value, Tensor) and _NAME in value.__dict__


def where_called(frame):
    """'path:line in function' of the first caller outside minigrad (and the op's direct caller if different)."""
    first, outside = None, None
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(_ONNX_DIR):
            here = f"{_short(path)}:{frame.f_lineno} in {frame.f_code.co_name}"
            first = first or here
            if not path.startswith(_PACKAGE_DIR + os.sep):
                outside = here
                break
        frame = frame.f_back
    if outside and first and outside != first:
        return f"at {outside} (via {first})"
    return f"at {outside or first or '?'}"


def _short(path):
    root = os.path.dirname(_PACKAGE_DIR)
    return os.path.relpath(path, root) if path.startswith(root + os.sep) else path


def _tensors_in(values):
    for v in values:
        if isinstance(v, Tensor):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from _tensors_in(v)


# ---------------------------------------------------------------------- sizes read from shapes
class SymInt(int):
    """A size read from a traced tensor's shape: its traced value, plus how to compute it in the graph.

    Arithmetic with ints (+, -, *, //) gives SymInts again, so a crop offset or a resize target
    computed from ``x.shape`` becomes graph arithmetic on ``Shape(x)`` (emitted only where an op
    reads it) instead of a constant. Comparisons, ``min``/``max`` and ``if`` use the traced value,
    as every Python decision during a trace does; ``export(check_inputs=...)`` catches the graphs
    that such a decision would change. ``//`` becomes ONNX integer Div, which truncates: sizes and
    offsets are non-negative.
    """

    def __new__(cls, value, graph, make):
        self = int.__new__(cls, value)
        self._graph, self._make, self._name = graph, make, None
        return self

    def onnx(self):
        if self._name is None:
            self._name = self._make()
        return self._name

    def _binary(self, other, op_type, fn, reflected=False):
        if isinstance(other, bool) or not isinstance(other, (int, np.integer)):
            return NotImplemented
        a, b = (other, self) if reflected else (self, other)
        g = self._graph
        return SymInt(fn(int(a), int(b)), g, lambda: g.node(op_type, [sym_value(g, a), sym_value(g, b)]))

    def __add__(self, o): return self._binary(o, "Add", lambda a, b: a + b)  # noqa: E704
    def __radd__(self, o): return self._binary(o, "Add", lambda a, b: a + b, True)  # noqa: E704
    def __sub__(self, o): return self._binary(o, "Sub", lambda a, b: a - b)  # noqa: E704
    def __rsub__(self, o): return self._binary(o, "Sub", lambda a, b: a - b, True)  # noqa: E704
    def __mul__(self, o): return self._binary(o, "Mul", lambda a, b: a * b)  # noqa: E704
    def __rmul__(self, o): return self._binary(o, "Mul", lambda a, b: a * b, True)  # noqa: E704
    def __floordiv__(self, o): return self._binary(o, "Div", lambda a, b: a // b)  # noqa: E704
    def __rfloordiv__(self, o): return self._binary(o, "Div", lambda a, b: a // b, True)  # noqa: E704

    def __neg__(self):
        return self._binary(-1, "Mul", lambda a, b: a * b)

    def __pos__(self):
        return self


def sym_value(g, value):
    """The graph's 1-D int64 [1] value for an int or a SymInt."""
    return value.onnx() if isinstance(value, SymInt) else g.ints([int(value)], "int")


# ---------------------------------------------------------------------- the tracer
# Tensor attributes that are not plain re-exports of a minigrad.functional function.
# name -> (converter name, whether the two operands swap)
_REFLECTED = {"__radd__": "add", "__rsub__": "sub", "__rmul__": "mul", "__rtruediv__": "div",
              "__rpow__": "pow", "__rmatmul__": "matmul"}
_OTHER_METHODS = {"__eq__": "eq", "__ne__": "ne", "__lt__": "lt", "__le__": "le", "__gt__": "gt", "__ge__": "ge",
                  "to": "to", "float": "to", "double": "to", "long": "to", "astype": "to", "cpu": "to",
                  "gpu": "to", "cuda": "to", "detach": "detach"}


class Tracer:
    """Context manager: while active, minigrad ops on traced values emit ONNX nodes into ``graph``."""

    def __init__(self, graph, converters, model):
        self.graph, self.converters, self.model = graph, converters, model
        self.depth = 0
        self._patches = []
        self._module_names = {id(m): name for name, m in model.named_modules()}

    # -------------------------------------------------------------- patching
    def __enter__(self):
        import minigrad
        from ..nn.module import Module
        functions = {}
        for name, fn in vars(_functional).items():
            if not name.startswith("_") and inspect.isfunction(fn) and fn.__module__.startswith("minigrad.functional"):
                functions[id(fn)] = name
                self._patch(_functional, name, self._wrap(name, fn))
        for name, fn in list(vars(minigrad).items()):
            if inspect.isfunction(fn) and id(fn) in functions:
                self._patch(minigrad, name, self._wrap(functions[id(fn)], fn))
        for attr, fn in list(vars(Tensor).items()):
            if isinstance(fn, property) and attr == "T":
                self._patch(Tensor, attr, property(self._wrap("T", fn.fget)))
            elif not inspect.isfunction(fn):
                continue
            elif id(fn) in functions:
                self._patch(Tensor, attr, self._wrap(functions[id(fn)], fn))
            elif attr in _REFLECTED:
                self._patch(Tensor, attr, self._wrap(_REFLECTED[attr], fn, reflected=True))
            elif attr in _OTHER_METHODS:
                self._patch(Tensor, attr, self._wrap(_OTHER_METHODS[attr], fn, method=attr))
        self._patch(Module, "__call__", self._module_call(Module.__call__))
        if self.graph.symbolic:
            self._patch(Tensor, "shape", property(self._shape(vars(Tensor)["shape"].fget)))
        return self

    def __exit__(self, *exc):
        while self._patches:
            owner, name, old = self._patches.pop()
            setattr(owner, name, old)
        return False

    def _patch(self, owner, name, new):
        self._patches.append((owner, name, vars(owner)[name]))
        setattr(owner, name, new)

    def _shape(self, shape):
        tracer, graph = self, self.graph

        def symbolic_shape(t):
            dims = shape(t)
            name = t.__dict__.get(_NAME)
            if tracer.depth or name is None:
                return dims
            return tuple(SymInt(n, graph, lambda i=i: graph.dim(name, i)) for i, n in enumerate(dims))
        return symbolic_shape

    def _module_call(self, call):
        tracer = self

        def __call__(module, *args, **kwargs):
            name = tracer._module_names.get(id(module))
            if name:
                tracer.graph.scope.append(name.rsplit(".", 1)[-1] if tracer.graph.scope else name)
            try:
                return call(module, *args, **kwargs)
            finally:
                if name:
                    tracer.graph.scope.pop()
        return __call__

    # -------------------------------------------------------------- recording
    def _wrap(self, name, fn, reflected=False, method=None):
        tracer = self
        signature = inspect.signature(fn)

        def traced(*args, **kwargs):
            if tracer.depth:
                return fn(*args, **kwargs)
            tracer.depth += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                tracer.depth -= 1
            if not any(is_traced(t) or t.requires_grad and not t.is_leaf
                       for t in _tensors_in(list(args) + list(kwargs.values()))):
                return out  # constants in, constant out
            tracer.graph.calling(sys._getframe(1))
            if reflected:
                args = (args[1], args[0]) + tuple(args[2:])
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            if reflected:  # the lambda's parameter names are (self, other): rename for the converter
                arguments = {"a": args[0], "b": args[1]}
            if method is not None:
                arguments["_method"] = method
            converter = tracer.converters.get(name)
            if converter is None:
                raise UnsupportedOperatorError(
                    f"minigrad.onnx.export: {_display(name)} has no ONNX mapping (called {tracer.graph.location}"
                    f"{_in_module(tracer.graph.scope)})")
            try:
                names = converter(tracer.graph, arguments, out)
            except ExportError:
                raise
            except NotImplementedError as e:
                raise UnsupportedOperatorError(
                    f"minigrad.onnx.export: {_display(name)}: {e} (called {tracer.graph.location}"
                    f"{_in_module(tracer.graph.scope)})") from None
            tracer.graph.calling(None)  # drop the frame reference
            _name_outputs(out, names)
            return out
        traced.__wrapped__ = fn
        return traced


def _display(name):
    return name if name in ("T",) or name.startswith("__") else f"F.{name}"


def _in_module(scope):
    return f", in module '{'.'.join(scope)}'" if scope else ""


def _name_outputs(out, names):
    if isinstance(out, Tensor):
        if out.__dict__.get(_NAME) != names:
            if _NAME in out.__dict__ and out.__dict__[_NAME] != names:
                return  # an identity op returned its (already named) input
            set_name(out, names)
        _cut(out)
        return
    for t, n in zip(out, names):
        if isinstance(t, Tensor) and n is not None:
            set_name(t, n)
            _cut(t)


def _cut(tensor):
    """Drop the autograd history of a traced value (the trace needs only its name): memory stays flat."""
    if tensor._backward is not None:
        tensor._parents, tensor._backward = (), None
        tensor.requires_grad = True
