"""GPU fast paths: hand-written CUDA kernels (im2col, col2im, pooling, cross-entropy, batch norm, ReLU, SGD)
and cuBLAS products (``matmul``).

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
- ``channel_affine`` / ``batch_norm_input_grad``: batch norm's output and input
  gradient, one pass each with per-channel factors (no x - mean array).
- ``relu_grad``: ReLU's backward from its output; ``sgd_update``: torch.optim.SGD's
  step (momentum, dampening, weight decay, Nesterov) in one pass per parameter.

im2col can also write the batch folded next to the positions, (C, kh, kw, N, OH, OW), the
layout of the weight gradient's single product. Launches use at most 8192 blocks and a
grid-stride loop, so each thread handles several elements.

They are compiled by CuPy (NVRTC) on first use and cached per dtype. Set
``MINIGRAD_CUDA_KERNELS=0`` to run the generic array code on CuPy instead (the ops
reach these functions only through ``minigrad.kernels.get``, which honours it).
"""
import functools
import os

import numpy as np

from .. import backend
_THREADS = 256
# Blocks per launch, at most: each thread then walks several elements (grid-stride). One short-lived
# block per 256 elements made the memory-bound kernels schedule-bound: im2col of U-Net's first layer
# (1.1 GB of columns, H200) ran at 0.6 TB/s that way.
_MAX_BLOCKS = 8192
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

# Index arithmetic is in long long: column arrays of large layers pass 2**31 elements.
SOURCE = r"""
/* The conv kernels walk 2-D grids: blockIdx.y over planes (rows of the column array for im2col,
   (n, c) image planes for col2im), x over the positions inside one, so the per-element index
   arithmetic is one 32-bit division instead of four 64-bit ones. */
/* folded = N: the columns go out as (C, KH, KW, N, OH, OW) instead of (N, C, KH, KW, OH, OW), the
   batch folded into the positions (the weight gradient's one product); folded = 0: the usual layout. */
extern "C" __global__ void im2col(const T* x, T* col, long long rows,
        int H, int W, int KH, int KW, int OH, int OW,
        int SH, int SW, int PT, int PL, int DH, int DW, T pad_value, int folded) {
    int positions = OH * OW;
    long long rows_per_sample = folded ? rows / folded : rows;
    for (long long r = blockIdx.y; r < rows; r += gridDim.y) {   /* r = ((n * C + c) * KH + ky) * KW + kx */
        int kx = r % KW, ky = r / KW % KH;
        const T* plane = x + r / (KH * KW) * H * W;
        long long to = folded ? r % rows_per_sample * folded + r / rows_per_sample : r;
        T* out = col + to * positions;
        for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < positions; p += blockDim.x * gridDim.x) {
            int oy = p / OW, ox = p - oy * OW;
            int y = oy * SH - PT + ky * DH;
            int x_ = ox * SW - PL + kx * DW;
            out[p] = (y >= 0 && y < H && x_ >= 0 && x_ < W) ? plane[y * W + x_] : pad_value;
        }
    }
}

/* Without dilation only every SH-th kernel row (every SW-th column) can reach a pixel: those
   are the only taps visited (4 of FCN-32s's 64x64 / 32 taps). accumulate: add to img. */
extern "C" __global__ void col2im(const T* col, T* img, long long planes,
        int H, int W, int KH, int KW, int OH, int OW,
        int SH, int SW, int PT, int PL, int DH, int DW, int accumulate) {
    int pixels = H * W;
    for (long long plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const T* taps = col + plane * KH * KW * OH * OW;
        T* out = img + plane * pixels;
        for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < pixels; p += blockDim.x * gridDim.x) {
            int h = p / W, w = p - h * W;
            T sum = 0;
            for (int ky = DH == 1 ? (h + PT) % SH : 0; ky < KH; ky += DH == 1 ? SH : 1) {
                int ys = h + PT - ky * DH;
                if (ys < 0) break;                    /* ys only falls as ky grows */
                if (ys % SH != 0 || ys / SH >= OH) continue;
                for (int kx = DW == 1 ? (w + PL) % SW : 0; kx < KW; kx += DW == 1 ? SW : 1) {
                    int xs = w + PL - kx * DW;
                    if (xs < 0) break;
                    if (xs % SW != 0 || xs / SW >= OW) continue;
                    sum += taps[((long long)(ky * KW + kx) * OH + ys / SH) * OW + xs / SW];
                }
            }
            out[p] = accumulate ? out[p] + sum : sum;
        }
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
        /* k = n * L + l walks the channel's N planes; the division by L is done once, then n and l step */
        long long stride = (long long)blockDim.x * gridDim.x;
        long long k0 = blockIdx.x * (long long)blockDim.x + threadIdx.x;
        long long n = k0 / L, l = k0 % L, step_n = stride / L, step_l = stride % L;
        for (; n < N; n += step_n, l += step_l) {
            if (l >= L) { l -= L; ++n; if (n >= N) break; }
            long long at = (n * C + c) * L + l;
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

/* Batch norm's two per-element passes over contiguous (N, C, L), one thread per element along l of
   plane blockIdx.y = n * C + c (so no division per element):
   forward:  y  = (x - mean[c]) * scale[c] + shift[c]
   backward: dx = g * gain[c] - (x - mean[c]) * slope[c] - offset[c]    (slope, offset: 0 in eval) */
extern "C" __global__ void channel_affine(const T* x, const T* mean, const T* scale, const T* shift, T* y,
        long long planes, int C, int L) {
    for (long long plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        int c = plane % C;
        T m = mean[c], k = scale[c], b = shift[c];
        for (int l = blockIdx.x * blockDim.x + threadIdx.x; l < L; l += blockDim.x * gridDim.x)
            y[plane * L + l] = (x[plane * L + l] - m) * k + b;
    }
}

extern "C" __global__ void batch_norm_input_grad(const T* g, const T* x, const T* mean, const T* gain,
        const T* slope, const T* offset, T* dx, long long planes, int C, int L) {
    for (long long plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        int c = plane % C;
        T m = mean[c], k = gain[c], s = slope[c], o = offset[c];
        for (int l = blockIdx.x * blockDim.x + threadIdx.x; l < L; l += blockDim.x * gridDim.x) {
            long long at = plane * L + l;
            dx[at] = g[at] * k - (x[at] - m) * s - o;
        }
    }
}

/* One SGD step of one parameter, torch.optim.SGD's arithmetic in one pass (p, buf updated in place):
   d = g + wd * p;  buf = first ? d : momentum * buf + (1 - dampening) * d;  d = nesterov ? d + momentum * buf : buf;
   p -= lr * d.  Without momentum buf is not touched (and may be p). */
extern "C" __global__ void sgd_update(T* p, const T* g, T* buf, long long total, T lr, T momentum, T dampening,
        T weight_decay, int nesterov, int first) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        T d = g[i];
        if (weight_decay != 0) d = d + weight_decay * p[i];
        if (momentum != 0) {
            T b = first ? d : momentum * buf[i] + (1 - dampening) * d;
            buf[i] = b;
            d = nesterov ? d + momentum * b : b;
        }
        p[i] -= lr * d;
    }
}

/* ReLU's gradient from its output: g where y > 0, else 0 (one pass, no mask array) */
extern "C" __global__ void relu_grad(const T* g, const T* y, T* dx, long long total) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x)
        dx[i] = y[i] > 0 ? g[i] : (T)0;
}
"""
KERNEL_NAMES = ("im2col", "col2im", "max_pool", "cross_entropy_forward", "cross_entropy_backward",
                "scatter_to_planes", "gather_from_planes", "channel_sums", "channel_affine",
                "batch_norm_input_grad", "relu_grad", "sgd_update")


def source_for(dtype):
    """The CUDA source for one dtype (``T`` spelled out), as NVRTC compiles it."""
    return "typedef %s T;\n%s" % (_CTYPES[np.dtype(dtype)], SOURCE)


def usable(array):
    """True when ``array`` is a float32/float64 CuPy array and the CUDA kernels are switched on."""
    from . import get
    return get("im2col", array) is not None and backend.device_of(array) == "gpu"


@functools.lru_cache(maxsize=None)
def _module(dtype_name):
    cp = backend.cupy()
    return cp.RawModule(code=source_for(dtype_name), options=("--std=c++11",))


def _kernel(name, array):
    return _module(np.dtype(array.dtype).name).get_function(name)


def _launch(name, array, total, args):
    """Run kernel ``name`` for ``array``'s dtype over ``total`` elements (grid-stride loop)."""
    kernel = _kernel(name, array)
    blocks = int(min(max((total + _THREADS - 1) // _THREADS, 1), _MAX_BLOCKS))
    kernel((blocks,), (_THREADS,), args)


def _geometry(kernel_size, out_size, stride, pad_before, dilation):
    values = (*kernel_size, *out_size, *stride, *pad_before, *dilation)
    return tuple(np.int32(v) for v in values)


def _plane_launch(name, array, planes, per_plane, args):
    """Run a 2-D-grid kernel: blockIdx.y over ``planes``, x over ``per_plane`` positions each."""
    threads = int(min(_THREADS, max(32, -(-per_plane // 32) * 32)))  # small planes: no idle warps
    across = int(min(max(-(-per_plane // threads), 1), 32))          # blocks along one plane
    down = int(min(max(planes, 1), max(_MAX_BLOCKS // across, 1), 65535))
    _kernel(name, array)((across, down), (threads,), args)


def im2col(x, kernel_size, stride, pad_before, dilation, out_size, pad_value=0.0, out=None, folded=False):
    """(N, C, H, W) -> contiguous (N, C, kh, kw, OH, OW), like the generic ``im2col``;
    ``folded``: (C, kh, kw, N, OH, OW) instead, the batch next to the positions.
    ``out``: a contiguous array of the result's size to write into."""
    cp = backend.cupy()
    x = cp.ascontiguousarray(x)
    n, c, h, w = x.shape
    shape = (c,) + tuple(kernel_size) + (n,) if folded else (n, c) + tuple(kernel_size)
    shape += tuple(out_size)
    col = cp.empty(shape, dtype=x.dtype) if out is None else out.reshape(shape)
    rows = n * c * kernel_size[0] * kernel_size[1]
    if col.size:
        _plane_launch("im2col", x, rows, out_size[0] * out_size[1], (
            x, col, np.int64(rows), np.int32(h), np.int32(w),
            *_geometry(kernel_size, out_size, stride, pad_before, dilation), x.dtype.type(pad_value),
            np.int32(n if folded else 0)))
    return col


def col2im(col, input_size, stride, pad_before, dilation, out=None):
    """(N, C, kh, kw, OH, OW) -> (N, C, H, W), summing overlaps, like the generic ``col2im``.

    ``out``: add into it instead (in place when it is C-contiguous); returns the result.
    """
    cp = backend.cupy()
    col = cp.ascontiguousarray(col)
    n, c, kh, kw, oh, ow = col.shape
    h, w = input_size
    accumulate = out is not None and out.flags.c_contiguous
    img = out if accumulate else cp.empty((n, c, h, w), dtype=col.dtype)
    if img.size:
        _plane_launch("col2im", col, n * c, h * w, (
            col, img, np.int64(n * c), np.int32(h), np.int32(w),
            *_geometry((kh, kw), (oh, ow), stride, pad_before, dilation), np.int32(accumulate)))
    if out is not None and not accumulate:
        out += img
        return out
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
    # mean_weight matters only with smoothing; reading it back waits for the GPU, so only then
    _launch("cross_entropy_backward", x, total, (
        x, cp.ascontiguousarray(index, np.int64), weight, lse, cp.ascontiguousarray(factor, x.dtype), grad,
        np.int64(total), np.int32(classes), np.int64(lse.size // max(x.shape[0], 1)),
        x.dtype.type(smoothing), x.dtype.type(float(weight.mean()) if class_weight is not None and smoothing else 1.0)))
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


def _per_channel(values, like):
    return backend.cupy().ascontiguousarray(values, like.dtype).reshape(-1)


def channel_affine(x, mean, scale, shift):
    """(x - mean[c]) * scale[c] + shift[c] over (N, C, ...): batch norm's output in one pass."""
    cp = backend.cupy()
    x = cp.ascontiguousarray(x)
    n, c = x.shape[:2]
    y = cp.empty_like(x)
    if y.size:
        _plane_launch("channel_affine", x, n * c, _per_plane(x.shape), (
            x, _per_channel(mean, x), _per_channel(scale, x), _per_channel(shift, x), y,
            np.int64(n * c), np.int32(c), np.int32(_per_plane(x.shape))))
    return y


def batch_norm_input_grad(g, x, mean, gain, slope, offset):
    """g * gain[c] - (x - mean[c]) * slope[c] - offset[c] over (N, C, ...): batch norm's input gradient."""
    cp = backend.cupy()
    g, x = cp.ascontiguousarray(g, x.dtype), cp.ascontiguousarray(x)
    n, c = x.shape[:2]
    dx = cp.empty_like(x)
    if dx.size:
        _plane_launch("batch_norm_input_grad", x, n * c, _per_plane(x.shape), (
            g, x, _per_channel(mean, x), _per_channel(gain, x), _per_channel(slope, x),
            _per_channel(offset, x), dx, np.int64(n * c), np.int32(c), np.int32(_per_plane(x.shape))))
    return dx


def relu_grad(g, y):
    """g where y > 0, else 0: ReLU's backward from its output."""
    cp = backend.cupy()
    g, y = cp.ascontiguousarray(g, y.dtype), cp.ascontiguousarray(y)
    dx = cp.empty_like(y)
    if dx.size:
        _launch("relu_grad", y, dx.size, (g, y, dx, np.int64(dx.size)))
    return dx


def sgd_update(param, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """One SGD step in place on contiguous ``param`` (and ``buf``, the momentum buffer, unless momentum is 0)."""
    cp = backend.cupy()
    grad = cp.ascontiguousarray(grad, param.dtype)
    t = param.dtype.type
    if param.size:
        _launch("sgd_update", param, param.size, (
            param, grad, param if buf is None else buf, np.int64(param.size), t(lr), t(momentum), t(dampening),
            t(weight_decay), np.int32(bool(nesterov)), np.int32(bool(first))))


# ---------------------------------------------------------------------------- cuBLAS products
def matmul(a, b, out, transpose_a=False, transpose_b=False, accumulate=False):
    """out = op(a) @ op(b) (+ out if ``accumulate``), batched like ``numpy.matmul``: cuBLAS calls, no copies.

    Shapes as the convolutions use them: 2-D a (m, k) with 2-D or 3-D b; 3-D a (g, m, k)
    (one matrix per group) with 3-D b (g, k, n) or 4-D b (batch, g, k, n). One strided-batched
    call per group; the group's weight is shared by every batch entry (batch stride 0).
    """
    if a.ndim == 3:
        for group in range(a.shape[0]):
            if b.ndim == 4:
                gemm(a[group], b[:, group], out[:, group], transpose_a, transpose_b, accumulate)
            else:
                gemm(a[group], b[group], out[group], transpose_a, transpose_b, accumulate)
        return out
    return gemm(a, b, out, transpose_a, transpose_b, accumulate)


def gemm(a, b, out, transpose_a=False, transpose_b=False, accumulate=False):
    """out = op(a) @ op(b) (+ out if ``accumulate``) in one cuBLAS strided-batched call.

    Operands are 2-D (m, k) or 3-D (batch, m, k) views with unit stride along their last
    axis; any row and batch strides are passed to cuBLAS as they are, so views (a group of
    channels, a block of rows) need no copy, and a 2-D operand is shared by every batch
    entry (batch stride 0: the weight). op(a) is a.T when ``transpose_a``: cuBLAS reads the
    stored matrix transposed in place, where ``cupy.matmul`` would copy a transposed view
    first. Uses TF32 only when CuPy does (``CUPY_TF32=1``).
    """
    import cupy
    from cupy_backends.cuda.libs import cublas

    if out.size == 0:
        return out
    if (a.shape[-2] if transpose_a else a.shape[-1]) == 0:  # an empty sum
        if not accumulate:
            out[...] = 0
        return out

    def layout(array):
        """(row stride, batch stride) in elements; copies only an operand whose last axis is strided."""
        if array.strides[-1] != array.itemsize:
            array = cupy.ascontiguousarray(array)
        rows = array.strides[-2] // array.itemsize if array.shape[-2] > 1 else array.shape[-1]
        return array, max(rows, 1), (array.strides[0] // array.itemsize if array.ndim == 3 else 0)

    batch = out.shape[0] if out.ndim == 3 else 1
    a, lda, stride_a = layout(a)
    b, ldb, stride_b = layout(b)
    out_view, ldc, stride_c = layout(out)
    m, n = out.shape[-2:]
    k = a.shape[-2] if transpose_a else a.shape[-1]
    # cuBLAS is column-major: it computes out^T (n x m) = op(b)^T @ op(a)^T on the same memory.
    dtype = np.dtype(out.dtype)
    if dtype == np.float64:
        cuda_type, compute = cupy.cuda.runtime.CUDA_R_64F, cublas.CUBLAS_COMPUTE_64F
    else:
        cuda_type = cupy.cuda.runtime.CUDA_R_32F
        compute = cublas.CUBLAS_COMPUTE_32F_FAST_TF32 if _tf32() else cublas.CUBLAS_COMPUTE_32F
    one, beta = np.array(1, dtype), np.array(1 if accumulate else 0, dtype)
    cublas.gemmStridedBatchedEx(
        cupy.cuda.device.get_cublas_handle(),
        cublas.CUBLAS_OP_T if transpose_b else cublas.CUBLAS_OP_N,
        cublas.CUBLAS_OP_T if transpose_a else cublas.CUBLAS_OP_N,
        n, m, k, one.ctypes.data,
        b.data.ptr, cuda_type, ldb, stride_b,
        a.data.ptr, cuda_type, lda, stride_a,
        beta.ctypes.data, out_view.data.ptr, cuda_type, ldc, stride_c,
        batch, compute, cublas.CUBLAS_GEMM_DEFAULT)
    if out_view is not out:
        out[...] = out_view
    return out


def _tf32():
    return os.environ.get("CUPY_TF32", "0") == "1"
