"""Time segnets.crf.dense_crf on a VOC-sized image: ``python -m benchmarks.crf [--device cpu|gpu]``.

A synthetic 500x375 RGB image (two flat regions, a rectangle, noise of std 10) and
random 21-class probabilities; DeepLab-LargeFOV's defaults, 10 mean-field
iterations, the permutohedral lattice. Prints the lattice build and the whole
call (median of ``--repeats`` after one warm-up call, which also pays the imports),
wall-clock and, on CPU, the process's CPU time (steadier on a shared machine).
Where ``pydensecrf`` (the C++ original's wrapper) imports, it is timed on the same input.
"""
import argparse
import statistics
import time

import numpy as np

from segnets import crf


def make_input(height=375, width=500, classes=21, seed=0):
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3))
    image[:, : width // 2] = 200
    image[height // 4: 3 * height // 4, width // 5: 4 * width // 5, 1] = 90
    image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
    probabilities = rng.random((classes, height, width)).astype(np.float32)
    return image, probabilities / probabilities.sum(axis=0)


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
    return statistics.median(walls), statistics.median(cpus)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    image, probabilities = make_input()
    sync = lambda: None  # noqa: E731
    if args.device == "gpu":
        import cupy
        image, probabilities = cupy.asarray(image), cupy.asarray(probabilities)
        sync = cupy.cuda.Device().synchronize  # noqa: E731
    print(f"dense_crf, 500x375, 21 classes, 10 iterations, lattice, {args.device}:")
    _, _, features = crf._prepare(image, probabilities, 4, 121, 5, 3, 3, "lattice", 1e-8)
    wall, cpu = timed(lambda: crf.PermutohedralLattice(features["appearance"]), args.repeats, sync)
    print(f"  5-D lattice build   wall {wall:.3f} s   cpu {cpu:.3f} s")
    wall, cpu = timed(lambda: crf.dense_crf(image, probabilities), args.repeats, sync)
    print(f"  dense_crf           wall {wall:.3f} s   cpu {cpu:.3f} s")
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        print("  pydensecrf: not installed (source-only; needs a C++ compiler), not compared")
        return 0
    image, probabilities = make_input()

    def original():
        d = dcrf.DenseCRF2D(500, 375, 21)
        d.setUnaryEnergy(np.ascontiguousarray(-np.log(probabilities.reshape(21, -1))))
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=121, srgb=5, rgbim=np.ascontiguousarray(image), compat=4)
        return np.array(d.inference(10))
    wall, cpu = timed(original, args.repeats)
    print(f"  pydensecrf          wall {wall:.3f} s   cpu {cpu:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
