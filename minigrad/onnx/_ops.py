"""One converter per minigrad op: ``convert(graph, args, out) -> ONNX name(s) of the output(s)``.

``args`` are the op's arguments by parameter name with defaults filled in
(``inspect.signature(op).bind``); ``out`` is what the op returned during the
trace (its shapes and dtypes are read, never its values). Attributes follow
what ``torch.onnx.export`` writes for the same PyTorch call. A converter raises
``NotImplementedError`` with the reason for a case ONNX cannot express; the
tracer turns that into an error naming the op and where it was called.
"""
import numpy as np

from ..tensor import Tensor
from ._graph import INT64_MAX, INT64_MIN, ExportError, SymInt, name_of

CONVERTERS = {}


def converter(*names):
    def register(fn):
        for name in names:
            CONVERTERS[name] = fn
        return fn
    return register


def _pair(value):
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    value = tuple(int(v) for v in value)
    return value if len(value) == 2 else (value[0], value[0])


def _dtype(out):
    return (out[0] if isinstance(out, tuple) else out).dtype


def _operand(g, value, like_dtype):
    """A tensor argument's name, or a Python/NumPy scalar as a constant of the other operand's dtype."""
    if isinstance(value, Tensor):
        return g.value(value)
    return g.scalar(value, like_dtype)


def _need_4d(op, x):
    if x.ndim != 4:
        raise NotImplementedError(f"only 4-D (N, C, H, W) input is exported, got shape {x.shape}")


# ---------------------------------------------------------------------- activations, dropout, norm
@converter("relu")
def _relu(g, a, out):
    return g.node("Relu", [g.value(a["input"])])


@converter("leaky_relu")
def _leaky_relu(g, a, out):
    return g.node("LeakyRelu", [g.value(a["input"])], alpha=float(a["negative_slope"]))


@converter("sigmoid")
def _sigmoid(g, a, out):
    return g.node("Sigmoid", [g.value(a["input"])])


@converter("tanh")
def _tanh(g, a, out):
    return g.node("Tanh", [g.value(a["input"])])


def _softmax_like(op_type):
    def convert(g, a, out):
        x = a["input"]
        dim = a["dim"]
        if dim is None:
            dim = 0 if x.ndim in (0, 1, 3) else 1
        name = g.value(x)
        if a.get("dtype") is not None:
            name = _cast(g, name, np.dtype(a["dtype"]))
        return g.node(op_type, [name], axis=int(dim))
    return convert


CONVERTERS["softmax"] = _softmax_like("Softmax")
CONVERTERS["log_softmax"] = _softmax_like("LogSoftmax")


@converter("dropout", "dropout2d")
def _dropout(g, a, out):
    if a["training"] and a["p"] > 0:
        raise NotImplementedError("dropout in training mode; export runs the model in eval mode")
    return g.value(a["input"])  # the identity after eval(): no node


@converter("batch_norm")
def _batch_norm(g, a, out):
    x = a["input"]
    if a["training"]:
        raise NotImplementedError("batch_norm with batch statistics (training=True, or a BatchNorm2d with "
                                  "track_running_stats=False) has no inference form; only running statistics export")
    channels = x.shape[1]
    dtype = x.dtype
    weight = g.value(a["weight"]) if a["weight"] is not None else g.const(np.ones(channels, dtype), "bn_scale")
    bias = g.value(a["bias"]) if a["bias"] is not None else g.const(np.zeros(channels, dtype), "bn_bias")
    return g.node("BatchNormalization", [g.value(x), weight, bias, g.value(a["running_mean"]),
                                         g.value(a["running_var"])], epsilon=float(a["eps"]))


# ---------------------------------------------------------------------- convolutions
def _conv_pads(padding, kernel, dilation):
    """ONNX pads [top, left, bottom, right]; 'same' puts the odd extra row/column at the bottom/right."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0, 0, 0]
        before = [d * (k - 1) // 2 for k, d in zip(kernel, dilation)]
        after = [d * (k - 1) - b for k, d, b in zip(kernel, dilation, before)]
        return before + after
    p = _pair(padding)
    return [p[0], p[1], p[0], p[1]]


@converter("conv2d")
def _conv2d(g, a, out):
    x, w = a["input"], a["weight"]
    _need_4d("conv2d", x)
    kernel, dilation = tuple(w.shape[2:]), _pair(a["dilation"])
    inputs = [g.value(x), g.value(w)] + ([g.value(a["bias"])] if a["bias"] is not None else [])
    return g.node("Conv", inputs, kernel_shape=list(kernel), strides=list(_pair(a["stride"])),
                  pads=_conv_pads(a["padding"], kernel, dilation), dilations=list(dilation), group=int(a["groups"]))


@converter("conv_transpose2d")
def _conv_transpose2d(g, a, out):
    x, w, bias = a["input"], a["weight"], a["bias"]
    _need_4d("conv_transpose2d", x)
    p, extra = _pair(a["padding"]), _pair(a["output_padding"])
    # ONNX Runtime takes output_padding only below the stride (PyTorch: below stride or dilation). The same
    # output: crop `extra` fewer rows at the end (pads_end = p - extra), and where that would be negative,
    # pad zeros (those rows get no input, only the bias) and add the bias afterwards.
    ends = [max(pi - e, 0) for pi, e in zip(p, extra)]
    grow = [max(e - pi, 0) for pi, e in zip(p, extra)]
    fused_bias = bias is not None and not any(grow)
    inputs = [g.value(x), g.value(w)] + ([g.value(bias)] if fused_bias else [])
    y = g.node("ConvTranspose", inputs, kernel_shape=list(w.shape[2:]), strides=list(_pair(a["stride"])),
               pads=[p[0], p[1]] + ends, dilations=list(_pair(a["dilation"])), group=int(a["groups"]))
    if any(grow):
        y = g.node("Pad", [y, g.ints([0, 0, 0, 0, 0, 0] + grow, "pads")], mode="constant")
        if bias is not None:
            y = g.node("Add", [y, g.node("Reshape", [g.value(bias), g.ints([-1, 1, 1], "shape")])])
    return y


# ---------------------------------------------------------------------- pooling
def _pool_attrs(a, dilation=True):
    kernel = _pair(a["kernel_size"])
    stride = kernel if a["stride"] is None or a["stride"] in ((), []) else _pair(a["stride"])
    p = _pair(a["padding"])
    attrs = dict(kernel_shape=list(kernel), strides=list(stride), pads=[p[0], p[1], p[0], p[1]],
                 ceil_mode=int(bool(a.get("ceil_mode", False))))
    if dilation:
        attrs["dilations"] = list(_pair(a["dilation"]))
    return attrs


def _plane_offsets(g, x):
    """(N, C, 1, 1) int64: the flat NCHW index of each plane's first element, (n * C + c) * H * W.

    A 1x1 MaxPool's Indices output is every element's own flat index; its [0, 0] corner per plane
    is the offset (what torch.onnx writes for max_pool2d with indices)."""
    _, flat = g.node("MaxPool", [x], outputs=2, kernel_shape=[1, 1])
    return g.node("Slice", [flat, g.ints([0, 0], "starts"), g.ints([1, 1], "ends"), g.ints([2, 3], "axes")])


@converter("max_pool2d")
def _max_pool2d(g, a, out):
    x = a["input"]
    _need_4d("max_pool2d", x)
    xn = g.value(x)
    if not a["return_indices"]:
        return g.node("MaxPool", [xn], **_pool_attrs(a))
    y, flat = g.node("MaxPool", [xn], outputs=2, **_pool_attrs(a))
    # ONNX's indices count over the whole NCHW tensor, minigrad's (PyTorch's) within each plane
    per_plane = g.node("Sub", [flat, _plane_offsets(g, xn)])
    g.pool_switches[per_plane] = (flat, xn, tuple(x.shape))
    return y, per_plane


@converter("max_unpool2d")
def _max_unpool2d(g, a, out):
    x, indices = a["input"], a["indices"]
    _need_4d("max_unpool2d", x)
    if not isinstance(indices, Tensor):
        indices = Tensor(np.asarray(indices, dtype=np.int64))
    attrs = _pool_attrs(dict(a, dilation=1), dilation=False)
    attrs.pop("ceil_mode")
    kernel, stride = attrs["kernel_shape"], attrs["strides"]
    if any(s < k for s, k in zip(stride, kernel)):
        raise NotImplementedError("overlapping windows (stride < kernel_size): minigrad adds values that share a "
                                  "switch, ONNX MaxUnpool keeps one")
    out_shape = tuple(out.shape)
    source = g.pool_switches.get(name_of(indices))
    if source is not None and source[2] == out_shape:
        # switches of a MaxPool on a tensor of the output's shape: its flat indices are ONNX's already
        flat, pooled_input, _ = source
        shape = g.node("Shape", [pooled_input])
    else:
        shape = g.node("Concat", [g.node("Slice", [g.node("Shape", [g.value(x)]), g.ints([0], "starts"),
                                                     g.ints([2], "ends")]),
                                  g.int_vector(_unpool_size(a["output_size"], out_shape), "size")], axis=0)
        zeros = g.node("ConstantOfShape", [shape], value=g.numpy_helper.from_array(np.zeros(1, _dtype(out))))
        flat = g.node("Add", [g.value(indices), _plane_offsets(g, zeros)])
    return g.node("MaxUnpool", [g.value(x), flat, shape], **attrs)


def _unpool_size(output_size, out_shape):
    if output_size is not None and _has_sym(list(output_size)[-2:]):
        return list(output_size)[-2:]
    return out_shape[2:]


@converter("avg_pool2d")
def _avg_pool2d(g, a, out):
    x = a["input"]
    _need_4d("avg_pool2d", x)
    attrs = _pool_attrs(a, dilation=False)
    attrs["count_include_pad"] = int(bool(a["count_include_pad"]))
    y = g.node("AveragePool", [g.value(x)], **attrs)
    if a["divisor_override"] is None:
        return y
    if a["ceil_mode"]:
        raise NotImplementedError("divisor_override with ceil_mode")
    attrs["count_include_pad"] = 1  # every window lies inside input + padding: the divisor is kh * kw
    y = g.node("AveragePool", [g.value(x)], **attrs)
    kh, kw = attrs["kernel_shape"]
    return g.node("Mul", [y, g.scalar(kh * kw / float(a["divisor_override"]), x.dtype)])


def _adaptive_bins(size, out):
    """PyTorch's bins [floor(i * size / out), ceil((i + 1) * size / out)); ``size`` may be a SymInt."""
    return [(i * size // out, ((i + 1) * size + out - 1) // out) for i in range(out)]


def _adaptive(pool, global_pool, reduce):
    def convert(g, a, out):
        x = a["input"]
        if a.get("return_indices"):
            raise NotImplementedError("return_indices=True")
        _need_4d("adaptive pooling", x)
        (h, w), (oh, ow) = x.shape[2:], out.shape[2:]  # SymInts with dynamic height and width
        requested = a["output_size"]
        requested = list(requested) if isinstance(requested, (tuple, list)) else [requested, requested]
        xn = g.value(x)
        if (oh, ow) == (1, 1):
            return g.node(global_pool, [xn])
        if not g.symbolic and h % oh == 0 and w % ow == 0:  # equal, disjoint bins: a plain pool
            k = [h // oh, w // ow]
            return g.node(pool, [xn], kernel_shape=k, strides=k)
        for axis, size, n, kept in ((2, h, oh, requested[0] is None), (3, w, ow, requested[1] is None)):
            if kept or not g.symbolic and size == n:  # separable: rows' bins, then columns'
                continue
            parts = [g.reduce(reduce, g.node("Slice", [xn, g.int_vector([lo], "starts"), g.int_vector([hi], "ends"),
                                                       g.ints([axis], "axes")]), [axis], True)
                     for lo, hi in _adaptive_bins(size, n)]
            xn = g.node("Concat", parts, axis=axis)
        return xn
    return convert


CONVERTERS["adaptive_avg_pool2d"] = _adaptive("AveragePool", "GlobalAveragePool", "ReduceMean")
CONVERTERS["adaptive_max_pool2d"] = _adaptive("MaxPool", "GlobalMaxPool", "ReduceMax")


# ---------------------------------------------------------------------- resampling
@converter("interpolate")
def _interpolate(g, a, out):
    x = a["input"]
    mode, align = a["mode"], a["align_corners"]
    if mode == "nearest":  # src = floor(dst * in / out), PyTorch's legacy nearest
        attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    elif mode == "nearest-exact":  # src = floor((dst + 0.5) * in / out) = round-half-up of the half-pixel map
        attrs = dict(mode="nearest", coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil")
    elif mode == "bilinear":
        attrs = dict(mode="linear", coordinate_transformation_mode="align_corners" if align else "half_pixel")
    else:
        raise NotImplementedError(f"mode={mode!r}")
    xn = g.value(x)
    scale = a["scale_factor"]
    if scale is not None and not a["recompute_scale_factor"]:
        # PyTorch reads the source index with 1 / scale_factor, as ONNX does with its scales
        sh, sw = (float(scale), float(scale)) if isinstance(scale, (int, float)) else (float(s) for s in scale)
        scales = g.const(np.asarray([1.0, 1.0, sh, sw], np.float32), "scales")
        return g.node("Resize", [xn, "", scales], **attrs)
    leading = g.node("Slice", [g.node("Shape", [xn]), g.ints([0], "starts"), g.ints([2], "ends")])
    size = a["size"]
    size = list(size) if isinstance(size, (tuple, list)) else [size, size]
    sizes = g.node("Concat", [leading, g.int_vector(size if _has_sym(size) else out.shape[2:], "size")], axis=0)
    return g.node("Resize", [xn, "", "", sizes], **attrs)


# ---------------------------------------------------------------------- elementwise
def _binary(op_type):
    def convert(g, a, out):
        dtype = _dtype(out)
        b = _operand(g, a["b"], dtype)
        if a.get("alpha", 1) != 1:  # add/sub: a + alpha * b
            b = g.node("Mul", [b, g.scalar(a["alpha"], dtype)])
        return g.node(op_type, [_operand(g, a["a"], dtype), b])
    return convert


for _name, _op in (("add", "Add"), ("sub", "Sub"), ("mul", "Mul"), ("div", "Div"), ("pow", "Pow"),
                   ("matmul", "MatMul"), ("maximum", "Max"), ("minimum", "Min")):
    CONVERTERS[_name] = _binary(_op)


@converter("linear")
def _linear(g, a, out):
    weight, bias = a["weight"], a["bias"]
    w = g.value(weight) if weight.ndim == 1 else g.node("Transpose", [g.value(weight)], perm=[1, 0])
    y = g.node("MatMul", [g.value(a["input"]), w])
    return y if bias is None else g.node("Add", [y, g.value(bias)])


def _compare(op_type, negate=False):
    def convert(g, a, out):
        self, other = a["self"], a["other"]
        y = g.node(op_type, [g.value(self), _operand(g, other, self.dtype)])
        return g.node("Not", [y]) if negate else y
    return convert


CONVERTERS.update(eq=_compare("Equal"), ne=_compare("Equal", negate=True), lt=_compare("Less"),
                  le=_compare("LessOrEqual"), gt=_compare("Greater"), ge=_compare("GreaterOrEqual"))


def _unary(op_type):
    def convert(g, a, out):
        return g.node(op_type, [g.value(a["a"])])
    return convert


for _name, _op in (("neg", "Neg"), ("abs", "Abs"), ("exp", "Exp"), ("log", "Log"), ("sqrt", "Sqrt")):
    CONVERTERS[_name] = _unary(_op)


@converter("clamp")
def _clamp(g, a, out):
    dtype = _dtype(out)
    if isinstance(a["min"], Tensor) or isinstance(a["max"], Tensor):  # Clip takes scalar bounds only
        y = g.value(a["a"])
        for bound, op_type in ((a["min"], "Max"), (a["max"], "Min")):
            if bound is not None:
                y = g.node(op_type, [y, _operand(g, bound, dtype)])
        return y
    bounds = ["" if v is None else _operand(g, v, dtype) for v in (a["min"], a["max"])]
    return g.node("Clip", [g.value(a["a"])] + bounds)


@converter("where")
def _where(g, a, out):
    dtype = _dtype(out)
    cond = a["condition"]
    cond = g.value(cond) if isinstance(cond, Tensor) else g.const(np.asarray(cond, bool), "cond")
    return g.node("Where", [_cast(g, cond, np.dtype(bool)), _operand(g, a["a"], dtype), _operand(g, a["b"], dtype)])


def _cast(g, name, dtype):
    return g.node("Cast", [name], to=g.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


@converter("to")
def _to(g, a, out):
    x = a["self"]
    name = g.value(x)
    return name if out.dtype == x.dtype else _cast(g, name, out.dtype)


@converter("detach")
def _detach(g, a, out):
    return g.value(a["self"])


# ---------------------------------------------------------------------- reductions
def _axes_of(dim, ndim):
    if dim is None:
        return None
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return [int(d) % ndim for d in dims]


def _reduction(op_type):
    def convert(g, a, out):
        x = a["input"]
        if isinstance(a["dim"], Tensor):  # torch.max(a, b): the elementwise maximum
            return g.node("Max" if op_type == "ReduceMax" else "Min", [g.value(x), g.value(a["dim"])])
        axes = _axes_of(a["dim"], x.ndim)
        y = g.reduce(op_type, g.value(x), axes, a["keepdim"])
        if op_type in ("ReduceMax", "ReduceMin") and axes is not None:  # (values, indices), like torch.max(x, dim)
            arg = g.node("ArgMax" if op_type == "ReduceMax" else "ArgMin", [g.value(x)], axis=axes[0],
                         keepdims=int(a["keepdim"]))
            return y, arg
        return y
    return convert


CONVERTERS.update(sum=_reduction("ReduceSum"), mean=_reduction("ReduceMean"), max=_reduction("ReduceMax"),
                  min=_reduction("ReduceMin"))


@converter("argmax")
def _argmax(g, a, out):
    x = a["input"]
    if a["dim"] is None:
        flat = g.node("Reshape", [g.value(x), g.ints([-1], "shape")])
        return g.node("ArgMax", [flat], axis=0, keepdims=0)
    return g.node("ArgMax", [g.value(x)], axis=int(a["dim"]) % x.ndim, keepdims=int(a["keepdim"]))


# ---------------------------------------------------------------------- shapes
def _target_shape(source_shape, target_shape):
    """Reshape's shape input: leading dims copied from the input are 0 (so a dynamic batch stays dynamic)."""
    shape = list(target_shape)
    for i, (s, t) in enumerate(zip(source_shape, target_shape)):
        if s != t:
            break
        shape[i] = 0
    return shape


@converter("reshape", "flatten", "squeeze", "unsqueeze")
def _reshape(g, a, out):
    x = a["input"]
    shape = a.get("shape")
    if shape is not None and len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    if shape is not None and _has_sym(shape):  # sizes computed from a dynamic shape
        return g.node("Reshape", [g.value(x), g.int_vector(shape, "shape")])
    return g.node("Reshape", [g.value(x), g.ints(_target_shape(x.shape, out.shape), "shape")])


@converter("permute")
def _permute(g, a, out):
    x, dims = a["input"], a["dims"]
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = dims[0]
    return g.node("Transpose", [g.value(x)], perm=[int(d) % x.ndim for d in dims])


@converter("transpose")
def _transpose(g, a, out):
    x = a["input"]
    perm = list(range(x.ndim))
    d0, d1 = int(a["dim0"]) % x.ndim, int(a["dim1"]) % x.ndim
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return g.node("Transpose", [g.value(x)], perm=perm)


@converter("T")
def _t(g, a, out):
    x = a["self"]
    return g.node("Transpose", [g.value(x)], perm=list(reversed(range(x.ndim))))


@converter("expand")
def _expand(g, a, out):
    x = a["input"]
    lead = out.ndim - x.ndim
    # 1 where the input's own size is kept: Expand broadcasts it, so a dynamic dim stays dynamic
    shape = [1 if i >= lead and x.shape[i - lead] == n else n for i, n in enumerate(out.shape)]
    return g.node("Expand", [g.value(x), g.ints(shape, "shape")])


@converter("cat")
def _cat(g, a, out):
    tensors = list(a["tensors"])
    return g.node("Concat", [g.value(t) for t in tensors], axis=int(a["dim"]) % out.ndim)


@converter("stack")
def _stack(g, a, out):
    dim = int(a["dim"]) % out.ndim
    parts = [g.node("Unsqueeze", [g.value(t), g.ints([dim], "axes")]) for t in a["tensors"]]
    return g.node("Concat", parts, axis=dim)


@converter("getitem")
def _getitem(g, a, out):
    x, index = a["input"], a["index"]
    items = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (Tensor, list, np.ndarray)) for i in items):
        raise NotImplementedError("advanced (array) indexing; only ints, slices, None and ... export")
    if sum(i is Ellipsis for i in items) > 1:
        raise NotImplementedError("more than one Ellipsis")
    used = sum(1 for i in items if i is not None and i is not Ellipsis)
    expanded = []
    for i in items:
        expanded.extend([slice(None)] * (x.ndim - used) if i is Ellipsis else [i])
    expanded += [slice(None)] * (x.ndim + sum(i is None for i in expanded) - len(expanded))
    starts, ends, axes, steps, squeeze, unsqueeze = [], [], [], [], [], []
    axis, position = 0, 0
    for i in expanded:
        if i is None:
            unsqueeze.append(position)
            position += 1
            continue
        if isinstance(i, slice):
            step = 1 if i.step is None else int(i.step)
            if (i.start, i.stop, step) != (None, None, 1):
                starts.append(_index(i.start) if i.start is not None else (0 if step > 0 else INT64_MAX))
                ends.append(_index(i.stop) if i.stop is not None else (INT64_MAX if step > 0 else INT64_MIN))
                axes.append(axis)
                steps.append(step)
            position += 1
        else:  # an int: a one-element slice, squeezed afterwards
            k = _index(i)
            starts.append(k)
            ends.append(k + 1 if k != -1 else INT64_MAX)
            axes.append(axis)
            steps.append(1)
            squeeze.append(axis)
        axis += 1
    y = g.value(x)
    if axes:
        y = g.node("Slice", [y, g.int_vector(starts, "starts"), g.int_vector(ends, "ends"), g.ints(axes, "axes"),
                             g.ints(steps, "steps")])
    if squeeze:
        y = g.node("Squeeze", [y, g.ints(squeeze, "axes")])
    if unsqueeze:
        y = g.node("Unsqueeze", [y, g.ints(unsqueeze, "axes")])
    return y


def _index(value):
    return value if isinstance(value, SymInt) else int(value)


def _has_sym(values):
    return any(isinstance(v, SymInt) for v in values)


@converter("pad")
def _pad(g, a, out):
    x, pad = a["input"], [_index(p) for p in a["pad"]]
    if a["mode"] != "constant":
        raise NotImplementedError(f"mode={a['mode']!r}")
    begins, ends = [0] * x.ndim, [0] * x.ndim
    for i in range(len(pad) // 2):  # PyTorch's order: (before, after) pairs from the last dim backwards
        begins[x.ndim - 1 - i], ends[x.ndim - 1 - i] = pad[2 * i], pad[2 * i + 1]
    return g.node("Pad", [g.value(x), g.int_vector(begins + ends, "pads"), g.scalar(a["value"], x.dtype)],
                  mode="constant")


def check_opset(opset):
    import onnx
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not 13 <= opset <= newest:
        raise ExportError(f"minigrad.onnx.export: opset_version must be an int from 13 to {newest} "
                          f"(this onnx package's newest), got {opset!r}")
    return int(opset)


