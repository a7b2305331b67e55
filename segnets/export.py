"""Export a trained net to ONNX: ``python -m segnets.export --checkpoint CKPT --output model.onnx``.

The file holds the net (weights as initializers, opset ``--opset``, 17 by default)
and, in its metadata (``metadata_props``), what a deployment needs besides the
graph: the class names, the input normalisation, the net's name and options, its
valid input sizes and where it came from (see ``METADATA_KEYS``). ONNX Runtime
in three lines::

    import onnxruntime as ort
    session = ort.InferenceSession("model.onnx")
    logits = session.run(None, {"input": normalised_nchw_float32})[0]

``--dynamic`` leaves the batch size open and height and width too: crops, resize
targets, unpooling sizes and adaptive-pooling bins computed from the input's
shape become graph arithmetic on ``Shape`` (see ``minigrad.onnx``). Other sizes
are traced as well and must give the same graph; a net whose Python code decides
something from the size (which the trace would fix) keeps the exported height
and width, and the command says so. Valid sizes are still the net's
(``size_rule`` in the metadata). ``--with-argmax`` adds the
outputs ``probabilities`` (softmax over classes) and ``labels`` (argmax, int64).
``python -m segnets.predict --onnx model.onnx IMAGE...`` runs the file.
"""
import argparse
import json
import os
import sys

import numpy as np

import minigrad
from minigrad import nn

from .checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint

FORMAT = "segnets-onnx"
METADATA_KEYS = ("format", "net", "classes", "mean", "std", "ignore_index", "size_rule", "input_size",
                 "dynamic", "outputs", "checkpoint", "epoch")
DEFAULT_SIZE = 64


class WithArgmax(nn.Module):
    """The net, then softmax and argmax over the classes: (logits, probabilities, labels)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        logits = self.net(x)
        return logits, minigrad.functional.softmax(logits, dim=1), minigrad.functional.argmax(logits, dim=1)


def default_size(rule, wanted=DEFAULT_SIZE):
    """The smallest size the rule accepts that is at least ``wanted`` (or its first)."""
    if wanted <= rule.first:
        return rule.first
    return rule.first + -(-(wanted - rule.first) // rule.step) * rule.step


def export_checkpoint(checkpoint, output, opset=17, height=None, width=None, dynamic=False, with_argmax=False,
                      log=print):
    """Export a loaded checkpoint (``load_checkpoint``); returns the ONNX ModelProto. Raises ValueError
    for a size the net does not accept, ``minigrad.onnx.ExportError`` for what ONNX cannot express."""
    import minigrad.onnx as mx
    model = build_model_from_checkpoint(checkpoint)
    meta = checkpoint["meta"]
    rule = model.size_rule()
    height = default_size(rule) if height is None else height
    width = height if width is None else width
    for axis, n in (("--height", height), ("--width", width)):
        if not rule.accepts(n):
            raise ValueError(f"{axis} {n} is not a valid input size for {model.name} ({rule.why}); nearest valid: "
                             f"{' or '.join(map(str, rule.nearest(n)))}")
    net = WithArgmax(model) if with_argmax else model
    outputs = ("logits", "probabilities", "labels") if with_argmax else ("logits",)
    example = _example(model, 1, height, width)
    spatial = {}
    if dynamic:
        spatial = {"input": {0: "batch", 2: "height", 3: "width"}}
        for name in outputs:
            spatial[name] = {0: "batch", 2: "out_height", 3: "out_width"} if name != "labels" else \
                {0: "batch", 1: "out_height", 2: "out_width"}
    metadata = {
        "format": FORMAT,
        "net": json.dumps(model.config),
        "classes": json.dumps(list(meta["classes"])),
        "mean": json.dumps([float(v) for v in meta["mean"]]),
        "std": json.dumps([float(v) for v in meta["std"]]),
        "ignore_index": json.dumps(meta["ignore_index"]),
        "size_rule": json.dumps({"first": rule.first, "step": rule.step, "margin": rule.margin, "why": rule.why}),
        "input_size": json.dumps([height, width]),
        "outputs": json.dumps(list(outputs)),
        "checkpoint": os.path.abspath(checkpoint["path"]) if checkpoint.get("path") else "",
        "epoch": json.dumps(meta.get("epoch")),
    }
    kind = "fixed"
    if dynamic:
        # other sizes (two residues mod 32 where any size goes): a graph that depends on the size fails to match
        steps = [(1, 2)] if rule.step > 1 else [(5, 17), (13, 3)]
        checks = [_example(model, 2, height + a * rule.step, width + b * rule.step) for a, b in steps]
        try:
            proto = mx.export(net, example, None, opset, ("input",), outputs, spatial,
                              metadata=dict(metadata, dynamic=json.dumps("batch, height, width")),
                              check_inputs=checks)
            kind = "batch, height, width"
        except mx.ExportError as e:
            if "trace to" not in str(e):
                raise
            log(f"note: height and width stay fixed at {height}x{width} ({model.name}: {str(e).split(': ', 1)[-1]})")
            spatial = {name: {0: "batch"} for name in ("input",) + outputs}
            kind = "batch"
    if kind != "batch, height, width":
        proto = mx.export(net, example, None, opset, ("input",), outputs, spatial or None,
                          metadata=dict(metadata, dynamic=json.dumps(kind)))
    import onnx
    onnx.checker.check_model(proto, full_check=True)
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{output}.tmp-{os.getpid()}"
    onnx.save(proto, tmp)
    os.replace(tmp, output)
    return proto


def _example(model, batch, height, width):
    rng = np.random.default_rng(0)
    return minigrad.Tensor(rng.standard_normal((batch, model.in_channels, height, width)).astype(np.float32))


def read_metadata(proto):
    """{key: decoded value} of a segnets ONNX model's metadata (JSON values decoded)."""
    props = {p.key: p.value for p in proto.metadata_props}
    out = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def build_parser():
    p = argparse.ArgumentParser(prog="python -m segnets.export",
                                description="Export a segnets checkpoint to an ONNX model (classes, normalisation "
                                            "and net options go into its metadata).")
    p.add_argument("--checkpoint", required=True, help="checkpoint .npz written by segnets.train")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version, 13 or newer [default: 17]")
    p.add_argument("--height", type=int, help=f"input height of the example (the fixed height without --dynamic) "
                                              f"[default: the net's first valid size >= {DEFAULT_SIZE}]")
    p.add_argument("--width", type=int, help="input width [default: the height]")
    p.add_argument("--dynamic", action="store_true",
                   help="dynamic batch size, and height/width where the net's graph allows")
    p.add_argument("--with-argmax", action="store_true",
                   help="also output 'probabilities' (softmax) and 'labels' (argmax over classes)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        import minigrad.onnx as mx
        mx.load_onnx()
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value is not None and value < 1:
            print(f"error: {flag} must be a positive int, got {value}", file=sys.stderr)
            return 2
    if os.path.isdir(args.output):
        print(f"error: --output {args.output!r} is a directory; give a file name such as model.onnx", file=sys.stderr)
        return 2
    try:
        checkpoint = load_checkpoint(args.checkpoint)
        proto = export_checkpoint(checkpoint, args.output, args.opset, args.height, args.width, args.dynamic,
                                  args.with_argmax)
    except (CheckpointError, ValueError, mx.ExportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = read_metadata(proto)
    shape = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    print(f"wrote {args.output}: {meta['net']['name']}, opset {args.opset}, {len(proto.graph.node)} nodes, "
          f"input {tuple(shape)}, outputs {', '.join(o.name for o in proto.graph.output)}, "
          f"dynamic: {meta['dynamic']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
