"""--resume restores NumPy's and Python's global random states, not only minigrad's: code that draws
from ``np.random`` or ``random`` during training (a user's augmentation, a third-party transform)
continues the same stream after an interrupted run is resumed."""
import os
import random
import signal

import numpy as np

from segnets import train as train_mod


def _args(out_dir):
    return ["--net", "fcn8s", "--device", "cpu", "--width", "4", "--epochs", "2", "--batch-size", "4",
            "--crop-size", "32", "--lr", "0.01", "--data-opt", "image_size=32", "--data-opt", "num_train=8",
            "--data-opt", "num_val=4", "--output-dir", str(out_dir)]


def _drawing_from_global_generators(monkeypatch, draws, interrupt_at_step=None):
    """Each training step draws once from np.random and once from random; at ``interrupt_at_step``
    (counted from 1) a real SIGINT arrives: the step finishes, the run saves mid-epoch and stops."""
    monkeypatch.undo()  # wrap the real compute_loss, not an earlier wrapper
    real = train_mod.compute_loss

    def compute_loss(*args, **kwargs):
        draws.append((np.random.random(), random.random()))
        if len(draws) == interrupt_at_step:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "compute_loss", compute_loss)


def test_resume_continues_numpy_and_python_random_streams(tmp_path, monkeypatch):
    reference = []
    _drawing_from_global_generators(monkeypatch, reference)
    assert train_mod.main(_args(tmp_path / "reference")) == 0
    assert len(reference) == 4  # 2 epochs of 2 steps

    before, after = [], []
    _drawing_from_global_generators(monkeypatch, before, interrupt_at_step=3)
    assert train_mod.main(_args(tmp_path / "run")) == 130
    assert before == reference[:3]
    np.random.seed(12345)  # whatever ran in between: the checkpoint's states must win
    random.seed(12345)
    _drawing_from_global_generators(monkeypatch, after)
    assert train_mod.main(["--resume", str(tmp_path / "run" / "checkpoint_last.npz")]) == 0
    assert after == reference[3:]
