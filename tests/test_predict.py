"""segnets.evaluate / segnets.predict CLIs and segnets.visualize, on a tiny trained checkpoint."""
import json

import numpy as np
import pytest
from PIL import Image

import minigrad
from segnets import checkpoint as ckpt
from segnets import evaluate as evaluate_mod
from segnets import predict as predict_mod
from segnets import train as train_mod
from segnets import visualize
from segnets.data.voc import voc_palette


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of a tiny DeconvNet (its unpooling needs inputs padded to a multiple of 32)."""
    out = tmp_path_factory.mktemp("deconvnet")
    args = ["--net", "deconvnet", "--width", "4", "--epochs", "1", "--batch-size", "4", "--crop-size", "32",
            "--model-opt", "fc_kernel=1", "--data-opt", "image_size=32", "--data-opt", "num_train=8",
            "--data-opt", "num_val=4", "--output-dir", str(out)]
    assert train_mod.main(args) == 0
    return out


def write_image(path, height, width, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


# ---------------------------------------------------------------------------- evaluate
def test_evaluate_cli_prints_the_table_and_writes_json(trained, tmp_path, capsys):
    output = tmp_path / "metrics.json"
    assert evaluate_mod.main(["--checkpoint", str(trained / "checkpoint_last.npz"), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "mean IoU" in printed and "circle" in printed and "ring" in printed
    result = json.loads(output.read_text())
    assert {"pixel_acc", "mean_acc", "miou", "fwiou", "per_class_iou", "classes", "epoch"} <= set(result)
    assert result["epoch"] == 1 and len(result["per_class_iou"]) == 6
    # Same checkpoint, same val split: the numbers the training run logged.
    with open(trained / "metrics.jsonl") as f:
        logged = json.loads(f.readline())["val"]
    for key in ("pixel_acc", "mean_acc", "miou", "fwiou"):
        assert result[key] == pytest.approx(logged[key], abs=1e-12), key


def test_evaluate_cli_default_output_sits_next_to_the_checkpoint(trained, capsys):
    assert evaluate_mod.main(["--checkpoint", str(trained / "checkpoint_best.npz"), "--split", "train"]) == 0
    assert (trained / "eval_train.json").is_file()


def test_evaluate_cli_refuses_a_corrupt_checkpoint(tmp_path, capsys):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    assert evaluate_mod.main(["--checkpoint", str(path)]) == 2
    assert "error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------- predict
def test_predict_cli_writes_mask_colour_and_overlay_per_image(trained, tmp_path):
    first = write_image(tmp_path / "odd.png", 37, 45, seed=1)  # not a multiple of 32: padded, then cropped
    write_image(tmp_path / "square.png", 64, 64, seed=2)
    out = tmp_path / "out"
    code = predict_mod.main(["--checkpoint", str(trained / "checkpoint_last.npz"), str(tmp_path / "odd.png"),
                             str(tmp_path / "square.png"), "--output-dir", str(out)])
    assert code == 0
    for stem, (height, width) in (("odd", (37, 45)), ("square", (64, 64))):
        mask = Image.open(out / f"{stem}_mask.png")
        colour = Image.open(out / f"{stem}_color.png")
        blend = Image.open(out / f"{stem}_overlay.png")
        assert mask.mode == "L" and colour.mode == "RGB" and blend.mode == "RGB"
        assert mask.size == colour.size == blend.size == (width, height)
        classes = np.asarray(mask)
        assert classes.max() < 6
        np.testing.assert_array_equal(np.asarray(colour), voc_palette()[classes])

    # The mask is what the net predicts for that image, and the overlay leaves background pixels alone.
    checkpoint = ckpt.load_checkpoint(trained / "checkpoint_last.npz")
    model = ckpt.build_model_from_checkpoint(checkpoint)
    expected = predict_mod.predict_mask(model, first, checkpoint["meta"]["mean"], checkpoint["meta"]["std"])
    classes = np.asarray(Image.open(out / "odd_mask.png"))
    np.testing.assert_array_equal(classes, expected)
    background = classes == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out / "odd_overlay.png"))[background], first[background])


def test_predict_cli_refuses_an_unreadable_image_before_writing_anything(trained, tmp_path, capsys):
    write_image(tmp_path / "good.png", 32, 32, seed=3)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = predict_mod.main(["--checkpoint", str(trained / "checkpoint_last.npz"), str(tmp_path / "good.png"),
                             str(tmp_path / "bad.png"), "--output-dir", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "bad.png" in err and "Traceback" not in err
    assert not out.exists()  # every image is read before the first output is written


def test_output_stems_stay_unique():
    assert predict_mod.output_stems(["a/x.png", "b/x.jpg", "y.png"]) == ["x", "x-2", "y"]


class _Shrinking:
    """A 'net' whose output loses 2 px on each side, like U-Net's unpadded convolutions."""
    config = {"name": "shrinking"}

    def eval(self):
        return self

    def __call__(self, x):
        n, _, h, w = x.shape
        logits = np.zeros((n, 3, h - 4, w - 4), np.float32)
        logits[:, 1] = x.data[:, 0, 2:-2, 2:-2]     # class 1 where the red channel is high
        logits[:, 2] = -x.data[:, 0, 2:-2, 2:-2]
        return minigrad.Tensor(logits)


def test_predict_mask_covers_the_whole_image_for_a_shrinking_net():
    image = np.zeros((10, 12, 3), np.uint8)
    image[:, :5, 0] = 255                            # left 5 columns red
    geometry = predict_mod.InputGeometry(first=8, step=1, margin=2)
    mask = predict_mod.predict_mask(_Shrinking(), image, (0.5,) * 3, (0.5,) * 3, geometry=geometry)
    np.testing.assert_array_equal(mask, np.broadcast_to(np.where(np.arange(12) < 5, 1, 2), (10, 12)))


def test_fit_to_net_for_unet_valid_mirrors_the_margin_and_the_mask_crops_back():
    geometry = predict_mod.input_geometry({"name": "unet", "padding": "valid"})
    image = np.random.default_rng(0).integers(0, 256, (37, 45, 3), dtype=np.uint8)
    mask = np.random.default_rng(1).integers(0, 6, (37, 45))
    padded, padded_mask = predict_mod.fit_to_net(image, mask, geometry, np.zeros(3, np.uint8))
    assert padded.shape[:2] == (236, 236)            # 37 + 184 = 221 -> 188 + 3 * 16
    assert geometry.accepts(236) and not geometry.accepts(221)
    np.testing.assert_array_equal(padded[92:92 + 37, 92:92 + 45], image)
    np.testing.assert_array_equal(padded[91, 92:92 + 45], image[1])          # mirrored, edge not repeated
    output = train_mod.center_crop(padded_mask, (236 - 184, 236 - 184))  # what U-Net's output covers
    np.testing.assert_array_equal(output[:37, :45], mask)
    assert (output[37:] == 255).all() and (output[:, 45:] == 255).all()


def test_input_geometry_of_each_net():
    assert predict_mod.input_geometry({"name": "deconvnet", "fc_kernel": 2}).valid_size(65) == 96
    assert predict_mod.input_geometry({"name": "deconvnet", "fc_kernel": 2}).valid_size(10) == 64
    assert predict_mod.input_geometry({"name": "unet", "padding": "same"}).valid_size(33) == 48
    assert predict_mod.input_geometry({"name": "fcn8s", "pad100": False}).valid_size(37) == 37


# ---------------------------------------------------------------------------- visualize
def test_colorize_uses_the_voc_palette():
    colours = visualize.colorize(np.array([[0, 1], [2, 255]]))
    np.testing.assert_array_equal(colours[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(colours[0, 1], [128, 0, 0])
    np.testing.assert_array_equal(colours[1, 0], [0, 128, 0])
    np.testing.assert_array_equal(colours[1, 1], [224, 224, 192])


def test_overlay_blends_by_hand():
    image = np.full((1, 2, 3), 100, np.uint8)
    blended = visualize.overlay(image, np.array([[0, 1]]), alpha=0.5)
    np.testing.assert_array_equal(blended[0, 0], [100, 100, 100])  # background untouched
    np.testing.assert_array_equal(blended[0, 1], [114, 50, 50])    # (100 + 128) / 2, 100 / 2
    with pytest.raises(ValueError, match="sizes must match"):
        visualize.overlay(image, np.zeros((2, 2), np.int64))


def test_prediction_grid_layout():
    images = [np.zeros((4, 5, 3), np.uint8)] * 2
    masks = [np.ones((4, 5), np.int64)] * 2
    grid = visualize.prediction_grid(images, masks, masks, gap=1, scale=2)
    assert grid.shape == (2 * 8 + 1, 3 * 10 + 2, 3)
    np.testing.assert_array_equal(grid[0, 10], [255, 255, 255])      # the gap between panels
    np.testing.assert_array_equal(grid[0, 11], [128, 0, 0])          # ground truth panel: class 1
