"""How much faster n threads can be than one on this machine: a pure compute loop, no memory traffic.

    python -m benchmarks.thread_ceiling --threads 2 --runs 10

Each thread runs the same compiled loop (16 independent multiply-add chains over a 4 KiB array
that stays in the L1 cache, the GIL released), so nothing is shared and nothing waits on memory.
n threads do n times one thread's work; the speed-up is n x (one thread's time) / (n threads'
time). A training step, with serial Python and memory-bound passes, cannot scale better than this
loop; on a virtual machine whose vCPUs share physical cores with other tenants it shows what the
host lets through (the issue-12 notes in benchmarks/README.md quote it). Needs numba (the ``cpu``
extra).
"""
import argparse
import statistics
import sys
import threading
import time

import numpy as np


def _kernel():
    from numba import njit

    @njit(nogil=True, fastmath=True, cache=True)
    def chains(a, reps):
        s = np.zeros(16, np.float32)
        for _ in range(reps):
            for i in range(a.size // 16):
                for j in range(16):
                    s[j] = s[j] * np.float32(0.999) + a[i * 16 + j]
        return s.sum()
    return chains


def speed_up(threads, reps, kernel, data):
    """(one thread's seconds, n threads' seconds, speed-up) for ``reps`` passes per thread."""
    def timed(count):
        workers = [threading.Thread(target=kernel, args=(data, reps)) for _ in range(count)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return time.perf_counter() - start
    one, many = timed(1), timed(threads)
    return one, many, threads * one / many


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2, help="threads to compare with one (default 2)")
    p.add_argument("--runs", type=int, default=10, help="repetitions of the pair (default 10)")
    p.add_argument("--reps", type=int, default=200_000, help="passes over the array per thread (default 200000)")
    args = p.parse_args(argv)
    for name in ("threads", "runs", "reps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    try:
        kernel = _kernel()
    except ImportError:
        print("benchmarks.thread_ceiling needs numba: pip install -e .[cpu]", file=sys.stderr)
        return 2
    data = np.random.default_rng(0).random(1024).astype(np.float32)
    kernel(data, 1)   # compile (or load from the cache) before timing
    ups = []
    for run in range(args.runs):
        one, many, up = speed_up(args.threads, args.reps, kernel, data)
        ups.append(up)
        print(f"run {run + 1}: 1 thread {one:.3f} s, {args.threads} threads ({args.threads}x the work) "
              f"{many:.3f} s, speed-up {up:.2f}", flush=True)
    print(f"speed-up 1 -> {args.threads} threads: median {statistics.median(ups):.2f}, "
          f"min {min(ups):.2f}, max {max(ups):.2f} over {args.runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
