"""minigrad's training step with its CPU kernels on and off, alternating in one process.

    python -m benchmarks.kernels_ab --threads 1 --rounds 7            # every net, small size
    python -m benchmarks.kernels_ab --threads 2 --nets unet --clock wall
    python -m benchmarks.kernels_ab --ops --threads 1                 # each kernel's op alone

Each round times one step with the kernels (``minigrad.kernels``) and one with the
generic NumPy code (``kernels.disabled()``), in alternating order; the figure is the
median over the rounds. ``--clock cpu`` (the default) reads the process's CPU time,
which a loaded machine disturbs much less than the wall clock; with more than one
thread it adds the threads' times, so it shows the work, not the wall time saved by
spreading it: use ``--clock wall`` on a quiet machine for that (the thread-scaling
columns of ``benchmarks.run`` are the reference).
"""
import argparse
import statistics
import time

import numpy as np

import minigrad
import minigrad.functional as F
from minigrad import kernels

from .models import NETS, SIZES, Trainer, make_labels


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernels_ab", description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=NETS)
    p.add_argument("--size", default="small", choices=tuple(SIZES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--ops", action="store_true", help="time each kernel's op alone (the ops suite's shapes)")
    args = p.parse_args(argv)
    if not kernels.enabled("cpu"):
        raise SystemExit("the CPU kernels are off (MINIGRAD_CPU_KERNELS=0 or numba missing): nothing to compare")
    minigrad.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.ops:
        return run_ops(clock, args)
    print(f"{args.clock} ms per step, median of {args.rounds}, {args.threads} thread(s), size {args.size}")
    for net in args.nets:
        trainer = Trainer("minigrad", net, SIZES[args.size])
        shape = trainer.output_shape()
        trainer.set_labels(make_labels((shape[0],) + shape[2:]))
        times = {"kernels": [], "generic": []}

        def timed(name):
            if name == "generic":
                with kernels.disabled("cpu"):
                    start = clock()
                    trainer.step()
                    times[name].append(clock() - start)
            else:
                start = clock()
                trainer.step()
                times[name].append(clock() - start)
        timed("kernels"), timed("generic")   # warm-up (compilation, buffers)
        times = {"kernels": [], "generic": []}
        for r in range(args.rounds):
            for name in (("kernels", "generic") if r % 2 == 0 else ("generic", "kernels")):
                timed(name)
        k, g = (1e3 * statistics.median(times[n]) for n in ("kernels", "generic"))
        print(f"  {net:<10} kernels {k:8.1f}  generic {g:8.1f}  kernels/generic {k / g:5.2f}", flush=True)



def _ab(fn, clock, rounds):
    """(kernels, generic) median seconds of ``fn()``, alternating; each sample loops to >= 20 ms."""
    def once():
        start = clock()
        fn()
        return clock() - start
    fn()
    with kernels.disabled("cpu"):
        fn()
    loops = max(1, int(0.02 / max(once(), 1e-6)))
    times = {"kernels": [], "generic": []}
    for r in range(rounds):
        for name in (("kernels", "generic") if r % 2 == 0 else ("generic", "kernels")):
            start = clock()
            if name == "generic":
                with kernels.disabled("cpu"):
                    for _ in range(loops):
                        fn()
            else:
                for _ in range(loops):
                    fn()
            times[name].append((clock() - start) / loops)
    return statistics.median(times["kernels"]), statistics.median(times["generic"])


def run_ops(clock, args):
    from minigrad.functional.im2col import col2im, im2col
    rng = np.random.default_rng(0)

    def t(shape, grad=False):
        return minigrad.tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=grad)
    x = rng.standard_normal((8, 16, 64, 64)).astype(np.float32)
    col = np.empty((8, 16, 3, 3, 64, 64), np.float32)
    pool_in = t((2, 64, 128, 128), True)
    unpool_in, switches = F.max_pool2d(t((2, 64, 128, 128)), 2, return_indices=True)
    bn_in, bn_w, bn_b = t((2, 64, 128, 128), True), t(64, True), t(64, True)
    logits, labels = t((2, 21, 128, 128), True), minigrad.tensor(rng.integers(0, 21, (2, 128, 128)))
    conv_x, conv_w = t((8, 16, 64, 64), True), t((16, 16, 3, 3), True)
    params = [minigrad.nn.Parameter(t((4096, 512))), minigrad.nn.Parameter(t((512, 64, 3, 3)))]
    for q in params:
        q.grad = t(q.shape)
    opt = minigrad.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)
    opt.step()

    def backward(out):
        out.backward(minigrad.tensor(np.ones(out.shape, np.float32)))
    cases = {
        "im2col 8x16x64x64 3x3": lambda: im2col(x, (3, 3), (1, 1), (1, 1), (1, 1), (64, 64), out=col),
        "col2im 8x16x64x64 3x3": lambda: col2im(col, (64, 64), (1, 1), (1, 1), (1, 1)),
        "conv2d 8x16x64x64 3x3 fwd+bwd": lambda: backward(F.conv2d(conv_x, conv_w, padding=1)),
        "max_pool2d 2x64x128x128 fwd+bwd": lambda: backward(F.max_pool2d(pool_in, 2)),
        "max_unpool2d 2x64x64x64 fwd": lambda: F.max_unpool2d(unpool_in, switches, 2),
        "batch_norm 2x64x128x128 fwd+bwd": lambda: backward(F.batch_norm(bn_in, None, None, bn_w, bn_b, True)),
        "relu 2x64x128x128 fwd+bwd": lambda: backward(F.relu(bn_in)),
        "cross_entropy 2x21x128x128 fwd+bwd": lambda: F.cross_entropy(logits, labels, ignore_index=255).backward(),
        "SGD step 2.4M params": opt.step,
    }
    print(f"{args.clock} ms per call, median of {args.rounds}, {args.threads} thread(s)")
    for name, fn in cases.items():
        k, g = _ab(fn, clock, args.rounds)
        print(f"  {name:<36} kernels {1e3 * k:8.2f}  generic {1e3 * g:8.2f}  kernels/generic {k / g:5.2f}",
              flush=True)


if __name__ == "__main__":
    main()
