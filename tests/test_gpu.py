"""The CuPy backend gives the NumPy backend's results: every op, forward and backward, and a training step.

Skipped, with the reason shown, where CuPy or a GPU is missing.
"""
import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
from minigrad import backend
from minigrad.kernels import cuda as cuda_kernels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not mg.gpu_available(), reason="needs CuPy and an NVIDIA GPU (pip install -e .[gpu])"),
]

TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}


def _labels(rng, shape, classes, ignore=None):
    target = rng.integers(0, classes, size=shape)
    if ignore is not None:
        target[rng.random(shape) < 0.2] = ignore
    return target


# name -> (function of tensors, list of (shape or int-array maker), which inputs need grad)
CASES = {
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, dilation=1), [(2, 4, 9, 8), (6, 4, 3, 3), (6,)]),
    "conv2d_groups_dilation": (lambda x, w: F.conv2d(x, w, padding="same", dilation=2, groups=2), [(2, 4, 7, 7), (4, 2, 3, 3)]),
    "conv_transpose2d": (lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1), [(2, 4, 5, 6), (4, 3, 4, 4), (3,)]),
    "max_pool2d": (lambda x: F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True), [(2, 3, 9, 10)]),
    "max_pool_unpool": (lambda x: F.max_unpool2d(*F.max_pool2d(x, 2, return_indices=True), 2, output_size=(9, 11)), [(2, 3, 9, 11)]),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 3, 2, padding=1, ceil_mode=True, count_include_pad=False), [(2, 3, 9, 10)]),
    "interpolate_bilinear": (lambda x: F.interpolate(x, size=(13, 7), mode="bilinear", align_corners=False), [(2, 3, 5, 4)]),
    "interpolate_nearest": (lambda x: F.interpolate(x, scale_factor=2.5, mode="nearest"), [(2, 3, 5, 4)]),
    "softmax_relu": (lambda x: F.softmax(F.relu(x), dim=1), [(2, 5, 3, 3)]),
}


def _run(case, device, dtype, seed=0):
    fn, shapes = CASES[case]
    rng = np.random.default_rng(seed)
    inputs = [mg.Tensor(rng.permutation(np.linspace(-1, 1, int(np.prod(s)))).reshape(s), dtype=dtype,
                        device=device, requires_grad=True) for s in shapes]
    out = fn(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    upstream = mg.Tensor(rng.standard_normal(out.shape), dtype=dtype, device=device)
    out.backward(upstream)
    return [out.numpy()] + [t.grad.numpy() for t in inputs]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_cpu(case, dtype):
    for cpu, gpu in zip(_run(case, "cpu", dtype), _run(case, "gpu", dtype)):
        assert gpu.dtype == cpu.dtype
        np.testing.assert_allclose(gpu, cpu, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


@pytest.mark.parametrize("case", ["conv2d", "conv2d_groups_dilation", "conv_transpose2d"])
def test_conv_in_row_tiles_matches_cpu(case):
    """A 1-byte GPU im2col budget: one output row of one sample per tile (strided outputs, overlapping adds)."""
    from minigrad.functional import conv as conv_module
    previous = conv_module.set_im2col_budget(1, "gpu")
    try:
        gpu = _run(case, "gpu", np.float64)
    finally:
        conv_module.set_im2col_budget(previous, "gpu")
    for cpu, tiled in zip(_run(case, "cpu", np.float64), gpu):
        np.testing.assert_allclose(tiled, cpu, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("settings", [dict(momentum=0.9, weight_decay=1e-2), dict(momentum=0.9, nesterov=True),
                                      dict(momentum=0.5, dampening=0.3), dict()], ids=str)
def test_sgd_steps_match_cpu(settings):
    """The fused GPU update (one kernel a parameter) against the CPU's array code, three steps."""
    from minigrad.optim import SGD
    rng = np.random.default_rng(5)
    start, grads = rng.standard_normal((4, 6)), [rng.standard_normal((4, 6)) for _ in range(3)]
    results = {}
    for device in ("cpu", "gpu"):
        param = mg.Tensor(start, requires_grad=True, device=device, dtype=np.float64)
        optimizer = SGD([param], lr=0.1, **settings)
        for g in grads:
            param.grad = mg.Tensor(g, device=device)
            optimizer.step()
        results[device] = param.numpy()
    np.testing.assert_allclose(results["gpu"], results["cpu"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cross_entropy_and_batch_norm_match_cpu(dtype):
    rng = np.random.default_rng(1)
    logits_np = rng.standard_normal((2, 5, 4, 3))
    target_np = _labels(rng, (2, 4, 3), 5, ignore=255)
    weight_np = rng.random(5) + 0.5
    results = {}
    for device in ("cpu", "gpu"):
        logits = mg.Tensor(logits_np, dtype=dtype, device=device, requires_grad=True)
        gamma = mg.Tensor(np.ones(5), dtype=dtype, device=device, requires_grad=True)
        mean = mg.Tensor(np.zeros(5), dtype=dtype, device=device)
        var = mg.Tensor(np.ones(5), dtype=dtype, device=device)
        normed = F.batch_norm(logits, mean, var, gamma, None, training=True)
        loss = F.cross_entropy(normed, mg.Tensor(target_np, device=device),
                               weight=mg.Tensor(weight_np, dtype=dtype, device=device), ignore_index=255)
        loss.backward()
        results[device] = [loss.numpy(), logits.grad.numpy(), gamma.grad.numpy(), mean.numpy(), var.numpy()]
    for cpu, gpu in zip(results["cpu"], results["gpu"]):
        np.testing.assert_allclose(gpu, cpu, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_scatter_and_gather_kernels_match_numpy(dtype):
    """The unpooling kernels called directly: overlapping 3x3 / 2 max-pool switches collide."""
    cp = backend.cupy()
    rng = np.random.default_rng(3)
    n, c, h, w = 2, 3, 9, 10
    switches = F.max_pool2d(mg.Tensor(rng.standard_normal((n, c, h, w))), 3, 2, padding=1,
                            return_indices=True)[1].numpy()
    rows = np.arange(n * c).repeat(switches[0, 0].size)
    values = rng.standard_normal(switches.shape).astype(dtype)
    added = np.zeros((n * c, h * w))
    np.add.at(added, (rows, switches.ravel()), values.ravel().astype(np.float64))
    got = cuda_kernels.scatter_to_planes(cp.asarray(values), cp.asarray(switches), (h, w), accumulate=True)
    assert got.shape == (n, c, h, w) and got.dtype == dtype
    np.testing.assert_allclose(got.get().reshape(n * c, -1), added, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])

    kept = cuda_kernels.scatter_to_planes(cp.asarray(values), cp.asarray(switches), (h, w), accumulate=False).get()
    for row, switch in set(zip(rows, switches.ravel())):  # a shared switch keeps one of its values
        assert kept.reshape(n * c, -1)[row, switch] in values.ravel()[(rows == row) & (switches.ravel() == switch)]

    distinct = np.stack([rng.permutation(h * w)[:12] for _ in range(n * c)]).reshape(n, c, 3, 4)
    values = rng.standard_normal(distinct.shape).astype(dtype)
    stored = np.zeros((n * c, h * w), dtype)
    stored[np.arange(n * c).repeat(12), distinct.ravel()] = values.ravel()
    for accumulate in (False, True):  # adding to 0 is exact: both modes give the assignment
        got = cuda_kernels.scatter_to_planes(cp.asarray(values), cp.asarray(distinct), (h, w), accumulate)
        np.testing.assert_array_equal(got.get().reshape(n * c, -1), stored)

    planes = rng.standard_normal((n, c, h, w)).astype(dtype)
    got = cuda_kernels.gather_from_planes(cp.asarray(planes), cp.asarray(switches))
    expected = np.take_along_axis(planes.reshape(n, c, -1), switches.reshape(n, c, -1), axis=2)
    assert got.shape == switches.shape and got.dtype == dtype
    np.testing.assert_array_equal(got.get(), expected.reshape(switches.shape))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (7, 3), (4, 2, 40, 40), (2, 1, 300, 300)], ids=str)
def test_channel_sums_kernel_matches_numpy(shape, dtype):
    """Batch norm's three uses, from one block a channel up to the 64-block cap; bitwise repeatable."""
    cp = backend.cupy()
    rng = np.random.default_rng(4)
    axes = (0,) + tuple(range(2, len(shape)))
    channel = (1, shape[1]) + (1,) * (len(shape) - 2)
    x = (rng.standard_normal(shape) * 3 + 10).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    mean = x.astype(np.float64).mean(axis=axes).astype(dtype)
    centred = x.astype(np.float64) - mean.reshape(channel)
    uses = [  # (wrapper arguments, the float64 terms of S1 and S2)
        ((x,), (x.astype(np.float64), x.astype(np.float64) ** 2)),
        ((x, None, mean), (centred, centred ** 2)),
        ((g, x, None, mean), (g.astype(np.float64), g * centred)),
    ]
    for args, terms in uses:
        on_gpu = [None if v is None else cp.asarray(v) for v in args]
        sums = cuda_kernels.channel_sums(*on_gpu)
        for got, again, term in zip(sums, cuda_kernels.channel_sums(*on_gpu), terms):
            assert got.shape == (shape[1],) and got.dtype == dtype
            np.testing.assert_array_equal(again.get(), got.get())
            # A sum's rounding scales with its terms, not with the sum (near 0 once centred).
            np.testing.assert_allclose(got.get(), term.sum(axis=axes), rtol=TOLERANCE[dtype],
                                       atol=TOLERANCE[dtype] * np.abs(term).sum(axis=axes).max())


@pytest.mark.parametrize("net,options,size", [
    ("fcn32s", {"pad100": False, "fc_kernel": 1}, 64), ("fcn16s", {"pad100": False, "fc_kernel": 1}, 64),
    ("fcn8s", {"pad100": False, "fc_kernel": 1}, 64), ("deconvnet", {"fc_kernel": 2}, 64),
    ("unet", {"padding": "same"}, 32),
])
def test_training_step_matches_cpu(net, options, size):
    """One SGD step of each net in float64: GPU and CPU gradients and new weights agree to 1e-8 relative.

    Relative to each parameter's norm (||gpu - cpu|| / ||cpu||): an entry near zero
    (a weight of 1e-4 after the step) can differ by 2e-8 of itself from summation order alone.
    A gradient under a millionth of the largest one is measured against that millionth:
    a conv bias right before batch norm has a true gradient of exactly 0, so both devices
    return rounding noise there (DeconvNet's conv1_1.bias: 1e-17, differing by 150%).
    """
    import segnets
    from minigrad.optim import SGD

    rng = np.random.default_rng(2)
    images = rng.standard_normal((2, 3, size, size))
    masks = _labels(rng, (2, size, size), 4)
    weights = {}
    for device in ("cpu", "gpu"):
        mg.manual_seed(0)
        model = segnets.build_model(net, num_classes=4, width=4, **options)
        model.to(device)
        for p in model.parameters():
            p.data = p.data.astype(np.float64)
        for name, b in model.named_buffers():
            if b.dtype.kind == "f":
                b.data = b.data.astype(np.float64)
        model.train()
        for m in model.modules():  # dropout masks differ by device: keep them out
            if type(m).__name__.startswith("Dropout"):
                m.eval()
        optimizer = SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
        logits = model(mg.Tensor(images, device=device))
        target = mg.Tensor(masks[:, :logits.shape[2], :logits.shape[3]], device=device)
        F.cross_entropy(logits, target).backward()
        grads = {f"{k} grad": v.grad.numpy() for k, v in model.named_parameters() if v.grad is not None}
        optimizer.step()
        weights[device] = dict(grads, **{k: v.numpy() for k, v in model.named_parameters()})
    assert weights["cpu"].keys() == weights["gpu"].keys()
    floor = {kind: 1e-6 * max(np.linalg.norm(v) for k, v in weights["cpu"].items() if k.endswith(" grad") == kind)
             for kind in (True, False)}
    for name, cpu in weights["cpu"].items():
        scale = max(np.linalg.norm(cpu), floor[name.endswith(" grad")])
        difference = np.linalg.norm(weights["gpu"][name] - cpu) / scale
        assert difference <= 1e-8, f"{name}: relative difference {difference:.2e}"


def test_cupy_arrays_are_recognised_before_minigrad_loads_cupy(monkeypatch):
    """An op given raw CuPy arrays (a script that imports cupy itself) takes the GPU path, not NumPy's."""
    cp = backend.cupy()
    monkeypatch.setattr(backend, "_cupy", None)
    x = cp.arange(2 * 3 * 4 * 4, dtype=cp.float32).reshape(2, 3, 4, 4)
    assert backend.device_of(x) == "gpu"
    assert cuda_kernels.usable(x)
