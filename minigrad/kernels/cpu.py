"""CPU fast paths: numba-compiled kernels, parallel over (sample, channel) planes on every allowed core.

The same functions, arguments and results as ``minigrad.kernels.cuda`` (where both have one),
each computing what the generic array code computes (tests/test_kernels.py compares them):
im2col (also batch-folded), col2im, max_pool2d, scatter_to_planes / gather_from_planes (the
max-pool gradient and unpooling), batch norm's channel_sums / channel_affine /
batch_norm_input_grad, relu / relu_grad, sgd_update, and the matrix products ``matmul``
(the convolutions' grouped forms) and ``batched_matmul`` (``minigrad.matmul``, ``linear``),
split over the pool as single-threaded OpenBLAS calls (each share one compiled call,
``_gemm_share``). CPU only: ``run_in_shares`` (each thread runs whole convolution tiles),
``conv2d_taps`` / ``conv2d_taps_weight_grad`` (stride-1 convolution as shifted products,
without a column array), ``conv2d_windows`` and its two gradients (kernels at least four times
the output's width, as FCN's upsampling: position-major columns) and ``channel_moments`` (batch
norm's mean and variance in one pass), and ``cross_entropy_forward`` / ``cross_entropy_backward``
(the CUDA kernels' formulas over blocks of pixels, with an exp of their own that LLVM vectorises:
numba's loops call libm's scalar exp, which made a per-pixel loop 2.4x slower than NumPy's).

NumPy runs its copies and ufuncs on one core; these loops split the work over
``minigrad.get_num_threads()`` threads, which is why they exist. Each kernel is compiled
serial and without the GIL (``nogil``)
and handles a range of planes or elements; a persistent thread pool runs the shares at once.
(numba's own ``parallel=True`` was measured too: it took ~5x longer to compile, and its
default threading layer may not be entered from two Python threads at once.)

numba is optional (``pip install minigrad[cpu]``); without it ``AVAILABLE`` is False and the
ops run the generic NumPy code. Compiled code is cached on disk (``cache=True``, numba's
cache directory rules), so only a machine's first run compiles (a few seconds per dtype).
Reductions accumulate in float64, per (n, c) plane, then the planes in a fixed order: the same
result for any thread count. ``MINIGRAD_CPU_KERNELS=0`` switches all of them off.
"""
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..threads import get_num_threads

try:
    import numba
    from numba import njit
except ImportError:  # the optional extra is not installed: the generic code runs
    numba = None
AVAILABLE = numba is not None

if AVAILABLE:
    _jit = _serial = njit(cache=True, fastmath=False, error_model="numpy", nogil=True)
    # Unsigned indices skip numba's negative-index wrap-around test, which keeps LLVM from
    # vectorising the inner loops (measured: a row copy 1.6x faster). Only for indices >= 0.
    _u = np.uintp

    # ------------------------------------------------------------------ im2col / col2im
    @_serial
    def _taps_inside(size, out, kernel_pos, stride, pad):
        """First and one-past-last output index whose tap lands inside [0, size)."""
        lo = 0
        while lo < out and lo * stride - pad + kernel_pos < 0:
            lo += 1
        hi = out
        while hi > lo and (hi - 1) * stride - pad + kernel_pos >= size:
            hi -= 1
        return lo, hi

    @_jit
    def _im2col(lo, hi, x, col, folded, kh, kw, oh, ow, sh, sw, pt, pl, dh, dw, pad):
        c, h, w = x.shape[1], x.shape[2], x.shape[3]
        for plane in range(lo, hi):
            i, ch = plane // c, plane % c
            for ky in range(kh):
                for kx in range(kw):
                    x_lo, x_hi = _taps_inside(w, ow, kx * dw, sw, pl)
                    shift = kx * dw - pl
                    for oy in range(oh):
                        y = oy * sh - pt + ky * dh
                        if folded:
                            row = col[ch, ky, kx, i, oy]
                        else:
                            row = col[i, ch, ky, kx, oy]
                        if y < 0 or y >= h:
                            for ox in range(ow):
                                row[_u(ox)] = pad
                            continue
                        src = x[i, ch, y]
                        for ox in range(x_lo):
                            row[_u(ox)] = pad
                        if sw == 1:
                            for ox in range(x_lo, x_hi):
                                row[_u(ox)] = src[_u(ox + shift)]
                        else:
                            for ox in range(x_lo, x_hi):
                                row[_u(ox)] = src[_u(ox * sw + shift)]
                        for ox in range(x_hi, ow):
                            row[_u(ox)] = pad

    @_jit
    def _im2col_by_taps(lo, hi, x, col, folded, kh, kw, oh, ow, sh, sw, pt, pl, dh, dw, pad):
        """``_im2col`` with the kernel's columns innermost: a run of kw source pixels per output
        position instead of a run of OW (FCN-32s's 64x64 kernel at 2x2 positions: rows of 2)."""
        c, h, w = x.shape[1], x.shape[2], x.shape[3]
        for plane in range(lo, hi):
            i, ch = plane // c, plane % c
            for ky in range(kh):
                for oy in range(oh):
                    y = oy * sh - pt + ky * dh
                    for ox in range(ow):
                        dst = col[ch, ky, :, i, oy, ox] if folded else col[i, ch, ky, :, oy, ox]
                        if y < 0 or y >= h:
                            dst[:] = pad
                            continue
                        base = ox * sw - pl
                        k_lo, k_hi = _taps_inside(w, kw, base, dw, 0)
                        src = x[i, ch, y]
                        for kx in range(k_lo):
                            dst[kx] = pad
                        for kx in range(k_lo, k_hi):
                            dst[kx] = src[_u(base + kx * dw)]
                        for kx in range(k_hi, kw):
                            dst[kx] = pad

    @_jit
    def _col2im_add_by_taps(lo, hi, col, img, sh, sw, pt, pl, dh, dw):
        """``_col2im_add`` with the kernel's columns innermost (see ``_im2col_by_taps``)."""
        c, kh, kw, oh, ow = col.shape[1], col.shape[2], col.shape[3], col.shape[4], col.shape[5]
        h, w = img.shape[2], img.shape[3]
        for plane in range(lo, hi):
            i, ch = plane // c, plane % c
            for ky in range(kh):
                for oy in range(oh):
                    y = oy * sh - pt + ky * dh
                    if y < 0 or y >= h:
                        continue
                    row = img[i, ch, y]
                    for ox in range(ow):
                        base = ox * sw - pl
                        k_lo, k_hi = _taps_inside(w, kw, base, dw, 0)
                        src = col[i, ch, ky, :, oy, ox]
                        for kx in range(k_lo, k_hi):
                            row[_u(base + kx * dw)] += src[kx]

    @_jit
    def _col2im_add(lo, hi, col, img, sh, sw, pt, pl, dh, dw):
        c, kh, kw, oh, ow = col.shape[1], col.shape[2], col.shape[3], col.shape[4], col.shape[5]
        h, w = img.shape[2], img.shape[3]
        for plane in range(lo, hi):
            i, ch = plane // c, plane % c
            for ky in range(kh):
                y_lo, y_hi = _taps_inside(h, oh, ky * dh, sh, pt)
                for kx in range(kw):
                    x_lo, x_hi = _taps_inside(w, ow, kx * dw, sw, pl)
                    shift = kx * dw - pl
                    for oy in range(y_lo, y_hi):
                        row = img[i, ch, oy * sh - pt + ky * dh]
                        src = col[i, ch, ky, kx, oy]
                        if sw == 1:
                            for ox in range(x_lo, x_hi):
                                row[_u(ox + shift)] += src[_u(ox)]
                        else:
                            for ox in range(x_lo, x_hi):
                                row[_u(ox * sw + shift)] += src[_u(ox)]

    # ------------------------------------------------------------------ window rows (see conv2d_windows)
    @_jit
    def _windows(lo, hi, img, rows, sh, sw, pt, pl, dh, dw, into_image):
        """Between an image (N, C, H, W) and its window rows (N, OH, OW, C, kh, kw: each output position's
        input window), for the (sample, channel) planes [lo, hi): ``into_image`` False: rows = the
        windows, zero outside the image; True: img += every row at its window (each plane is one
        thread's, so the overlapping adds never race). Runs of kw pixels, contiguous on both sides (dw = 1)."""
        c, h, w = img.shape[1], img.shape[2], img.shape[3]
        oh, ow, kh, kw = rows.shape[1], rows.shape[2], rows.shape[4], rows.shape[5]
        for plane in range(lo, hi):
            i, ch = plane // c, plane % c
            for oy in range(oh):
                for ox in range(ow):
                    base = ox * sw - pl
                    k_lo, k_hi = _taps_inside(w, kw, base, dw, 0)
                    for ky in range(kh):
                        window = rows[i, oy, ox, ch, ky]
                        y = oy * sh - pt + ky * dh
                        if y < 0 or y >= h:
                            if not into_image:
                                window[:] = 0
                            continue
                        line = img[i, ch, y]
                        if into_image:
                            for kx in range(k_lo, k_hi):
                                line[_u(base + kx * dw)] += window[_u(kx)]
                        else:
                            window[:k_lo] = 0
                            for kx in range(k_lo, k_hi):
                                window[_u(kx)] = line[_u(base + kx * dw)]
                            window[k_hi:] = 0

    # ------------------------------------------------------------------ pooling
    @_jit
    def _max_pool(lo, hi, x, out, index, kh, kw, sh, sw, pt, pl, dh, dw):
        n, c, h, w = x.shape
        oh, ow = out.shape[2], out.shape[3]
        # the taps of each output column that land inside the image, found once
        kx_lo, kx_hi = np.empty(ow, np.int64), np.empty(ow, np.int64)
        for ox in range(ow):
            kx_lo[ox], kx_hi[ox] = _taps_inside(w, kw, ox * sw - pl, dw, 0)
        for plane in range(lo, hi):
            i, ch = plane // c, plane % c
            flat = x[i, ch].reshape(h * w)
            for oy in range(oh):
                y0 = oy * sh - pt
                ky_lo, ky_hi = _taps_inside(h, kh, y0, dh, 0)
                out_row, index_row = out[i, ch, oy], index[i, ch, oy]
                for ox in range(ow):
                    x0 = ox * sw - pl
                    best = flat[0]
                    best_at = -1
                    for ky in range(ky_lo, ky_hi):
                        row = (y0 + ky * dh) * w + x0
                        for kx in range(kx_lo[_u(ox)], kx_hi[_u(ox)]):
                            at = row + kx * dw
                            v = flat[_u(at)]
                            # the first maximum in row-major order; the first NaN wins, as the generic code
                            if best_at < 0 or v > best or (v != v and best == best):
                                best = v
                                best_at = at
                    out_row[_u(ox)] = best
                    index_row[_u(ox)] = best_at

    @_jit
    def _max_pool_2x2(lo, hi, x, out, index):
        """``_max_pool`` for 2x2 windows at stride 2 inside the image (every net's pooling), unrolled:
        the general loop's data-dependent branches mispredict on about every other tap (measured 18x
        slower on (8, 16, 64, 64)); here each tap is a compare and two selects."""
        c, w = x.shape[1], x.shape[3]
        oh, ow = out.shape[2], out.shape[3]
        for plane in range(lo, hi):
            i, ch = plane // c, plane % c
            src = x[i, ch]
            for oy in range(oh):
                top, bottom = src[2 * oy], src[2 * oy + 1]
                out_row, index_row = out[i, ch, oy], index[i, ch, oy]
                for ox in range(ow):
                    best = top[_u(2 * ox)]
                    at = 2 * oy * w + 2 * ox
                    v = top[_u(2 * ox + 1)]
                    take = (v > best) | ((v != v) & (best == best))   # the first maximum; the first NaN
                    best = v if take else best
                    at = at + 1 if take else at
                    for k in range(2):
                        v = bottom[_u(2 * ox + k)]
                        take = (v > best) | ((v != v) & (best == best))
                        best = v if take else best
                        at = (2 * oy + 1) * w + 2 * ox + k if take else at
                    out_row[_u(ox)] = best
                    index_row[_u(ox)] = at

    @_jit
    def _scatter(lo, hi, values, switches, out, accumulate):
        """Each plane of ``out`` zeroed, then the plane's values stored (added) at their switches: the
        zeroing on every thread, each plane still in cache for its stores."""
        planes, length = values.shape
        for p in range(lo, hi):
            dst = out[p]
            dst[:] = 0
            for k in range(length):
                if accumulate:
                    dst[switches[p, k]] += values[p, k]
                else:
                    dst[switches[p, k]] = values[p, k]

    @_jit
    def _gather(lo, hi, planes, switches, out):
        count, length = switches.shape
        for p in range(lo, hi):
            src = planes[p]
            for k in range(length):
                out[p, k] = src[switches[p, k]]

    # ------------------------------------------------------------------ batch norm
    # Sums may be reordered (``reassoc``): the compiler then keeps several running sums in SIMD lanes
    # (measured 4x faster than one float64 chain). The order is still fixed by the code, one plane
    # per thread: the same result for any thread count. NaN and inf behave as without the flag.
    @njit(cache=True, error_model="numpy", nogil=True, fastmath={"reassoc", "contract"})
    def _channel_sums(lo, hi, a, b, shift_a, shift_b, partial_a, partial_ab):
        n, c, length = a.shape
        for plane in range(lo, hi):
            i, ch = plane // c, plane % c
            sa, sb = np.float64(shift_a[ch]), np.float64(shift_b[ch])
            src_a, src_b = a[i, ch], b[i, ch]
            ta = 0.0
            tab = 0.0
            for k in range(length):
                da = np.float64(src_a[_u(k)]) - sa
                ta += da
                tab += da * (np.float64(src_b[_u(k)]) - sb)
            partial_a[i, ch] = ta
            partial_ab[i, ch] = tab

    @_jit
    def _channel_affine(lo, hi, x, mean, scale, shift, y):
        n, c, length = x.shape
        for plane in range(lo, hi):
            i, ch = plane // c, plane % c
            m, k, b = mean[ch], scale[ch], shift[ch]
            for l in range(length):
                y[i, ch, _u(l)] = (x[i, ch, _u(l)] - m) * k + b

    @_jit
    def _batch_norm_input_grad(lo, hi, g, x, mean, gain, slope, offset, dx):
        n, c, length = x.shape
        for plane in range(lo, hi):
            i, ch = plane // c, plane % c
            m, k, s, o = mean[ch], gain[ch], slope[ch], offset[ch]
            for l in range(length):
                dx[i, ch, _u(l)] = g[i, ch, _u(l)] * k - (x[i, ch, _u(l)] - m) * s - o

    # ------------------------------------------------------------------ element-wise (flat ranges)
    @_jit
    def _relu(lo, hi, x, y):
        for i in range(lo, hi):
            v = x[_u(i)]
            y[_u(i)] = v if v > 0 or v != v else 0  # NaN stays NaN, as np.maximum

    @_jit
    def _relu_grad(lo, hi, g, y, dx):
        for i in range(lo, hi):
            dx[_u(i)] = g[_u(i)] if y[_u(i)] > 0 else 0

    @_jit
    def _sgd(lo, hi, p, g, buf, lr, momentum, keep, weight_decay, nesterov, first):
        # keep = 1 - dampening, in the arrays' dtype: a Python 1 - dampening here would be float64
        # and the loop a float32 <-> float64 conversion per element (4x slower, measured)
        for i in range(lo, hi):
            d = g[_u(i)]
            if weight_decay != 0:
                d = d + weight_decay * p[_u(i)]
            if momentum != 0:
                b = d if first else momentum * buf[_u(i)] + keep * d
                buf[_u(i)] = b
                d = d + momentum * b if nesterov else b
            p[_u(i)] -= lr * d

    # ------------------------------------------------------------------ cross-entropy
    # The loss's cost is exp, 21 per pixel. exp(t) for t <= ~0 (logits minus their max or their
    # log-sum-exp) as 2^n * e^r with t = n ln2 + r, |r| <= ln2 / 2: ln2 in two parts, the first
    # exact in a product with n (Cody and Waite), e^r as its Taylor series to r^13 in float64 and to
    # r^7 in float32 (the remainders, r^14/14! and r^8/8! at |r| <= 0.35, are below a tenth of an
    # ulp; the shorter float32 series: forward kernel 9-10%, backward 20-27% less time), 2^n written
    # as exponent bits into an integer array that a float view reads. No libm call is left in the loops, so LLVM vectorises them
    # ('contract': the series as fused multiply-adds). Max error ~1 ulp in both dtypes (tested);
    # t below ``_EXP_LOWEST`` counts as that value (exp ~1e-38 / 1e-307 instead of smaller).
    _fma = njit(cache=True, error_model="numpy", nogil=True, fastmath={"contract"})
    _CE_BLOCK = 512  # pixels at a time: a block's classes stay in the L1/L2 cache between passes

    @_fma
    def _exp_split(t, k):
        """(n, r) with t = n ln2 + r; ``k``: the constants of ``_exp_constants``."""
        t = k[3] if t < k[3] else t   # NaN stays NaN
        n = np.floor(t * k[0] + k[4])
        return n, (t - n * k[1]) - n * k[2]

    def _exp_taylor(r, k):
        """e^r by Horner's rule on the coefficients k[6:20] = 1/13!, ..., 1/0! (typed below)."""

    @numba.extending.overload(_exp_taylor, jit_options={"fastmath": {"contract"}, "error_model": "numpy"})
    def _exp_taylor_terms(r, k):
        first = 12 if r == numba.types.float32 else 6   # from 1/7! in float32, from 1/13! in float64
        # (``first`` is a constant of the compiled code: its loop is unrolled and the caller's loop vectorised)

        def series(r, k):
            q = k[first] * r + k[first + 1]
            for j in range(first + 2, 20):
                q = q * r + k[j]
            return q
        return series

    @_fma
    def _exp_series(r, k):
        return _exp_taylor(r, k)

    @_fma
    def _cross_entropy_forward(lo, hi, x, target, valid, weight, keep, share, k, bias, shift, bits_like, loss, lse):
        n, classes, length = x.shape
        blocks = (length + _CE_BLOCK - 1) // _CE_BLOCK
        top, total = np.empty(_CE_BLOCK, x.dtype), np.empty(_CE_BLOCK, x.dtype)
        r, wx = np.empty(_CE_BLOCK, x.dtype), np.empty(_CE_BLOCK, x.dtype)
        bits = np.empty(_CE_BLOCK, bits_like.dtype)
        power = bits.view(x.dtype)   # 2^n, from its exponent bits
        weight_sum = weight.sum()
        for item in range(lo, hi):
            i, start = item // blocks, (item % blocks) * _CE_BLOCK
            count = min(_CE_BLOCK, length - start)
            for p in range(count):
                top[_u(p)] = x[i, 0, _u(start + p)]
                total[_u(p)] = 0
                wx[_u(p)] = 0
            for c in range(1, classes):
                for p in range(count):
                    v, m = x[i, c, _u(start + p)], top[_u(p)]
                    top[_u(p)] = v if v > m or v != v else m
            for c in range(classes):
                w = weight[c]
                for p in range(count):
                    v = x[i, c, _u(start + p)]
                    wx[_u(p)] += w * v
                    e, r[_u(p)] = _exp_split(v - top[_u(p)], k)
                    bits[_u(p)] = (np.int32(e) + bias) << shift
                for p in range(count):
                    total[_u(p)] += _exp_series(r[_u(p)], k) * power[_u(p)]
            for p in range(count):
                at = _u(start + p)
                s = top[_u(p)] + np.log(total[_u(p)])
                lse[i, at] = s
                t = target[i, at]
                if not valid[i, at]:
                    loss[i, at] = 0
                elif share == 0:
                    loss[i, at] = keep * weight[t] * (s - x[i, t, at])
                else:   # label smoothing: eps / C * sum_c w[c] (lse - x[c])
                    loss[i, at] = keep * weight[t] * (s - x[i, t, at]) + share * (s * weight_sum - wx[_u(p)])

    @_fma
    def _cross_entropy_backward(lo, hi, x, target, weight, lse, factor, keep, share, smooth_mean, k, bias, shift,
                                bits_like, grad):
        n, classes, length = x.shape
        blocks = (length + _CE_BLOCK - 1) // _CE_BLOCK
        scale, hot = np.empty(_CE_BLOCK, x.dtype), np.empty(_CE_BLOCK, x.dtype)
        spread, r = np.empty(_CE_BLOCK, x.dtype), np.empty(_CE_BLOCK, x.dtype)
        picked = np.empty(_CE_BLOCK, np.int64)
        bits = np.empty(_CE_BLOCK, bits_like.dtype)
        power = bits.view(x.dtype)
        for item in range(lo, hi):
            i, start = item // blocks, (item % blocks) * _CE_BLOCK
            count = min(_CE_BLOCK, length - start)
            for p in range(count):
                at = _u(start + p)
                t, f = target[i, at], factor[i, at]
                picked[_u(p)] = t
                hot[_u(p)] = f * keep * weight[t]
                scale[_u(p)] = hot[_u(p)] + f * smooth_mean
                spread[_u(p)] = f * share
            for c in range(classes):
                w = weight[c]
                for p in range(count):
                    e, r[_u(p)] = _exp_split(x[i, c, _u(start + p)] - lse[i, _u(start + p)], k)
                    bits[_u(p)] = (np.int32(e) + bias) << shift
                for p in range(count):
                    g = scale[_u(p)] * (_exp_series(r[_u(p)], k) * power[_u(p)]) - spread[_u(p)] * w
                    grad[i, c, _u(start + p)] = g - hot[_u(p)] if picked[_u(p)] == c else g


    # ------------------------------------------------------------------ stride-1 convolution by taps
    # (see conv2d_taps below). The products call NumPy's OpenBLAS directly from a compiled loop
    # (``_gemm``: the address of cblas_?gemm, 64-bit integers), so a thread runs a chunk's kh*kw
    # products (the first with beta 0, the others adding in place with beta 1) without the GIL and
    # without a temporary per tap.
    from llvmlite import ir as _ir
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def _gemm(typingctx, address, order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        """cblas_?gemm(order, ...) through its address; pointers are passed as 64-bit integers
        (the same registers as pointers in the x86-64 and AArch64 C calling conventions)."""
        signature = numba.types.void(address, order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

        def codegen(context, builder, sig, args):
            function = _ir.FunctionType(_ir.VoidType(), [context.get_value_type(t) for t in sig.args[1:]])
            builder.call(builder.inttoptr(args[0], function.as_pointer()), args[1:])
            return context.get_dummy_value()
        return signature, codegen

    _ROW_MAJOR, _NO_TRANS, _TRANS = np.int32(101), np.int32(111), np.int32(112)

    @_jit
    def _taps_products(taps, padded, wide, offsets, positions, weight_grad, gemm):
        """The kh*kw products of a chunk of samples: the forward's wide (O, positions) = sum over taps
        of taps[t] (O, C) @ view_t (C, positions), or with ``weight_grad`` taps[t] (O, C) +=
        wide (O, positions) @ view_t^T. view_t: ``padded`` (C, L) from column offsets[t], row stride L."""
        t_count, o, c = taps.shape
        stride, wide_stride = padded.shape[1], wide.shape[1]
        one, zero = taps.dtype.type(1), taps.dtype.type(0)
        base, size = np.int64(padded.ctypes.data), np.int64(taps.itemsize)
        for t in range(t_count):
            view = base + np.int64(offsets[t]) * size
            if weight_grad:
                _gemm(gemm, _ROW_MAJOR, _NO_TRANS, _TRANS, np.int64(o), np.int64(c), np.int64(positions), one,
                      np.int64(wide.ctypes.data), np.int64(wide_stride), view, np.int64(stride),
                      one, np.int64(taps[t].ctypes.data), np.int64(c))
            else:
                _gemm(gemm, _ROW_MAJOR, _NO_TRANS, _NO_TRANS, np.int64(o), np.int64(positions), np.int64(c), one,
                      np.int64(taps[t].ctypes.data), np.int64(c), view, np.int64(stride),
                      zero if t == 0 else one, np.int64(wide.ctypes.data), np.int64(wide_stride))

    @_jit
    def _to_taps(lo, hi, w, taps, flip):
        """taps[t, o, c] = w[o, c, t // kw, t % kw] for o in [lo, hi): the (O, C) matrix of each tap; with
        ``flip`` the taps of the flipped, transposed weight (the input gradient's): w[c, o, kh-1-i, kw-1-j].
        ``w`` is C-contiguous (one compiled version). NumPy's transposing copies, measured on the calling
        thread at 256x256x3x3: 0.5 ms, and 1.2 ms from the flipped view (7x and 16x a plain copy); these
        loops on 2 threads 0.2 and 0.6 ms (at 16x16 both take 4-12 us)."""
        kh, kw = w.shape[2], w.shape[3]
        for o in range(lo, hi):
            for i in range(kh):
                for j in range(kw):
                    row = taps[i * kw + j, o]
                    if flip:
                        for c in range(taps.shape[2]):
                            row[c] = w[c, o, kh - 1 - i, kw - 1 - j]
                    else:   # w[o] is read once while its kh*kw rows of taps are written
                        for c in range(taps.shape[2]):
                            row[c] = w[o, c, i, j]

    @_jit
    def _from_taps(lo, hi, taps, w):
        """w[o, c, t // kw, t % kw] = taps[t, o, c] for o in [lo, hi): ``_to_taps`` undone."""
        kh, kw = w.shape[2], w.shape[3]
        for o in range(lo, hi):
            for i in range(kh):
                for j in range(kw):
                    row = taps[i * kw + j, o]
                    for c in range(w.shape[1]):
                        w[o, c, i, j] = row[c]

    @_jit
    def _gemm_share(lo, hi, axis, gemm, trans_a, trans_b, m, n, k, alpha, a, lda, a_step, b, ldb, b_step, beta, c,
                    ldc, c_step, batch, item):
        """Part [lo, hi) of a strided batch of products C_i = op(A_i) @ op(B_i) (+ C_i if beta is 1), i < batch,
        by cblas_?gemm without the GIL: whole products (axis 0), rows of every C_i (1) or columns (2).
        Addresses and batch steps (in elements) are int64; the flags are BLAS's, each matrix row-major."""
        if axis == 0:
            for i in range(lo, hi):
                _gemm(gemm, _ROW_MAJOR, trans_a, trans_b, m, n, k, alpha, a + i * a_step * item, lda,
                      b + i * b_step * item, ldb, beta, c + i * c_step * item, ldc)
            return
        for i in range(batch):
            a_i, b_i, c_i = a + i * a_step * item, b + i * b_step * item, c + i * c_step * item
            if axis == 1:   # rows lo..hi of op(A): rows of A, or its columns when BLAS reads it transposed
                first = lo * lda if trans_a == _NO_TRANS else lo
                _gemm(gemm, _ROW_MAJOR, trans_a, trans_b, hi - lo, n, k, alpha, a_i + first * item, lda, b_i, ldb,
                      beta, c_i + lo * ldc * item, ldc)
            else:           # columns lo..hi of op(B)
                first = lo if trans_b == _NO_TRANS else lo * ldb
                _gemm(gemm, _ROW_MAJOR, trans_a, trans_b, m, hi - lo, k, alpha, a_i, lda, b_i + first * item, ldb,
                      beta, c_i + lo * item, ldc)


# ---------------------------------------------------------------------- the thread pool
_pool = None
_pool_lock = threading.Lock()
# Below this many elements a pass runs on the calling thread: handing a share to a pooled thread
# costs tens of microseconds (measured on the loaded 2-core machine: a ReLU of 2^18 floats took
# 30-41 us on one thread, 83-97 us split in two), about what one thread needs for 2^18 elements.
_MIN_PARALLEL = 1 << 18
# Products with fewer multiply-adds than this run as one call (~0.2 ms of one thread's work).
_MIN_PARALLEL_MACS = 1 << 23


_local = threading.local()


def _threads():
    """The threads a pass may use: ``get_num_threads()``, or 1 inside a share of ``run_in_shares``."""
    return 1 if getattr(_local, "in_share", False) else get_num_threads()


def _run(kernel, count, elements, *args):
    """``kernel(lo, hi, *args)`` over [0, count) in ``get_num_threads()`` contiguous shares at once.

    The kernels release the GIL (``nogil``), so the shares run on as many cores; the calling
    thread takes the first. Shares never overlap: every kernel writes only its own planes/elements.
    """
    threads = min(_threads(), count)
    if threads > 1:
        claim_blas()
    if threads <= 1 or elements < _MIN_PARALLEL:
        kernel(0, count, *args)
        return
    bounds = [count * k // threads for k in range(threads + 1)]
    futures = [_executor().submit(kernel, lo, hi, *args) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    try:
        kernel(bounds[0], bounds[1], *args)
    finally:
        for future in futures:
            future.result()


def share_count(cost=None):
    """How many parts ``run_in_shares`` runs at once for work of ``cost`` multiply-adds: the thread
    count (1 inside a share, and for work under ``_MIN_PARALLEL_MACS``, which runs as one part)."""
    return 1 if cost is not None and cost < _MIN_PARALLEL_MACS else _threads()


def run_in_shares(work, items, keys=None, cost=None):
    """``work(part)`` for contiguous parts of ``items``, one part per thread, all at once; the results in order.

    Where ``_run`` splits one pass, this splits a chain of them: each thread runs whole items
    (a convolution's tiles: im2col, product, col2im) one after another with single-threaded
    kernels and BLAS, so the threads meet once per op instead of once per phase of every tile.
    ``keys`` (one per item): items with equal keys go to the same part (tiles that add into the
    same rows). ``cost``: multiply-adds of all the work; below ``_MIN_PARALLEL_MACS`` one part.
    With one part, ``work(items)`` runs as is and its kernels split each pass as usual.
    """
    items = list(items)
    groups = _group_bounds(items, keys)
    threads = min(share_count(cost), len(groups) - 1)
    if threads <= 1:
        return [work(items)]
    claim_blas()
    # contiguous runs of groups with about the same number of items each
    cuts = [0]
    for k in range(1, threads):
        target = len(items) * k // threads
        cuts.append(min(groups, key=lambda b: abs(b - target)))   # nondecreasing in target
    cuts.append(len(items))
    parts = [items[lo:hi] for lo, hi in zip(cuts, cuts[1:]) if hi > lo]
    futures = [_executor().submit(_in_share, work, part) for part in parts[1:]]
    try:
        first = _in_share(work, parts[0])
    finally:
        rest = [future.result() for future in futures]
    return [first] + rest


def _group_bounds(items, keys):
    """Indices where a run of equal keys starts, and len(items): the places a part may begin."""
    if keys is None:
        return list(range(len(items) + 1))
    return [i for i in range(len(items)) if i == 0 or keys[i] != keys[i - 1]] + [len(items)]


def _in_share(work, part):
    _local.in_share = True
    try:
        return work(part)
    finally:
        _local.in_share = False


def _executor():
    """The pool: n - 1 threads for ``minigrad.set_num_threads(n)`` (the caller takes one share); grows on demand."""
    global _pool
    workers = max(get_num_threads() - 1, 1)
    if _pool is None or _pool._max_workers < workers:
        with _pool_lock:
            if _pool is None or _pool._max_workers < workers:
                old, _pool = _pool, ThreadPoolExecutor(workers, thread_name_prefix="minigrad-cpu")
                if old is not None:
                    old.shutdown(wait=False)
    return _pool


# ---------------------------------------------------------------------- the public kernels
# Arrays reach the compiled loops C-contiguous (one compiled version per dtype), except the
# col2im target, which may be a block of rows of a larger image.
def _int(*values):
    return tuple(int(v) for v in values)


def _c(array, dtype=None):
    return np.ascontiguousarray(array, dtype=dtype)


def im2col(x, kernel_size, stride, pad_before, dilation, out_size, pad_value=0.0, out=None, folded=False):
    """(N, C, H, W) -> contiguous (N, C, kh, kw, OH, OW), like the generic ``im2col``;
    ``folded``: (C, kh, kw, N, OH, OW), the batch next to the positions. ``out``: write there."""
    n, c = x.shape[:2]
    shape = ((c,) + tuple(kernel_size) + (n,) if folded else (n, c) + tuple(kernel_size)) + tuple(out_size)
    col = np.empty(shape, dtype=x.dtype) if out is None else out.reshape(shape)
    if col.size:
        # output rows a quarter of the kernel's width or less (FCN-32s's upsampling: 2 of 64): along the
        # taps instead (compiled when first needed); measured steps: FCN-32s 0.86x, FCN-16s 0.96x, and
        # FCN-8s 1.06x with rows of half the kernel, hence the quarter
        by_taps = 4 * out_size[1] <= kernel_size[1]
        (kh, kw), (oh, ow), (sh, sw), (dh, dw) = kernel_size, out_size, stride, dilation
        padded_plane = ((oh - 1) * sh + dh * (kh - 1) + 1) * ((ow - 1) * sw + dw * (kw - 1) + 1)
        if not by_taps and (_threads() <= 1 or col.size < _MIN_PARALLEL) and padded_plane <= kh * kw * oh * ow:
            # on one thread (a share of a convolution's tiles, or set_num_threads(1)) NumPy's strided copy
            # of the window view is faster than this kernel: (8, 64, 8, 8) 3x3 folded 0.47 against 1.00 ms;
            # not where the view's padded copy of the image would outgrow the columns (DeepLab v3's ASPP,
            # dilation 36 on 8x8 maps: 100x the map, 93 MB more peak memory)
            from ..functional.im2col import window_view
            windows = window_view(x, kernel_size, stride, pad_before, dilation, out_size, pad_value)
            np.copyto(col, windows.transpose(1, 2, 3, 0, 4, 5) if folded else windows)
            return col
        kernel = _im2col_by_taps if by_taps else _im2col
        _run(kernel, n * c, col.size, _c(x), col, bool(folded),
             *_int(*kernel_size, *out_size, *stride, *pad_before, *dilation), x.dtype.type(pad_value))
    return col


def col2im(col, input_size, stride, pad_before, dilation, out=None):
    """(N, C, kh, kw, OH, OW) -> (N, C, H, W), summing overlaps; ``out``: add into it (rows may be a view)."""
    n, c = col.shape[:2]
    if out is None:
        img = np.zeros((n, c) + tuple(input_size), dtype=col.dtype)
    elif out.strides[3] == out.itemsize and out.strides[2] == out.shape[3] * out.itemsize:
        img = out  # whole rows of each plane: a view numba can write through
    else:
        img = np.zeros(out.shape, dtype=col.dtype)
    if col.size and img.size:
        kernel = _col2im_add_by_taps if 4 * col.shape[5] <= col.shape[3] else _col2im_add   # as in im2col
        _run(kernel, n * c, col.size, _c(col), img, *_int(*stride, *pad_before, *dilation))
    if out is not None and img is not out:
        out += img
        return out
    return img


def max_pool2d(x, kernel_size, stride, pad_before, dilation, out_size):
    """(values, int64 switches h*W+w) of every window: the first maximum (first NaN) in row-major order."""
    n, c = x.shape[:2]
    out = np.empty((n, c) + tuple(out_size), dtype=x.dtype)
    index = np.empty(out.shape, dtype=np.int64)
    if out.size and tuple(kernel_size) == tuple(stride) == (2, 2) and tuple(pad_before) == (0, 0) \
            and tuple(dilation) == (1, 1) and 2 * out.shape[2] <= x.shape[2] and 2 * out.shape[3] <= x.shape[3]:
        _run(_max_pool_2x2, n * c, x.size, _c(x), out, index)
    elif out.size:
        _run(_max_pool, n * c, x.size, _c(x), out, index, *_int(*kernel_size, *stride, *pad_before, *dilation))
    return out, index


def _planes(array, dtype=None):
    n, c = array.shape[:2]
    return _c(array, dtype).reshape(n * c, -1)


def scatter_to_planes(values, switches, plane_size, accumulate):
    """(N, C, ...) values into zeroed (N, C, H, W) planes at their switches (added if ``accumulate``,
    else the last value sharing a switch kept, as the generic fancy-index store)."""
    n, c = values.shape[:2]
    out = np.empty((n, c) + tuple(plane_size), dtype=values.dtype)   # zeroed plane by plane in _scatter
    if not values.size:
        out[...] = 0
    else:
        _run(_scatter, n * c, out.size, _planes(values), _planes(switches, np.int64), out.reshape(n * c, -1),
             bool(accumulate))
    return out


def gather_from_planes(planes, switches):
    """The (N, C, H, W) planes' entries at (N, C, ...) switches."""
    n, c = switches.shape[:2]
    out = np.empty(switches.shape, dtype=planes.dtype)
    if out.size:
        _run(_gather, n * c, out.size, _planes(planes), _planes(switches, np.int64), out.reshape(n * c, -1))
    return out


def _channels(array, dtype=None):
    n, c = array.shape[:2]
    return _c(array, dtype).reshape(n, c, -1)


def _per_channel(values, dtype, c):
    return _c(values, dtype).reshape(c)


def channel_sums(a, b=None, shift_a=None, shift_b=None):
    """Per-channel (sum of (a - shift_a), sum of (a - shift_a) * (b - shift_b)) over all but axis 1.

    Each (n, c) plane is summed in float64 by one thread; the planes' sums are then added
    in a fixed order, so the result does not depend on the thread count.
    """
    n, c = a.shape[:2]
    a3 = _channels(a)
    b3 = a3 if b is None else _channels(b, a.dtype)
    shift_a = np.zeros(c, a.dtype) if shift_a is None else _per_channel(shift_a, a.dtype, c)
    shift_b = shift_a if shift_b is None else _per_channel(shift_b, a.dtype, c)
    partial_a, partial_ab = np.zeros((n, c)), np.zeros((n, c))
    if a.size:
        _run(_channel_sums, n * c, a.size, a3, b3, shift_a, shift_b, partial_a, partial_ab)
    return partial_a.sum(axis=0).astype(a.dtype), partial_ab.sum(axis=0).astype(a.dtype)


def channel_moments(x):
    """Per channel (axis 1): (mean, biased variance) of x over every other axis in one pass: float64 sums
    of x - s and (x - s)^2 with s the channel's first element (the shifted-data formula: a mean far from
    zero costs no digits, as s lies within the data), combined in float64 and returned in x's dtype.
    (The generic code, ``functional.norm``, takes two passes: the mean, then the centred squares.)"""
    n, c = x.shape[:2]
    a3 = _channels(x)
    shift = np.ascontiguousarray(a3[0, :, 0])
    partial_a, partial_aa = np.zeros((n, c)), np.zeros((n, c))
    _run(_channel_sums, n * c, x.size, a3, a3, shift, shift, partial_a, partial_aa)
    count = x.size // c
    centred = partial_a.sum(axis=0) / count
    variance = np.maximum(partial_aa.sum(axis=0) / count - centred * centred, 0.0)
    return (shift + centred).astype(x.dtype), variance.astype(x.dtype)


def channel_affine(x, mean, scale, shift):
    """(x - mean[c]) * scale[c] + shift[c] over (N, C, ...)."""
    n, c = x.shape[:2]
    y = np.empty(x.shape, dtype=x.dtype)
    if y.size:
        _run(_channel_affine, n * c, y.size, _channels(x), *(_per_channel(v, x.dtype, c) for v in (mean, scale, shift)),
             y.reshape(n, c, -1))
    return y


def batch_norm_input_grad(g, x, mean, gain, slope, offset):
    """g * gain[c] - (x - mean[c]) * slope[c] - offset[c] over (N, C, ...)."""
    n, c = x.shape[:2]
    dx = np.empty(x.shape, dtype=x.dtype)
    if dx.size:
        _run(_batch_norm_input_grad, n * c, dx.size, _channels(g, x.dtype), _channels(x),
             *(_per_channel(v, x.dtype, c) for v in (mean, gain, slope, offset)), dx.reshape(n, c, -1))
    return dx


def relu(x):
    """max(x, 0) (NaN stays NaN, as ``numpy.maximum``)."""
    y = np.empty(x.shape, dtype=x.dtype)
    _run(_relu, y.size, y.size, _c(x).reshape(-1), y.reshape(-1))
    return y


def relu_grad(g, y):
    """g where y > 0, else 0: ReLU's backward from its output."""
    dx = np.empty(y.shape, dtype=y.dtype)
    _run(_relu_grad, dx.size, dx.size, _c(g, y.dtype).reshape(-1), _c(y).reshape(-1), dx.reshape(-1))
    return dx


def sgd_update(param, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """One SGD step in place on contiguous ``param`` (and ``buf``, the momentum buffer, unless momentum is 0)."""
    t = param.dtype.type
    flat = param.reshape(-1)
    _run(_sgd, flat.size, flat.size, flat, _c(grad, param.dtype).reshape(-1),
         flat if buf is None else buf.reshape(-1),
         t(lr), t(momentum), t(1 - dampening), t(weight_decay), bool(nesterov), bool(first))


def _exp_constants(dtype):
    """``_exp_split`` / ``_exp_series``'s constants in ``dtype``, with the exponent bits' bias and shift
    and an empty integer array of the dtype's width (the bits' type)."""
    lowest = -87.0 if dtype == np.float32 else -707.0   # exp of less would leave the normal numbers
    series = [1 / math.factorial(j) for j in range(13, -1, -1)]   # 1/13!, ..., 1/1!, 1/0!
    # log2(e), ln2 in two parts (the first has 9 significant bits), the lowest argument, 1/2, unused
    k = np.array([1 / math.log(2), 0.693359375, -2.1219444005469058277e-4, lowest, 0.5, 0.0] + series, dtype)
    integer = np.int32 if dtype == np.float32 else np.int64
    return k, (127, 23) if dtype == np.float32 else (1023, 52), np.empty(0, integer)


def _flat_pixels(array, n):
    return _c(array).reshape(n, -1)


def cross_entropy_forward(x, index, valid, class_weight, smoothing):
    """Per-element loss and log-sum-exp of (N, C, d...) logits; ``index`` has ignored entries at 0
    (``valid`` False there, loss 0). The same values as the generic code, exp to ~1 ulp."""
    n, classes = x.shape[:2]
    x = _c(x)
    t = x.dtype.type
    weight = np.ones(classes, x.dtype) if class_weight is None else _c(class_weight, x.dtype)
    loss = np.empty(index.shape, dtype=x.dtype)
    lse = np.empty(index.shape, dtype=x.dtype)
    k, (bias, shift), bits_like = _exp_constants(x.dtype)
    blocks = -(-(loss.size // max(n, 1)) // _CE_BLOCK)   # pixel blocks per sample
    _run(_cross_entropy_forward, n * blocks, x.size, x.reshape(n, classes, -1), _flat_pixels(index, n),
         _flat_pixels(valid, n), weight, t(1 - smoothing), t(smoothing / classes), k, bias, shift, bits_like,
         loss.reshape(n, -1), lse.reshape(n, -1))
    return loss, lse


def cross_entropy_backward(x, index, class_weight, lse, factor, smoothing):
    """Gradient w.r.t. the logits, given the per-element upstream ``factor`` (0 where ignored)."""
    n, classes = x.shape[:2]
    x = _c(x)
    t = x.dtype.type
    weight = np.ones(classes, x.dtype) if class_weight is None else _c(class_weight, x.dtype)
    grad = np.empty(x.shape, dtype=x.dtype)
    k, (bias, shift), bits_like = _exp_constants(x.dtype)
    blocks = -(-(lse.size // max(n, 1)) // _CE_BLOCK)
    _run(_cross_entropy_backward, n * blocks, x.size, x.reshape(n, classes, -1), _flat_pixels(index, n),
         weight, _flat_pixels(lse, n), _c(factor, x.dtype).reshape(n, -1), t(1 - smoothing),
         t(smoothing / classes), t(smoothing * weight.mean()), k, bias, shift, bits_like, grad.reshape(n, classes, -1))
    return grad


# ---------------------------------------------------------------------- matrix products
# One pool for all CPU work: with the kernels on, NumPy's OpenBLAS runs on one thread and the
# products are split here over the same threads as the kernels. Threaded OpenBLAS keeps its idle
# workers spinning for ~0.1 s after each product, on the cores the kernels' threads need next
# (measured on the loaded 2-core machine: a U-Net step took 590 ms of CPU time with one thread,
# 5000 ms with two, most of it spinning); the pool's threads sleep while they wait.
_blas_claimed = [False]


def claim_blas():
    """Put NumPy's OpenBLAS on one thread (once, and again after ``minigrad.set_num_threads``)."""
    if not _blas_claimed[0]:
        from ..threads import set_openblas_threads
        set_openblas_threads(1)
        _blas_claimed[0] = True


def _product(a, b, out, transpose_a, transpose_b, accumulate):
    """One share's product, single-threaded: OpenBLAS's cblas_?gemm on every 2-D slice in one compiled call
    (``_blas_product``: transposed operands read in place, ``accumulate`` as beta=1, no temporaries), or where
    an operand is not a BLAS matrix the generic code (``minigrad.functional.conv.generic_matmul``)."""
    if _blas_product(a, b, out, transpose_a, transpose_b, accumulate):
        return out
    from ..functional.conv import generic_matmul  # functional imports kernels: resolved at call time
    return generic_matmul(a, b, out, transpose_a, transpose_b, accumulate)


def _blas_layout(shape, strides, item):
    """(stored transposed, leading dimension) of a matrix of ``shape`` and ``strides`` (the last two axes of
    an array) that BLAS can read in place, else None."""
    (s0, s1) = strides
    if s1 == item and s0 % item == 0 and s0 // item >= max(1, shape[1]):
        return False, s0 // item
    if s0 == item and s1 % item == 0 and s1 // item >= max(1, shape[0]):
        return True, s1 // item   # column-major: the transpose of a row-major matrix
    return None


def _blas_product(a, b, out, transpose_a, transpose_b, accumulate):
    """out = op(a) @ op(b) (+ out) by cblas_?gemm, batch axes broadcast as numpy.matmul, every 2-D slice in one
    compiled call that releases the GIL once (``_gemm_share``); False (nothing done) where there is no such
    BLAS, an operand's layout does not fit, or the batch axes do not flatten to one step (``_gemm_plan``)."""
    if _GEMM.get(np.dtype(out.dtype)) is None or a.dtype != out.dtype or b.dtype != out.dtype or \
            min(a.ndim, b.ndim, out.ndim) < 2:
        return False
    m, n = out.shape[-2:]
    k = a.shape[-2] if transpose_a else a.shape[-1]
    if out.size and out.size // (m * n) > 8 and m * n * k < 1 << 16:
        return False   # many small products (adaptive pooling's bin matrices): numpy.matmul loops in C
    if out.size == 0 or k == 0:   # nothing to multiply: an empty sum is 0
        if not accumulate:
            out[...] = 0
        return True
    plan = _gemm_plan(a, b, out, transpose_a, transpose_b, accumulate)
    if plan is None:
        return False
    _gemm_share(0, plan[-2], 0, *plan)
    return True


def _batch_step(array, lead):
    """The one step (in bytes) between consecutive matrices of ``array`` over its flattened batch axes
    ``lead``, or None where the batch axes do not flatten to one step (a broadcast axis in the middle)."""
    step = None
    for size, stride in zip(reversed(lead), reversed(array.strides[:len(lead)])):
        if size == 1:
            continue
        if step is None:
            step, span = stride, size
        elif stride != step * span:
            return None
        else:
            span *= size
    return 0 if step is None else step


def _gemm_plan(a, b, out, transpose_a, transpose_b, accumulate):
    """The arguments of ``_gemm_share`` after (lo, hi, axis) for out = op(a) @ op(b) (+ out): one strided
    batch of BLAS calls, made without the GIL; None where there is no compiled BLAS call, a layout BLAS
    cannot read, or batch axes that do not flatten (``matmul`` then splits through ``_product``)."""
    gemm = _GEMM.get(np.dtype(out.dtype))
    if gemm is None or a.dtype != out.dtype or b.dtype != out.dtype or min(a.ndim, b.ndim, out.ndim) < 2:
        return None
    lead = out.shape[:-2]
    m, n = out.shape[-2:]
    k = a.shape[-2] if transpose_a else a.shape[-1]
    if out.size == 0 or k == 0:
        return None
    a_all = a if a.shape[:-2] == lead else np.broadcast_to(a, lead + a.shape[-2:])
    b_all = b if b.shape[:-2] == lead else np.broadcast_to(b, lead + b.shape[-2:])
    item = out.itemsize
    steps = [_batch_step(array, lead) for array in (a_all, b_all, out)]
    layouts = [_blas_layout(array.shape[-2:], array.strides[-2:], item) for array in (a_all, b_all, out)]
    if None in steps or None in layouts or layouts[2][0] or any(step % item for step in steps):
        return None
    (stored_a, lda), (stored_b, ldb), (_, ldc) = layouts
    one = out.dtype.type(1)   # (plain ints: numba types them int64, as the BLAS call wants)
    return (gemm, _TRANS if transpose_a != stored_a else _NO_TRANS, _TRANS if transpose_b != stored_b else _NO_TRANS,
            m, n, k, one, a_all.ctypes.data, lda, steps[0] // item, b_all.ctypes.data, ldb, steps[1] // item,
            one if accumulate else out.dtype.type(0), out.ctypes.data, ldc, steps[2] // item, out.size // (m * n), item)


def _product_share(lo, hi, a, b, out, transpose_a, transpose_b, accumulate, axis):
    """The product for output entries [lo, hi) along ``axis``: a batch axis, the rows (-2) or the columns (-1)."""
    part = slice(lo, hi)
    if axis == -1:  # columns of out: columns of b, or rows of b when it is transposed
        b_part = b[..., part, :] if transpose_b else b[..., part]
        _product(a, b_part, out[..., part], transpose_a, transpose_b, accumulate)
        return
    if axis == -2:  # rows of out: rows of a, or columns of a when it is transposed
        a_part = a[..., part] if transpose_a else a[..., part, :]
        _product(a_part, b, out[..., part, :], transpose_a, transpose_b, accumulate)
        return
    index = (slice(None),) * axis + (slice(lo, hi),)
    a_part = a[index] if a.ndim == out.ndim and a.shape[axis] > 1 else a
    b_part = b[index] if b.ndim == out.ndim and b.shape[axis] > 1 else b
    _product(a_part, b_part, out[index], transpose_a, transpose_b, accumulate)


def matmul(a, b, out, transpose_a=False, transpose_b=False, accumulate=False):
    """out = op(a) @ op(b) (+ out if ``accumulate``), batched as ``numpy.matmul``, split over the threads.

    Shares: the leading (batch) axis of ``out`` when it has at least as many entries as threads,
    else blocks of ``out``'s rows or columns, whichever are more (so each thread reads its part of
    the larger operand once: fc7's (1024, 1024) weight times (1024, 32) columns splits the weight);
    each share is one single-threaded OpenBLAS call.
    """
    claim_blas()
    threads = _threads()
    m_n = out.shape[-2] * out.shape[-1]
    k = a.shape[-2] if transpose_a else a.shape[-1]
    if threads <= 1 or out.size * k < _MIN_PARALLEL_MACS:   # small products: one call
        return _product(a, b, out, transpose_a, transpose_b, accumulate)
    if out.ndim > 2 and out.shape[0] >= threads and out.shape[0] * m_n == out.size:
        axis, count = 0, out.shape[0]
    elif out.shape[-2] > out.shape[-1]:
        axis, count = -2, out.shape[-2]
    else:
        axis, count = -1, out.shape[-1]
    plan = _gemm_plan(a, b, out, transpose_a, transpose_b, accumulate)
    if plan is not None:   # each share one compiled call: a pooled thread takes the GIL once, not per product
        _run(_gemm_share, count, max(out.size * k, _MIN_PARALLEL), axis % 3, *plan)
        return out
    _run(_share_runner, count, max(out.size * k, _MIN_PARALLEL), a, b, out, transpose_a, transpose_b, accumulate,
         axis)
    return out


def _share_runner(lo, hi, *args):
    _product_share(lo, hi, *args)


def batched_matmul(a, b):
    """``numpy.matmul(a, b)`` for operands of 2 or more dims (broadcast batch axes), split over the threads."""
    shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
    return matmul(a, b, np.empty(shape, dtype=np.result_type(a, b)))


# ---------------------------------------------------------------------- stride-1 convolution by taps
# A stride-1 convolution needs no column array: on the zero-padded image, flattened with the padded
# row pitch W', tap (ky, kx) of every output position p = oy*W' + ox reads the pixel at p + ky*dh*W' +
# kx*dw, so the input under one tap is a plain 2-D view (C rows, a row stride of the padded plane).
# The output is then kh*kw products, weight[:, :, ky, kx] (O, C) @ view (C, OH*W'), added up; its
# W' - OW extra columns per row are dropped at the end. This is "kn2row" (Vasudevan et al. 2017,
# Anderson et al. 2017): no im2col copy kh*kw times the image, each sample's products stay in cache,
# and each thread takes whole samples. Several samples of a small map go in one product: their
# padded planes side by side per channel, the rows between two samples' outputs computed and
# dropped. Measured (benchmarks/README.md "Issue 12"): U-Net's (8, 16, 64, 64) 16->16 layer,
# forward + input gradient + weight gradient, 19.8 ms by im2col and 11.6 ms by taps on one
# thread, 11.9 and 7.6 ms on two.

def _find_gemm():
    """{dtype: address of cblas_sgemm / cblas_dgemm} in NumPy's OpenBLAS (the scipy-openblas64 wheels'
    64-bit-integer symbols), or {} where there is none (then stride-1 convolutions use im2col)."""
    import ctypes
    from ..threads import _openblas_libraries
    for path in _openblas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        found = [getattr(lib, f"scipy_cblas_{t}gemm64_", None) for t in "sd"]
        if all(f is not None for f in found):
            return {np.dtype(dtype): ctypes.cast(f, ctypes.c_void_p).value
                    for dtype, f in zip((np.float32, np.float64), found)}
    return {}


_GEMM = _find_gemm() if AVAILABLE else {}


def _tap_offsets(kernel, dilation, pitch):
    return np.array([ky * dilation[0] * pitch + kx * dilation[1] for ky in range(kernel[0])
                     for kx in range(kernel[1])], dtype=np.int64)


def _taps_geometry(shape, kernel, pad_before, pad_after, dilation):
    """(padded rows, padded pitch, output size) of a stride-1 convolution of an (N, C, H, W) input."""
    rows, pitch = shape[2] + pad_before[0] + pad_after[0], shape[3] + pad_before[1] + pad_after[1]
    return rows, pitch, (rows - dilation[0] * (kernel[0] - 1), pitch - dilation[1] * (kernel[1] - 1))


# Positions one product per tap should cover: a 64x64 map's sample alone, several samples of
# smaller maps (U-Net's (8, 128, 4, 4) 128->256 layer: one product of 8 samples per thread).
_TAPS_POSITIONS = 4096


def _chunk(n, rows, pitch):
    """Samples per product for padded planes of (rows + 1) x pitch."""
    return max(1, min(n, _TAPS_POSITIONS // ((rows + 1) * pitch)))


def _place(x, first, count, padded, pad_before):
    """Samples [first, first + count) of x into slots 0.. of the padded planes (C, S, rows + 1, pitch)
    at pad_before (negative: cropped); the borders stay as they are (zero)."""
    (pt, pl), (h, w) = pad_before, x.shape[2:]
    rows, pitch = padded.shape[2] - 1, padded.shape[3]
    y0, x0 = max(-pt, 0), max(-pl, 0)
    y1, x1 = min(h, rows - pt), min(w, pitch - pl)
    padded[:, :count, y0 + pt:y1 + pt, x0 + pl:x1 + pl] = x[first:first + count, :, y0:y1, x0:x1].transpose(1, 0, 2, 3)


def conv2d_taps(x, w, pad_before, pad_after, dilation, bias=None):
    """Stride-1, ungrouped ``conv2d`` of (N, C, H, W) by (O, C, kh, kw) with (top, left) / (bottom,
    right) padding (negative: crop). Each thread takes a share of the samples, a chunk at a time:
    their padded planes side by side per channel (one NumPy copy), kh*kw products into the wide
    output (``_taps_products``, no GIL), the output cut out of it (one NumPy copy, + bias).
    The copies in NumPy rather than compiled: measured as fast (the steps 0.86-0.92x the time of
    compiled copies) and 3 s less to compile on a machine's first run."""
    n, c = x.shape[:2]
    o, _, kh, kw = w.shape
    rows, pitch, (oh, ow) = _taps_geometry(x.shape, (kh, kw), pad_before, pad_after, dilation)
    taps = np.empty((kh * kw, o, c), dtype=x.dtype)
    unflipped = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)   # the forward's weight, when w is the input gradient's
    flip = unflipped.flags.c_contiguous and not w.flags.c_contiguous
    _run(_to_taps, o, w.size, _c(unflipped if flip else w, x.dtype), taps, flip)
    offsets, chunk, plane = _tap_offsets((kh, kw), dilation, pitch), _chunk(n, rows, pitch), (rows + 1) * pitch
    out = np.empty((n, o, oh, ow), dtype=x.dtype)
    gemm = _GEMM[np.dtype(x.dtype)]

    def work(part):
        padded = np.zeros((c, chunk, rows + 1, pitch), dtype=x.dtype)
        wide = np.empty((o, chunk, rows + 1, pitch), dtype=x.dtype)
        for first in range(part[0], part[-1] + 1, chunk) if part else ():
            count = min(chunk, part[-1] + 1 - first)
            _place(x, first, count, padded, pad_before)
            _taps_products(taps, padded.reshape(c, -1), wide.reshape(o, -1), offsets,
                           (count - 1) * plane + oh * pitch, False, gemm)
            block = wide[:, :count, :oh, :ow].transpose(1, 0, 2, 3)
            if bias is None:
                out[first:first + count] = block
            else:
                np.add(block, bias.reshape(1, o, 1, 1), out=out[first:first + count])
    run_in_shares(work, range(n), cost=out.size * c * kh * kw)
    return out


def conv2d_taps_weight_grad(x, gy, kernel, pad_before, pad_after, dilation):
    """d<conv2d_taps(x, W), gy>/dW, (O, C, kh, kw): per tap, gy (O, positions) @ view(x)^T, summed over
    the samples (one partial sum per thread, added in order); gy is laid out on the padded planes'
    grid, zero between the output rows and samples, so those positions add nothing."""
    n, c = x.shape[:2]
    o, (oh, ow) = gy.shape[1], gy.shape[2:]
    rows, pitch, _ = _taps_geometry(x.shape, kernel, pad_before, pad_after, dilation)
    offsets, chunk, plane = _tap_offsets(kernel, dilation, pitch), _chunk(n, rows, pitch), (rows + 1) * pitch
    gemm = _GEMM[np.dtype(x.dtype)]

    def work(part):
        grad = np.zeros((kernel[0] * kernel[1], o, c), dtype=x.dtype)
        padded = np.zeros((c, chunk, rows + 1, pitch), dtype=x.dtype)
        wide = np.zeros((o, chunk, rows + 1, pitch), dtype=x.dtype)   # zero outside the output positions
        for first in range(part[0], part[-1] + 1, chunk) if part else ():
            count = min(chunk, part[-1] + 1 - first)
            _place(x, first, count, padded, pad_before)
            wide[:, :count, :oh, :ow] = gy[first:first + count].transpose(1, 0, 2, 3)
            _taps_products(grad, padded.reshape(c, -1), wide.reshape(o, -1), offsets,
                           (count - 1) * plane + oh * pitch, True, gemm)
        return grad
    partials = run_in_shares(work, range(n), cost=gy.size * c * kernel[0] * kernel[1])
    grad = partials[0]
    for partial in partials[1:]:
        grad += partial
    weight_grad = np.empty((o, c) + tuple(kernel), dtype=grad.dtype)
    _run(_from_taps, o, grad.size, grad, weight_grad)
    return weight_grad


# ---------------------------------------------------------------------- big kernels on tiny maps
# Where the kernel is at least four times as wide as the output (FCN's learned upsampling: FCN-16s's
# 32x32 kernel at stride 16 on 4x4 maps, FCN-32s's 64x64; DeconvNet's 7x7 deconv-fc6 on 1x1), the
# columns are laid out by position: one row of C*kh*kw per output position, (positions, C*kh*kw). The
# products then have the long C*kh*kw side as their columns, and the windows go to and from the image in
# runs of kw pixels with no transposing copy of the columns. Measured on FCN-16s's upsampling, one
# thread: the product (128, 21) @ (21, 21504) 4.0 ms against 12.3 ms for the column-major (21504, 21) @
# (21, 128), and no 11 ms transposing copy before col2im.

def _scratch(shape, dtype):
    """The convolutions' per-thread column workspace (``functional.conv._workspace``), valid until the next
    tile: reused, so the window rows (11 MB for FCN-16s's upsampling) are not page-faulted in afresh at
    every call (measured in a training step: 13.7 ms a call with a new array, 4.0 ms in the workspace)."""
    from ..functional.conv import _workspace   # functional imports kernels: resolved at call time
    return _workspace(np.empty(0, dtype), shape)


def _window_rows(x, kernel, stride, pad_before, dilation, out_size):
    """(N*OH*OW, C*kh*kw), in the workspace: row p is output position p's input window (zero outside the image)."""
    n, c = x.shape[:2]
    rows = _scratch((n,) + tuple(out_size) + (c,) + tuple(kernel), x.dtype)
    if rows.size:
        _run(_windows, n * c, rows.size, _c(x), rows, *_int(*stride, *pad_before, *dilation), False)
    return rows.reshape(n * out_size[0] * out_size[1], -1)


def _position_rows(y):
    """(N, O, OH, OW) -> (N*OH*OW, O): one row per position."""
    return np.ascontiguousarray(y.transpose(0, 2, 3, 1)).reshape(-1, y.shape[1])


def conv2d_windows(x, w, stride, pad_before, dilation, out_size, bias=None):
    """Ungrouped ``conv2d`` of (N, C, H, W) by (O, C, kh, kw) into ``out_size`` (OH, OW) through window
    rows: (positions, C*kh*kw) @ weight^T, one row of O per position."""
    n, o = x.shape[0], w.shape[0]
    rows = _window_rows(x, w.shape[2:], stride, pad_before, dilation, out_size)
    product = matmul(rows, _c(w, x.dtype).reshape(o, -1), np.empty((rows.shape[0], o), x.dtype), transpose_b=True)
    by_position = product.reshape((n,) + tuple(out_size) + (o,)).transpose(0, 3, 1, 2)
    if bias is None:
        return np.ascontiguousarray(by_position)
    return np.add(by_position, bias.reshape(1, o, 1, 1).astype(x.dtype, copy=False))


def conv2d_windows_input_grad(gy, w, stride, pad_before, dilation, image_size):
    """d<conv2d_windows(x, W), gy>/dx, (N, C, H, W) of ``image_size``: each position's window row
    gy_p @ W (C*kh*kw), added into the image (``conv_transpose2d``'s forward)."""
    n, o, oh, ow = gy.shape
    c, kh, kw = w.shape[1:]
    rows = matmul(_position_rows(gy), _c(w, gy.dtype).reshape(o, -1), _scratch((n * oh * ow, c * kh * kw), gy.dtype))
    img = np.zeros((n, c) + tuple(image_size), dtype=gy.dtype)
    if rows.size:
        _run(_windows, n * c, rows.size, img, rows.reshape(n, oh, ow, c, kh, kw), *_int(*stride, *pad_before, *dilation),
             True)
    return img


def conv2d_windows_weight_grad(x, gy, kernel, stride, pad_before, dilation):
    """d<conv2d_windows(x, W), gy>/dW, (O, C, kh, kw): gy's position rows^T @ the window rows."""
    o = gy.shape[1]
    rows = _window_rows(x, kernel, stride, pad_before, dilation, gy.shape[2:])
    grad = matmul(_position_rows(gy), rows, np.empty((o, rows.shape[1]), x.dtype), transpose_a=True)
    return grad.reshape((o, x.shape[1]) + tuple(kernel))


if not _GEMM:   # no BLAS to call from compiled code: kernels.get finds nothing, im2col runs
    conv2d_taps = conv2d_taps_weight_grad = None
