"""GPU: the parts of one minigrad convolution timed on their own, beside PyTorch's three convolutions.

    python -m benchmarks.conv_parts

For full-width layers (batch 8): im2col, the forward product, the input gradient's
product and col2im, the weight gradient's folded im2col and product, and the whole
conv2d forward and backward; PyTorch's conv2d, conv2d_input and conv2d_weight (cuDNN)
on the same arrays. GPU times from CUDA events (``cupyx.profiler.benchmark``), medians.
What an im2col design costs beyond its products shows up as the difference.
"""
import numpy as np

LAYERS = [  # (name, input shape, out channels, padding)
    ("U-Net level 1 (valid)", (8, 64, 250, 250), 64, 0),
    ("VGG conv1_2 at 224", (8, 64, 224, 224), 64, 1),
    ("VGG conv3_3 at 56", (8, 256, 56, 56), 256, 1),
    ("VGG conv5_3 at 14", (8, 512, 14, 14), 512, 1),
]


def main():
    import cupy as cp
    import torch
    from cupyx.profiler import benchmark

    import minigrad as mg
    import minigrad.functional as F
    from minigrad.kernels import cuda as cuda_kernels
    from minigrad.functional import conv as C

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    def ms(fn):
        return 1e3 * float(np.median(benchmark(fn, n_repeat=20, n_warmup=3).gpu_times))

    for name, shape, out_channels, pad in LAYERS:
        n, c, h, w = shape
        rng = np.random.default_rng(0)
        x = cp.asarray(rng.standard_normal(shape, dtype=np.float32))
        weight = cp.asarray(rng.standard_normal((out_channels, c, 3, 3), dtype=np.float32) * 0.05)
        geom = C._conv_geometry(shape, weight.shape, 1, pad, 1, 1)
        oh, ow = geom.column_size
        gy = cp.asarray(rng.standard_normal((n, out_channels, oh, ow), dtype=np.float32))
        col = C._columns(x, geom)
        out = cp.empty((n, out_channels, oh, ow), cp.float32)
        w_mat = weight.reshape(1, out_channels, -1)
        k = w_mat.shape[2]
        flops = 2 * n * out_channels * k * oh * ow
        parts = {
            "im2col": lambda: C._columns(x, geom),
            "forward product": lambda: cuda_kernels.gemm(w_mat[0], col[:, 0], out.reshape(n, 1, out_channels, -1)[:, 0]),
            "input-grad product": lambda: cuda_kernels.gemm(w_mat[0], gy.reshape(n, out_channels, -1),
                                                   col[:, 0], transpose_a=True),
            "col2im": lambda: cuda_kernels.col2im(col.reshape(n, c, 3, 3, oh, ow), (h, w), (1, 1), (pad, pad), (1, 1)),
            "folded im2col": lambda: C._folded_columns(x, geom),
        }
        folded = C._folded_columns(x, geom)
        gy_folded = cp.ascontiguousarray(gy.transpose(1, 0, 2, 3)).reshape(1, out_channels, -1)
        gw = cp.zeros((out_channels, k), cp.float32)
        parts["weight-grad product"] = lambda: cuda_kernels.gemm(gy_folded[0], folded[0], gw, transpose_b=True, accumulate=True)
        xt, wt, gyt = (torch.as_tensor(a, device="cuda") for a in (x, weight, gy))
        mx = mg.Tensor(x, device="gpu", requires_grad=True)
        mw = mg.Tensor(weight, device="gpu", requires_grad=True)

        def mg_forward():
            return F.conv2d(mx, mw, padding=pad)

        def mg_backward():
            return C._conv_transpose_array(gy, weight, geom), C._conv_weight_grad(x, gy, geom)
        parts["minigrad conv2d forward"] = mg_forward
        parts["minigrad backward (input+weight)"] = mg_backward
        parts["torch conv2d forward"] = lambda: torch.nn.functional.conv2d(xt, wt, padding=pad)
        parts["torch conv2d_input"] = lambda: torch.nn.grad.conv2d_input(xt.shape, wt, gyt, padding=pad)
        parts["torch conv2d_weight"] = lambda: torch.nn.grad.conv2d_weight(xt, wt.shape, gyt, padding=pad)
        print(f"\n{name}: x {shape}, weight {tuple(weight.shape)}, pad {pad}; one product {flops / 1e9:.1f} GFLOP, "
              f"columns {col.nbytes / 2 ** 20:.0f} MiB")
        for part, fn in parts.items():
            t = ms(fn)
            rate = f"{flops / t / 1e9:8.1f} TFLOP/s" if "product" in part or "torch conv" in part else ""
            print(f"  {part:<34} {t:8.3f} ms {rate}")


if __name__ == "__main__":
    main()
