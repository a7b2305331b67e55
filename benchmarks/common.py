"""What both suites share: the device context, alternating timing, matching threads,
the matrix-product ceiling, comparing results and describing the machine.

Nothing GPU-specific is imported unless ``device='gpu'`` is asked for.
"""
import gc
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

import minigrad

MIN_SAMPLE_S = 0.02  # an op faster than this is looped inside one sample, so timer noise stays small
SLOW_SAMPLE_S = 0.5  # when every candidate's warm-up call takes this long, 3 samples are enough
# After a call, OpenBLAS's idle threads spin for about 0.1 s (2^28 cycles) before they sleep;
# a PyTorch sample started in that window shares the cores with them (measured here: a 5 ms
# conv took 9-10 ms right after a NumPy product, 5 ms after a 0.12 s pause). So on CPU the
# timer waits this long before every sample that follows the other library's.
SETTLE_S = 0.15


# ----------------------------------------------------------------------------- threads
# OpenBLAS's thread count is read and set through ctypes by minigrad itself (minigrad.threads):
# minigrad.set_num_threads(n) sets it together with the CPU kernels' pool.
openblas_threads, set_openblas_threads = minigrad.threads.openblas_threads, minigrad.threads.set_openblas_threads


def numpy_threads():
    """(thread count, where it came from) for NumPy's BLAS."""
    n = openblas_threads()
    if n:
        return n, "OpenBLAS (openblas_get_num_threads)"
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]), f"env {var}"
    return os.cpu_count() or 1, "os.cpu_count()"


def minigrad_threads():
    """(thread count, where it came from): what minigrad uses for its CPU work (set_num_threads)."""
    from minigrad import kernels
    if kernels.enabled("cpu"):
        return minigrad.get_num_threads(), "minigrad.get_num_threads(): its kernels' pool, OpenBLAS on 1"
    return numpy_threads()


def match_threads(torch):
    """Give PyTorch as many threads as minigrad uses (its pool, or NumPy's BLAS without the kernels)."""
    n, source = minigrad_threads()
    minigrad.set_num_threads(n)
    torch.set_num_threads(n)
    return {"threads": n, "source": source, "torch_threads": torch.get_num_threads(),
            "minigrad_threads": minigrad.get_num_threads(), "cpu_kernels": cpu_kernels()}


def cpu_kernels():
    """What runs minigrad's CPU fast paths: 'numba <version>', or why the generic NumPy code runs."""
    from minigrad import kernels
    if not kernels.enabled("cpu"):
        return "off (MINIGRAD_CPU_KERNELS=0)" if not kernels._enabled["cpu"] else "off (numba not installed)"
    import numba
    return f"numba {numba.__version__}"


# ----------------------------------------------------------------------------- device context
class Context:
    """Device, run settings and the array plumbing between NumPy, minigrad and PyTorch."""

    def __init__(self, device="cpu", quick=False, repeats=None, warmup=None, threads=None):
        import torch  # the harness needs it; minigrad/ itself never imports it

        self.torch = torch
        self.device = minigrad.backend.normalize_device(device)
        if self.device == "gpu" and not torch.cuda.is_available():
            raise SystemExit("--device gpu needs a CUDA build of PyTorch that sees the GPU "
                             f"(this one is {torch.__version__}, torch.cuda.is_available() is False)")
        self.quick = quick
        self.repeats = repeats if repeats is not None else (1 if quick else 5)
        self.warmup = warmup if warmup is not None else (0 if quick else 1)
        self.model_repeats = repeats if repeats is not None else (1 if quick else 3)
        self.torch_device = "cuda" if self.device == "gpu" else "cpu"
        self.xp = minigrad.backend.xp_for(self.device)
        if threads is not None:
            minigrad.set_num_threads(threads)   # minigrad's CPU kernels and OpenBLAS
            if openblas_threads() is None:
                raise SystemExit(f"--threads {threads}: NumPy's OpenBLAS was not found in this process; "
                                 f"set OPENBLAS_NUM_THREADS={threads} OMP_NUM_THREADS={threads} instead")
        self.threads = match_threads(torch)
        self.math_mode = set_gpu_math_mode(torch) if self.device == "gpu" else None
        # the objects of the imports (torch's are many) never die: keep the collector off them,
        # so the gc.collect() before each timing is cheap and collections inside a timing are short
        gc.collect()
        gc.freeze()

    # same bits into both libraries
    def mg(self, array, requires_grad=False):
        return minigrad.Tensor(array, requires_grad=requires_grad, device=self.device)

    def th(self, array, requires_grad=False):
        t = self.torch.from_numpy(np.ascontiguousarray(array)).to(self.torch_device)
        return t.requires_grad_(requires_grad) if requires_grad else t

    def to_numpy(self, value):
        """A NumPy array from a minigrad Tensor, a torch tensor or a backend array."""
        if value is None:
            return None
        if isinstance(value, minigrad.Tensor):
            return value.numpy()
        if isinstance(value, self.torch.Tensor):
            return value.detach().cpu().numpy()
        return minigrad.backend.to_numpy(value)

    def sync(self):
        """Wait for queued GPU work (both libraries share the device); nothing on CPU."""
        if self.device == "gpu":
            minigrad.backend.cupy().cuda.runtime.deviceSynchronize()

    def no_grad(self, library):
        return minigrad.no_grad() if library == "minigrad" else self.torch.no_grad()


def set_gpu_math_mode(torch):
    """Make PyTorch use TF32 exactly when CuPy does (CuPy: only with env CUPY_TF32=1)."""
    tf32 = os.environ.get("CUPY_TF32", "0") == "1"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    return {"tf32": tf32, "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}


# ----------------------------------------------------------------------------- timing
def _timed(fn, loops, sync):
    sync()
    start = time.perf_counter()
    for _ in range(loops):
        fn()
    sync()
    return (time.perf_counter() - start) / loops


def _loops_for(fn, sync, warmup_seconds=None):
    """Calls per sample so that one sample lasts at least MIN_SAMPLE_S.

    A warm-up call that took over 0.25 s decides alone (one call per sample);
    otherwise one more timed call does (a first call can carry one-time set-up).
    """
    if warmup_seconds is not None and warmup_seconds >= 0.25:
        return 1
    seconds = _timed(fn, 1, sync)
    return max(1, min(100, math.ceil(MIN_SAMPLE_S / max(seconds, 1e-9))))


def time_alternating(ctx, candidates, repeats=None):
    """Median seconds per call of each ``name -> fn``, timed in turn on the same inputs.

    Warm-up first, then the calls per sample are set (so a sample lasts at least
    MIN_SAMPLE_S). Samples alternate between candidates, with the order reversed
    every other round, so drift in machine load falls on both libraries alike.
    """
    gc.collect()
    warmup_seconds = {}
    for _ in range(ctx.warmup):
        for name, fn in candidates.items():
            warmup_seconds[name] = _timed(fn, 1, ctx.sync)
    loops = {name: 1 if ctx.quick else _loops_for(fn, ctx.sync, warmup_seconds.get(name))
             for name, fn in candidates.items()}
    repeats = ctx.repeats if repeats is None else repeats
    if all(seconds >= SLOW_SAMPLE_S for seconds in warmup_seconds.values()) and warmup_seconds:
        repeats = min(repeats, 3)  # slow calls vary little relative to their length
    samples = {name: [] for name in candidates}
    names, previous = list(candidates), None
    for round_ in range(repeats):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            if ctx.device == "cpu" and not ctx.quick and previous not in (None, name):
                time.sleep(SETTLE_S)
            samples[name].append(_timed(candidates[name], loops[name], ctx.sync))
            previous = name
    return {name: statistics.median(s) for name, s in samples.items()}


_matmul_cache = {}


def matmul_seconds(ctx, m, k, n):
    """Median seconds of one float32 (m, k) @ (k, n) product with the device's own array library.

    This is the ceiling for an im2col design: a convolution of the same FLOPs cannot
    beat the matrix product it reduces to.
    """
    key = (ctx.device, m, k, n)
    if key not in _matmul_cache:
        rng = np.random.default_rng(0)
        if ctx.device == "cpu" and not ctx.quick:
            time.sleep(SETTLE_S)  # PyTorch's idle threads, too, may still be spinning
        a = ctx.xp.asarray(rng.standard_normal((m, k), dtype=np.float32))
        b = ctx.xp.asarray(rng.standard_normal((k, n), dtype=np.float32))
        from minigrad import kernels
        fast = kernels.get("matmul", a) if ctx.device == "cpu" else None
        if fast is not None:  # minigrad's own threaded product: OpenBLAS is on one thread then
            out = np.empty((m, n), np.float32)
            _matmul_cache[key] = time_alternating(ctx, {"matmul": lambda: fast(a, b, out)})["matmul"]
        else:
            _matmul_cache[key] = time_alternating(ctx, {"matmul": lambda: a @ b})["matmul"]
    return _matmul_cache[key]


# ----------------------------------------------------------------------------- comparing
def max_rel_diff(ours, reference, floor=0.0):
    """max |ours - reference| / max(max |reference|, floor): one number per array, no blow-up near zeros."""
    ours = np.asarray(ours, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if ours.shape != reference.shape:
        raise ValueError(f"shapes differ: minigrad {ours.shape}, PyTorch {reference.shape}")
    scale = max(float(np.max(np.abs(reference))) if reference.size else 0.0, floor)
    diff = np.max(np.abs(ours - reference)) if reference.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


# ----------------------------------------------------------------------------- the machine
def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _numpy_blas():
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older NumPy: no dict mode
        return "unknown"


def _torch_blas(torch):
    config = torch.__config__.show()
    blas = next((part.split("=", 1)[1] for part in config.replace(",", "\n").split()
                 if part.startswith("BLAS_INFO=")), "unknown")
    return blas + (" + oneDNN" if "MKL-DNN" in config or "oneDNN" in config else "")


def _git_commit():
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "") if commit else None
    except (OSError, subprocess.SubprocessError):
        return None


def load_average():
    """1-minute load average: above ~0.5 on an otherwise idle machine, other work shared the cores."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine_info(ctx):
    """The machine and library versions, so a table says where it came from."""
    torch = ctx.torch
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "numpy_blas": _numpy_blas(),
        "torch": torch.__version__,
        "torch_blas": _torch_blas(torch),
        "minigrad": getattr(minigrad, "__version__", "?"),
        "git_commit": _git_commit(),
        "threads": ctx.threads,
        "load_average_at_start": load_average(),
    }
    if ctx.device == "gpu":
        cp = minigrad.backend.cupy()
        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        info.update({
            "gpu": name.decode() if isinstance(name, bytes) else name,
            "gpu_torch": torch.cuda.get_device_name(0),
            "cupy": cp.__version__,
            "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
            "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "math_mode": ctx.math_mode,
        })
    return info


def unused_stem(output_dir, stem, extensions=(".json", ".md")):
    """``stem``, or ``stem-2``, ``stem-3``, ... : the first name no earlier run's result file has."""
    taken = lambda s: any(os.path.exists(os.path.join(output_dir, s + ext)) for ext in extensions)
    base, n = stem, 1
    while taken(stem):                                # never overwrite an earlier run's results
        n += 1
        stem = f"{base}-{n}"
    return stem
