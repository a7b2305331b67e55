"""Every distinct conv2d of one training step, timed alone (forward + backward): minigrad against PyTorch.

    python -m benchmarks.conv_layers --net unet --threads 2
    python -m benchmarks.conv_layers --net fcn16s --threads 1 --repeats 15

The step's conv2d calls are recorded (input shape, weight shape, bias, stride, padding,
dilation, groups), then each distinct one is timed on random float32 data: minigrad's calls
in one block, then PyTorch's, two untimed calls first in each block, so neither library is
timed right after the other's (on a 2-core VM PyTorch's idle OpenMP workers slowed the next
minigrad call by up to 30%). *count* is how often the layer runs in a step; the total weighs
each layer by its count. This is where a step's convolution time goes, layer by layer; the
step itself is `python -m benchmarks.run --suite models`.
"""
import argparse
import statistics
import time

import numpy as np

import minigrad
import minigrad.functional as F
import minigrad.nn.conv as nn_conv

from .models import NETS, RESNET_NETS, SIZES, VGG_NETS, Trainer, make_labels


def record_convs(net, size):
    """The (input shape, weight shape, has bias, stride, padding, dilation, groups) of each conv2d call of one step."""
    calls = []
    original = nn_conv.F.conv2d

    def recording(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        calls.append((tuple(input.shape), tuple(weight.shape), bias is not None, stride, padding, dilation, groups))
        return original(input, weight, bias, stride, padding, dilation, groups)
    nn_conv.F.conv2d = recording
    try:
        trainer = Trainer("minigrad", net, SIZES[size])
        shape = trainer.output_shape()
        calls.clear()   # output_shape ran a forward
        trainer.set_labels(make_labels((shape[0],) + shape[2:]))
        trainer.step()
    finally:
        nn_conv.F.conv2d = original
    return calls


def _median_ms(fn, repeats):
    fn(), fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return 1e3 * statistics.median(samples)


def time_layer(torch, layer, repeats, seed=0):
    """(minigrad ms, PyTorch ms) of one forward + backward of ``layer``."""
    x_shape, w_shape, has_bias, stride, padding, dilation, groups = layer
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(x_shape).astype(np.float32), 0.1 * rng.standard_normal(w_shape).astype(np.float32)]
    if has_bias:
        arrays.append(rng.standard_normal(w_shape[0]).astype(np.float32))
    ours = [minigrad.Tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    out_shape = F.conv2d(*ours[:2], ours[2] if has_bias else None, **kwargs).shape
    g = rng.standard_normal(out_shape).astype(np.float32)
    g_ours, g_theirs = minigrad.Tensor(g), torch.tensor(g)

    def minigrad_step():
        F.conv2d(*ours[:2], ours[2] if has_bias else None, **kwargs).backward(g_ours)

    def torch_step():
        torch.nn.functional.conv2d(*theirs[:2], theirs[2] if has_bias else None, **kwargs).backward(g_theirs)
    return _median_ms(minigrad_step, repeats), _median_ms(torch_step, repeats)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.conv_layers", description=__doc__.split("\n")[0])
    p.add_argument("--net", default="unet", choices=NETS + VGG_NETS + RESNET_NETS)
    p.add_argument("--size", default="small", choices=tuple(SIZES))
    p.add_argument("--threads", type=int, default=minigrad.get_num_threads())
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args(argv)
    import torch
    minigrad.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    calls = record_convs(args.net, args.size)
    layers = list(dict.fromkeys(calls))
    print(f"{args.net} ({args.size}): each conv2d of one step, forward + backward, {args.threads} thread(s), "
          f"median of {args.repeats} (ms)")
    print("| count | input | weight | stride, padding, dilation | minigrad | PyTorch | ratio |")
    print("|---|---|---|---|---|---|---|")
    totals = [0.0, 0.0]
    for layer in layers:
        count = calls.count(layer)
        ours, theirs = time_layer(torch, layer, args.repeats)
        totals[0] += count * ours
        totals[1] += count * theirs
        x_shape, w_shape, _, stride, padding, dilation, groups = layer
        print(f"| {count} | {x_shape} | {w_shape} | {stride}, {padding}, {dilation}"
              f"{'' if groups == 1 else f', groups {groups}'} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f} |",
              flush=True)
    print(f"| all | | | | {totals[0]:.1f} | {totals[1]:.1f} | **{totals[0] / totals[1]:.2f}** |")


if __name__ == "__main__":
    main()
