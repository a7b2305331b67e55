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
  and not quite isotropic), in O(N d^2) time.

Defaults: DeepLab-CRF-LargeFOV's published settings (Chen et al., ICLR 2015:
w2 = 3 and theta_gamma = 3 fixed, w1, theta_alpha, theta_beta cross-validated on
val images; the authors' release uses w1 = 4, theta_alpha = 121, theta_beta = 5)
and 10 mean-field iterations, for VOC-sized images (about 500x375) with 0-255
colours. ``DEEPLAB_V2_RESNET`` holds DeepLab v2's (TPAMI 2017) values for its
ResNet-101 model (w1 = 4, theta_alpha = 67, theta_beta = 3, w2 = 3, theta_gamma = 1).
"""
import math

import numpy as np

from minigrad import backend

DEEPLAB_V1_LARGEFOV = {"w1": 4.0, "theta_alpha": 121.0, "theta_beta": 5.0, "w2": 3.0, "theta_gamma": 3.0}
DEEPLAB_V2_RESNET = {"w1": 4.0, "theta_alpha": 67.0, "theta_beta": 3.0, "w2": 3.0, "theta_gamma": 1.0}
METHODS = ("lattice", "exact")
EXACT_MAX_PIXELS = 4096  # the exact kernels are N x N: 134 MB each in float64 at this size


def dense_crf(image, probabilities, iterations=10, w1=4.0, theta_alpha=121.0, theta_beta=5.0, w2=3.0,
              theta_gamma=3.0, method="lattice", epsilon=1e-8):
    """Mean-field marginals Q (num_classes, H, W) of the dense CRF on ``image`` and ``probabilities``.

    ``image``: (H, W, channels) colours on the scale ``theta_beta`` is meant for (0-255 for the
    defaults); ``probabilities``: (num_classes, H, W), e.g. a softmax, clipped at ``epsilon``
    before the log. ``argmax(axis=0)`` of the result is the CRF's labelling. See the module
    docstring for the model, the defaults' source and the two methods.
    """
    xp, unary, features = _prepare(image, probabilities, w1, theta_alpha, theta_beta, w2, theta_gamma,
                                   method, epsilon)
    if not isinstance(iterations, (int, np.integer)) or isinstance(iterations, bool) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    filters = _filters(xp, features, method, (w1, w2))
    q = _softmax(xp, -unary)
    for _ in range(iterations):
        q = _softmax(xp, -unary + _message(q, filters))
    num_classes, h, w = probabilities.shape
    return q.T.reshape(num_classes, h, w)


def mean_field_energy(image, probabilities, marginals, w1=4.0, theta_alpha=121.0, theta_beta=5.0, w2=3.0,
                      theta_gamma=3.0, epsilon=1e-8):
    """The mean-field free energy that ``dense_crf(method="exact")`` lowers at every iteration.

    F(Q) = sum_i Q_i . (U_i + log Q_i) - 1/2 sum_m w_m sum_{i,j} Kn_m(i, j) Q_i . Q_j, with Kn the
    symmetrically normalised kernels (self terms included): KL(Q || P) up to a constant for that
    model. Exact O(N^2) kernels, so for small images only.
    """
    xp, unary, features = _prepare(image, probabilities, w1, theta_alpha, theta_beta, w2, theta_gamma,
                                   "exact", epsilon)
    filters = _filters(xp, features, "exact", (w1, w2))
    q = xp.asarray(marginals, dtype=unary.dtype).reshape(unary.shape[1], -1).T
    entropy_term = float((q * (unary + xp.log(xp.maximum(q, 1e-300)))).sum())
    message = _message(q, filters)
    return entropy_term - 0.5 * float((q * message).sum())


# ---------------------------------------------------------------- setup and the mean-field step
def _prepare(image, probabilities, w1, theta_alpha, theta_beta, w2, theta_gamma, method, epsilon):
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
    p = xp.asarray(probabilities, dtype=np.float64 if method == "exact" else np.float32)
    unary = -xp.log(xp.maximum(p.reshape(num_classes, -1).T, epsilon))  # (N, classes)
    ys, xs = xp.meshgrid(xp.arange(h, dtype=p.dtype), xp.arange(w, dtype=p.dtype), indexing="ij")
    colours = xp.asarray(image, dtype=p.dtype).reshape(h * w, -1)
    appearance = xp.concatenate([xs.reshape(-1, 1) / theta_alpha, ys.reshape(-1, 1) / theta_alpha,
                                 colours / theta_beta], axis=1)
    positions = xp.stack([xs.reshape(-1), ys.reshape(-1)], axis=1) / theta_gamma
    return xp, unary, {"appearance": appearance, "smoothness": positions}


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
    deduplicated with a sort (``unique``), the vertices' neighbours along the d+1 lattice
    axes found with a binary search. Each ``apply`` is a sparse splat, d+1 gathers (the
    blur) and the transposed splat (the slice).
    """

    def __init__(self, features):
        xp = backend.get_array_module(features)
        self.xp = xp
        n, d = features.shape
        self.n, self.d = n, d
        f = xp.asarray(features, dtype=np.float64)
        # Scale so that the [1 2 1] blur along the d+1 axes approximates a unit-variance Gaussian
        # (the original's factor: (d + 1) sqrt(2/3) / sqrt((i + 1)(i + 2)) on axis i).
        i = xp.arange(1, d + 1, dtype=np.float64)
        cf = f * ((d + 1) * math.sqrt(2.0 / 3.0) / xp.sqrt(i * (i + 1)))
        suffix = xp.cumsum(cf[:, ::-1], axis=1)[:, ::-1]
        elevated = xp.empty((n, d + 1))
        elevated[:, 0] = suffix[:, 0]
        elevated[:, 1:] = xp.concatenate([suffix[:, 1:], xp.zeros((n, 1))], axis=1) - i * cf
        # The nearest remainder-0 point (coordinates multiples of d+1) and the residuals' ranks.
        down = xp.floor(elevated / (d + 1)) * (d + 1)
        up = down + (d + 1)
        rem0 = xp.where(up - elevated < elevated - down, up, down)
        total = xp.rint(rem0.sum(axis=1, keepdims=True) / (d + 1)).astype(np.int64)
        # rank of coordinate i: how many residuals are larger, ties going to the lower index
        # (a stable descending sort; (d+1)^2 vector comparisons beat argsort for d <= 5).
        residuals = xp.ascontiguousarray((elevated - rem0).T)
        rank = xp.zeros((d + 1, n), dtype=np.int64)
        for i in range(d + 1):
            for j in range(d + 1):
                if j != i:
                    rank[i] += residuals[j] >= residuals[i] if j < i else residuals[j] > residuals[i]
        rank = rank.T
        rows = xp.arange(n)[:, None]
        # Move onto the plane (coordinates summing to zero): wrap the ranks that overflow.
        over = (total > 0) & (rank >= d + 1 - total)
        under = (total < 0) & (rank < -total)
        shift = (under.astype(np.int64) - over.astype(np.int64)) * (d + 1)
        rem0 = rem0 + shift
        rank = rank + total + shift
        # Barycentric weights of the d+1 vertices.
        residual = (elevated - rem0) / (d + 1)
        bary = xp.zeros((n, d + 2))
        bary[rows, d - rank] += residual
        bary[rows, d + 1 - rank] -= residual
        bary[:, 0] += 1.0 + bary[:, d + 1]
        weights = bary[:, :d + 1]
        # Vertex r of each simplex: rem0 + r, minus d+1 on the coordinates of rank > d - r.
        # Hashed as one int64 each: digits (coordinate - low) in base ``base``, with a margin of
        # d+1 around every vertex so that neighbours' codes (below) cannot alias other keys.
        rem0 = rem0[:, :d].astype(np.int64)
        low = int(rem0.min()) - 2 * (d + 1)
        base = int(rem0.max()) + d - low + (d + 2)
        if base ** d >= 2 ** 62:
            raise ValueError(f"permutohedral lattice: features span too far to hash ({base}^{d} cells); "
                             "scale them down (larger thetas)")
        powers = xp.asarray([base ** k for k in range(d)], dtype=np.int64)
        origin = (rem0 - low).dot(powers)
        codes = xp.concatenate([origin + r * int(powers.sum()) - (d + 1) * (rank[:, :d] > d - r).astype(np.int64).dot(powers)
                                for r in range(d + 1)])  # (d+1) * n, vertex-major
        self.keys, index = xp.unique(codes, return_inverse=True)
        self.m = m = self.keys.shape[0]
        index = index.reshape(d + 1, n)
        # Splat / slice as a sparse (m, n) matrix with the barycentric weights.
        sparse = _sparse_module(xp)
        # Stored as the (n, m) slice in CSR and its transpose (CSC) for the splat: the splat then
        # reads the pixels in order and scatters into the small lattice (4x faster than a CSR splat).
        self.slice = sparse.csr_matrix((weights.reshape(-1).astype(np.float32), (xp.repeat(xp.arange(n), d + 1),
                                        index.T.reshape(-1))), shape=(n, m))
        self.splat = self.slice.T
        # Neighbours along each lattice axis j: the key minus 1 on every coordinate and plus d on
        # coordinate j (axis d: minus 1 on all d stored coordinates), and the opposite one; index m
        # (a zero row) where the neighbour is not in the lattice.
        self.neighbours = []
        for j in range(d + 1):
            step = -int(powers.sum())
            if j < d:
                step += (d + 1) * base ** j
            self.neighbours.append((self._find(self.keys + step), self._find(self.keys - step)))

    def _find(self, codes):
        xp = self.xp
        at = xp.searchsorted(self.keys, codes)
        at = xp.minimum(at, self.m - 1)
        return xp.where(self.keys[at] == codes, at, self.m)

    def apply(self, values):
        """(n, c) -> (n, c): the lattice's Gaussian filter of each column."""
        xp = self.xp
        dtype = values.dtype
        lattice = self.splat.dot(xp.asarray(values, dtype=np.float32))
        padded = xp.zeros((self.m + 1, lattice.shape[1]), dtype=np.float32)
        for minus, plus in self.neighbours:
            padded[:self.m] = lattice
            lattice = 0.5 * lattice + 0.25 * (padded[minus] + padded[plus])
        return xp.asarray(self.slice.dot(lattice), dtype=dtype)


def _sparse_module(xp):
    if xp is np:
        import scipy.sparse
        return scipy.sparse
    import cupyx.scipy.sparse
    return cupyx.scipy.sparse


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
