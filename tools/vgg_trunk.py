#!/usr/bin/env python
"""Keep only the 13 VGG16 convs (conv1_1 ... conv5_3) of a weights file, for ``--init-weights``.

    python tools/vgg_trunk.py runs/fcn8s-shapes-.../checkpoint_best.npz fcn8s-trunk.npz
    python -m segnets.train --net deeplabv1_largefov --init-weights fcn8s-trunk.npz

The offline stand-in for the papers' ImageNet VGG16: the trunk of this project's own
FCN-8s run. ``--init-weights`` refuses a tensor whose shape differs from the net's
(a wrong file should not half-load silently), and FCN-8s's fc6/fc7 (1x1, 64*width
channels in the recipe) differ from LargeFOV's (3x3 atrous, 16*width), so this
keeps the convs every VGG16 net shares (``conv{stage}_{i}.weight`` / ``.bias``) and
drops the rest; the heads, batch norms and decoders keep their init.
"""
import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from segnets.checkpoint import CheckpointError, read_weights  # noqa: E402

TRUNK_KEY = re.compile(r"conv[1-5]_[1-3]\.(weight|bias)")


def trunk_state(state):
    """{name: array} of the VGG16 convs' weights and biases in ``state`` (a name -> array/Tensor dict)."""
    out = {}
    for name, value in state.items():
        if TRUNK_KEY.fullmatch(name):
            out[name] = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", help="a segnets checkpoint, minigrad.save'd state dict or .npz")
    p.add_argument("output", help="the .npz to write (for --init-weights)")
    args = p.parse_args(argv)
    try:
        state = read_weights(args.weights)
    except CheckpointError as e:
        p.exit(2, f"error: {e}\n")
    trunk = trunk_state(state)
    if not trunk:
        p.exit(2, f"error: {args.weights} has no VGG16 convs (conv1_1.weight ... conv5_3.bias)\n")
    np.savez(args.output, **trunk)
    print(f"{args.output}: {len(trunk)} tensors ({len(state) - len(trunk)} of {args.weights} dropped)")


if __name__ == "__main__":
    main()
