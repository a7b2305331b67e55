"""The fully connected CRF of Krähenbühl & Koltun (NIPS 2011), as DeepLab v1/v2 use it to sharpen boundaries.

Energy of a labelling x (one label per pixel):

    E(x) = sum_i U_i(x_i) + sum_{i<j} mu(x_i, x_j) [w1 exp(-|p_i-p_j|^2 / 2 theta_alpha^2 - |I_i-I_j|^2 / 2 theta_beta^2)
                                                    + w2 exp(-|p_i-p_j|^2 / 2 theta_gamma^2)]

with the unary U_i = -log P_i (the net's softmax), the Potts compatibility
mu = [x_i != x_j], an appearance (bilateral) kernel on positions p and colours I
and a smoothness kernel on positions. ``dense_crf`` runs mean-field inference:
Q_i(l) is proportional to exp(-U_i(l) - sum_m w_m sum_j k_m(i, j) (1 - Q_j(l))),
and since sum_j k(i, j) does not depend on l, that is softmax(-U_i + sum_m w_m (K_m Q)_i).

Two choices follow Krähenbühl's released code (which DeepLab ran): each kernel is
normalised, here symmetrically (K -> D^-1/2 K D^-1/2 with D = diag(K 1),
pydensecrf's default), so that w1 and w2 weigh an average of the neighbours'
beliefs rather than a sum that grows with theta; and the filter includes each
pixel's own term (k(i, i) = 1), as a Gaussian filter does. With both, every
normalised kernel is positive semi-definite, so the parallel update is a
majorise-minimise step on the mean-field free energy (``mean_field_energy``)
and that energy never increases (Krähenbühl & Koltun, ICML 2013, make the same
argument); ``tests/test_crf.py`` checks it.

Two ways to compute K Q, both on NumPy or CuPy arrays (``xp`` follows ``probabilities``):
* ``method="exact"``: the N x N kernel matrices, O(N^2) time and memory; for
  images of a few thousand pixels, the tests' reference;
* ``method="lattice"`` (default): both kernels (2-D smoothness, 5-D appearance)
  with the permutohedral lattice of Adams, Baek & Davis (Eurographics 2010), the
  filter of the original: splat each pixel onto the d+1 vertices of its enclosing
  simplex with barycentric weights, blur along the d+1 lattice axes with
  [1/4, 1/2, 1/4], slice back with the same weights. It is approximate (the
  lattice blur is a piecewise-linear stand-in for the Gaussian, a little wider
  and not quite isotropic), in O(N d^2) time. The lattices are built once per image
  (``LatticeMeanField``), both kernels share one sparse splat and slice, and the pixels
  are visited in 32x32 tiles for the cache; numba, where installed, builds the lattices
  point by point with a hash table instead of a sort, and computes the log, the blur and the
  softmax in compiled passes (polynomial log and exp), and the iterations and the builds run
  on ``minigrad.get_num_threads()`` threads (``LatticeMeanField``). On a 500x375
  image with DeepLab's settings it gives pydensecrf's (Krähenbühl's C++ code's) marginals to
  within 4e-6, the same labels (``benchmarks/crf.py``, benchmarks/README.md).

Defaults: DeepLab-CRF-LargeFOV's published settings (Chen et al., ICLR 2015:
w2 = 3 and theta_gamma = 3 fixed, w1, theta_alpha, theta_beta cross-validated on
val images; the authors' release uses w1 = 4, theta_alpha = 121, theta_beta = 5)
and 10 mean-field iterations, for VOC-sized images (about 500x375) with 0-255
colours. ``DEEPLAB_V2_RESNET`` holds DeepLab v2's (TPAMI 2017) values for its
ResNet-101 model (w1 = 4, theta_alpha = 67, theta_beta = 3, w2 = 3, theta_gamma = 1).
"""
import math
import os

import numpy as np

from minigrad import backend

DEEPLAB_V1_LARGEFOV = {"w1": 4.0, "theta_alpha": 121.0, "theta_beta": 5.0, "w2": 3.0, "theta_gamma": 3.0}
DEEPLAB_V2_RESNET = {"w1": 4.0, "theta_alpha": 67.0, "theta_beta": 3.0, "w2": 3.0, "theta_gamma": 1.0}
METHODS = ("lattice", "exact")
EXACT_MAX_PIXELS = 4096  # the exact kernels are N x N: 134 MB each in float64 at this size
PACKED_SORT_BITS = 63  # the generic lattice build sorts (code, position) pairs packed in an int64 where they fit


def dense_crf(image, probabilities, iterations=10, w1=4.0, theta_alpha=121.0, theta_beta=5.0, w2=3.0,
              theta_gamma=3.0, method="lattice", epsilon=1e-8, compiled=None):
    """Mean-field marginals Q (num_classes, H, W) of the dense CRF on ``image`` and ``probabilities``.

    ``image``: (H, W, channels) colours on the scale ``theta_beta`` is meant for (0-255 for the
    defaults); ``probabilities``: (num_classes, H, W), e.g. a softmax, clipped at ``epsilon``
    before the log. ``argmax(axis=0)`` of the result is the CRF's labelling. See the module
    docstring for the model, the defaults' source and the two methods. ``compiled``: whether
    the lattices are built with numba (None: where it imports; see ``PermutohedralLattice``),
    which then also computes the log, the blur and the softmax; the result is the same up to
    float32 rounding; with numba, large images (``COMPILED_MIN_POINTS`` pixels) use
    ``minigrad.get_num_threads()`` threads (see ``LatticeMeanField``).
    The lattice method computes in float32 and returns float32 for any input dtype (as
    pydensecrf); the exact one computes and returns float64.
    """
    # the lattice visits the pixels in tiles of 32x32 (see _tile_order), back in raster order at the end
    xp, unary, features, start, order = _prepare(image, probabilities, w1, theta_alpha, theta_beta, w2,
                                                 theta_gamma, method, epsilon, tiled=method == "lattice",
                                                 compiled=compiled)
    if not isinstance(iterations, (int, np.integer)) or isinstance(iterations, bool) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    if method == "exact":
        filters = _filters(xp, features, method, (w1, w2))
        q = _softmax(xp, -unary)
        for _ in range(iterations):
            q = _softmax(xp, -unary + _message(q, filters))
    else:
        tiled = LatticeMeanField(features, (w1, w2), unary, compiled=compiled).run(iterations, start)
        q = xp.empty_like(tiled)
        q[order] = tiled
    num_classes, h, w = probabilities.shape
    return q.T.reshape(num_classes, h, w)


def mean_field_energy(image, probabilities, marginals, w1=4.0, theta_alpha=121.0, theta_beta=5.0, w2=3.0,
                      theta_gamma=3.0, epsilon=1e-8):
    """The mean-field free energy that ``dense_crf(method="exact")`` lowers at every iteration.

    F(Q) = sum_i Q_i . (U_i + log Q_i) - 1/2 sum_m w_m sum_{i,j} Kn_m(i, j) Q_i . Q_j, with Kn the
    symmetrically normalised kernels (self terms included): KL(Q || P) up to a constant for that
    model. Exact O(N^2) kernels, so for small images only.
    """
    xp, unary, features, _, _ = _prepare(image, probabilities, w1, theta_alpha, theta_beta, w2, theta_gamma,
                                         "exact", epsilon)
    filters = _filters(xp, features, "exact", (w1, w2))
    q = xp.asarray(marginals, dtype=unary.dtype).reshape(unary.shape[1], -1).T
    entropy_term = float((q * (unary + xp.log(xp.maximum(q, 1e-300)))).sum())
    message = _message(q, filters)
    return entropy_term - 0.5 * float((q * message).sum())


# ---------------------------------------------------------------- setup and the mean-field step
def _prepare(image, probabilities, w1, theta_alpha, theta_beta, w2, theta_gamma, method, epsilon, tiled=False,
             compiled=False):
    """Checks, then (xp, unary (N, classes), features, start (N, classes), order): the pixels in raster
    order (order None) or, ``tiled``, in ``order = _tile_order(...)``; start = softmax(-unary), the
    clipped probabilities over their sum. ``compiled`` (see ``PermutohedralLattice``): with numba,
    the tiled unary and start come from one pass (``_prepare_kernel``), equal up to float32 rounding."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if probabilities.ndim != 3:
        raise ValueError(f"probabilities must have shape (num_classes, H, W), got {probabilities.shape}")
    if image.ndim != 3 or tuple(image.shape[:2]) != tuple(probabilities.shape[1:]):
        raise ValueError(f"image must have shape (H, W, channels) = {tuple(probabilities.shape[1:])} + (channels,), "
                         f"got {tuple(image.shape)}")
    for name, value in (("theta_alpha", theta_alpha), ("theta_beta", theta_beta), ("theta_gamma", theta_gamma)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    for name, value in (("w1", w1), ("w2", w2)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    num_classes, h, w = probabilities.shape
    if method == "exact" and h * w > EXACT_MAX_PIXELS:
        raise ValueError(f"method='exact' builds N x N kernels: at most {EXACT_MAX_PIXELS} pixels, "
                         f"got {h}x{w}; use method='lattice'")
    xp = backend.get_array_module(probabilities)
    dtype = np.float64 if method == "exact" else np.float32
    p = xp.asarray(probabilities, dtype=dtype).reshape(num_classes, -1).T  # (N, classes), a view
    colours = xp.asarray(image, dtype=dtype).reshape(h * w, -1)
    order = _tile_order(xp, h, w) if tiled else None
    pixels = xp.arange(h * w) if order is None else order
    # (the compiled log takes normal float32 numbers: epsilon >= 2^-126)
    kernels = _numba_kernels(xp, compiled, h * w) if tiled and epsilon >= 2.0 ** -126 else None
    if kernels is not None:
        colours = colours[order]
        unary, start = xp.empty((h * w, num_classes), dtype), xp.empty((h * w, num_classes), dtype)
        n, parts = h * w, _thread_parts(xp, compiled, h * w, None)  # in shares of the pixels, as the iterations
        bounds = [n * k // parts for k in range(parts + 1)]
        _in_parts(parts, lambda k: kernels.prepare(p.T, order[bounds[k]:bounds[k + 1]], np.float32(epsilon),
                                                   unary[bounds[k]:bounds[k + 1]], start[bounds[k]:bounds[k + 1]]))
    else:
        if order is None:
            p = xp.ascontiguousarray(p)
        else:  # one gather makes the rows contiguous and in tile order
            p, colours = xp.take(p, order, axis=0), colours[order]
        clipped = xp.maximum(p, epsilon)
        unary = -xp.log(clipped)
        # = softmax(-unary), without the exp; the row sums as a product (a sum along the short axis is slower)
        start = clipped / clipped.dot(xp.ones((num_classes, 1), dtype=dtype))
    xs, ys = (pixels % w).astype(dtype), (pixels // w).astype(dtype)
    appearance = xp.concatenate([xs[:, None] / theta_alpha, ys[:, None] / theta_alpha, colours / theta_beta], axis=1)
    positions = xp.stack([xs, ys], axis=1) / theta_gamma
    return xp, unary, {"appearance": appearance, "smoothness": positions}, start, order


def _tile_order(xp, h, w, tile=32):
    """The pixels (raster indices) tile by tile, each tile in raster order.

    The lattice numbers its vertices in the order the pixels first touch them; in tiles,
    the vertices a stretch of pixels splats onto stay few (stay in cache) rather than
    spanning the ~100 image rows one vertex covers at theta_alpha = 121: the splats and
    slices take ~20% less time on a 500x375 image (benchmarks/README.md).
    """
    # the raster indices padded to whole tiles (-1), tile rows and columns made the outer axes
    down, across = -(-h // tile), -(-w // tile)
    padded = xp.full((down * tile, across * tile), -1, dtype=np.int64)
    padded[:h, :w] = xp.arange(h * w, dtype=np.int64).reshape(h, w)
    order = padded.reshape(down, tile, across, tile).transpose(0, 2, 1, 3).reshape(-1)
    return order[order >= 0]


def _softmax(xp, logits):
    """Row-wise softmax of (N, classes) logits.

    Here logits = -U + messages >= log(epsilon) (the messages are >= 0): no row underflows, and
    unless a logit exceeds 30 exp cannot overflow, so the per-row max (a slow reduction along
    the short axis) is skipped; the row sums are a matrix-vector product.
    """
    if float(logits.max()) > 30.0:  # unusually strong messages: the safe per-row shift
        logits = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(logits)
    return e / e.dot(xp.ones((e.shape[1], 1), dtype=e.dtype))


def _message(q, filters):
    """sum_m w_m Kn_m Q, Kn_m = D^-1/2 K_m D^-1/2 (0 without kernels)."""
    total = 0
    for apply, norm, weighted_norm in filters:
        total = total + weighted_norm * apply(norm * q)
    return total


def _filters(xp, features, method, weights):
    """[(apply, norm, w * norm)] for the kernels of nonzero weight: apply(V) = K V, norm = (K 1)^-1/2."""
    filters = []
    for kind, weight in zip(("appearance", "smoothness"), weights):
        if not weight:
            continue
        f = features[kind]
        apply = _exact_kernel(xp, f).dot if method == "exact" else PermutohedralLattice(f).apply
        norm = 1.0 / xp.sqrt(apply(xp.ones((f.shape[0], 1), dtype=f.dtype)))
        filters.append((apply, norm, weight * norm))
    return filters


def _exact_kernel(xp, f):
    squared = (f * f).sum(axis=1)
    distance = squared[:, None] + squared[None, :] - 2.0 * f.dot(f.T)
    return xp.exp(-0.5 * xp.maximum(distance, 0.0))


# ---------------------------------------------------------------- the permutohedral lattice
class PermutohedralLattice:
    """Gaussian filtering in a d-dimensional feature space (Adams, Baek & Davis 2010), vectorised.

    ``PermutohedralLattice(features).apply(values)`` approximates
    ``sum_j exp(-|f_i - f_j|^2 / 2) values_j`` for every i (features already divided by their
    standard deviations). Built once per image: the enclosing simplex of every point
    (elevation onto the hyperplane x . 1 = 0 of Z^{d+1}, the nearest remainder-0 point, the
    rank of each coordinate's residual), its d+1 vertices hashed to one int64 each and
    numbered, the vertices' neighbours along the d+1 lattice axes looked up. Each ``apply``
    is a sparse splat, d+1 gathers (the blur) and the transposed splat (the slice).

    ``compiled``: how the lattice is built. None (default): with numba kernels, point by point
    (``_simplex_kernel``, ``_codes_kernel``, the same float64 operations as the generic code)
    and a hash table that numbers the vertices (``_hash_vertices_kernel``, O(N d)): ~0.3 s less
    for the two lattices of a 500x375 image, where numba imports, the features are a NumPy
    array and ``MINIGRAD_CPU_KERNELS`` is not 0; False: the generic NumPy/CuPy code (whole-array
    operations, one sort, and binary searches), the reference the tests compare with;
    True: numba or an error. (None keeps the generic code below
    ``COMPILED_MIN_POINTS`` points, where it is fast and numba's first compilation, ~10 s of
    CPU, would dominate.) Both number the vertices in the order the pixels first touch them
    (also on CuPy), so both give the same lattice, rows in the same order. ``simplices``: the
    compiled simplices, already computed (``_simplices_in_shares``, in threads).
    """

    def __init__(self, features, compiled=None, simplices=None):
        xp = backend.get_array_module(features)
        self.xp = xp
        n, d = features.shape
        self.n, self.d = n, d
        kernels = _numba_kernels(xp, compiled, n)
        # The enclosing simplex of every point: barycentric weights (n, d+1) and the int64 hash
        # codes of its d+1 vertices (n, d+1); ``base``: the codes' digit base.
        scale = _scale(d)
        if kernels is not None:
            # (``simplices``: _simplices_in_shares' result where LatticeMeanField ran it in threads)
            self.weights, stored, rank = simplices or _simplices_in_shares(kernels, [features], 1)[0]
            low, base, powers = self._digits(stored)
            codes = kernels.codes(stored, rank, low, np.asarray(powers, dtype=np.int64))
        else:
            self.weights, codes, base, powers = self._simplices(features, scale)
        # Neighbours along lattice axis j: the key minus 1 on every coordinate and plus d on
        # coordinate j (axis d: minus 1 on all d stored coordinates), and the opposite one.
        steps = [-sum(powers) + ((d + 1) * base ** j if j < d else 0) for j in range(d + 1)]
        if kernels is not None:
            # A hash table numbers the vertices in the order the pixels first touch them.
            self.index, self.keys, table_keys, table_ids = kernels.hash_vertices(codes)
            self.m = m = self.keys.shape[0]
            self.minus, self.plus = kernels.neighbours(table_keys, table_ids, self.keys,
                                                       np.asarray(steps, dtype=np.int64))
        else:
            # One sort numbers the vertices in the same order; binary searches find the neighbours.
            # (sorted queries: the binary searches stay in cache; then the columns by vertex number)
            self.keys, self.index, number, by_number = self._number_vertices(codes)
            self.m = m = self.keys.shape[0]
            self.minus = xp.stack([number[self._find(self.keys + step)] for step in steps])[:, by_number]
            self.plus = xp.stack([number[self._find(self.keys - step)] for step in steps])[:, by_number]
        # Each pixel's d+1 vertices and barycentric weights, (n, d+1), make the (n, m) slice
        # matrix (CSR, built directly: d+1 distinct vertices per row); its transpose (CSC) is the
        # splat, which then reads the pixels in order and scatters into the small lattice (4x
        # faster than a CSR splat).
        self.slice = _sparse_module(xp).csr_matrix(
            (self.weights.reshape(-1), self.index.reshape(-1), xp.arange(0, n * (d + 1) + 1, d + 1, dtype=np.int32)),
            shape=(n, m))
        self.splat = self.slice.T

    def _simplices(self, features, scale):
        """The generic (NumPy/CuPy) simplices: (weights (n, d+1) float32, codes (n, d+1), base, powers)."""
        xp, (n, d) = self.xp, features.shape
        # Everything below is on (d+1, n) arrays: row k holds coordinate k of every point.
        # Scale so that the [1 2 1] blur along the d+1 axes approximates a unit-variance Gaussian
        # (the original's factor: (d + 1) sqrt(2/3) / sqrt((i + 1)(i + 2)) on axis i), then
        # elevate onto the plane x . 1 = 0: e_0 = sum_k cf_k, e_k = sum_{j>=k} cf_j - k cf_{k-1}.
        i = xp.arange(1, d + 1, dtype=np.float64)[:, None]
        cf = xp.asarray(features, dtype=np.float64).T * xp.asarray(scale)[:, None]
        elevated = xp.zeros((d + 1, n))
        elevated[d - 1] = cf[d - 1]
        for k in range(d - 2, -1, -1):  # a suffix sum, row by row (cumsum along a reversed axis 0 is ~5x slower)
            xp.add(elevated[k + 1], cf[k], out=elevated[k])
        elevated[1:] -= i * cf
        # The nearest remainder-0 point (coordinates multiples of d+1; halves round down) and
        # the residuals' ranks.
        rem0 = xp.floor(elevated * (1.0 / (d + 1)))
        rem0 += (elevated - (d + 1) * rem0) > 0.5 * (d + 1)
        rem0 *= d + 1
        residuals = elevated - rem0
        # (ranks and flat indices in int32 where (d+1) n fits: half the memory traffic of int64)
        itype = np.int32 if (d + 1) * n < 2 ** 31 else np.int64
        total = xp.rint(rem0.sum(axis=0) * (1.0 / (d + 1))).astype(itype)
        # rank of coordinate i: how many residuals are larger, ties going to the lower index
        # (a stable descending sort; (d+1)^2 vector comparisons beat argsort for d <= 5).
        rank = xp.zeros((d + 1, n), dtype=itype)
        for i in range(d + 1):
            for j in range(d + 1):
                if j != i:
                    rank[i] += residuals[j] >= residuals[i] if j < i else residuals[j] > residuals[i]
        # Move onto the plane (coordinates summing to zero): wrap the ranks that overflow.
        shift = ((total > 0) & (rank >= d + 1 - total)).astype(itype)
        shift -= (total < 0) & (rank < -total)  # +1 over, -1 under, 0 else
        rank += total
        rank -= (d + 1) * shift
        rem0 -= (d + 1) * shift
        # Barycentric weights of the d+1 vertices: with s_p the residual/(d+1) of the coordinate
        # of rank d - p, b_0 = 1 + s_0 - s_d, b_p = s_p - s_{p-1}.
        s = xp.empty((d + 1, n))
        columns = xp.arange(n, dtype=itype)
        s.reshape(-1)[((d - rank) * n + columns).reshape(-1)] = ((elevated - rem0) * (1.0 / (d + 1))).reshape(-1)
        weights = xp.empty((d + 1, n), dtype=np.float32)
        weights[1:] = s[1:] - s[:-1]
        weights[0] = 1.0 + s[0] - s[d]
        # Vertex r of each simplex: rem0 + r, minus d+1 on the coordinates of rank > d - r.
        # Hashed as one int64 each: digits (coordinate - low) in base ``base``, with a margin of
        # d+1 around every vertex so that neighbours' codes (below) cannot alias other keys.
        # Vertex r differs from vertex r-1 by +1 on every coordinate but -d on the one of rank
        # d + 1 - r (``owner``: its digit's power, 0 for the unstored coordinate d).
        stored = xp.rint(rem0[:d]).astype(np.int64)
        low, base, powers = self._digits(stored)
        owner = xp.empty((d + 1) * n, dtype=np.int64)
        owner[(rank * n + columns).reshape(-1)] = xp.asarray(powers + [0], dtype=np.int64).repeat(n)
        owner = owner.reshape(d + 1, n)
        codes = xp.empty((d + 1, n), dtype=np.int64)
        codes[0] = xp.asarray(powers, dtype=np.int64).dot(stored - low)
        for r in range(1, d + 1):
            codes[r] = codes[r - 1] + (sum(powers) - (d + 1) * owner[d + 1 - r])
        return xp.ascontiguousarray(weights.T), xp.ascontiguousarray(codes.T), base, powers

    def _digits(self, stored):
        """(low, base, powers) of the vertices' hash codes, from the points' remainder-0 coordinates."""
        d = self.d
        low = int(stored.min()) - 2 * (d + 1)
        base = int(stored.max()) + d - low + (d + 2)
        if base ** d >= 2 ** 62:
            raise ValueError(f"permutohedral lattice: features span too far to hash ({base}^{d} cells); "
                             "scale them down (larger thetas)")
        return low, base, [base ** k for k in range(d)]

    def _number_vertices(self, codes):
        """The vertices of (n, d+1) int64 ``codes`` (>= 0), numbered in the order the pixels first
        touch them: (keys, the distinct codes sorted; index (n, d+1) int32, each point's vertex
        numbers; number (m+1,) int32, a key's position in ``keys`` -> its vertex number, and
        m -> m, the missing neighbour; by_number (m,), vertex number -> position in ``keys``).

        In first-touch order, consecutive pixels splat onto nearby rows, not rows ~1000 apart
        (hash order), which makes the splats and slices ~2.5x faster (cache misses) on the CPU.
        One sort does it: each code packed with its position (code * 2^bits + position, where
        that fits an int64: 42 + 21 bits for the 5-D lattice of a 500x375 image; a stable
        argsort otherwise), so that each run of equal codes starts at its first touch. 13 ms
        against 50-75 ms for ``unique(return_inverse=True)``'s argsort and a renumbering.
        """
        xp = self.xp
        flat = codes.reshape(-1)
        total = flat.shape[0]
        bits = max(total - 1, 1).bit_length()
        if int(flat.max()) < 2 ** (PACKED_SORT_BITS - bits):
            packed = xp.sort((flat << bits) | xp.arange(total, dtype=np.int64))
            sorted_codes = packed >> bits
            position = packed & ((1 << bits) - 1)
        else:
            position = xp.argsort(flat, kind="stable")
            sorted_codes = flat[position]
        starts = xp.empty(total, dtype=bool)
        starts[:1] = True
        xp.not_equal(sorted_codes[1:], sorted_codes[:-1], out=starts[1:])
        keys = sorted_codes[starts]
        m = keys.shape[0]
        by_touch = xp.argsort(position[starts])  # vertex number -> position in keys
        number = xp.empty(m + 1, dtype=np.int32)
        number[by_touch] = xp.arange(m, dtype=np.int32)
        number[m] = m
        index = xp.empty(total, dtype=np.int32)
        index[position] = number[xp.cumsum(starts) - 1]
        return keys, index.reshape(codes.shape), number, by_touch

    def _find(self, codes):
        xp = self.xp
        at = xp.searchsorted(self.keys, codes)
        at = xp.minimum(at, self.m - 1)
        return xp.where(self.keys[at] == codes, at, self.m)

    def apply(self, values):
        """(n, c) -> (n, c): the lattice's Gaussian filter of each column (NumPy/CuPy, float32 inside)."""
        xp = self.xp
        lattice = xp.zeros((self.m + 1, values.shape[1]), dtype=np.float32)
        lattice[:self.m] = self.splat.dot(xp.asarray(values, dtype=np.float32))
        buffers = xp.empty((2, self.m, values.shape[1]), dtype=np.float32)
        _blur(xp, lattice, 0, self.minus, self.plus, 1.0, buffers)
        return xp.asarray(self.slice.dot(lattice[:self.m]), dtype=values.dtype)


def _blur(xp, lattice, start, minus, plus, scale, buffers):
    """In place: rows start..start+m of ``lattice`` blurred with [1/4, 1/2, 1/4] along each of
    the axes of ``minus``/``plus`` ((axes, m) row indices into ``lattice``, the missing
    neighbours pointing at a zero row), then times ``scale``."""
    axes, m = minus.shape
    rows = lattice[start:start + m]
    low, high = buffers[0, :m], buffers[1, :m]
    for axis in range(axes):  # [1, 2, 1] along each axis, the 1/4s folded into the scale
        _take(xp, lattice, minus[axis], low)
        _take(xp, lattice, plus[axis], high)
        low += high
        rows += rows
        rows += low
    rows *= scale / 4.0 ** axes


def _take(xp, array, index, out):
    if xp is np:
        np.take(array, index, axis=0, out=out, mode="clip")  # "clip": unbuffered (the indices are valid)
    else:
        xp.take(array, index, axis=0, out=out)


def _sparse_module(xp):
    if xp is np:
        import scipy.sparse
        return scipy.sparse
    import cupyx.scipy.sparse
    return cupyx.scipy.sparse


# ---------------------------------------------------------------- mean field on the lattices, set up once per image
class LatticeMeanField:
    """dense_crf's iterations with both kernels on permutohedral lattices, set up once per image.

    ``features``: {"appearance": (N, 5), "smoothness": (N, 2)} divided by their thetas;
    ``weights``: (w1, w2); ``unary``: (N, classes), -log P. The kernels of nonzero weight
    share one stacked lattice of M = M_1 + M_2 vertices (and a zero row) and one (N, M + 1)
    slice matrix S whose row i holds pixel i's barycentric weights on each lattice times its
    normaliser (K 1)_i^-1/2 (d+1 entries per kernel), so one step is: the splat S^T Q (one
    sparse product for all classes and both kernels), each lattice's blur along its d+1 axes
    times its weight w, the slice S L (the messages), minus the unary, a softmax.

    ``compiled``: how the lattices are built, see ``PermutohedralLattice``; with numba the
    softmax (``_softmax_kernel``: NumPy's float32 exp is slow here) and each blur axis
    (``_blur_kernel``) are compiled passes too; the splat and the slice are scipy's (or cupyx's)
    sparse products either way (numba loops for them were measured no faster: they wait on cache
    misses, not on arithmetic; benchmarks/README.md). ``threads``: how many shares of minigrad's
    thread pool build the lattices (both at once) and run each iteration (``threaded_step``);
    None: ``minigrad.get_num_threads()`` where the numba kernels run, else 1 (``_thread_parts``;
    ``compiled=False``, the generic reference, and ``MINIGRAD_CPU_KERNELS=0`` give 1). More than
    one share changes only the order of the splat's float32 sums.
    """

    def __init__(self, features, weights, unary, compiled=None, threads=None):
        xp = backend.get_array_module(unary)
        self.xp = xp
        self.unary = xp.ascontiguousarray(unary, dtype=np.float32)
        n, classes = self.unary.shape
        kinds = [(kind, w) for kind, w in zip(("appearance", "smoothness"), weights) if w]
        self.parts = _thread_parts(xp, compiled, n, threads) if kinds else 1
        self.kernels = _numba_kernels(xp, compiled, n)  # (compiled here, not in two threads at once)

        simplices = [None] * len(kinds)
        if self.parts > 1 and self.kernels is not None:  # both lattices' simplices in shares of the pixels
            simplices = _simplices_in_shares(self.kernels, [features[kind] for kind, _ in kinds], self.parts)

        def build(i):
            lattice = PermutohedralLattice(features[kinds[i][0]], compiled=compiled, simplices=simplices[i])
            return lattice, kinds[i][1], 1.0 / xp.sqrt(lattice.apply(xp.ones((n, 1), dtype=np.float32)))
        # with threads, the two lattices are built at once (numba's kernels and NumPy release the GIL)
        lattices = _in_parts(len(kinds), build) if self.parts > 1 else [build(i) for i in range(len(kinds))]
        index, values, self.blurs, offset = [], [], [], 0
        total = sum(lattice.m for lattice, _, _ in lattices)
        for lattice, w, norm in lattices:
            index.append(lattice.index + offset)
            values.append(lattice.weights * norm)
            # neighbours as rows of the stacked lattice; the missing ones at its zero row
            self.blurs.append((offset, *(xp.where(a == lattice.m, total, a + offset).astype(np.int32)
                                         for a in (lattice.minus, lattice.plus)), float(w)))
            offset += lattice.m
        if lattices:
            index = xp.concatenate(index, axis=1)
            k = index.shape[1]
            self.slice = _sparse_module(xp).csr_matrix(
                (xp.concatenate(values, axis=1).reshape(-1), index.reshape(-1),
                 xp.arange(0, n * k + 1, k, dtype=np.int32)),
                shape=(n, total + 1))
            self.splat = self.slice.T
        self.buffers = xp.empty((2, max([lattice.m for lattice, _, _ in lattices], default=0), classes),
                                dtype=np.float32)
        self.ones = xp.ones((classes, 1), dtype=np.float32)
        self.powers = np.empty(n * classes if self.kernels is not None else 0, dtype=np.int32)
        # with threads or the compiled kernels the iterations run in shares (one share: the blur kernel)
        self.shared = bool(lattices) and (self.parts > 1 or self.kernels is not None)
        if self.shared:
            self._split([lattice.m for lattice, _, _ in lattices], total)

    def _split(self, sizes, total):
        """The threaded step's shares: pixel ranges (each with its rows of the slice matrix, and
        their transpose, a splat) and each lattice's vertex range cut in as many row ranges."""
        xp, parts = self.xp, self.parts
        n, classes = self.unary.shape
        k = self.slice.indptr[1] - self.slice.indptr[0]  # entries per pixel, the same for all
        self.pixels = [(n * p // parts, n * (p + 1) // parts) for p in range(parts)]
        self.slices = [_sparse_module(xp).csr_matrix(
            (self.slice.data[lo * k:hi * k], self.slice.indices[lo * k:hi * k],
             xp.arange(0, (hi - lo) * k + 1, k, dtype=np.int32)), shape=(hi - lo, total + 1))
            for lo, hi in self.pixels]
        self.splats = [s.T for s in self.slices]
        self.vertices = [[(m * p // parts, m * (p + 1) // parts) for p in range(parts)] for m in sizes]
        # two lattices (and the zero row): each blur axis reads one and writes the other, so the
        # shares need not wait for each other within an axis; a lattice with an odd number of axes
        # starts in the second, so that every lattice ends in the first
        self.lattices = xp.zeros((2, total + 1, classes), dtype=np.float32)
        self.gathers = xp.empty((parts, 2, max(hi - lo for ranges in self.vertices for lo, hi in ranges), classes),
                                dtype=np.float32)

    def run(self, iterations, q=None):
        """Q after ``iterations`` steps from ``q`` (default: the softmax of -unary), (N, classes) float32."""
        xp = self.xp
        q = xp.ascontiguousarray(_softmax(xp, -self.unary) if q is None else q, dtype=np.float32)
        if not self.blurs:  # no kernels: every step gives softmax(-unary), the start
            return q
        if self.shared and iterations:
            q = [q[lo:hi] for lo, hi in self.pixels]
            for _ in range(iterations):
                q = self.threaded_step(q)
            return xp.concatenate(q)
        for _ in range(iterations):
            q = self.step(q)
        return q

    def step(self, q):
        """One mean-field update: the new Q (N, classes) from q (float32, C order)."""
        xp = self.xp
        lattice = self.splat.dot(q)  # its last row, the zero row, stays zero: no pixel splats there
        for start, minus, plus, w in self.blurs:
            _blur(xp, lattice, start, minus, plus, w, self.buffers)
        return self._slice_and_softmax(self.slice, lattice, self.unary, self.powers)

    def _slice_and_softmax(self, slice_rows, lattice, unary, powers):
        """softmax(slice_rows L - unary) for some pixels' rows: NumPy, or one compiled pass
        (``_softmax_kernel``) where the lattices were built with numba."""
        xp = self.xp
        logits = slice_rows.dot(lattice)
        if self.kernels is not None:
            if not self.kernels.softmax(logits, unary, powers):
                return logits
            logits = slice_rows.dot(lattice)  # a logit above 30 (rare): again, with NumPy's shift
        logits -= unary
        if float(logits.max()) > 30.0:  # see _softmax
            logits -= logits.max(axis=1, keepdims=True)
        xp.exp(logits, out=logits)
        logits /= logits.dot(self.ones)
        return logits

    def threaded_step(self, q):
        """``step`` in ``self.parts`` shares on minigrad's thread pool (the sparse products,
        NumPy's ufuncs and the numba kernels release the GIL): q and the result are lists of the
        pixel ranges' rows. (With the compiled kernels also for one share: each blur axis then
        is one pass of ``_blur_kernel`` from one lattice array into the other.)

        Each share splats its pixels onto a lattice of its own (summed, range by range, into
        the first lattice: the only change from ``step``, float32 sums in another order), blurs
        its vertex range along each axis (one pass of the pool per axis), then slices and
        softmaxes its pixels. Every other operation is ``step``'s, in the same order.
        """
        xp, parts = self.xp, self.parts
        splats = _in_parts(parts, lambda p: self.splats[p].dot(q[p]))
        first, second = self.lattices
        axes = [minus.shape[0] for _, minus, _, _ in self.blurs]

        def total(p):
            for (start, *_), ranges, count in zip(self.blurs, self.vertices, axes):
                lo, hi = ranges[p]
                out = (first if count % 2 == 0 else second)[start + lo:start + hi]
                xp.add(splats[0][start + lo:start + hi], splats[1][start + lo:start + hi], out=out)
                for other in splats[2:]:
                    out += other[start + lo:start + hi]
        if parts > 1:  # (one share: the first blur axis reads the splat's lattice itself)
            _in_parts(parts, total)
        for axis in range(max(axes)):
            def blur(p):
                low, high = self.gathers[p]
                for (start, minus, plus, w), ranges, count in zip(self.blurs, self.vertices, axes):
                    if axis >= count:
                        continue
                    source, target = (first, second) if (count - axis) % 2 == 0 else (second, first)
                    source = splats[0] if axis == 0 and parts == 1 else source
                    lo, hi = ranges[p]
                    factor = w / 4.0 ** count if axis == count - 1 else 1.0
                    if self.kernels is not None:  # the same operations in one pass
                        self.kernels.blur(source, target, start + lo, minus[axis, lo:hi], plus[axis, lo:hi],
                                          np.float32(factor))
                        continue
                    rows, out = source[start + lo:start + hi], target[start + lo:start + hi]
                    _take(xp, source, minus[axis, lo:hi], low[:hi - lo])
                    _take(xp, source, plus[axis, lo:hi], high[:hi - lo])
                    low[:hi - lo] += high[:hi - lo]
                    xp.add(rows, rows, out=out)
                    out += low[:hi - lo]
                    if axis == count - 1:
                        out *= w / 4.0 ** count
            _in_parts(parts, blur)

        def slice_and_softmax(p):  # (the shift above 30 decided per share: the same marginals, up to rounding)
            lo, hi = self.pixels[p]
            classes = self.unary.shape[1]
            return self._slice_and_softmax(self.slices[p], first, self.unary[lo:hi],
                                           self.powers[lo * classes:hi * classes])
        return _in_parts(parts, slice_and_softmax)


def _thread_parts(xp, compiled, n, threads):
    """How many shares ``LatticeMeanField``'s iterations run in: ``threads`` where given; else
    ``minigrad.get_num_threads()`` where the numba kernels run (NumPy arrays of at least
    ``COMPILED_MIN_POINTS`` pixels, numba installed, ``compiled`` not False, ``MINIGRAD_CPU_KERNELS``
    not 0), 1 else: the generic code in threads (NumPy's blur and exp) measured no faster here."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {threads!r}")
        if threads > 1 and xp is not np:
            raise ValueError("threads > 1: the threaded iterations take NumPy arrays only")
        return int(threads)
    if _numba_kernels(xp, compiled, n) is None:
        return 1
    import minigrad
    return minigrad.get_num_threads()


def _in_parts(parts, work):
    """[work(p) for p in range(parts)], the parts at once on minigrad's CPU thread pool."""
    from minigrad.kernels.cpu import run_in_shares
    return [result for share in run_in_shares(lambda ps: [work(p) for p in ps], range(parts)) for result in share]


# The compiled kernels (numba, the optional ``cpu`` extra): plain functions here, compiled on first use.
_EMPTY = -1  # an empty slot of the hash table (vertex codes are >= 0)


def _hash_slot(code, mask):
    return (np.uint64(code) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32) & np.uint64(mask)


def _hash_insert(table_keys, table_ids, code, vertex):
    mask = table_keys.shape[0] - 1
    slot = _hash_slot(code, mask)
    while table_keys[slot] != _EMPTY:
        slot = (slot + np.uint64(1)) & np.uint64(mask)
    table_keys[slot] = code
    table_ids[slot] = vertex


def _hash_find(table_keys, table_ids, code, missing):
    mask = table_keys.shape[0] - 1
    slot = _hash_slot(code, mask)
    while True:
        key = table_keys[slot]
        if key == code:
            return table_ids[slot]
        if key == _EMPTY:
            return missing
        slot = (slot + np.uint64(1)) & np.uint64(mask)


def _scale(d):
    """The features' scale on lattice axis i: (d + 1) sqrt(2/3) / sqrt((i + 1)(i + 2)) (the original's)."""
    return (d + 1) * math.sqrt(2.0 / 3.0) / np.sqrt(np.arange(1, d + 1) * np.arange(2, d + 2, dtype=np.float64))


def _simplices_in_shares(kernels, features, parts):
    """[(weights, stored, ranks)] of ``_simplex_kernel`` for each (n, d) array of ``features`` (the
    same n), the points cut in ``parts`` ranges run at once on minigrad's thread pool."""
    features = [np.ascontiguousarray(f, dtype=np.float64) for f in features]
    n = features[0].shape[0]
    out = [(np.empty((n, f.shape[1] + 1), dtype=np.float32), np.empty((n, f.shape[1]), dtype=np.int64),
            np.empty((n, f.shape[1] + 1), dtype=np.int64)) for f in features]

    def share(p):
        lo, hi = n * p // parts, n * (p + 1) // parts
        for f, (weights, stored, ranks) in zip(features, out):
            kernels.simplices(f[lo:hi], _scale(f.shape[1]), weights[lo:hi], stored[lo:hi], ranks[lo:hi])
    _in_parts(parts, share)
    return out


def _simplex_kernel(features, scale, weights, stored, ranks):
    """PermutohedralLattice._simplices' first half, point by point, the same float64 operations in
    the same order, into weights (n, d+1) float32, remainder-0 coordinates (n, d) int64, ranks (n, d+1)."""
    n, d = features.shape
    inverse = 1.0 / (d + 1)
    elevated = np.empty(d + 1)
    rem0 = np.empty(d + 1)
    residual = np.empty(d + 1)
    rank = np.empty(d + 1, dtype=np.int64)
    s = np.empty(d + 1)
    for p in range(n):
        total = 0.0
        for k in range(d - 1, -1, -1):  # e_k = sum_{j>=k} cf_j - k cf_{k-1}
            total += features[p, k] * scale[k]
            elevated[k] = total
        elevated[d] = 0.0
        for k in range(1, d + 1):
            elevated[k] -= k * (features[p, k - 1] * scale[k - 1])
        total = 0.0
        for k in range(d + 1):
            r = np.floor(elevated[k] * inverse)
            if elevated[k] - (d + 1) * r > 0.5 * (d + 1):
                r += 1.0
            rem0[k] = r * (d + 1)
            residual[k] = elevated[k] - rem0[k]
            total += rem0[k]
        shift_total = np.int64(np.rint(total * inverse))
        for i in range(d + 1):
            rank[i] = 0
            for j in range(d + 1):
                if j < i and residual[j] >= residual[i] or j > i and residual[j] > residual[i]:
                    rank[i] += 1
        for k in range(d + 1):
            shift = 0
            if shift_total > 0 and rank[k] >= d + 1 - shift_total:
                shift = 1
            elif shift_total < 0 and rank[k] < -shift_total:
                shift = -1
            rank[k] += shift_total - (d + 1) * shift
            rem0[k] -= (d + 1) * shift
            s[d - rank[k]] = (elevated[k] - rem0[k]) * inverse
            ranks[p, k] = rank[k]
        for k in range(1, d + 1):
            weights[p, k] = s[k] - s[k - 1]
        weights[p, 0] = 1.0 + s[0] - s[d]
        for k in range(d):
            stored[p, k] = np.int64(np.rint(rem0[k]))


def _codes_kernel(stored, ranks, low, powers):
    """The hash codes (n, d+1) of each point's d+1 vertices (see PermutohedralLattice._simplices)."""
    n, d = stored.shape
    codes = np.empty((n, d + 1), dtype=np.int64)
    owner = np.empty(d + 1, dtype=np.int64)
    step = np.int64(0)
    for k in range(d):
        step += powers[k]
    for p in range(n):
        code = np.int64(0)
        for k in range(d):
            code += powers[k] * (stored[p, k] - low)
            owner[ranks[p, k]] = powers[k]
        owner[ranks[p, d]] = 0
        codes[p, 0] = code
        for r in range(1, d + 1):
            code += step - (d + 1) * owner[d + 1 - r]
            codes[p, r] = code
    return codes


def _hash_vertices_kernel(codes):
    """(n, k) vertex codes -> (n, k) vertex numbers in first-touch order, the codes by number,
    and the open-addressing table (keys, numbers; at most half full)."""
    n, k = codes.shape
    table_keys = np.full(1 << 12, _EMPTY, dtype=np.int64)
    table_ids = np.empty(1 << 12, dtype=np.int32)
    keys = np.empty(1 << 11, dtype=np.int64)
    index = np.empty((n, k), dtype=np.int32)
    m = 0
    for i in range(n):
        for j in range(k):
            code = codes[i, j]
            if i > 0 and code == codes[i - 1, j]:  # neighbouring pixels often share a simplex
                index[i, j] = index[i - 1, j]
                continue
            v = _hash_find(table_keys, table_ids, code, -1)
            if v < 0:
                v = m
                m += 1
                if m > keys.shape[0]:  # grow: twice the keys, a table twice as large, rehashed
                    grown = np.empty(2 * keys.shape[0], dtype=np.int64)
                    grown[:v] = keys[:v]
                    keys = grown
                    table_keys = np.full(2 * keys.shape[0], _EMPTY, dtype=np.int64)
                    table_ids = np.empty(2 * keys.shape[0], dtype=np.int32)
                    for u in range(v):
                        _hash_insert(table_keys, table_ids, keys[u], u)
                keys[v] = code
                _hash_insert(table_keys, table_ids, code, v)
            index[i, j] = v
    return index, keys[:m].copy(), table_keys, table_ids


def _neighbours_kernel(table_keys, table_ids, keys, steps):
    """(axes, m) numbers of the vertices keys + step and keys - step for each step (m if absent)."""
    m = keys.shape[0]
    minus = np.empty((steps.shape[0], m), dtype=np.int32)
    plus = np.empty((steps.shape[0], m), dtype=np.int32)
    for a in range(steps.shape[0]):
        for v in range(m):
            minus[a, v] = _hash_find(table_keys, table_ids, keys[v] + steps[a], m)
            plus[a, v] = _hash_find(table_keys, table_ids, keys[v] - steps[a], m)
    return minus, plus


def _blur_kernel(source, target, first, minus, plus, factor):
    """target[first + r] = (2 source[first + r] + source[minus[r]] + source[plus[r]]) * factor for
    r < len(minus): one axis of the threaded blur (``_blur``'s float32 operations, in its order)."""
    classes = source.shape[1]
    for r in range(minus.shape[0]):
        row = np.uintp(first + r)
        low, high = np.uintp(minus[r]), np.uintp(plus[r])  # unsigned: no wraparound tests (vectorised)
        for c in range(classes):
            j = np.uintp(c)
            value = source[row, j] + source[row, j]
            value += source[low, j] + source[high, j]
            if factor != np.float32(1.0):
                value *= factor
            target[row, j] = value


_LOG2E = np.float32(1.4426950408889634)
_LN2_HIGH, _LN2_LOW = np.float32(0.693359375), np.float32(-2.12194440e-4)  # ln 2, split (Cody & Waite)


def _prepare_kernel(probabilities, order, epsilon, unary, start):
    """Row i (pixel order[i]) of the (classes, N) ``probabilities``, clipped at ``epsilon``: its
    -log into ``unary``, over its sum into ``start``. The log as in Cephes' logf, on the flat
    rows (a loop the compiler vectorises): x = m 2^e with m in [sqrt(1/2), sqrt(2)), log m by a
    polynomial of degree 9 in m - 1 (error below 1e-6 against NumPy's here)."""
    classes = probabilities.shape[0]
    for i in range(order.shape[0]):
        pixel = order[i]
        total = np.float32(0.0)
        for c in range(classes):
            unary[i, c] = max(probabilities[c, pixel], epsilon)
            total += unary[i, c]
        for c in range(classes):
            start[i, c] = unary[i, c] / total
    flat = unary.reshape(-1)
    bits = flat.view(np.int32)
    for k in range(flat.shape[0]):
        word = bits[k]
        e = np.float32((word >> 23) - 126)
        bits[k] = (word & 0x007FFFFF) | 0x3F000000  # the mantissa, in [0.5, 1)
        x = flat[k]
        small = x < np.float32(0.70710678)
        e = e - np.float32(1.0) if small else e
        x = (x + x if small else x) - np.float32(1.0)
        z = x * x
        y = np.float32(7.0376836292e-2)
        y = y * x - np.float32(1.1514610310e-1)
        y = y * x + np.float32(1.1676998740e-1)
        y = y * x - np.float32(1.2420140846e-1)
        y = y * x + np.float32(1.4249322787e-1)
        y = y * x - np.float32(1.6668057665e-1)
        y = y * x + np.float32(2.0000714765e-1)
        y = y * x - np.float32(2.4999993993e-1)
        y = y * x + np.float32(3.3333331174e-1)
        y = y * x * z
        y += e * _LN2_LOW
        y -= np.float32(0.5) * z
        flat[k] = -(x + y + e * _LN2_HIGH)


def _softmax_kernel(logits, unary, powers):
    """In place: the rows of (n, classes) ``logits`` - ``unary`` softmaxed, in two passes, or True
    (and ``logits`` garbage) where a value exceeds 30 (the caller then shifts rows, see _softmax).

    exp as in Cephes' expf: x = t ln 2 + r with |r| <= ln 2 / 2, exp(r) by its Taylor polynomial
    of degree 7, 2^t added to the float's exponent bits: a loop the compiler vectorises (NumPy's
    float32 exp runs at ~3 ns a value on this AVX2 machine, this at ~1). Relative error below
    1e-6 (measured 6e-7); values below -87 are taken as -87 (here they are >= log(epsilon)).
    """
    n, c = logits.shape
    flat, unary = logits.reshape(-1), unary.reshape(-1)
    bits = flat.view(np.int32)
    big = False
    for i in range(n * c):
        v = flat[i] - unary[i]
        big |= v > np.float32(30.0)
        v = max(v, np.float32(-87.0))
        t = np.floor(v * _LOG2E + np.float32(0.5))
        r = v - t * _LN2_HIGH - t * _LN2_LOW
        e = np.float32(1.0 / 5040)
        e = e * r + np.float32(1.0 / 720)
        e = e * r + np.float32(1.0 / 120)
        e = e * r + np.float32(1.0 / 24)
        e = e * r + np.float32(1.0 / 6)
        e = e * r + np.float32(0.5)
        e = e * r + np.float32(1.0)
        e = e * r + np.float32(1.0)
        flat[i] = e
        powers[i] = np.int32(t) << 23
    if big:
        return True
    for i in range(n * c):
        bits[i] += powers[i]
    for i in range(n):
        total = np.float32(0.0)
        for j in range(c):
            total += logits[i, j]
        for j in range(c):
            logits[i, j] /= total
    return False


class _Kernels:
    def __init__(self, numba):
        jit = numba.njit(cache=True, nogil=True, error_model="numpy")
        helpers = {name: jit(globals()[name]) for name in ("_hash_slot", "_hash_insert", "_hash_find")}
        globals().update(helpers)  # the kernels call the compiled helpers
        self.simplices = jit(_simplex_kernel)
        self.codes = jit(_codes_kernel)
        self.hash_vertices = jit(_hash_vertices_kernel)
        self.neighbours = jit(_neighbours_kernel)
        self.softmax = jit(_softmax_kernel)
        self.blur = jit(_blur_kernel)
        self.prepare = jit(_prepare_kernel)


_compiled = None


COMPILED_MIN_POINTS = 65536  # compiled=None: the NumPy build of smaller lattices takes < ~0.1 s


def _numba_kernels(xp, compiled, points):
    """The compiled kernels, or None for the generic code (see PermutohedralLattice's ``compiled``)."""
    global _compiled
    if compiled is False or (compiled is None and (xp is not np or points < COMPILED_MIN_POINTS
                                                   or os.environ.get("MINIGRAD_CPU_KERNELS", "1") == "0")):
        return None
    if xp is not np:
        raise ValueError("compiled=True: the numba kernels take NumPy arrays only")
    if _compiled is None:
        try:
            import numba
        except ImportError:
            _compiled = False
        else:
            _compiled = _Kernels(numba)
    if _compiled is False:
        if compiled:
            raise ImportError("compiled=True needs numba (pip install minigrad[cpu])")
        return None
    return _compiled


# ---------------------------------------------------------------- on a net's batch (segnets.evaluate / predict --crf)
CRF_OPTIONS = ("iterations", "w1", "theta_alpha", "theta_beta", "w2", "theta_gamma", "method")
CRF_OPT_HELP = ("dense CRF option, repeatable: iterations, w1, theta_alpha, theta_beta, w2, theta_gamma "
                "(colours 0-255, distances in pixels), method=lattice|exact")  # --crf-opt of evaluate and predict


def check_options(options, flag="--crf-opt"):
    """``options`` (e.g. from ``--crf-opt KEY=VALUE``) as dense_crf keyword arguments, or a ValueError naming ``flag``."""
    unknown = sorted(set(options) - set(CRF_OPTIONS))
    if unknown:
        raise ValueError(f"{flag}: unknown option {', '.join(map(repr, unknown))}; known: {', '.join(CRF_OPTIONS)}")
    for key, value in options.items():
        if key == "method" and value not in METHODS:
            raise ValueError(f"{flag}: method must be one of {METHODS}, got {value!r}")
        if key != "method" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{flag}: {key} must be a number, got {value!r}")
        if key == "iterations" and (not isinstance(value, int) or value < 0):
            raise ValueError(f"{flag}: iterations must be an int >= 0, got {value!r}")
        if key.startswith("theta") and not (np.isfinite(value) and value > 0):
            raise ValueError(f"{flag}: {key} must be a finite number > 0, got {value!r}")
        if key in ("w1", "w2") and not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{flag}: {key} must be a finite number >= 0, got {value!r}")
    return dict(options)


def crf_batch(images, logits, mean, std, **options):
    """CRF marginals (N, classes, h, w) for a batch the net saw.

    ``images``: the normalised (N, channels, H, W) net input (``(x * std + mean) * 255``
    recovers 0-255 colours); ``logits``: the net's (N, classes, h, w) output, h <= H (the
    image is centre-cropped to it, as the masks are). NumPy or CuPy arrays.
    """
    xp = backend.get_array_module(logits)
    images, logits = xp.asarray(images), xp.asarray(logits)
    h, w = logits.shape[-2:]
    top, left = (images.shape[-2] - h) // 2, (images.shape[-1] - w) // 2
    images = images[..., top:top + h, left:left + w]
    channels = images.shape[1]
    mean = xp.asarray(mean, dtype=np.float32).reshape(-1)[:channels].reshape(1, -1, 1, 1)
    std = xp.asarray(std, dtype=np.float32).reshape(-1)[:channels].reshape(1, -1, 1, 1)
    colours = (images * std + mean) * 255.0
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = xp.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return xp.stack([dense_crf(colours[n].transpose(1, 2, 0), probabilities[n], **options)
                     for n in range(logits.shape[0])])
