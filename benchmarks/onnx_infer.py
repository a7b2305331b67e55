"""Inference on the CPU: minigrad's eval-mode forward against ONNX Runtime on the file ``minigrad.onnx.export`` wrote.

    python -m benchmarks.onnx_infer                                  # the default nets at width 8, 64x64, batch 1 and 8
    python -m benchmarks.onnx_infer --nets unet deconvnet --width 16 --size 128 --batch 4 --threads 1

Same weights, same float32 input; the outputs are compared first (max |diff| / max |minigrad|).
Each figure is the median of ``--repeats`` timed calls after one warm-up call, the two engines
alternating. ``--threads`` sets ONNX Runtime's intra-op threads and OpenBLAS's (minigrad's
matrix products) when OpenBLAS can be reached; minigrad's element-wise work runs on one core.
Prints a Markdown table (the one in benchmarks/README.md).
"""
import argparse
import io
import os
import statistics
import time

import numpy as np

DEFAULT_NETS = ("fcn8s", "deconvnet", "unet", "segnet", "deeplabv1_largefov", "deeplabv3plus_resnet101")


def _set_blas_threads(n):
    from .common import set_openblas_threads
    set_openblas_threads(n)


def measure(name, width, size, batch, repeats, threads):
    import onnxruntime as ort

    import minigrad
    import minigrad.onnx
    import segnets
    from segnets.export import default_size
    model = segnets.build_model(name, 21, width=width, **({"padding": "same"} if name == "unet" else {}))
    model.eval()
    rng = np.random.default_rng(0)
    for t in model.parameters():  # FCN's score layers start at zero: give every output a real value
        if not np.any(t.data):
            t.data[...] = rng.standard_normal(t.shape) * 0.01
    rule = model.size_rule()
    h = default_size(rule, size)
    x = np.random.default_rng(0).standard_normal((batch, model.in_channels, h, h)).astype(np.float32)
    f = io.BytesIO()
    minigrad.onnx.export(model, minigrad.Tensor(x), f)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(f.getvalue(), options, providers=["CPUExecutionProvider"])

    def run_minigrad():
        with minigrad.no_grad():
            return model(minigrad.Tensor(x)).numpy()

    def run_ort():
        return session.run(None, {"input": x})[0]
    ours, theirs = run_minigrad(), run_ort()
    diff = float(np.abs(ours - theirs).max() / max(np.abs(ours).max(), 1e-12))
    times = {"minigrad": [], "ort": []}
    for k in range(repeats):
        order = (("minigrad", run_minigrad), ("ort", run_ort))
        for key, fn in (order if k % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    t_ours, t_ort = statistics.median(times["minigrad"]), statistics.median(times["ort"])
    return {"net": name, "input": f"{batch}x{model.in_channels}x{h}x{h}", "minigrad_ms": 1e3 * t_ours,
            "ort_ms": 1e3 * t_ort, "ratio": t_ours / t_ort, "diff": diff}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.onnx_infer", description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", default=list(DEFAULT_NETS))
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--size", type=int, default=64, help="input side (rounded up to a size the net accepts)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="0: each library's default")
    args = p.parse_args(argv)
    if args.threads:
        _set_blas_threads(args.threads)
    print(f"width {args.width}, {args.repeats} repeats, threads {args.threads or 'default'}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("| net | input | minigrad eval forward (ms) | ONNX Runtime (ms) | minigrad / ORT | max rel diff |")
    print("|---|---|---|---|---|---|")
    for name in args.nets:
        for batch in args.batch:
            r = measure(name, args.width, args.size, batch, args.repeats, args.threads)
            print(f"| {r['net']} | {r['input']} | {r['minigrad_ms']:.1f} | {r['ort_ms']:.1f} | {r['ratio']:.1f}x | "
                  f"{r['diff']:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
