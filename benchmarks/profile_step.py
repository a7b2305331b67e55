"""Where one minigrad training step spends its time, op by op (forward and backward).

    python -m benchmarks.profile_step --net fcn8s --size full --device gpu
    python -m benchmarks.profile_step --size small --device cpu          # every net

Every op output passes through ``minigrad.tensor._result``; with the profiler on, the
device is synchronized there, and the time since the previous op's output is charged
to this op's forward (the Python between two ops included). Each recorded backward
closure is wrapped the same way. The synchronizations cost a little: the table also
gives the plain step time (median, no profiler) to compare with the profiled total.
"""
import argparse
import statistics
import sys
import time
from collections import defaultdict

import minigrad

from .models import NETS, SIZES, Trainer, make_labels


def _sync(device):
    if device == "gpu":
        minigrad.backend.cupy().cuda.runtime.deviceSynchronize()


def _op_name():
    """The public op that called ``_result``: the first caller frame not named _private (dunders count)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_name
        if not name.startswith("_") or name.startswith("__"):
            return name
        frame = frame.f_back
    return "?"


class OpProfiler:
    """Patches ``_result`` in every minigrad module that imported it; a context manager."""

    def __init__(self, device):
        self.device = device
        self.forward = defaultdict(float)
        self.backward = defaultdict(float)
        self.calls = defaultdict(int)
        self.last = None

    def _result(self, array, parents, backward):
        _sync(self.device)
        now = time.perf_counter()
        name = _op_name()
        self.forward[name] += now - self.last
        self.calls[name] += 1

        def timed_backward(grad):
            _sync(self.device)
            start = time.perf_counter()
            grads = backward(grad)
            _sync(self.device)
            self.backward[name] += time.perf_counter() - start
            return grads
        out = self._original(array, parents, timed_backward)
        self.last = time.perf_counter()
        return out

    def mark(self):
        """Start charging from now (call right before the forward)."""
        _sync(self.device)
        self.last = time.perf_counter()

    def __enter__(self):
        self._original = sys.modules["minigrad.tensor"]._result  # (minigrad.tensor is also a function)
        self._patched = [m for m in list(sys.modules.values())
                         if getattr(m, "__name__", "").startswith("minigrad")
                         and getattr(m, "_result", None) is self._original]
        for module in self._patched:
            module._result = self._result
        return self

    def __exit__(self, *exc):
        for module in self._patched:
            module._result = self._original


def profile(net, size_name, device, steps=3):
    size = SIZES[size_name]
    trainer = Trainer("minigrad", net, size, device)
    out_shape = trainer.output_shape()
    trainer.set_labels(make_labels((out_shape[0],) + out_shape[2:]))
    for _ in range(2):  # warm-up: kernel compilation, memory pool
        trainer.step()
    plain = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        trainer.step()
        _sync(device)
        plain.append(time.perf_counter() - start)
    parts = defaultdict(float)
    with OpProfiler(device) as prof:
        for _ in range(steps):
            _sync(device)
            start = time.perf_counter()
            trainer.optim.zero_grad()
            prof.mark()
            loss = trainer.loss()
            _sync(device)
            mid = time.perf_counter()
            loss.backward()
            _sync(device)
            end = time.perf_counter()
            trainer.optim.step()
            _sync(device)
            parts["forward"] += mid - start
            parts["backward"] += end - mid
            parts["optimizer"] += time.perf_counter() - end
    scale = 1e3 / steps
    print(f"\n{net} {size_name} (width {size.width}, batch {size.batch}) on {device}: plain step "
          f"{1e3 * statistics.median(plain):.1f} ms (median of {steps}); profiled: forward "
          f"{parts['forward'] * scale:.1f}, backward {parts['backward'] * scale:.1f}, optimizer "
          f"{parts['optimizer'] * scale:.1f} ms")
    rows = sorted(prof.calls, key=lambda k: -(prof.forward[k] + prof.backward[k]))
    total = sum(prof.forward.values()) + sum(prof.backward.values())
    print(f"  {'op':<20} {'calls':>6} {'forward ms':>11} {'backward ms':>12} {'share':>6}")
    for name in rows:
        f, b = prof.forward[name] * scale, prof.backward[name] * scale
        print(f"  {name:<20} {prof.calls[name] // steps:>6} {f:>11.2f} {b:>12.2f} "
              f"{(f + b) / (total * scale) * 100:>5.1f}%")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.split("\n")[0])
    p.add_argument("--net", choices=NETS, nargs="+", default=list(NETS))
    p.add_argument("--size", choices=tuple(SIZES), default="small")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    for net in args.net:
        profile(net, args.size, args.device, args.steps)


if __name__ == "__main__":
    main()
