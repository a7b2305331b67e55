"""Hand-written CUDA kernels: the GPU fast paths of im2col, col2im, pooling, cross-entropy and batch norm.

Each kernel computes exactly what the generic array code beside its op computes
(the tests on a GPU compare the two), one thread per output element unless said otherwise:

- ``im2col``: one thread per column entry, ``pad_value`` where the tap is in the padding.
- ``col2im``: a gather, one thread per input pixel, summing the column entries of
  the kernel taps that touch it in a fixed order: deterministic, no atomics.
- ``max_pool2d``: one thread per window; the first maximum in row-major window
  order wins (the first NaN, if any), the switch is the int64 flat index h*W+w.
- ``cross_entropy``: log-softmax, target gather, class weights and label smoothing
  fused; forward one thread per pixel (keeping its log-sum-exp), backward one
  thread per logit. Range checks and the reduction stay in the generic code.
- ``scatter_to_planes``: one thread per value, written into zeroed (H*W) planes at its
  switch; ``accumulate`` adds with atomicAdd (exact, so deterministic, while a plane's
  switches are distinct), otherwise one of the values sharing a switch is kept, as in
  PyTorch's max_unpool2d. Switches are trusted: range checks stay in the generic code.
- ``gather_from_planes``: its adjoint, one thread per switch reading its plane entry.
- ``channel_sums``: batch norm's per-channel sums of (a - shift_a) and
  (a - shift_a) * (b - shift_b); each block reduces a fixed share of one channel
  through a shared-memory tree into one partial, the wrapper sums the partials:
  deterministic, no atomics.

They are compiled by CuPy (NVRTC) on first use and cached per dtype. Set
``MINIGRAD_CUDA_KERNELS=0`` to run the generic array code on CuPy instead.
"""
import functools
import os

import numpy as np

from . import backend

ENABLED = os.environ.get("MINIGRAD_CUDA_KERNELS", "1") != "0"
_THREADS = 256
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

# Index arithmetic is in long long: column arrays of large layers pass 2**31 elements.
SOURCE = r"""
extern "C" __global__ void im2col(const T* x, T* col, long long total,
        int H, int W, int KH, int KW, int OH, int OW,
        int SH, int SW, int PT, int PL, int DH, int DW, T pad_value) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        long long t = i;
        int ox = t % OW; t /= OW;
        int oy = t % OH; t /= OH;
        int kx = t % KW; t /= KW;
        int ky = t % KH; t /= KH;               /* t = n * C + c */
        int y = oy * SH - PT + ky * DH;
        int x_ = ox * SW - PL + kx * DW;
        col[i] = (y >= 0 && y < H && x_ >= 0 && x_ < W) ? x[(t * H + y) * W + x_] : pad_value;
    }
}

extern "C" __global__ void col2im(const T* col, T* img, long long total,
        int H, int W, int KH, int KW, int OH, int OW,
        int SH, int SW, int PT, int PL, int DH, int DW) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        int w = i % W;
        int h = (i / W) % H;
        long long plane = i / ((long long)H * W);  /* n * C + c */
        T sum = 0;
        for (int ky = 0; ky < KH; ++ky) {
            int ys = h + PT - ky * DH;
            if (ys < 0 || ys % SH != 0 || ys / SH >= OH) continue;
            for (int kx = 0; kx < KW; ++kx) {
                int xs = w + PL - kx * DW;
                if (xs < 0 || xs % SW != 0 || xs / SW >= OW) continue;
                sum += col[(((plane * KH + ky) * KW + kx) * OH + ys / SH) * OW + xs / SW];
            }
        }
        img[i] = sum;
    }
}

extern "C" __global__ void max_pool(const T* x, T* out, long long* index, long long total,
        int H, int W, int KH, int KW, int OH, int OW,
        int SH, int SW, int PT, int PL, int DH, int DW) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        int ox = i % OW;
        int oy = (i / OW) % OH;
        const T* plane = x + (i / ((long long)OH * OW)) * H * W;
        T best = 0;
        long long best_at = -1;
        for (int ky = 0; ky < KH; ++ky) {
            int y = oy * SH - PT + ky * DH;
            if (y < 0 || y >= H) continue;
            for (int kx = 0; kx < KW; ++kx) {
                int x_ = ox * SW - PL + kx * DW;
                if (x_ < 0 || x_ >= W) continue;
                T v = plane[y * W + x_];
                if (best_at < 0 || v > best || (isnan(v) && !isnan(best))) {
                    best = v;
                    best_at = (long long)y * W + x_;
                }
            }
        }
        out[i] = best;
        index[i] = best_at;
    }
}

/* x: (N, C, L) logits, target: (N, L) class indices with ignored entries already
   mapped to 0 and valid = 0, weight: (C,) class weights (ones without weights). */
extern "C" __global__ void cross_entropy_forward(const T* x, const long long* target, const bool* valid,
        const T* weight, T* loss, T* lse, long long total, int C, long long L, T smoothing) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const T* logits = x + (i / L) * C * L + i % L;   /* class c at logits[c * L] */
        T top = logits[0];
        for (int c = 1; c < C; ++c) top = logits[c * L] > top ? logits[c * L] : top;
        T sum = 0;
        for (int c = 0; c < C; ++c) sum += exp(logits[c * L] - top);
        T log_sum = top + log(sum);
        lse[i] = log_sum;
        if (!valid[i]) { loss[i] = 0; continue; }
        T smooth = 0;
        if (smoothing > 0)
            for (int c = 0; c < C; ++c) smooth += weight[c] * (log_sum - logits[c * L]);
        long long t = target[i];
        loss[i] = (1 - smoothing) * weight[t] * (log_sum - logits[t * L]) + smoothing / C * smooth;
    }
}

/* grad[n, c, l] = factor * (S * softmax - coef), S = (1 - eps) w[t] + eps mean(w),
   coef = (1 - eps) w[t] [c == t] + eps / C w[c]; factor is 0 where ignored. */
extern "C" __global__ void cross_entropy_backward(const T* x, const long long* target, const T* weight,
        const T* lse, const T* factor, T* grad, long long total, int C, long long L,
        T smoothing, T mean_weight) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        long long n = i / ((long long)C * L), l = i % L;
        int c = (i / L) % C;
        long long pixel = n * L + l;
        long long t = target[pixel];
        T w_t = weight[t];
        T scale = (1 - smoothing) * w_t + smoothing * mean_weight;
        T coef = (c == t ? (1 - smoothing) * w_t : (T)0) + smoothing / C * weight[c];
        grad[i] = factor[pixel] * (scale * exp(x[i] - lse[pixel]) - coef);
    }
}

/* values, switches: (N, C, L); out: (N, C, P) planes, zeroed before the launch. Adding to 0 is
   exact, so accumulate = 1 is deterministic wherever a plane's switches are distinct. */
extern "C" __global__ void scatter_to_planes(const T* values, const long long* switches, T* out,
        long long total, long long L, long long P, int accumulate) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        T* target = out + (i / L) * P + switches[i];   /* plane i / L = n * C + c */
        if (accumulate) atomicAdd(target, values[i]);
        else *target = values[i];
    }
}

extern "C" __global__ void gather_from_planes(const T* planes, const long long* switches, T* out,
        long long total, long long L, long long P) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x)
        out[i] = planes[(i / L) * P + switches[i]];
}

/* a, b: contiguous (N, C, L). Block (p, c) sums (a - shift_a[c]) and (a - shift_a[c]) * (b - shift_b[c])
   over its grid-stride share of channel c's N * L elements (k = n * L + l: coalesced along l) and
   writes them to partial_a[c * gridDim.x + p], partial_ab[...]. The tree needs blockDim a power of
   two, at most 256; with blockDim 1 (the host build) it does not run. */
extern "C" __global__ void channel_sums(const T* a, const T* b, const T* shift_a, const T* shift_b,
        T* partial_a, T* partial_ab, long long N, int C, long long L) {
    __shared__ T sum_a[256], sum_ab[256];
    for (int c = blockIdx.y; c < C; c += gridDim.y) {
        T sa = shift_a[c], sb = shift_b[c], da_total = 0, dadb_total = 0;
        for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < N * L;
             k += (long long)blockDim.x * gridDim.x) {
            long long at = (k / L * C + c) * L + k % L;
            T da = a[at] - sa;
            da_total += da;
            dadb_total += da * (b[at] - sb);
        }
        sum_a[threadIdx.x] = da_total;
        sum_ab[threadIdx.x] = dadb_total;
        __syncthreads();
        for (int half = blockDim.x / 2; half > 0; half /= 2) {
            if (threadIdx.x < half) {
                sum_a[threadIdx.x] += sum_a[threadIdx.x + half];
                sum_ab[threadIdx.x] += sum_ab[threadIdx.x + half];
            }
            __syncthreads();
        }
        if (threadIdx.x == 0) {
            partial_a[(long long)c * gridDim.x + blockIdx.x] = sum_a[0];
            partial_ab[(long long)c * gridDim.x + blockIdx.x] = sum_ab[0];
        }
    }
}
"""
KERNEL_NAMES = ("im2col", "col2im", "max_pool", "cross_entropy_forward", "cross_entropy_backward",
                "scatter_to_planes", "gather_from_planes", "channel_sums")


def source_for(dtype):
    """The CUDA source for one dtype (``T`` spelled out), as NVRTC compiles it."""
    return "typedef %s T;\n%s" % (_CTYPES[np.dtype(dtype)], SOURCE)


def usable(array):
    """True when ``array`` is a float32/float64 CuPy array and the kernels are switched on."""
    return ENABLED and backend.device_of(array) == "gpu" and np.dtype(array.dtype) in _CTYPES


@functools.lru_cache(maxsize=None)
def _module(dtype_name):
    cp = backend.cupy()
    return cp.RawModule(code=source_for(dtype_name), options=("--std=c++11",))


def _kernel(name, array):
    return _module(np.dtype(array.dtype).name).get_function(name)


def _launch(name, array, total, args):
    """Run kernel ``name`` for ``array``'s dtype over ``total`` elements (grid-stride loop)."""
    kernel = _kernel(name, array)
    blocks = int(min(max((total + _THREADS - 1) // _THREADS, 1), 65535 * 8))
    kernel((blocks,), (_THREADS,), args)


def _geometry(kernel_size, out_size, stride, pad_before, dilation):
    values = (*kernel_size, *out_size, *stride, *pad_before, *dilation)
    return tuple(np.int32(v) for v in values)


def im2col(x, kernel_size, stride, pad_before, dilation, out_size, pad_value):
    """(N, C, H, W) -> contiguous (N, C, kh, kw, OH, OW), like the generic ``im2col``."""
    cp = backend.cupy()
    x = cp.ascontiguousarray(x)
    n, c, h, w = x.shape
    col = cp.empty((n, c) + tuple(kernel_size) + tuple(out_size), dtype=x.dtype)
    total = col.size
    _launch("im2col", x, total, (x, col, np.int64(total), np.int32(h), np.int32(w),
                                 *_geometry(kernel_size, out_size, stride, pad_before, dilation),
                                 x.dtype.type(pad_value)))
    return col


def col2im(col, input_size, stride, pad_before, dilation):
    """(N, C, kh, kw, OH, OW) -> (N, C, H, W), summing overlaps, like the generic ``col2im``."""
    cp = backend.cupy()
    col = cp.ascontiguousarray(col)
    n, c, kh, kw, oh, ow = col.shape
    h, w = input_size
    img = cp.empty((n, c, h, w), dtype=col.dtype)
    total = img.size
    _launch("col2im", col, total, (col, img, np.int64(total), np.int32(h), np.int32(w),
                                   *_geometry((kh, kw), (oh, ow), stride, pad_before, dilation)))
    return img


def max_pool2d(x, kernel_size, stride, pad_before, dilation, out_size):
    """(values, int64 switches) of every window, like the generic max-pool."""
    cp = backend.cupy()
    x = cp.ascontiguousarray(x)
    n, c, h, w = x.shape
    out = cp.empty((n, c) + tuple(out_size), dtype=x.dtype)
    index = cp.empty(out.shape, dtype=np.int64)
    total = out.size
    _launch("max_pool", x, total, (x, out, index, np.int64(total), np.int32(h), np.int32(w),
                                   *_geometry(kernel_size, out_size, stride, pad_before, dilation)))
    return out, index


def cross_entropy_forward(x, index, valid, class_weight, smoothing):
    """Per-element loss and log-sum-exp of (N, C, d...) logits; ``index`` has ignored entries at 0."""
    cp = backend.cupy()
    x = cp.ascontiguousarray(x)
    n, classes = x.shape[:2]
    weight = cp.ones(classes, x.dtype) if class_weight is None else cp.ascontiguousarray(class_weight, x.dtype)
    loss = cp.empty(index.shape, dtype=x.dtype)
    lse = cp.empty(index.shape, dtype=x.dtype)
    total, per_sample = loss.size, loss.size // max(n, 1)
    _launch("cross_entropy_forward", x, total, (
        x, cp.ascontiguousarray(index, np.int64), cp.ascontiguousarray(valid), weight, loss, lse,
        np.int64(total), np.int32(classes), np.int64(per_sample), x.dtype.type(smoothing)))
    return loss, lse


def cross_entropy_backward(x, index, class_weight, lse, factor, smoothing):
    """Gradient w.r.t. the logits, given the per-element upstream ``factor`` (0 where ignored)."""
    cp = backend.cupy()
    x = cp.ascontiguousarray(x)
    classes = x.shape[1]
    weight = cp.ones(classes, x.dtype) if class_weight is None else cp.ascontiguousarray(class_weight, x.dtype)
    grad = cp.empty(x.shape, dtype=x.dtype)
    total = grad.size
    _launch("cross_entropy_backward", x, total, (
        x, cp.ascontiguousarray(index, np.int64), weight, lse, cp.ascontiguousarray(factor, x.dtype), grad,
        np.int64(total), np.int32(classes), np.int64(lse.size // max(x.shape[0], 1)),
        x.dtype.type(smoothing), x.dtype.type(float(weight.mean()))))
    return grad


def _per_plane(shape):
    """Elements per (n, c) plane of an (N, C, ...) shape."""
    return int(np.prod(shape[2:], dtype=np.int64))


def scatter_to_planes(values, switches, plane_size, accumulate):
    """(N, C, ...) values into zeroed (N, C, H, W) planes at their switches: shared switches add
    if ``accumulate``, else one of their values is kept (max_unpool2d)."""
    cp = backend.cupy()
    values = cp.ascontiguousarray(values)
    out = cp.zeros(values.shape[:2] + tuple(plane_size), dtype=values.dtype)
    total = values.size
    _launch("scatter_to_planes", values, total, (
        values, cp.ascontiguousarray(switches, np.int64), out, np.int64(total),
        np.int64(_per_plane(values.shape)), np.int64(_per_plane(out.shape)), np.int32(bool(accumulate))))
    return out


def gather_from_planes(planes, switches):
    """The (N, C, H, W) planes' entries at (N, C, ...) switches: the adjoint of ``scatter_to_planes``."""
    cp = backend.cupy()
    planes = cp.ascontiguousarray(planes)
    switches = cp.ascontiguousarray(switches, np.int64)
    out = cp.empty(switches.shape, dtype=planes.dtype)
    total = out.size
    _launch("gather_from_planes", planes, total, (
        planes, switches, out, np.int64(total), np.int64(_per_plane(switches.shape)),
        np.int64(_per_plane(planes.shape))))
    return out


def channel_sums(a, b=None, shift_a=None, shift_b=None):
    """Per-channel (sum of (a - shift_a), sum of (a - shift_a) * (b - shift_b)) over all but axis 1
    of (N, C, ...) arrays; b defaults to a, shift_a to 0, shift_b to shift_a. Deterministic."""
    cp = backend.cupy()
    a = cp.ascontiguousarray(a)
    n, c = a.shape[:2]
    length = _per_plane(a.shape)
    b = a if b is None else cp.ascontiguousarray(b, a.dtype)
    shift_a = cp.zeros(c, a.dtype) if shift_a is None else cp.ascontiguousarray(shift_a, a.dtype).reshape(c)
    shift_b = shift_a if shift_b is None else cp.ascontiguousarray(shift_b, a.dtype).reshape(c)
    # Up to 64 blocks a channel, to fill the GPU when C is small; past one block, >= 8 elements a thread.
    blocks = int(min(64, max(-(-n * length // (_THREADS * 8)), 1)))
    partial = cp.empty((2, c, blocks), dtype=a.dtype)
    if c > 0:
        _kernel("channel_sums", a)((blocks, min(c, 65535)), (_THREADS,), (
            a, b, shift_a, shift_b, partial[0], partial[1], np.int64(n), np.int32(c), np.int64(length)))
    sums = partial.sum(axis=2)  # a fixed order over the partials
    return sums[0], sums[1]
