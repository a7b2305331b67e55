"""segnets.crf: the dense CRF's mean field, exact against the permutohedral lattice, and its CLI hooks."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segnets import crf
from segnets.crf import PermutohedralLattice, _exact_kernel, dense_crf, mean_field_energy

SMALL = {"w1": 1.0, "theta_alpha": 5.0, "theta_beta": 40.0, "w2": 1.0, "theta_gamma": 2.0}


def random_case(rng, h=12, w=14, classes=4):
    image = rng.integers(0, 256, (h, w, 3)).astype(np.float64)
    probabilities = rng.dirichlet(np.ones(classes), size=(h, w)).transpose(2, 0, 1)
    return image, probabilities


def test_lattice_filter_approximates_the_gaussian():
    """A delta on a 2-D grid: the lattice's response against exp(-r^2 / 2), normalised at the centre.

    The lattice replaces the Gaussian by a splat onto the enclosing simplex's vertices
    (linear interpolation), a [1/4, 1/2, 1/4] blur along the d+1 lattice axes and the
    transposed splat: a piecewise-linear stand-in that is a little wider than the Gaussian
    (Adams et al. 2010 discuss the error). Along a row it stays within 0.13 of it.
    """
    side = 41
    ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    lattice = PermutohedralLattice(np.stack([xs.ravel(), ys.ravel()], axis=1) / 5.0)
    delta = np.zeros((side * side, 1))
    delta[20 * side + 20] = 1
    response = lattice.apply(delta).reshape(side, side)
    profile = response[20, 20:] / response[20, 20]
    np.testing.assert_allclose(profile, np.exp(-0.5 * (np.arange(21) / 5.0) ** 2), atol=0.13)
    assert np.all(np.diff(profile) <= 1e-6)  # falls off monotonically, like the Gaussian
    assert response.min() >= 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lattice_against_exact_on_small_random_images(seed):
    """Mean-field marginals with the lattice against the exact O(N^2) kernels.

    Tolerance: max 0.1, mean 0.01 per probability (measured 0.05-0.07 and 0.007). Random
    colours are the lattice's hard case (every pixel's 5-D feature far from the others', so
    its own weight dominates and the lattice's spread of that weight over the simplex
    shows): one normalised message differs by ~12% on average, and the marginals by about
    a third of what the CRF changes (mean 0.017-0.026 here). Labels agree on >= 95% of pixels.
    """
    image, probabilities = random_case(np.random.default_rng(seed))
    exact = dense_crf(image, probabilities, method="exact", **SMALL)
    lattice = dense_crf(image, probabilities, method="lattice", **SMALL)
    assert np.abs(exact - lattice).max() < 0.1
    assert np.abs(exact - lattice).mean() < 0.01
    assert np.abs(exact - probabilities).mean() > 2 * np.abs(exact - lattice).mean()
    assert (exact.argmax(0) == lattice.argmax(0)).mean() >= 0.95


def test_lattice_filter_on_a_line_by_hand():
    """d = 1: the vertices are the integer points (e, -e) of the line x + y = 0, with the
    elevation e = (d + 1) sqrt(2/3) / sqrt(2) f = 1.1547 f. Points at f = k / 1.1547 sit on
    vertex k with weight 1. Both lattice axes step one vertex along the line, so the blur is
    [1/4, 1/2, 1/4] twice, [1, 4, 6, 4, 1] / 16: a delta at f = 0 comes back as 6/16 on
    itself, 4/16 one vertex away and 1/16 two away.
    """
    step = 1 / (2 * np.sqrt(2 / 3) / np.sqrt(2))
    features = np.array([[0.0], [step], [2 * step], [-step]])
    lattice = PermutohedralLattice(features, compiled=False)
    out = lattice.apply(np.array([[1.0], [0.0], [0.0], [0.0]]))
    np.testing.assert_allclose(out.ravel(), [3 / 8, 1 / 4, 1 / 16, 1 / 4], rtol=1e-6)


def _numba():
    return pytest.importorskip("numba", reason="numba (the [cpu] extra) builds the compiled lattice")


@pytest.mark.parametrize("d", [2, 5])
def test_compiled_build_is_the_generic_build(d):
    """numba's hash table numbers the vertices as the generic build's packed sort does (first touch)."""
    _numba()
    rng = np.random.default_rng(d)
    features = np.concatenate([rng.normal(0, 3, (2000, d)), rng.normal(0, 3, (10, d)).repeat(30, axis=0)])
    generic = PermutohedralLattice(features, compiled=False)
    compiled = PermutohedralLattice(features, compiled=True)
    assert compiled.m == generic.m and generic.m < generic.n * (d + 1)  # vertices are shared
    np.testing.assert_array_equal(np.sort(compiled.keys), generic.keys)
    for name in ("index", "weights", "minus", "plus"):
        np.testing.assert_array_equal(getattr(compiled, name), getattr(generic, name), err_msg=name)
    # first-touch order: vertex v first appears before vertex v + 1
    _, first = np.unique(compiled.index.reshape(-1), return_index=True)
    assert np.all(np.diff(first) > 0)


@pytest.mark.parametrize("d", [2, 5])
def test_vertex_numbering_with_and_without_the_packed_sort(d, monkeypatch):
    """The generic build numbers the vertices with one sort of (code, position) pairs packed in
    an int64, or a stable argsort where they would not fit: the same lattice either way, the
    vertices in first-touch order, and each axis' two neighbour tables inverse to each other."""
    rng = np.random.default_rng(10 + d)
    features = np.concatenate([rng.normal(0, 3, (1500, d)), rng.normal(0, 3, (10, d)).repeat(30, axis=0)])
    packed = PermutohedralLattice(features, compiled=False)
    monkeypatch.setattr(crf, "PACKED_SORT_BITS", 8)  # no code fits: the argsort path
    argsorted = PermutohedralLattice(features, compiled=False)
    for name in ("keys", "index", "weights", "minus", "plus"):
        np.testing.assert_array_equal(getattr(argsorted, name), getattr(packed, name), err_msg=name)
    assert np.all(np.diff(packed.keys) > 0) and packed.m < packed.n * (d + 1)
    _, first = np.unique(packed.index.reshape(-1), return_index=True)
    assert np.all(np.diff(first) > 0)
    for minus, plus in zip(packed.minus, packed.plus):
        present = minus < packed.m
        assert present.any()
        np.testing.assert_array_equal(plus[minus[present]], np.arange(packed.m)[present])


def test_compiled_dense_crf_matches_the_generic_one():
    _numba()
    image, probabilities = random_case(np.random.default_rng(3), 45, 70, 5)
    generic = dense_crf(image, probabilities, compiled=False, **SMALL)
    compiled = dense_crf(image, probabilities, compiled=True, **SMALL)
    np.testing.assert_allclose(compiled, generic, atol=1e-6)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("parts", [2, 3])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.0, 1.0), (1.0, 0.0)])
def test_threaded_iterations_match_one_thread(parts, weights, compiled):
    """The iterations in 2 or 3 shares on minigrad's pool (pixel ranges, vertex ranges, two
    lattices in turn per blur axis: an odd axis count (smoothness, 3) starts in the other one)
    against one thread: only the splat's float32 sums change order. compiled: numba's blur and
    softmax in the shares (and in the one-thread run), against the generic one-thread step."""
    import minigrad
    if compiled:
        _numba()
    image, probabilities = random_case(np.random.default_rng(4), 40, 53, 5)
    settings = dict(SMALL, w1=weights[0], w2=weights[1])
    xp, unary, features, clipped, _ = crf._prepare(image, probabilities, *settings.values(), "lattice", 1e-8)
    start = clipped / clipped.sum(axis=1, keepdims=True)
    previous = minigrad.get_num_threads()
    minigrad.set_num_threads(parts)
    try:
        one = crf.LatticeMeanField(features, weights, unary, compiled=False, threads=1).run(4, start)
        threaded = crf.LatticeMeanField(features, weights, unary, compiled=compiled, threads=parts)
        if compiled:
            single = crf.LatticeMeanField(features, weights, unary, compiled=True, threads=1)
            assert single.shared and single.parts == 1
            np.testing.assert_allclose(single.run(4, start), one, atol=1e-6)
        assert threaded.parts == parts
        np.testing.assert_allclose(threaded.run(4, start), one, atol=1e-6)
        np.testing.assert_array_equal(threaded.run(0, start), start)
    finally:
        minigrad.set_num_threads(previous)
    assert np.abs(one - start).max() > 0.01  # the kernels did something


def test_thread_count_rule(monkeypatch):
    import minigrad
    _numba()
    monkeypatch.delenv("MINIGRAD_CPU_KERNELS", raising=False)
    previous = minigrad.get_num_threads()
    minigrad.set_num_threads(2)
    try:
        big = crf.COMPILED_MIN_POINTS
        assert crf._thread_parts(np, None, big, None) == 2
        assert crf._thread_parts(np, False, big, None) == 1  # the generic reference
        assert crf._thread_parts(np, None, big - 1, None) == 1
        assert crf._thread_parts(np, False, 10, 3) == 3
        compiled = crf._compiled
        monkeypatch.setattr(crf, "_compiled", False)  # as without numba: the generic code, one thread
        assert crf._thread_parts(np, None, big, None) == 1
        monkeypatch.setattr(crf, "_compiled", compiled)
        monkeypatch.setenv("MINIGRAD_CPU_KERNELS", "0")
        assert crf._thread_parts(np, None, big, None) == 1
    finally:
        minigrad.set_num_threads(previous)
    with pytest.raises(ValueError, match="threads"):
        crf._thread_parts(np, None, 10, 0)


def test_compiled_prepare_matches_the_generic_one():
    """The tiled unary (-log, a Cephes-style polynomial) and start (clipped over their sum) from
    numba's one pass against NumPy's: within float32 rounding, also for clipped zeros and ones."""
    _numba()
    image, probabilities = random_case(np.random.default_rng(6), 37, 45, 6)
    probabilities[:, :3] = 0.0
    probabilities[2, :3] = 1.0
    probabilities[:, 5, 7] = [1e-12, 0.5, 0.25, 0.125, 0.0625, 0.0625 - 1e-12]
    generic = crf._prepare(image, probabilities, *SMALL.values(), "lattice", 1e-8, tiled=True, compiled=False)
    compiled = crf._prepare(image, probabilities, *SMALL.values(), "lattice", 1e-8, tiled=True, compiled=True)
    np.testing.assert_allclose(compiled[1], generic[1], atol=2e-6)  # unary in [0, 18.4]: ~1 ulp of 16
    np.testing.assert_allclose(compiled[3], generic[3], rtol=1e-6)
    row = np.flatnonzero(compiled[4] == 5 * 45 + 7)[0]  # the hand-made pixel, in tile order
    np.testing.assert_allclose(compiled[1][row], -np.log([1e-8, 0.5, 0.25, 0.125, 0.0625, 0.0625]), rtol=1e-6)
    for kind in generic[2]:
        np.testing.assert_array_equal(compiled[2][kind], generic[2][kind])
    np.testing.assert_array_equal(compiled[4], generic[4])


def test_softmax_kernel_against_numpy():
    """The compiled softmax (a polynomial exp) against NumPy's, relative error < 2e-6; a value
    above 30 is reported (the caller shifts the rows) instead of computed."""
    _numba()
    kernels = crf._numba_kernels(np, True, 1)
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 6, (300, 21)).astype(np.float32)
    unary = rng.uniform(0, 18, (300, 21)).astype(np.float32)
    expected = np.exp((logits - unary).astype(np.float64))
    expected /= expected.sum(axis=1, keepdims=True)
    out = logits.copy()
    assert not kernels.softmax(out, unary, np.empty(out.size, dtype=np.int32))
    np.testing.assert_allclose(out, expected, rtol=2e-6, atol=1e-30)
    logits[7, 3] = 31.0 + unary[7, 3]
    assert kernels.softmax(logits, unary, np.empty(logits.size, dtype=np.int32))


@pytest.mark.parametrize("h, w", [(1, 1), (5, 70), (33, 65), (64, 32)])
def test_tile_order_is_a_permutation_tile_by_tile(h, w):
    order = crf._tile_order(np, h, w, tile=32)
    np.testing.assert_array_equal(np.sort(order), np.arange(h * w))
    ys, xs = order // w, order % w
    tile = (ys // 32) * (-(-w // 32)) + xs // 32
    assert np.all(np.diff(tile) >= 0)  # tile by tile
    for t in np.unique(tile):  # raster order inside each tile
        inside = order[tile == t]
        assert np.all(np.diff(inside) > 0)


def test_exact_kernel_is_the_gaussian_of_the_feature_distance():
    f = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    expected = np.exp(-0.5 * np.array([[0, 1, 4], [1, 0, 5], [4, 5, 0]]))
    np.testing.assert_allclose(_exact_kernel(np, f), expected, rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_mean_field_energy_never_increases(seed):
    """Exact kernels, strong weights (far from the start): F(Q_t) is non-increasing in t.

    The normalised kernels are positive semi-definite, so each parallel update minimises a
    bound that touches F at Q_t (see segnets/crf.py); only rounding may break ties.
    """
    rng = np.random.default_rng(seed)
    image, probabilities = random_case(rng, 10, 9, 3)
    options = {"w1": 10.0, "theta_alpha": 4.0, "theta_beta": 60.0, "w2": 6.0, "theta_gamma": 2.0}
    energies = [mean_field_energy(image, probabilities,
                                  dense_crf(image, probabilities, iterations=t, method="exact", **options), **options)
                for t in range(8)]
    assert np.all(np.diff(energies) <= 1e-9 * np.abs(energies).max())
    assert energies[-1] < energies[0] - 1.0  # and it does go down


@pytest.mark.parametrize("method", ["exact", "lattice"])
def test_blurry_boundary_snaps_to_the_image_edge(method):
    """The net's boundary sits at column 16 and is blurred over ~8 columns; the image's edge is at 12."""
    h, w = 20, 24
    image = np.zeros((h, w, 3))
    image[:, 12:] = 255
    foreground = 1 / (1 + np.exp(-(np.arange(w) - 15.5) / 2.0))
    probabilities = np.stack([1 - foreground, foreground])[:, None, :].repeat(h, axis=1)
    assert (probabilities.argmax(0) == 1).argmax(axis=1).tolist() == [16] * h
    q = dense_crf(image, probabilities, method=method, w1=10.0, theta_alpha=20.0, theta_beta=10.0,
                  w2=3.0, theta_gamma=1.0)
    labels = q.argmax(0)
    assert (labels[:, :12] == 0).all() and (labels[:, 12:] == 1).all()


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 6), w=st.integers(1, 6), classes=st.integers(1, 4), seed=st.integers(0, 2 ** 16),
       method=st.sampled_from(["exact", "lattice"]))
def test_marginals_are_distributions(h, w, classes, seed, method):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3)).astype(np.float32)
    probabilities = rng.dirichlet(np.ones(classes), size=(h, w)).transpose(2, 0, 1)
    q = dense_crf(image, probabilities, iterations=3, method=method, **SMALL)
    assert q.shape == (classes, h, w) and np.all(q >= 0)
    np.testing.assert_allclose(q.sum(axis=0), 1.0, rtol=1e-5)
    start = dense_crf(image, probabilities, iterations=0, method=method)
    np.testing.assert_allclose(start, probabilities / probabilities.sum(0), rtol=1e-5, atol=1e-6)


def test_bad_arguments_are_named():
    image, probabilities = random_case(np.random.default_rng(0), 4, 5, 2)
    with pytest.raises(ValueError, match=r"image must have shape \(H, W, channels\) = \(4, 5\)"):
        dense_crf(image[:3], probabilities)
    with pytest.raises(ValueError, match="probabilities must have shape"):
        dense_crf(image, probabilities[0])
    with pytest.raises(ValueError, match="method must be one of"):
        dense_crf(image, probabilities, method="fast")
    with pytest.raises(ValueError, match="theta_beta must be > 0"):
        dense_crf(image, probabilities, theta_beta=0)
    with pytest.raises(ValueError, match="iterations must be an int >= 0"):
        dense_crf(image, probabilities, iterations=-1)
    with pytest.raises(ValueError, match="at most 4096 pixels"):
        dense_crf(np.zeros((65, 64, 3)), np.ones((2, 65, 64)) / 2, method="exact")


# ---------------------------------------------------------------- segnets.evaluate / predict --crf
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of a tiny DeepLab-LargeFOV on 32x32 shapes."""
    from segnets import train as train_mod
    out = tmp_path_factory.mktemp("largefov")
    args = ["--net", "deeplabv1_largefov", "--width", "2", "--epochs", "1", "--batch-size", "4", "--crop-size", "32",
            "--model-opt", "fc6_dilation=1", "--data-opt", "image_size=32", "--data-opt", "num_train=4",
            "--data-opt", "num_val=3", "--output-dir", str(out)]
    assert train_mod.main(args) == 0
    return out / "checkpoint_last.npz"


def test_evaluate_crf_reports_before_and_after(trained, tmp_path, capsys):
    import json

    from segnets import evaluate
    plain, off, on = tmp_path / "plain.json", tmp_path / "off.json", tmp_path / "on.json"
    assert evaluate.main(["--checkpoint", str(trained), "--output", str(plain)]) == 0
    # Zero pairwise weights: the CRF's marginals are the net's softmax, so its labels are the net's.
    assert evaluate.main(["--checkpoint", str(trained), "--output", str(off), "--crf-opt", "w1=0",
                          "--crf-opt", "w2=0"]) == 0
    assert evaluate.main(["--checkpoint", str(trained), "--output", str(on), "--crf",
                          "--crf-opt", "theta_alpha=10", "--crf-opt", "iterations=3"]) == 0
    printed = capsys.readouterr().out
    assert "after the dense CRF (theta_alpha=10, iterations=3)" in printed and "with the CRF" in printed
    plain, off, on = (json.loads(p.read_text()) for p in (plain, off, on))
    assert off["miou"] == plain["miou"] == on["miou"]
    assert off["crf"]["miou"] == plain["miou"] and off["crf"]["per_class_iou"] == plain["per_class_iou"]
    assert on["crf"]["options"] == {"theta_alpha": 10, "iterations": 3} and 0 <= on["crf"]["pixel_acc"] <= 1


def test_predict_crf_refines_the_masks(trained, tmp_path, capsys):
    from PIL import Image

    from segnets import predict
    pixels = np.random.default_rng(0).integers(0, 256, size=(30, 37, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    masks = {}
    for name, flags in (("plain", []), ("off", ["--crf-opt", "w1=0", "--crf-opt", "w2=0"]), ("on", ["--crf"])):
        out = tmp_path / name
        assert predict.main(["--checkpoint", str(trained), str(tmp_path / "in.png"), "--output-dir", str(out)]
                            + flags) == 0
        masks[name] = np.asarray(Image.open(out / "in_mask.png"))
    np.testing.assert_array_equal(masks["off"], masks["plain"])
    assert masks["on"].shape == (30, 37)
    assert predict.main(["--checkpoint", str(trained), str(tmp_path / "in.png"), "--output-dir",
                         str(tmp_path / "x"), "--crf-opt", "sigma=2"]) == 2
    assert "error: --crf-opt: unknown option 'sigma'" in capsys.readouterr().err
    assert predict.main(["--onnx", "model.onnx", str(tmp_path / "in.png"), "--output-dir", str(tmp_path / "y"),
                         "--crf"]) == 2
    assert "--crf needs the net's probabilities" in capsys.readouterr().err
