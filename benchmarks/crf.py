"""Time segnets.crf.dense_crf on a VOC-sized image: ``python -m benchmarks.crf [--device cpu|gpu]``.

A synthetic 500x375 RGB image (two flat regions, a rectangle, noise of std 10) and
random 21-class probabilities; DeepLab-LargeFOV's defaults, 10 mean-field
iterations, the permutohedral lattice. Prints the lattice build and the whole
call (median of ``--repeats`` after one warm-up call, which also pays the imports
and numba's compilation), wall-clock and, on CPU, the process's CPU time (steadier
on a shared machine, and on one thread; its minimum too; with threads it adds up the
threads' time); on CPU with the numba-built lattices (where numba imports) on all of
minigrad's threads (``--threads``, ``minigrad.set_num_threads``; default every core) and
on one, and with the generic NumPy code (one thread: the reference, and what runs without numba).
``--interleaved``: the same calls (and pydensecrf's) in rounds, one of each per round, wall
time only: on a shared machine the rows then see the same load.

Where ``pydensecrf`` (Krähenbühl's C++ code behind Cython; ``pip install pydensecrf2``
builds it from source, with a C++ compiler) imports, it runs on the same input with
the same parameters (its default symmetric normalisation, Potts weights w1 and w2) and
the script prints its time and how far the two agree: the fraction of pixels with the
same label and the largest difference of a marginal, on the random probabilities and
on a structured case (probabilities that follow the image's regions, blurred and
noisy, as a net's would). It is skipped, with the reason printed, where it does not
import; it is not a dependency of the project. pydensecrf runs on one thread.
"""
import argparse
import statistics
import time

import numpy as np

import minigrad
from segnets import crf

SETTINGS = {"w1": 4.0, "theta_alpha": 121.0, "theta_beta": 5.0, "w2": 3.0, "theta_gamma": 3.0}


def make_input(height=375, width=500, classes=21, seed=0):
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3))
    image[:, : width // 2] = 200
    image[height // 4: 3 * height // 4, width // 5: 4 * width // 5, 1] = 90
    image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
    probabilities = rng.random((classes, height, width)).astype(np.float32)
    return image, probabilities / probabilities.sum(axis=0)


def make_structured_input(height=375, width=500, classes=21, seed=1):
    """make_input's image; class 1 left, 2 right, 3 the rectangle, as a net would see them:
    one-hot logits of 4, blurred (a box of 31 pixels, like a stride-8 output's upsampling)
    plus Gaussian noise of std 1 on every class, softmaxed."""
    image, _ = make_input(height, width, classes, seed=0)
    truth = np.ones((height, width), dtype=np.int64)
    truth[:, width // 2:] = 2
    truth[height // 4: 3 * height // 4, width // 5: 4 * width // 5] = 3
    logits = 4.0 * (np.arange(classes)[:, None, None] == truth).astype(np.float64)
    kernel = np.ones(31) / 31
    for axis in (1, 2):
        logits = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, logits)
    logits += np.random.default_rng(seed).normal(0, 1, logits.shape)
    p = np.exp(logits - logits.max(axis=0))
    return image, (p / p.sum(axis=0)).astype(np.float32)


def seconds(wall, cpu):
    return f"wall {wall[0]:.3f} s (min {wall[1]:.3f} s)   cpu {cpu[0]:.3f} s (min {cpu[1]:.3f} s)"


def timed(fn, repeats, sync=lambda: None):
    fn()
    sync()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        sync()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return (statistics.median(walls), min(walls)), (statistics.median(cpus), min(cpus))


def pydensecrf_marginals(dcrf, image, probabilities, iterations=10):
    """pydensecrf's Q (classes, H, W) at SETTINGS (the same model as segnets.crf.dense_crf)."""
    classes, h, w = probabilities.shape
    d = dcrf.DenseCRF2D(w, h, classes)
    d.setUnaryEnergy(np.ascontiguousarray(-np.log(np.maximum(probabilities.reshape(classes, -1), 1e-8))))
    d.addPairwiseGaussian(sxy=SETTINGS["theta_gamma"], compat=SETTINGS["w2"])
    d.addPairwiseBilateral(sxy=SETTINGS["theta_alpha"], srgb=SETTINGS["theta_beta"], rgbim=np.ascontiguousarray(image),
                           compat=SETTINGS["w1"])
    return np.array(d.inference(iterations)).reshape(classes, h, w)


def interleaved(variants, dcrf, image, probabilities, repeats):
    """Wall time of each variant (and pydensecrf where given), ``repeats`` rounds of one call each."""
    calls = [(name, count, lambda c=compiled: crf.dense_crf(image, probabilities, compiled=c))
             for compiled, count, name in variants]
    if dcrf is not None:
        calls.append(("pydensecrf, 1 thr", 1, lambda: pydensecrf_marginals(dcrf, image, probabilities)))
    walls = {name: [] for name, _, _ in calls}
    for r in range(repeats + 1):  # the first round warms up
        for name, count, call in calls:
            minigrad.set_num_threads(count)
            start = time.perf_counter()
            call()
            if r:
                walls[name].append(time.perf_counter() - start)
    print(f"  interleaved, {repeats} rounds:")
    for name, times in walls.items():
        print(f"  {name + ':':18} dense CRF   wall {statistics.median(times):.3f} s (min {min(times):.3f} s)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="minigrad.set_num_threads (default: every core)")
    p.add_argument("--interleaved", action="store_true",
                   help="cpu: time the variants (and pydensecrf) in rounds, one call of each per round, so that "
                        "all see the same machine load; wall time only")
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads must be >= 1, got {args.threads}")
        minigrad.set_num_threads(args.threads)
    threads = minigrad.get_num_threads()
    image, probabilities = make_input()
    sync = lambda: None  # noqa: E731
    if args.device == "gpu":
        import cupy
        image, probabilities = cupy.asarray(image), cupy.asarray(probabilities)
        sync = cupy.cuda.Device().synchronize  # noqa: E731
    print(f"dense_crf, 500x375, 21 classes, 10 iterations, lattice, {args.device}, minigrad threads {threads}:")
    features = crf._prepare(image, probabilities, *SETTINGS.values(), "lattice", 1e-8)[2]
    # (compiled, threads, name); compiled=False: the generic reference, one thread (as without numba)
    variants = []
    if args.device == "cpu":
        variants += [(None, threads, f"numba, {threads} thr")] + ([(None, 1, "numba, 1 thr")] if threads > 1 else [])
    variants.append((False, 1, "NumPy, 1 thr" if args.device == "cpu" else "CuPy"))
    compiled_missing = crf._numba_kernels(np, None, features["appearance"].shape[0]) is None
    if compiled_missing and args.device == "cpu":
        print("  numba: not installed (or MINIGRAD_CPU_KERNELS=0), its rows skipped")
    variants = [v for v in variants if not (v[0] is None and compiled_missing)]
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as e:
        dcrf, missing = None, e
    if args.interleaved and args.device == "cpu":
        interleaved(variants, dcrf, image, probabilities, args.repeats)
        variants = []
    for compiled, count, name in variants:
        minigrad.set_num_threads(count)
        if count == 1:  # (one lattice's build runs on one thread)
            wall, cpu = timed(lambda: crf.PermutohedralLattice(features["appearance"], compiled=compiled),
                              args.repeats, sync)
            print(f"  {name + ':':15} 5-D lattice build   {seconds(wall, cpu)}")
        wall, cpu = timed(lambda: crf.dense_crf(image, probabilities, compiled=compiled), args.repeats, sync)
        print(f"  {name + ':':15} dense_crf           {seconds(wall, cpu)}")
    minigrad.set_num_threads(threads)
    if dcrf is None:
        print(f"  pydensecrf: not compared, it does not import ({missing}); `pip install pydensecrf2` builds it "
              "from source (needs a C++ compiler)")
        return 0
    image, probabilities = make_input()
    if not args.interleaved:
        wall, cpu = timed(lambda: pydensecrf_marginals(dcrf, image, probabilities), args.repeats)
        print(f"  pydensecrf:     dense CRF           {seconds(wall, cpu)}, 1 thread")
    for name, (image, probabilities) in (("random probabilities", (image, probabilities)),
                                         ("structured probabilities", make_structured_input())):
        theirs = pydensecrf_marginals(dcrf, image, probabilities)
        ours = crf.dense_crf(image, probabilities, **SETTINGS)
        ours = ours.get() if hasattr(ours, "get") else ours
        same = (theirs.argmax(0) == ours.argmax(0)).mean()
        before = (probabilities.argmax(0) == theirs.argmax(0)).mean()
        print(f"  against pydensecrf, {name}: same label on {same:.4f} of the pixels (the input's argmax: "
              f"{before:.4f}), largest marginal difference {np.abs(theirs - ours).max():.1e}, "
              f"mean {np.abs(theirs - ours).mean():.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
