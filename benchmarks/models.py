"""Models suite: one full training step of each net, minigrad (segnets) against PyTorch (torch_nets).

A step is ``zero_grad; loss = cross_entropy(model(x), y, ignore_index=255);
loss.backward(); SGD(momentum=0.9, weight_decay=1e-4).step()``, written once: both
libraries take the same calls. Both models get the same weights (copied by
parameter name from the PyTorch twin) and the same batch; before timing, one
forward+backward is compared (loss and every parameter gradient).

Peak memory (see ``memory_method``): on CPU each library's step runs in a fresh
process (``python -m benchmarks.models --peak ...``) and we read the kernel's peak
resident set (VmHWM) around the second step; on GPU, CuPy's pool bytes in use
(a memory hook) against ``torch.cuda.max_memory_allocated``.
"""
import argparse
import contextlib
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import traceback

import numpy as np

NETS = ("fcn32s", "fcn16s", "fcn8s", "deconvnet", "unet")
# On ResNet (issue 16): run with --nets; not in the default list, whose --quick run the tests time.
RESNET_NETS = ("deeplabv2_resnet101", "deeplabv3_resnet101", "deeplabv3plus_resnet101", "pspnet50", "pspnet101")
# The later VGG16 papers (issue 15): run with --nets, as the ResNet ones.
VGG_NETS = ("deeplabv1_largefov", "deeplabv2_vgg16", "segnet")
NUM_CLASSES, IGNORE_INDEX = 21, 255
LR, MOMENTUM, WEIGHT_DECAY = 1e-3, 0.9, 1e-4


@dataclasses.dataclass(frozen=True)
class Size:
    name: str
    width: int
    image: int
    batch: int


SIZES = {
    "tiny": Size("tiny", 4, 32, 2),      # --quick (batch 2: BatchNorm needs two values per channel)
    "small": Size("small", 16, 64, 8),   # segnets' CPU recipes: width 16, 64x64 crops, batch 8
    "full": Size("full", 64, 224, 8),    # the papers' width (GPU)
}


def net_config(net, size):
    """(model options, input side): segnets' recipe options at small sizes, the papers' at full width."""
    if net in RESNET_NETS:  # the references' options (no aux head: the step's loss is the main one)
        return {}, size.image
    if net in VGG_NETS:  # the papers' options at full width, the recipes' (rates for 64x64 crops) below
        if size.name == "full" or net == "segnet":
            return {}, size.image
        return ({"fc6_dilation": 2} if net == "deeplabv1_largefov" else {"rates": [1, 2, 3, 4]}), size.image
    if size.name == "full":
        if net == "unet":  # the paper's unpadded U-Net; 252 is the nearest valid size to 224 (output 68)
            return {"padding": "valid", "batch_norm": False}, 252
        return ({"fc_kernel": 7} if net == "deconvnet" else {"pad100": True, "fc_kernel": 7}), size.image
    if net == "unet":
        return {"padding": "same", "batch_norm": True}, size.image
    if net == "deconvnet":  # fc6 covers the whole pool5 map
        return {"fc_kernel": max(1, size.image // 32)}, size.image
    return {"pad100": False, "fc_kernel": 1}, size.image


def make_batch(size, side, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((size.batch, 3, side, side), dtype=np.float32)


def make_labels(shape, seed=1):
    """Random classes with a tenth of the pixels void (255), like VOC's borders."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, size=shape)
    labels[rng.random(shape) < 0.1] = IGNORE_INDEX
    return labels.astype(np.int64)


# ----------------------------------------------------------------------------- one library's training
class Trainer:
    """A model, its optimizer and a fixed batch in one library; ``step()`` is one training step."""

    def __init__(self, library, net, size, device="cpu", torch_module=None):
        self.library, self.device = library, device
        options, side = net_config(net, size)
        images = make_batch(size, side)
        if library == "minigrad":
            import minigrad
            import minigrad.functional as F
            import segnets

            self.lib, self.F = minigrad, F
            minigrad.manual_seed(0)
            self.model = segnets.build_model(net, NUM_CLASSES, in_channels=3, width=size.width, **options)
            self.model.to(device)
            self.optim = minigrad.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=LR, momentum=MOMENTUM,
                                            weight_decay=WEIGHT_DECAY)
            self.x = minigrad.Tensor(images, device=device)
        else:
            from . import torch_nets

            torch = torch_module
            self.lib, self.F = torch, torch.nn.functional
            torch.manual_seed(0)
            self.torch_device = "cuda" if device == "gpu" else "cpu"
            self.model = torch_nets.build(net, NUM_CLASSES, in_channels=3, width=size.width, **options)
            self.model.to(self.torch_device)
            self.optim = torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=LR,
                                         momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
            self.x = torch.from_numpy(images).to(self.torch_device)
        self.model.train()
        self.y = None

    def output_shape(self):
        with self.lib.no_grad():
            return tuple(self.model(self.x).shape)

    def set_labels(self, labels):
        if self.library == "minigrad":
            self.y = self.lib.Tensor(labels, device=self.device)
        else:
            self.y = self.lib.from_numpy(labels).to(self.torch_device)

    def loss(self):
        return self.F.cross_entropy(self.model(self.x), self.y, ignore_index=IGNORE_INDEX)

    def step(self):
        self.optim.zero_grad()
        loss = self.loss()
        loss.backward()
        self.optim.step()
        return loss


def _as_numpy(tensor):
    """NumPy copy of a minigrad or PyTorch tensor, from any device."""
    if type(tensor).__module__.startswith("torch"):
        return tensor.detach().cpu().numpy()
    return tensor.numpy()


def copy_weights(mg_model, torch_model):
    """Copy every PyTorch parameter and buffer into the minigrad model by name (shapes checked).

    Names segnets does not share are matched by shape, in order, among the leftovers.
    Returns (copied, total) counts over the minigrad model's tensors.
    """
    source = {k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()
              if v.dtype.is_floating_point}
    targets = list(mg_model.named_parameters()) + list(mg_model.named_buffers())
    targets = [(name, t) for name, t in targets if t.data.dtype.kind == "f"]
    leftovers, copied = [], 0
    for name, tensor in targets:
        array = source.pop(name, None)
        if array is not None and tuple(array.shape) == tuple(tensor.shape):
            tensor.data[...] = tensor.xp.asarray(array)
            copied += 1
        else:
            leftovers.append((name, tensor))
    for name, tensor in leftovers:
        match = next((k for k, a in source.items() if tuple(a.shape) == tuple(tensor.shape)), None)
        if match is not None:
            tensor.data[...] = tensor.xp.asarray(source.pop(match))
            copied += 1
    return copied, len(targets)


def _grad_diffs(mg, th):
    """Parameter gradients, minigrad against PyTorch: (over the whole net, worst single parameter).

    Whole net: max |difference| over every gradient / the largest |gradient|. Per parameter,
    the scale is floored at 1e-3 of that largest gradient: a bias just before a BatchNorm has
    zero gradient up to rounding, and rounding noise is not a difference.
    """
    from .common import max_rel_diff

    theirs = {k: _as_numpy(p.grad) for k, p in th.model.named_parameters() if p.grad is not None}
    ours = {k: _as_numpy(p.grad) for k, p in mg.model.named_parameters() if p.grad is not None and k in theirs}
    scale = max(float(np.max(np.abs(g))) for g in theirs.values())
    per_param = {k: max_rel_diff(g, theirs[k], floor=1e-3 * scale) for k, g in ours.items()}
    worst = max(per_param, key=per_param.get)
    whole = max(float(np.max(np.abs(g.astype(np.float64) - theirs[k]))) for k, g in ours.items()) / scale
    return whole, {"name": worst, "value": per_param[worst]}


def _forward_backward_both(mg, th):
    losses = []
    for trainer in (mg, th):
        trainer.model.zero_grad()
        loss = trainer.loss()
        loss.backward()
        losses.append(float(loss.item()))
    whole, worst = _grad_diffs(mg, th)
    for trainer in (mg, th):
        trainer.model.zero_grad()
    return {"loss": losses, "loss_rel_diff": abs(losses[0] - losses[1]) / max(abs(losses[1]), 1e-12),
            "grad_rel_diff": whole, "worst_grad_rel_diff": worst}


@contextlib.contextmanager
def _in_float64(mg, th):
    """Both models and inputs in float64 for a while (float32 -> float64 -> float32 is exact)."""
    x_mg, x_th = mg.x, th.x
    mg.model.to(np.float64)
    th.model.double()
    mg.x, th.x = x_mg.to(dtype=np.float64), x_th.double()
    try:
        yield
    finally:
        mg.model.to(np.float32)
        th.model.float()
        mg.x, th.x = x_mg, x_th


@contextlib.contextmanager
def _no_dropout(mg, th, active):
    """Every Dropout/Dropout2d of both models at p=0 for a while (``active``), then back."""
    layers = [m for t in (mg, th) for m in t.model.modules()
              if active and type(m).__name__ in ("Dropout", "Dropout2d")]
    saved = [m.p for m in layers]
    for m in layers:
        m.p = 0.0
    try:
        yield
    finally:
        for m, p in zip(layers, saved):
            m.p = p


def compare(mg, th, net):
    """One forward+backward in both from the same weights, in float32 and again in float64.

    Deep stacks of BatchNorm amplify float32 rounding differently in each library (a
    few percent on some DeconvNet gradients); float64 shows whether the two compute the
    same function. FCN and the VGG16 DeepLabs are compared in eval mode (their dropout
    draws different masks in each library; they have no BatchNorm, so eval changes
    nothing else); the others in train mode.
    """
    mode = "eval" if net.startswith("fcn") or net in ("deeplabv1_largefov", "deeplabv2_vgg16") else "train"
    for trainer in (mg, th):
        trainer.model.train(mode == "train")
    with _no_dropout(mg, th, net in RESNET_NETS):  # BatchNorm and dropout: train mode, dropout at p=0
        f32 = _forward_backward_both(mg, th)
        with _in_float64(mg, th):
            f64 = _forward_backward_both(mg, th)
    for trainer in (mg, th):
        trainer.model.train()
    return {"compare_mode": mode, "minigrad_loss": f32["loss"][0], "torch_loss": f32["loss"][1],
            "loss_rel_diff": f32["loss_rel_diff"], "grad_rel_diff": f32["grad_rel_diff"],
            "worst_grad_rel_diff": f32["worst_grad_rel_diff"],
            "float64": {k: f64[k] for k in ("loss_rel_diff", "grad_rel_diff", "worst_grad_rel_diff")}}


# ----------------------------------------------------------------------------- peak memory
def _proc_status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trainer(library, net, size, torch):
    trainer = Trainer(library, net, size, "cpu", torch)
    shape = trainer.output_shape()
    trainer.set_labels(make_labels((shape[0],) + shape[2:]))
    return trainer


def cpu_peak(library, net, size, threads):
    """Run in a fresh process: MB of peak RSS for the training, and for one step alone; and the time
    to the first step (the library's import, the model, one step: any compilation or cache load)."""
    import resource
    import time

    start = time.perf_counter()
    torch = None
    if library == "torch":
        import torch
        torch.set_num_threads(threads)
    else:
        import minigrad  # (imports counted in the baseline, like torch's)
        minigrad.set_num_threads(threads)
    _trainer(library, net, size, torch).step()  # lazy runtime set-up (oneDNN primitives, thread pools)
    first_step_s = time.perf_counter() - start
    gc.collect()
    rss_start = _proc_status_kb("VmRSS")
    trainer = _trainer(library, net, size, torch)
    trainer.step()  # the first step creates the momentum buffers
    if _reset_peak_rss():
        rss_before = _proc_status_kb("VmRSS")
        trainer.step()
        peak = _proc_status_kb("VmHWM")
        step_kb = peak - rss_before
    else:  # no reset possible: the peak of the whole process, since start
        trainer.step()
        peak, step_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, None
    return {"total_mb": (peak - rss_start) / 1024, "step_mb": None if step_kb is None else step_kb / 1024,
            "first_step_s": first_step_s}


CPU_MEMORY_METHOD = (
    "Peak memory (CPU): each library's training runs in a fresh process (`python -m benchmarks.models --peak`) "
    "with glibc's mmap threshold fixed at 64 KiB (`MALLOC_MMAP_THRESHOLD_`), so freed arrays leave the resident "
    "set at once. *peak MB* = peak resident set (VmHWM) during the second training step minus the resident set "
    "before the model was built (after one step of a throw-away copy, so the libraries' lazy set-up is not "
    "counted): weights, gradients, momentum, activations and temporaries. The JSON also has `step_mb`: the "
    "peak of the step alone over the resident set just before it.")


def cpu_peaks_subprocess(library, nets, size, threads, **env_extra):
    """{net: {...}} measured in one fresh process per call (``env_extra``: more environment variables)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",
               OPENBLAS_NUM_THREADS=str(threads), **env_extra)  # the parent's thread count, for NumPy as for torch
    cmd = [sys.executable, "-m", "benchmarks.models", "--peak", "--library", library, "--size", size.name,
           "--threads", str(threads), "--nets", *nets]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} failed: {done.stderr.strip()[-600:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


GPU_MEMORY_METHOD = (
    "Peak memory (GPU): *peak MB* = the most device memory in use during one training step minus what was in "
    "use before the model was built: for minigrad, bytes handed out by CuPy's memory pool (tracked with a "
    "`cupy.cuda.MemoryHook`), for PyTorch `torch.cuda.max_memory_allocated()`; neither counts the pools' "
    "cached free blocks. The JSON also has `step_mb` (over what was in use just before the step).")


def _cupy_in_use_tracker():
    """A memory hook that follows the bytes the CuPy pool has handed out, and their peak."""
    import cupy

    class PeakHook(cupy.cuda.MemoryHook):
        name = "PeakHook"

        def __init__(self):
            self.in_use = self.peak = cupy.get_default_memory_pool().used_bytes()

        def malloc_postprocess(self, **kwargs):  # CuPy passes device_id, size, mem_size, mem_ptr, pmem_id
            if kwargs.get("mem_ptr"):  # 0 when the allocation failed
                self.in_use += kwargs["mem_size"]
                self.peak = max(self.peak, self.in_use)

        def free_postprocess(self, **kwargs):
            self.in_use -= kwargs["mem_size"]

    return PeakHook()


def gpu_in_use(library, torch):
    if library == "torch":
        return torch.cuda.memory_allocated()
    import cupy
    return cupy.get_default_memory_pool().used_bytes()


def gpu_peak(trainer, torch, base_bytes):
    """Peak device bytes of one step (in this process), as MB over ``base_bytes`` and over the step's start."""
    torch.cuda.synchronize()
    if trainer.library == "torch":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        trainer.step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        hook = _cupy_in_use_tracker()
        before = hook.in_use
        with hook:
            trainer.step()
            torch.cuda.synchronize()
        peak = hook.peak
    return {"total_mb": (peak - base_bytes) / 2 ** 20, "step_mb": (peak - before) / 2 ** 20}


# ----------------------------------------------------------------------------- the suite
def run_net(ctx, net, size, peaks=None, memory=True):
    """One row: timing, agreement, and peak memory (``peaks`` measured beforehand on CPU; here on GPU)."""
    torch = ctx.torch
    options, side = net_config(net, size)
    base = {lib: gpu_in_use(lib, torch) for lib in ("minigrad", "torch")} if ctx.device == "gpu" else {}
    th = Trainer("torch", net, size, ctx.device, torch)
    mg = Trainer("minigrad", net, size, ctx.device)
    copied, total = copy_weights(mg.model, th.model)
    out_shape = th.output_shape()
    labels = make_labels((out_shape[0],) + out_shape[2:])
    for trainer in (mg, th):
        trainer.set_labels(labels)
    row = {"net": net, "size": size.name, "width": size.width, "batch": size.batch, "options": options,
           "input": [size.batch, 3, side, side], "output": list(out_shape),
           "params": sum(p.numel() for p in th.model.parameters() if p.requires_grad), "weights_copied": f"{copied}/{total}"}
    row.update(compare(mg, th, net))
    from .common import time_alternating
    times = time_alternating(ctx, {"minigrad": mg.step, "torch": th.step}, repeats=ctx.model_repeats)
    row.update({"minigrad_ms": 1e3 * times["minigrad"], "torch_ms": 1e3 * times["torch"],
                "ratio": times["minigrad"] / times["torch"],
                "minigrad_img_s": size.batch / times["minigrad"], "torch_img_s": size.batch / times["torch"]})
    if ctx.device == "cpu" and ctx.threads["threads"] > 1 and getattr(ctx, "scaling", True):
        row["one_thread"] = _one_thread_times(ctx, {"minigrad": mg.step, "torch": th.step})
        row["scaling"] = {lib: row["one_thread"][f"{lib}_ms"] / row[f"{lib}_ms"] for lib in ("minigrad", "torch")}
    if ctx.device == "gpu" and memory:
        peaks = {lib: gpu_peak(t, torch, base[lib]) for lib, t in (("minigrad", mg), ("torch", th))}
    if peaks:
        libs = [lib for lib in ("minigrad", "torch") if lib in peaks]
        row["peak_mb"] = {lib: peaks[lib]["total_mb"] for lib in libs}
        row["step_mb"] = {lib: peaks[lib]["step_mb"] for lib in libs}
        row["first_step_s"] = {lib: peaks[lib].get("first_step_s") for lib in libs}
        if "minigrad_cold" in peaks:
            row["first_step_s"]["minigrad_cold"] = peaks["minigrad_cold"].get("first_step_s")
    return row


def _one_thread_times(ctx, steps):
    """Both libraries' step times with one thread each (the thread-scaling columns), then back to n threads."""
    import minigrad
    from .common import time_alternating
    n = ctx.threads["threads"]
    minigrad.set_num_threads(1)
    ctx.torch.set_num_threads(1)
    try:
        times = time_alternating(ctx, steps, repeats=ctx.model_repeats)
    finally:
        minigrad.set_num_threads(n)
        ctx.torch.set_num_threads(n)
    return {f"{lib}_ms": 1e3 * t for lib, t in times.items()}


def _cpu_peaks(ctx, nets, size):
    """{net: {library: {...}}}; quick runs measure all nets in one process per library."""
    threads = ctx.threads["threads"]
    groups = [list(nets)] if ctx.quick else [[net] for net in nets]
    peaks = {net: {} for net in nets}
    for library in ("minigrad", "torch"):
        for group in groups:
            try:
                for net, value in cpu_peaks_subprocess(library, group, size, threads).items():
                    peaks[net][library] = value
            except Exception as e:  # the timing still stands; say why memory is missing
                for net in group:
                    peaks[net][library] = {"total_mb": None, "step_mb": None, "error": str(e)[-300:]}
    # minigrad's first step once more with an empty numba cache: a machine's very first run compiles
    # (not in --quick runs: compiling every kernel takes longer than the whole smoke test)
    if ctx.quick or not str(ctx.threads.get("cpu_kernels", "")).startswith("numba"):
        return peaks
    with tempfile.TemporaryDirectory() as cache:
        try:
            net = nets[0]
            peaks[net]["minigrad_cold"] = cpu_peaks_subprocess("minigrad", [net], size, threads,
                                                               NUMBA_CACHE_DIR=cache)[net]
        except Exception as e:
            peaks[nets[0]]["minigrad_cold"] = {"error": str(e)[-300:]}
    return peaks


def run(ctx, nets=None, sizes=None, memory=True, log=print):
    nets = list(nets or NETS)
    sizes = list(sizes or (["tiny"] if ctx.quick else ["small"] if ctx.device == "cpu" else ["small", "full"]))
    rows = []
    for size_name in sizes:
        size = SIZES[size_name]
        peaks = _cpu_peaks(ctx, nets, size) if memory and ctx.device == "cpu" else {}
        for net in nets:
            try:
                row = run_net(ctx, net, size, peaks.get(net), memory)
            except Exception as e:
                row = {"net": net, "size": size.name, "width": size.width, "batch": size.batch,
                       "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}
            log(_one_line(row))
            rows.append(row)
    method = GPU_MEMORY_METHOD if ctx.device == "gpu" else CPU_MEMORY_METHOD
    return {"sizes": {name: dataclasses.asdict(SIZES[name]) for name in sizes}, "memory_method": method,
            "optimizer": {"lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY}, "rows": rows}


def _one_line(row):
    if "error" in row:
        return f"  {row['net']:<10} {row['size']:<6} ERROR {row['error']}"
    mem = row.get("peak_mb", {})
    mem_text = "  peak MB " + " / ".join(f"{lib} {v:.0f}" if v is not None else f"{lib} -"
                                         for lib, v in mem.items()) if mem else ""
    return (f"  {row['net']:<10} {row['size']:<6} minigrad {row['minigrad_ms']:9.1f} ms  torch "
            f"{row['torch_ms']:9.1f} ms  ratio {row['ratio']:5.2f}  loss diff {row['loss_rel_diff']:.1e}{mem_text}")


# ----------------------------------------------------------------------------- fresh-process entry point
def _peak_main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.models",
                                description="Peak memory of training steps, measured in this fresh process.")
    p.add_argument("--peak", action="store_true", required=True)
    p.add_argument("--library", choices=("minigrad", "torch"), required=True)
    p.add_argument("--size", choices=tuple(SIZES), required=True)
    p.add_argument("--nets", nargs="+", choices=NETS + RESNET_NETS + VGG_NETS, required=True)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args(argv)
    results = {}
    for net in args.nets:
        try:
            results[net] = cpu_peak(args.library, net, SIZES[args.size], args.threads)
        except Exception as e:  # report it in the row; the other nets still count
            results[net] = {"total_mb": None, "step_mb": None, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(results))


if __name__ == "__main__":
    _peak_main()
