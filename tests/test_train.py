"""segnets.train: the CLI end to end for every net, exact resume, Ctrl-C, NaN stop, bad checkpoints.

Everything runs on tiny data (shapes at 32x32, 8 training images, width 4) so a
run takes about a second; the CLI is called in-process through ``main(argv)``,
except where the point is the real ``python -m`` entry (--help, --device gpu).
"""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import minigrad
from segnets import checkpoint as ckpt
from segnets import run as run_mod
from segnets import train as train_mod
from segnets.recipes import SettingsError, parse_options, parse_value, recipe
from tests.helpers import torchvision_vgg16_state

NETS = ["fcn32s", "fcn16s", "fcn8s", "deconvnet", "unet"]
# 32x32 images are 1x1 after five poolings, so DeconvNet's fc6 must be 1x1 here.
NET_OPTIONS = {"deconvnet": ["--model-opt", "fc_kernel=1"]}
METRIC_KEYS = {"pixel_acc", "mean_acc", "miou", "fwiou", "per_class_iou"}


def tiny_args(out_dir, net="fcn8s", epochs=1, extra=()):
    return (["--net", net, "--device", "cpu", "--width", "4", "--epochs", str(epochs), "--batch-size", "4",
             "--crop-size", "32", "--lr", "0.01",
             "--data-opt", "image_size=32", "--data-opt", "num_train=8", "--data-opt", "num_val=4",
             "--output-dir", str(out_dir)] + NET_OPTIONS.get(net, []) + list(extra))


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in records]


def model_arrays(path):
    state = ckpt.load_checkpoint(path)["model"]
    return {name: value.numpy() for name, value in state.items()}


def file_hash(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def interrupt_at(monkeypatch, epoch, iteration, action):
    """Wrap compute_loss so that ``action(loss)`` runs at the given step (epochs and iterations from 1)."""
    real = train_mod.compute_loss
    calls = {"n": 0}
    steps_per_epoch = 2  # 8 images, batch 4

    def patched(model, images, masks, weights, *cluster):
        calls["n"] += 1
        loss = real(model, images, masks, weights, *cluster)
        if calls["n"] == (epoch - 1) * steps_per_epoch + iteration:
            return action(loss)
        return loss

    monkeypatch.setattr(train_mod, "compute_loss", patched)


# ---------------------------------------------------------------------------- CLI end to end
@pytest.mark.parametrize("net", NETS)
def test_cli_trains_every_net_and_writes_every_output(tmp_path, net):
    out = tmp_path / "run"
    assert train_mod.main(tiny_args(out, net)) == 0
    for name in ("config.json", "metrics.jsonl", "checkpoint_last.npz", "checkpoint_best.npz",
                 "predictions/epoch_001.png"):
        assert (out / name).is_file(), name

    config = json.loads((out / "config.json").read_text())
    assert config["net"] == net and config["width"] == 4 and config["epochs"] == 1
    assert config["data_options"] == {"image_size": 32, "num_train": 8, "num_val": 4}
    assert config["classes"][0] == "background" and len(config["mean"]) == 3

    (record,) = read_metrics(out)
    assert {"epoch", "train_loss", "lr", "seconds", "val"} <= set(record)
    assert record["epoch"] == 1 and np.isfinite(record["train_loss"]) and record["lr"] == pytest.approx(0.01)
    assert set(record["val"]) == METRIC_KEYS
    assert len(record["val"]["per_class_iou"]) == 6
    assert 0.0 <= record["val"]["pixel_acc"] <= 1.0

    preview = Image.open(out / "predictions" / "epoch_001.png")
    assert preview.mode == "RGB"
    assert preview.size == (3 * 128 + 2 * 2, 4 * 128 + 3 * 2)  # 4 rows of 3 panels, 32 px enlarged 4x, 2 px gaps

    # The checkpoint rebuilds the same net with the same weights.
    checkpoint = ckpt.load_checkpoint(out / "checkpoint_last.npz")
    assert checkpoint["meta"]["epoch"] == 1 and checkpoint["meta"]["model"]["name"] == net
    model = ckpt.build_model_from_checkpoint(checkpoint)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), checkpoint["model"][name].numpy())


def test_unet_valid_trains_on_centre_cropped_masks_and_evaluates_every_pixel(tmp_path):
    """Unpadded U-Net: 188x188 crops give 4x4 logits (the masks are centre-cropped to them); evaluation
    mirrors the margins so that the output covers the whole 188x188 val image."""
    out = tmp_path / "run"
    args = ["--net", "unet", "--width", "2", "--epochs", "1", "--batch-size", "2", "--crop-size", "188",
            "--model-opt", "padding=valid", "--model-opt", "batch_norm=false", "--data-opt", "image_size=188",
            "--data-opt", "num_train=2", "--data-opt", "num_val=1", "--output-dir", str(out)]
    assert train_mod.main(args) == 0
    (record,) = read_metrics(out)
    assert np.isfinite(record["train_loss"])
    matrix = train_mod.confusion_matrix(*_rebuild_for_eval(out))
    assert matrix.matrix.sum() == 188 * 188  # every labelled pixel scored once


def _rebuild_for_eval(out):
    checkpoint = ckpt.load_checkpoint(out / "checkpoint_last.npz")
    settings = checkpoint["meta"]["settings"]
    data = train_mod.build_data(settings, checkpoint["meta"]["mean"], checkpoint["meta"]["std"])
    return ckpt.build_model_from_checkpoint(checkpoint), data.val_loader, len(data.classes), "cpu"


def test_crop_size_that_does_not_fit_the_net_is_refused(tmp_path, capsys):
    assert train_mod.main(tiny_args(tmp_path / "run", "deconvnet", extra=["--crop-size", "40"])) == 2
    err = capsys.readouterr().err
    assert "--crop-size 40" in err and "64" in err


def test_help_lists_every_flag():
    result = subprocess.run([sys.executable, "-m", "segnets.train", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for flag in ("--net", "--device", "--dataset", "--data-dir", "--epochs", "--batch-size", "--lr",
                 "--optimizer", "--momentum", "--weight-decay", "--lr-schedule", "--width", "--crop-size",
                 "--model-opt", "--class-weights", "--seed", "--output-dir", "--resume", "--eval-only",
                 "--data-opt", "fcn32s", "deconvnet", "median-freq", "poly", "adamw", "idx-scenes"):
        assert flag in result.stdout, flag


def test_threads_flag_sets_minigrads_threads(tmp_path, monkeypatch, capsys):
    previous = minigrad.get_num_threads()
    try:
        assert train_mod.main(tiny_args(tmp_path / "run", extra=["--threads", "1"])) == 0
        assert minigrad.get_num_threads() == 1
    finally:
        minigrad.set_num_threads(previous)
    with pytest.raises(SystemExit) as stop:
        train_mod.main(tiny_args(tmp_path / "bad", extra=["--threads", "0"]))
    assert stop.value.code == 2 and "--threads" in capsys.readouterr().err


def test_gpu_without_cupy_fails_at_once_with_a_clear_message(tmp_path):
    if minigrad.backend.gpu_available():
        pytest.skip("a GPU is present: the no-GPU error cannot be shown here")
    result = subprocess.run([sys.executable, "-m", "segnets.train", "--net", "unet", "--device", "gpu",
                             "--output-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "error:" in result.stderr and ("CuPy" in result.stderr or "GPU" in result.stderr)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # failed before doing anything


# ---------------------------------------------------------------------------- resume, Ctrl-C, NaN
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Two epochs in one go: what every interrupted-and-resumed run must reproduce exactly."""
    out = tmp_path_factory.mktemp("uninterrupted")
    assert train_mod.main(tiny_args(out, epochs=2)) == 0
    return out


def assert_same_run(resumed, reference):
    assert without_timing(read_metrics(resumed)) == without_timing(read_metrics(reference))
    expected, got = model_arrays(reference / "checkpoint_last.npz"), model_arrays(resumed / "checkpoint_last.npz")
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)  # bit for bit
    saved = ckpt.load_checkpoint(resumed / "checkpoint_last.npz")
    reference_ckpt = ckpt.load_checkpoint(reference / "checkpoint_last.npz")
    assert saved["meta"]["rng"] == reference_ckpt["meta"]["rng"]
    assert saved["loader"] == reference_ckpt["loader"]


def test_keyboard_interrupt_keeps_last_epoch_and_resume_is_exact(tmp_path, monkeypatch, uninterrupted, capsys):
    out = tmp_path / "run"

    def ctrl_c(loss):
        raise KeyboardInterrupt

    interrupt_at(monkeypatch, epoch=2, iteration=1, action=ctrl_c)
    assert train_mod.main(tiny_args(out, epochs=2)) == 130
    assert "--resume" in capsys.readouterr().err
    meta = ckpt.load_checkpoint(out / "checkpoint_last.npz")["meta"]
    assert meta["epoch"] == 1 and meta["progress"] is None  # the last clean epoch boundary

    monkeypatch.undo()
    assert train_mod.main(["--resume", str(out / "checkpoint_last.npz")]) == 0
    assert_same_run(out, uninterrupted)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_mid_epoch_and_resume_is_exact(tmp_path, monkeypatch, uninterrupted, signum):
    out = tmp_path / "run"
    handler_before = signal.getsignal(signum)

    def send(loss):
        os.kill(os.getpid(), signum)  # a real signal: the step finishes, then the run saves and stops
        return loss

    interrupt_at(monkeypatch, epoch=2, iteration=1, action=send)
    assert train_mod.main(tiny_args(out, epochs=2)) == 130
    assert signal.getsignal(signum) is handler_before  # handler given back
    meta = ckpt.load_checkpoint(out / "checkpoint_last.npz")["meta"]
    assert meta["epoch"] == 1 and meta["progress"]["epoch"] == 2 and meta["progress"]["iterations"] == 1
    assert len(read_metrics(out)) == 1

    monkeypatch.undo()
    assert train_mod.main(["--resume", str(out / "checkpoint_last.npz")]) == 0
    assert_same_run(out, uninterrupted)


def test_interrupt_in_first_epoch_leaves_a_resumable_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def ctrl_c(loss):
        raise KeyboardInterrupt

    interrupt_at(monkeypatch, epoch=1, iteration=2, action=ctrl_c)
    assert train_mod.main(tiny_args(out)) == 130
    checkpoint = ckpt.load_checkpoint(out / "checkpoint_last.npz")
    assert checkpoint["meta"]["epoch"] == 0 and "optimizer" in checkpoint and "loader" in checkpoint


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    hashes = {}

    def poison(loss):
        hashes["last"] = file_hash(out / "checkpoint_last.npz")  # as written at the end of epoch 1
        hashes["best"] = file_hash(out / "checkpoint_best.npz")
        return loss * float("nan")

    interrupt_at(monkeypatch, epoch=2, iteration=2, action=poison)
    assert train_mod.main(tiny_args(out, epochs=3)) == 1
    err = capsys.readouterr().err
    assert "nan" in err and "epoch 2, iteration 2" in err
    assert file_hash(out / "checkpoint_last.npz") == hashes["last"]
    assert file_hash(out / "checkpoint_best.npz") == hashes["best"]
    assert ckpt.load_checkpoint(out / "checkpoint_last.npz")["meta"]["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(out)] == [1]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's overflow warnings on the way to inf
def test_huge_learning_rate_is_caught_as_non_finite(tmp_path, capsys):
    out = tmp_path / "run"
    code = train_mod.main(tiny_args(out, epochs=3, extra=["--lr", "1e30", "--optimizer", "sgd"]))
    assert code == 1
    assert "at epoch" in capsys.readouterr().err
    assert ckpt.load_checkpoint(out / "checkpoint_last.npz")["meta"]["epoch"] >= 0


# ---------------------------------------------------------------------------- bad checkpoints
@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_corrupt_checkpoint_gives_a_clear_error(tmp_path, uninterrupted, capsys, damage):
    path = tmp_path / "checkpoint.npz"
    data = (uninterrupted / "checkpoint_last.npz").read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"this is not a checkpoint" * 10)
    assert train_mod.main(["--resume", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(path) in err and "Traceback" not in err
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_checkpoint(path)


def test_checkpoint_of_another_net_is_refused_and_nothing_is_loaded(uninterrupted):
    from segnets import build_model
    model = build_model("fcn8s", num_classes=6, width=8, pad100=False, fc_kernel=1)
    before = {name: value.numpy() for name, value in model.state_dict().items()}
    state = ckpt.load_checkpoint(uninterrupted / "checkpoint_last.npz")["model"]  # width 4
    with pytest.raises(ckpt.CheckpointError, match="do not fit"):
        ckpt.load_model_state(model, state, source="ckpt")
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), before[name])


def test_checkpoint_with_weights_that_do_not_fit_its_config(tmp_path, uninterrupted):
    checkpoint = ckpt.load_checkpoint(uninterrupted / "checkpoint_last.npz")
    meta = dict(checkpoint["meta"], model=dict(checkpoint["meta"]["model"], width=8))
    path = tmp_path / "tampered.npz"
    ckpt.save_checkpoint(path, meta, checkpoint["model"])
    with pytest.raises(ckpt.CheckpointError, match="shape"):
        ckpt.build_model_from_checkpoint(ckpt.load_checkpoint(path))


# ---------------------------------------------------------------------------- --init-weights
def test_init_weights_from_a_checkpoint_start_training_and_evaluation_from_it(tmp_path, uninterrupted, capsys):
    source = uninterrupted / "checkpoint_last.npz"
    out = tmp_path / "init"
    # lr 0: the weights the run starts from are the weights it saves
    assert train_mod.main(tiny_args(out, extra=["--init-weights", str(source), "--lr", "0"])) == 0
    assert "tensors loaded, 0 keep their init" in capsys.readouterr().out
    expected, got = model_arrays(source), model_arrays(out / "checkpoint_last.npz")
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert json.loads((out / "config.json").read_text())["init_weights"] == str(source)
    evaluated = tmp_path / "eval"
    assert train_mod.main(tiny_args(evaluated, extra=["--eval-only", "--init-weights", str(source)])) == 0
    assert "tensors loaded" in capsys.readouterr().out
    result = json.loads((evaluated / "eval_val.json").read_text())
    assert result["miou"] == pytest.approx(read_metrics(uninterrupted)[-1]["val"]["miou"], abs=1e-12)


def test_init_weights_from_a_minigrad_saved_state_dict(tmp_path):
    from segnets import build_model
    minigrad.manual_seed(1)
    source = build_model("unet", num_classes=6, width=4, padding="same")
    path = tmp_path / "unet.npz"
    minigrad.save(source.state_dict(), path)
    minigrad.manual_seed(2)
    model = build_model("unet", num_classes=6, width=4, padding="same")
    assert train_mod.load_initial_weights(model, path) == []
    for name, value in source.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name].numpy(), value.numpy(), err_msg=name)
    minigrad.save([1, 2, 3], tmp_path / "list.npz")
    with pytest.raises(ckpt.CheckpointError, match="holds a list"):
        train_mod.load_initial_weights(model, tmp_path / "list.npz")


def test_init_weights_takes_torchvision_vgg16_bn_keys_and_keeps_the_rest(tmp_path, capsys):
    from segnets import build_model
    state = torchvision_vgg16_state(np.random.default_rng(0), 4, batch_norm=True)
    path = tmp_path / "vgg16_bn.npz"
    np.savez(path, **state)
    model = build_model("deconvnet", num_classes=6, width=4, fc_kernel=1)
    decoder_before = model.deconv1_2.weight.numpy().copy()
    missing = train_mod.load_initial_weights(model, path)
    np.testing.assert_array_equal(model.conv1_1.weight.numpy(), state["features.0.weight"])
    np.testing.assert_array_equal(model.bn5_3.running_var.numpy(), state["features.41.running_var"])
    np.testing.assert_array_equal(model.deconv1_2.weight.numpy(), decoder_before)
    assert "deconv1_2.weight" in missing and "conv1_1.weight" not in missing
    # fc6 (1x1 here) cannot take the 7x7 classifier.0, so it keeps its init; fc7 takes classifier.3
    assert "fc6.weight" in missing
    loaded = [name for name in model.state_dict() if re.match(r"(conv|bn)\d_\d\.|fc7\.", name)]
    assert sorted(set(model.state_dict()) - set(missing)) == sorted(loaded)
    np.testing.assert_array_equal(model.fc7.weight.numpy()[:, :, 0, 0], state["classifier.3.weight"])
    said = capsys.readouterr().out
    assert f"--init-weights {path}: {len(loaded)} tensors loaded" in said and "in the file unused" in said


def test_init_weights_that_do_not_fit_give_a_clear_error_and_load_nothing(tmp_path, uninterrupted, capsys):
    from segnets import build_model
    model = build_model("fcn8s", num_classes=6, width=8, pad100=False, fc_kernel=1)
    before = {name: value.numpy() for name, value in model.state_dict().items()}
    with pytest.raises(ckpt.CheckpointError, match="size mismatch for conv1_1.weight"):
        train_mod.load_initial_weights(model, uninterrupted / "checkpoint_last.npz")  # a width-4 net
    unrelated = tmp_path / "unrelated.npz"
    np.savez(unrelated, foo=np.zeros(3), bar=np.ones(2))
    with pytest.raises(ckpt.CheckpointError, match="none of its 2 tensors"):
        train_mod.load_initial_weights(model, unrelated)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), before[name], err_msg=name)
    for bad in (tmp_path / "missing.npz", tmp_path / "garbage.npz"):
        if bad.name == "garbage.npz":
            bad.write_bytes(b"not an npz" * 10)
        assert train_mod.main(tiny_args(tmp_path / "run", extra=["--init-weights", str(bad)])) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and str(bad) in err and "Traceback" not in err


def test_resume_refuses_changed_settings(uninterrupted, capsys):
    path = str(uninterrupted / "checkpoint_last.npz")
    assert train_mod.main(["--resume", path, "--width", "8", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--width 8" in err and "--lr 0.5" in err


def test_eval_only_writes_metrics_of_the_checkpoint(tmp_path, uninterrupted):
    out = tmp_path / "eval"
    assert train_mod.main(["--resume", str(uninterrupted / "checkpoint_last.npz"), "--eval-only",
                           "--output-dir", str(out)]) == 0
    result = json.loads((out / "eval_val.json").read_text())
    assert result["miou"] == pytest.approx(read_metrics(uninterrupted)[-1]["val"]["miou"], abs=1e-12)


# ---------------------------------------------------------------------------- pieces
def test_parse_value_and_options():
    assert parse_value("true") is True and parse_value("False") is False and parse_value("none") is None
    assert parse_value("2") == 2 and isinstance(parse_value("2"), int)
    assert parse_value("0.5") == 0.5 and parse_value("same") == "same"
    assert parse_options(["padding=same", "fc_kernel=2", "pad100=false"], "--model-opt") == \
        {"padding": "same", "fc_kernel": 2, "pad100": False}
    with pytest.raises(SettingsError, match="--model-opt"):
        parse_options(["padding"], "--model-opt")


def test_recipes_cover_every_net_and_flags_override_them(tmp_path):
    for net in NETS:
        settings = recipe(net)
        assert settings["net"] == net and settings["dataset"] == "shapes"
    args = train_mod.build_parser().parse_args(["--net", "unet", "--lr", "0.3", "--model-opt", "padding=valid",
                                                "--output-dir", str(tmp_path)])
    settings, checkpoint = train_mod.resolve_settings(args)
    assert checkpoint is None and settings["lr"] == 0.3
    assert settings["model_options"]["padding"] == "valid"
    assert settings["model_options"]["batch_norm"] == recipe("unet")["model_options"]["batch_norm"]


class _Masks:
    """A dataset of given masks (images unused)."""
    def __init__(self, masks):
        self.masks = masks

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        return None, self.masks[i]


def test_median_frequency_weights_by_hand():
    # image 0: 3 px of class 0, 1 px of class 1; image 1: 2 px of class 0, 1 of class 2, 1 ignored
    masks = [np.array([[0, 0], [0, 1]]), np.array([[0, 2], [0, 255]])]
    weights = run_mod.median_frequency_weights(_Masks(masks), num_classes=4)
    # freq_0 = 5/7 (both images, 7 labelled px), freq_1 = 1/4, freq_2 = 1/3; class 3 absent
    freq = np.array([5 / 7, 1 / 4, 1 / 3])
    median = np.median(freq)
    np.testing.assert_allclose(weights, [median / freq[0], median / freq[1], median / freq[2], 0.0], rtol=1e-6)


def test_center_crop_matches_valid_convolutions():
    masks = np.arange(2 * 6 * 8).reshape(2, 6, 8)
    cropped = train_mod.center_crop(masks, (2, 4))
    np.testing.assert_array_equal(cropped, masks[:, 2:4, 2:6])
    assert train_mod.center_crop(masks, (6, 8)) is masks
    with pytest.raises(ValueError, match="larger"):
        train_mod.center_crop(masks, (7, 8))


def test_loss_uses_the_centre_of_the_mask_when_the_net_shrinks_its_input():
    logits_array = np.random.default_rng(0).standard_normal((1, 3, 2, 2)).astype(np.float32)
    masks = minigrad.Tensor(np.array([[[0, 0, 0, 0], [0, 1, 2, 0], [0, 255, 1, 0], [0, 0, 0, 0]]]))

    def shrinking_net(images):
        return minigrad.Tensor(logits_array)

    loss = train_mod.compute_loss(shrinking_net, None, masks, None).item()
    log_p = logits_array[0] - np.log(np.exp(logits_array[0]).sum(axis=0))
    expected = -(log_p[1, 0, 0] + log_p[2, 0, 1] + log_p[1, 1, 1]) / 3  # 255 ignored
    assert loss == pytest.approx(expected, rel=1e-5)
