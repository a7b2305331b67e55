"""minigrad.onnx: write a model as an ONNX file, like ``torch.onnx.export`` (needs the ``onnx`` package).

>>> import minigrad, minigrad.onnx, numpy as np
>>> net = minigrad.nn.Sequential(minigrad.nn.Conv2d(3, 4, 3, padding=1), minigrad.nn.ReLU())
>>> x = minigrad.Tensor(np.zeros((1, 3, 8, 8), np.float32))
>>> model = minigrad.onnx.export(net, x, "net.onnx", dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
>>> [n.op_type for n in model.graph.node]
['Conv', 'Relu', 'Identity']

The export is a trace (see ``_graph.py``): one eval-mode forward pass in which
every minigrad op that touches a value computed from the input writes its ONNX
nodes (``_ops.py``: one converter per op), weights and buffers becoming
initializers under their ``state_dict`` names. Python control flow and every
size computed from a shape are fixed at the traced values, as with
``torch.onnx.export``'s tracer.

Supported ops: conv2d, conv_transpose2d, max_pool2d (also with its indices),
max_unpool2d, avg_pool2d, adaptive_avg_pool2d, adaptive_max_pool2d (no indices),
batch_norm (running statistics), relu, leaky_relu, sigmoid, tanh, softmax,
log_softmax, dropout (removed: eval mode), interpolate (nearest, nearest-exact,
bilinear), cat, stack, pad (constant), indexing with ints/slices/None/...,
reshape/flatten/squeeze/unsqueeze/permute/transpose/expand, the arithmetic
operators, comparisons, clamp, where, maximum, minimum, matmul, linear, exp/log/sqrt/abs/neg,
sum/mean/max/min/argmax, dtype casts. Anything else on the traced path raises
``UnsupportedOperatorError`` naming the op and the line that called it.
"""
import os

from ._graph import ExportError, UnsupportedOperatorError

__all__ = ["export", "ExportError", "UnsupportedOperatorError", "load_onnx"]


def load_onnx():
    """The ``onnx`` module, or an ImportError that says what to install."""
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install onnx "
                          "(or pip install 'minigrad-segnets[onnx]')") from None
    return onnx


def export(model, example_input, path, opset_version=17, input_names=("input",), output_names=("logits",),
           dynamic_axes=None, *, metadata=None, check_inputs=()):
    """Trace ``model(example_input)`` in eval mode and write it to ``path`` as an ONNX model; returns the ModelProto.

    Arguments as in ``torch.onnx.export``: ``example_input`` is a Tensor or a tuple of
    them (the positional arguments of ``forward``); ``path`` a file name or a binary
    file object (None: only return the model); ``input_names`` / ``output_names`` name the graph's inputs and outputs
    (outputs beyond the names get ``output_K``); ``dynamic_axes`` maps a name to the axes
    left symbolic, ``{axis: "name"}`` or a list of axes, e.g.
    ``{"input": {0: "batch"}, "logits": {0: "batch"}}``. ``opset_version`` 13 or newer.

    Where we differ: ``metadata`` ({str: str}) goes into the model's
    ``metadata_props``; ``check_inputs`` (more example inputs, e.g. of another
    height and width) are traced too, and the export fails if any gives a different
    graph, i.e. when a size that should stay dynamic is baked in (a crop or resize
    to a traced size): ``torch.onnx.export`` does not check this. The model is
    returned to the training mode it had; parameters keep their ``requires_grad``.
    The graph's element type is the model's: a float64 model gives a valid double
    graph, but ONNX Runtime's CPU Conv has no double kernel (export a float32 copy).
    While export runs, the ops are patched process-wide: do not run minigrad in
    another thread at the same time.
    """
    onnx = load_onnx()
    from ._ops import check_opset
    opset = check_opset(opset_version)
    inputs = _as_tuple(example_input, "example_input")
    input_names = _names(input_names, len(inputs), "input")
    dynamic_axes = _dynamic_axes(dynamic_axes)
    # sizes read from shapes stay graph arithmetic when height/width (any axis but the batch) are dynamic
    symbolic = any(axis != 0 for name in input_names for axis in dynamic_axes.get(name, {}))
    graph, outputs = _trace(model, inputs, input_names, output_names, opset, symbolic)
    for other in check_inputs:
        other_graph, _ = _trace(model, _as_tuple(other, "check_inputs entry"), input_names, output_names, opset,
                                symbolic)
        _compare_graphs(graph, other_graph, inputs, _as_tuple(other, "check_inputs entry"))
    out_names = [name for name, _ in outputs]
    nodes = _live_nodes(graph.nodes, out_names)
    live = {i for n in nodes for i in n.input}
    initializers = [t for t in graph.initializers if t.name in live]
    helper = onnx.helper
    graph_inputs = [_value_info(helper, name, t, dynamic_axes.get(name), {}) for name, t in zip(input_names, inputs)]
    unknown = bool(dynamic_axes)  # outputs not in dynamic_axes: rank and type only once anything is dynamic
    graph_outputs = [_value_info(helper, name, t, dynamic_axes.get(name), {"unknown": unknown})
                     for name, t in outputs]
    proto = helper.make_graph(nodes, getattr(model, "name", None) or type(model).__name__, graph_inputs,
                              graph_outputs, initializer=initializers)
    opsets = [helper.make_opsetid("", opset)]
    result = helper.make_model(proto, opset_imports=opsets, producer_name="minigrad",
                               producer_version=_version())
    result.ir_version = helper.find_min_ir_version_for(opsets)
    if metadata:
        helper.set_model_props(result, {str(k): str(v) for k, v in metadata.items()})
    onnx.checker.check_model(result)
    if isinstance(path, (str, bytes, os.PathLike)):
        onnx.save(result, path)
    elif path is not None:
        path.write(result.SerializeToString())
    return result


def _version():
    from .. import __version__
    return __version__


def _as_tuple(example, what):
    from ..tensor import Tensor
    items = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    if not items or not all(isinstance(t, Tensor) for t in items):
        raise ExportError(f"minigrad.onnx.export: {what} must be a Tensor or a tuple of Tensors, got "
                          f"{type(example).__name__}")
    return items


def _names(names, count, what):
    names = [names] if isinstance(names, str) else list(names or ())
    if len(names) > count:
        raise ExportError(f"minigrad.onnx.export: {len(names)} {what} names for {count} {what}s")
    return names + [f"{what}_{k}" for k in range(len(names), count)]


def _dynamic_axes(dynamic_axes):
    out = {}
    for name, axes in (dynamic_axes or {}).items():
        if isinstance(axes, dict):
            out[name] = {int(k): str(v) for k, v in axes.items()}
        else:
            out[name] = {int(k): f"{name}_dynamic_axes_{int(k) + 1}" for k in axes}
    return out


def _trace(model, inputs, input_names, output_names, opset, symbolic=False):
    from .. import enable_grad
    from ..tensor import Tensor
    from ._graph import Graph, Tracer, set_name
    from ._ops import CONVERTERS
    graph = Graph(opset)
    graph.symbolic = symbolic
    graph.register_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    traced = []
    for name, example in zip(input_names, inputs):
        t = Tensor._wrap(example.data)
        if t.dtype.kind == "f":
            t.requires_grad_(True)  # so values made from it by ops the tracer missed are recognisable
        set_name(t, graph.reserve(name))
        traced.append(t)
    try:
        model.eval()
        for p in params:
            p.requires_grad = False
        with Tracer(graph, CONVERTERS, model), enable_grad():
            out = model(*traced)
    finally:
        for p in params:
            p.requires_grad = True
        model.train(was_training)
    flat = list(out) if isinstance(out, (tuple, list)) else [out]
    names = _names(output_names, len(flat), "output")
    outputs = []
    graph.location = "as the model's output"
    for name, t in zip(names, flat):
        if not isinstance(t, Tensor):
            raise ExportError(f"minigrad.onnx.export: the model returned a {type(t).__name__}; only Tensors "
                              "(or a tuple of them) can be graph outputs")
        graph.nodes.append(graph.helper.make_node("Identity", [graph.value(t)], [graph.reserve(name)],
                                                  name=graph.fresh("n:output")))
        outputs.append((name, t))
    return graph, outputs


def _live_nodes(nodes, outputs):
    """The nodes the outputs depend on, in their original order."""
    needed, keep = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    return keep[::-1]


def _compare_graphs(graph, other, inputs, other_inputs):
    def signature(g):
        nodes = [(n.op_type, tuple(n.input), tuple(n.output), n.SerializeToString()) for n in g.nodes]
        consts = {t.name: t.SerializeToString() for t in g.initializers}
        return nodes, consts
    (nodes_a, consts_a), (nodes_b, consts_b) = signature(graph), signature(other)
    shapes = f"{[t.shape for t in inputs]} and {[t.shape for t in other_inputs]}"
    for a, b in zip(nodes_a, nodes_b):
        if a != b:
            raise ExportError(f"minigrad.onnx.export: the inputs of shapes {shapes} trace to different graphs "
                              f"(first difference: {a[0]} node {a[2][0]!r} against {b[0]} {b[2][0]!r}): a size "
                              "computed from the input's shape is baked into the graph; export those axes as fixed")
    if len(nodes_a) != len(nodes_b):
        raise ExportError(f"minigrad.onnx.export: the inputs of shapes {shapes} trace to graphs of "
                          f"{len(nodes_a)} and {len(nodes_b)} nodes; export those axes as fixed")
    for name in consts_a:
        if consts_a[name] != consts_b.get(name):
            raise ExportError(f"minigrad.onnx.export: the inputs of shapes {shapes} trace to graphs whose constant "
                              f"{name!r} differs (a size computed from the input's shape); export those axes as fixed")


def _value_info(helper, name, tensor, dynamic, options):
    dims = []
    for axis, n in enumerate(tensor.shape):
        if dynamic and axis in dynamic:
            dims.append(dynamic[axis])
        elif options.get("unknown"):
            dims.append(None)
        else:
            dims.append(int(n))
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(tensor.dtype), dims)

