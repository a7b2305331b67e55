"""Ops suite: the layers the five nets actually run, minigrad against PyTorch.

Each case is one call written once against the shared API: minigrad.functional and
torch.nn.functional take the same names and arguments, so ``case.call(F, t)`` runs
either library. A case is timed forward (in no-grad mode) and forward+backward (the
backward given a fixed random upstream gradient), and its outputs and gradients
are compared with PyTorch's from the same inputs and weights.

Shapes are the nets' layer shapes with the feature maps of a ``Scale.image`` input
(FCN/VGG maps image, image/2 .. image/16 without FCN's 100-pixel pad, fc6 on a 9x9
pool5 map as FCN's pad gives a small image), channels as in the full-width nets.
"""
import dataclasses
import traceback

import numpy as np

import minigrad.functional as MF

from .common import matmul_seconds, max_rel_diff, time_alternating

IGNORE_INDEX = 255  # PASCAL VOC's "void" label
NUM_CLASSES = 21


@dataclasses.dataclass(frozen=True)
class Scale:
    batch: int
    image: int
    channel_div: int  # channel counts are divided by this (quick runs only)

    def c(self, channels):
        """A width scaled down; class counts and image channels (< 32) are not widths."""
        return channels if channels < 32 else max(1, channels // self.channel_div)

    def m(self, stride):
        """Side of the feature map at ``stride`` (1, 2, 4, ...) of the input."""
        return max(1, self.image // stride)


FULL = Scale(batch=2, image=128, channel_div=1)
QUICK = Scale(batch=1, image=16, channel_div=16)


@dataclasses.dataclass
class OpCase:
    op: str           # the functional name
    name: str         # what the table shows, e.g. "3x3 64->64"
    layer: str        # where the nets use it
    shapes: dict      # input name -> shape; names in ``ints`` are int64, the rest float32
    call: object      # call(F, tensors) -> output, or a tuple whose first item is the output
    grads: tuple      # inputs that require grad
    gemm: tuple = None  # (m, k, n) of the matrix product the im2col design runs forward
    fan_in: int = 1     # inputs summed into one output: weights are scaled by 1/sqrt(fan_in)
    ints: dict = dataclasses.field(default_factory=dict)  # int input name -> maker(rng, shapes)
    distinct: tuple = ()  # float inputs that must be tie-free (max-pooling)


# ----------------------------------------------------------------------------- cases
def _conv(s, layer, cin, cout, k, size, padding, input_grad=True):
    n, cin, cout = s.batch, s.c(cin), s.c(cout)
    out = size + 2 * padding - k + 1
    return OpCase(
        "conv2d", f"{k}x{k} {cin}->{cout} @{size}", layer,
        {"x": (n, cin, size, size), "weight": (cout, cin, k, k), "bias": (cout,)},
        lambda F, t: F.conv2d(t["x"], t["weight"], t["bias"], stride=1, padding=padding),
        ("x", "weight", "bias") if input_grad else ("weight", "bias"),
        gemm=(cout, cin * k * k, n * out * out), fan_in=cin * k * k)


def _deconv(s, layer, cin, cout, k, stride, size, padding=0, bias=True):
    n, cin, cout = s.batch, s.c(cin), s.c(cout)
    shapes = {"x": (n, cin, size, size), "weight": (cin, cout, k, k)}
    if bias:
        shapes["bias"] = (cout,)
    return OpCase(
        "conv_transpose2d", f"{k}x{k}/{stride} {cin}->{cout} @{size}", layer, shapes,
        lambda F, t: F.conv_transpose2d(t["x"], t["weight"], t.get("bias"), stride=stride, padding=padding),
        tuple(shapes), gemm=(cout * k * k, cin, n * size * size), fan_in=cin * max(1, k // stride) ** 2)


def _pool_indices(rng, shapes):
    """Switches of a 2x2/2 max-pool over tie-free values, as max_pool2d returns them."""
    n, c, h, w = shapes["x"]
    grid = np.arange(2 * h * 2 * w).reshape(2 * h, 2 * w)
    tl = grid[0::2, 0::2]  # each window's top-left flat index in the (2h, 2w) map
    offsets = np.array([0, 1, 2 * w, 2 * w + 1])
    pick = rng.integers(0, 4, size=(n, c, h, w))
    return (tl[None, None] + offsets[pick]).astype(np.int64)


def _cross_entropy_target(rng, shapes):
    n, _, h, w = shapes["logits"]
    target = rng.integers(0, NUM_CLASSES, size=(n, h, w))
    target[rng.random((n, h, w)) < 0.1] = IGNORE_INDEX  # a tenth of the pixels are void
    return target.astype(np.int64)


def cases(s):
    """Every op case at scale ``s``, in the order of a forward pass through the nets."""
    S, N = s.image, s.batch
    fc6_map = 7 if s.channel_div > 1 else 9
    c64, c21 = s.c(64), NUM_CLASSES
    up32_in = max(2, S // 32 + 1)
    return [
        _conv(s, "VGG conv1_1 (FCN, DeconvNet)", 3, 64, 3, S, 1, input_grad=False),
        _conv(s, "VGG conv1_2; U-Net level 1", 64, 64, 3, S, 1),
        _conv(s, "VGG conv2_2; U-Net level 2", 128, 128, 3, s.m(2), 1),
        _conv(s, "VGG conv3_3; U-Net level 3", 256, 256, 3, s.m(4), 1),
        _conv(s, "VGG conv4_3; U-Net level 4", 512, 512, 3, s.m(8), 1),
        _conv(s, "VGG conv5_3", 512, 512, 3, s.m(16), 1),
        _conv(s, "FCN fc6 (7x7 on pool5)", 512, 4096, 7, fc6_map, 0),
        _conv(s, "FCN fc7", 4096, 4096, 1, fc6_map - 6, 0),
        _conv(s, "FCN score_fr", 4096, c21, 1, fc6_map - 6, 0),
        _conv(s, "FCN-8s score_pool3", 256, c21, 1, s.m(8), 0),
        _deconv(s, "FCN upscore2 (bilinear, no bias)", c21, c21, 4, 2, s.m(16), bias=False),
        _deconv(s, "FCN-8s upscore8", c21, c21, 16, 8, s.m(8), bias=False),
        _deconv(s, "FCN-32s upscore", c21, c21, 64, 32, up32_in, bias=False),
        _deconv(s, "U-Net up-conv", 512, 256, 2, 2, s.m(8)),
        _deconv(s, "DeconvNet deconv-fc6", 4096, 512, 7, 1, 1),
        _deconv(s, "DeconvNet deconv4", 512, 512, 3, 1, s.m(8), padding=1),
        _deconv(s, "DeconvNet deconv1", 64, 64, 3, 1, S, padding=1),
        OpCase("max_pool2d", f"2x2/2 indices ({N},{c64},{S},{S})", "all nets' pooling; DeconvNet keeps switches",
               {"x": (N, c64, S, S)},
               lambda F, t: F.max_pool2d(t["x"], 2, 2, return_indices=True), ("x",), distinct=("x",)),
        OpCase("max_unpool2d", f"2x2/2 ({N},{c64},{S // 2},{S // 2})->{S}", "DeconvNet unpool1",
               {"x": (N, c64, S // 2, S // 2)},
               lambda F, t: F.max_unpool2d(t["x"], t["indices"], 2, 2, output_size=(S, S)), ("x",),
               ints={"indices": _pool_indices}),
        OpCase("batch_norm", f"train ({N},{c64},{S},{S})", "DeconvNet after every conv",
               {"x": (N, c64, S, S), "running_mean": (c64,), "running_var": (c64,),
                "weight": (c64,), "bias": (c64,)},
               lambda F, t: F.batch_norm(t["x"], t["running_mean"], t["running_var"], t["weight"], t["bias"],
                                         training=True, momentum=0.1, eps=1e-5),
               ("x", "weight", "bias")),
        OpCase("cross_entropy", f"ignore_index={IGNORE_INDEX} ({N},{c21},{S},{S})", "every net's loss",
               {"logits": (N, c21, S, S)},
               lambda F, t: F.cross_entropy(t["logits"], t["target"], ignore_index=IGNORE_INDEX),
               ("logits",), ints={"target": _cross_entropy_target}),
    ]


# ----------------------------------------------------------------------------- inputs
def make_arrays(case, seed=0):
    """NumPy inputs of a case: weights scaled by 1/sqrt(fan-in) so outputs stay O(1)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in case.shapes.items():
        if name in case.distinct:
            values = np.linspace(-1.0, 1.0, int(np.prod(shape)), dtype=np.float64)
            arrays[name] = rng.permutation(values).reshape(shape).astype(np.float32)
        elif name == "running_var":
            arrays[name] = np.ones(shape, np.float32)
        elif name == "running_mean":
            arrays[name] = np.zeros(shape, np.float32)
        else:
            a = rng.standard_normal(shape, dtype=np.float32)
            fan_in = case.fan_in if name == "weight" else 1
            arrays[name] = a / np.float32(np.sqrt(fan_in))
    for name, make in case.ints.items():
        arrays[name] = make(rng, case.shapes)
    return arrays


# ----------------------------------------------------------------------------- running a case
class _Side:
    """One library's tensors for a case, and its forward / forward+backward calls."""

    def __init__(self, ctx, library, case, arrays):
        self.ctx, self.library, self.case = ctx, library, case
        self.F = MF if library == "minigrad" else ctx.torch.nn.functional
        make = ctx.mg if library == "minigrad" else ctx.th
        self.t = {name: make(a, requires_grad=name in case.grads) for name, a in arrays.items()}
        self.gout = None  # upstream gradient, set once the output shape is known

    def outputs(self):
        out = self.case.call(self.F, self.t)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def forward(self):
        with self.ctx.no_grad(self.library):
            return self.outputs()[0]

    def backward(self, out):
        """Fresh gradients of the inputs asked for, from the fixed upstream gradient."""
        for name in self.case.grads:
            self.t[name].grad = None
        out.backward() if self.gout is None else out.backward(self.gout)

    def forward_backward(self):
        out = self.outputs()[0]
        self.backward(out)
        return out


def _compare(ctx, case, mg, th, rng):
    """Run both once with autograd; max relative differences of every output and gradient."""
    outs_mg, outs_th = mg.outputs(), th.outputs()
    diffs = {}
    for i, (a, b) in enumerate(zip(outs_mg, outs_th)):
        diffs["output" if i == 0 else f"output{i}"] = max_rel_diff(ctx.to_numpy(a), ctx.to_numpy(b))
    shape = tuple(outs_th[0].shape)
    if shape:  # non-scalar output: backward needs an upstream gradient
        g = rng.standard_normal(shape, dtype=np.float32)
        mg.gout, th.gout = ctx.mg(g), ctx.th(g)
    mg.backward(outs_mg[0])
    th.backward(outs_th[0])
    for name in case.grads:
        diffs[f"grad_{name}"] = max_rel_diff(ctx.to_numpy(mg.t[name].grad), ctx.to_numpy(th.t[name].grad))
    return diffs, outs_th


def _nbytes(arrays):
    return int(sum(a.nbytes for a in arrays if a is not None))


def _flops(case):
    """Forward FLOPs and forward+backward FLOPs of a case (None for data-movement ops)."""
    if case.gemm is None:
        return None, None
    m, k, n = case.gemm
    forward = 2 * m * k * n
    weight_and_input = sum(name in case.grads for name in ("x", "weight"))
    return forward, forward * (1 + weight_and_input)


def run_case(ctx, case):
    """Two rows (forward, forward+backward) for one case."""
    arrays = make_arrays(case)
    mg, th = _Side(ctx, "minigrad", case, arrays), _Side(ctx, "torch", case, arrays)
    diffs, outs_th = _compare(ctx, case, mg, th, np.random.default_rng(1))
    out_arrays = [ctx.to_numpy(o) for o in outs_th]
    forward_bytes = _nbytes(arrays.values()) + _nbytes(out_arrays)
    # backward also reads the upstream gradient and writes one gradient per input asked for
    traffic = {"forward": forward_bytes,
               "forward+backward": forward_bytes + _nbytes(out_arrays[:1]) + _nbytes(arrays[k] for k in case.grads)}
    flops = dict(zip(("forward", "forward+backward"), _flops(case)))
    matmul_s = matmul_seconds(ctx, *case.gemm) if case.gemm else None
    rows = []
    for mode, mg_fn, th_fn in (("forward", mg.forward, th.forward),
                               ("forward+backward", mg.forward_backward, th.forward_backward)):
        times = time_alternating(ctx, {"minigrad": mg_fn, "torch": th_fn})
        rows.append(_row(case, mode, times, flops[mode], traffic[mode], matmul_s, diffs))
    return rows


def _row(case, mode, times, flops, traffic, matmul_s, diffs):
    t_mg, t_th = times["minigrad"], times["torch"]
    row = {
        "op": case.op, "case": case.name, "layer": case.layer, "mode": mode,
        "shapes": {name: list(shape) for name, shape in case.shapes.items()},
        "minigrad_ms": 1e3 * t_mg, "torch_ms": 1e3 * t_th, "ratio": t_mg / t_th,
        "gbytes_moved": traffic / 1e9,
        "minigrad_gbps": traffic / t_mg / 1e9, "torch_gbps": traffic / t_th / 1e9,
        "flops": flops,
        "max_rel_diff": {k: v for k, v in diffs.items()
                         if (k.startswith("output") if mode == "forward" else k.startswith("grad"))},
    }
    if flops:
        matmul_gflops = 2 * np.prod(case.gemm) / matmul_s / 1e9
        row.update({
            "gemm_mkn": list(case.gemm),
            "minigrad_gflops": flops / t_mg / 1e9, "torch_gflops": flops / t_th / 1e9,
            "matmul_gflops": float(matmul_gflops),
            "minigrad_of_matmul": flops / t_mg / 1e9 / matmul_gflops,
            "torch_of_matmul": flops / t_th / 1e9 / matmul_gflops,
        })
    return row


# ----------------------------------------------------------------------------- im2col budget
BUDGETS_MIB = {"cpu": (1, 4, 64, None), "gpu": (4, 64, 256, None)}  # None: no limit, one array per call
BUDGET_LAYERS = ("VGG conv1_2; U-Net level 1", "FCN fc6 (7x7 on pool5)")


def budget_rows(ctx, scale, log=print):
    """minigrad conv2d forward+backward at several im2col budgets: what building the columns in tiles costs."""
    from minigrad.functional import conv as conv_module
    rows = []
    for case in (c for c in cases(scale) if c.layer in BUDGET_LAYERS):
        arrays = make_arrays(case)
        side = _Side(ctx, "minigrad", case, arrays)
        out = side.outputs()[0]
        side.gout = ctx.mg(np.random.default_rng(1).standard_normal(tuple(out.shape), dtype=np.float32))
        col_mib = 4 * case.gemm[1] * case.gemm[2] / 2 ** 20  # the whole float32 column array
        previous = conv_module.get_im2col_budget(ctx.device)

        def at(budget):
            def call():
                conv_module.set_im2col_budget(2 ** 60 if budget is None else budget * 2 ** 20, ctx.device)
                side.forward_backward()
            return call
        try:
            times = time_alternating(ctx, {budget: at(budget) for budget in BUDGETS_MIB[ctx.device]})
        finally:
            conv_module.set_im2col_budget(previous, ctx.device)
        unlimited = times[None]
        for budget in BUDGETS_MIB[ctx.device]:
            rows.append({"layer": case.layer, "shapes": {k: list(v) for k, v in case.shapes.items()},
                         "budget_mib": budget, "column_mib": col_mib, "minigrad_ms": 1e3 * times[budget],
                         "vs_unlimited": times[budget] / unlimited,
                         "default": budget is not None and budget * 2 ** 20 == previous})
            log(f"  im2col budget {case.layer:<28} {'none' if budget is None else f'{budget} MiB':>8}"
                f"  {1e3 * times[budget]:9.2f} ms  x{times[budget] / unlimited:.2f} of unlimited")
    return rows


def run(ctx, only=None, log=print):
    """All op rows; a case that fails becomes an error row, and the suite carries on."""
    scale = QUICK if ctx.quick else FULL
    rows = []
    for case in cases(scale):
        if only and not any(word in f"{case.op} {case.name} {case.layer}" for word in only):
            continue
        try:
            new = run_case(ctx, case)
        except Exception as e:  # keep going: one missing op must not hide the others
            new = [{"op": case.op, "case": case.name, "layer": case.layer, "mode": "-",
                    "shapes": {k: list(v) for k, v in case.shapes.items()},
                    "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=4)}]
        for row in new:
            log(_one_line(row))
        rows.extend(new)
    result = {"scale": dataclasses.asdict(scale), "rows": rows}
    if not only or any(word in "conv2d im2col budget" for word in only):
        result["budget"] = budget_rows(ctx, scale, log)
    return result


def _one_line(row):
    if "error" in row:
        return f"  {row['op']:<17} {row['case']:<34} ERROR {row['error']}"
    return (f"  {row['op']:<17} {row['case']:<34} {row['mode']:<17} minigrad {row['minigrad_ms']:9.2f} ms"
            f"  torch {row['torch_ms']:9.2f} ms  ratio {row['ratio']:6.2f}")

