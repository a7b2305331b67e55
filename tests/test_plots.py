"""Training curves (curves.png), TensorBoard event files (--tensorboard) and evaluate --confusion-png,
checked on real files: the PNGs are opened, the event files read back record by record."""
import json
import struct
import sys

import numpy as np
import pytest
from PIL import Image

from segnets import evaluate as evaluate_mod
from segnets import plots
from segnets import train as train_mod

LINE = np.array(plots.LINE, np.uint8)


def line_pixels(picture):
    return np.all(np.asarray(picture)[..., :3] == LINE, axis=-1)


def panels(picture):
    """The four panels of a curves picture: train loss, val mIoU, val pixel accuracy, lr."""
    a = np.asarray(picture)
    h, w = a.shape[0] // 2, a.shape[1] // 2
    return [a[:h, :w], a[:h, w:], a[h:, :w], a[h:, w:]]


def read_events(folder):
    """[(step, tag, value or ('image', width, height))] from every tfevents file, parsed with tensorboardX's protos."""
    from tensorboardX.proto import event_pb2
    out = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 16 + n
            for v in event.summary.value:
                value = v.simple_value if v.HasField("simple_value") else ("image", v.image.width, v.image.height)
                out.append((event.step, v.tag, value))
    return out


# ---------------------------------------------------------------------------- drawing
def test_curves_draw_each_metric_in_its_panel():
    records = [{"epoch": e, "train_loss": 2.0 / e, "lr": 1e-2 * 0.5 ** e,
                "val": {"miou": 0.1 * e, "pixel_acc": None}} for e in range(1, 6)]
    picture = plots.draw_curves(records)
    assert picture.shape == (520, 840, 3) and picture.dtype == np.uint8
    loss, miou, acc, lr = (line_pixels(p) for p in panels(picture))
    assert loss.any() and miou.any() and lr.any()
    assert not acc.any()  # no pixel accuracy logged: nothing drawn ("no data")
    # the loss falls: its first point is higher up (smaller row) than its last
    cols = np.nonzero(loss.any(axis=0))[0]
    first_rows, last_rows = np.nonzero(loss[:, cols[0]])[0], np.nonzero(loss[:, cols[-1]])[0]
    assert first_rows.mean() < last_rows.mean()
    rows = np.nonzero(miou.any(axis=1))[0]  # mIoU rises: its first column's points are low
    assert np.nonzero(miou[:, np.nonzero(miou.any(axis=0))[0][0]])[0].mean() > rows.min()


def test_curves_of_a_single_epoch_and_of_nothing():
    one = plots.draw_curves([{"epoch": 1, "train_loss": 0.7, "lr": 0.01, "val": {"miou": 0.2, "pixel_acc": 0.9}}])
    assert all(line_pixels(p).any() for p in panels(one))
    empty = plots.draw_curves([])
    assert not line_pixels(empty).any()


def test_confusion_picture_shades_rows_and_grows_with_the_names():
    matrix = np.array([[8, 2, 0], [0, 5, 0], [0, 0, 0]])
    short = plots.draw_confusion(matrix, ["a", "b", "c"])
    long = plots.draw_confusion(matrix, ["background", "b", "c"])
    assert long.shape[0] > short.shape[0] and long.shape[1] > short.shape[1]  # names on both axes
    full = np.array(plots._shade(1.0), np.uint8)
    assert np.all(short == full, axis=-1).any()            # row 'b' is all on its diagonal
    assert np.all(short == np.array(plots._shade(0.8), np.uint8), axis=-1).any()
    with pytest.raises(ValueError, match="2 class names for a 3x3 matrix"):
        plots.draw_confusion(matrix, ["a", "b"])


# ---------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    pytest.importorskip("tensorboardX", reason="needs tensorboardX (pip install tensorboardX)")
    out = tmp_path_factory.mktemp("run")
    args = ["--net", "unet", "--width", "2", "--epochs", "2", "--batch-size", "4", "--crop-size", "32",
            "--model-opt", "padding=same", "--data-opt", "image_size=32", "--data-opt", "num_train=8",
            "--data-opt", "num_val=4", "--output-dir", str(out), "--tensorboard"]
    assert train_mod.main(args) == 0
    return out


def test_training_writes_curves_png(run_folder):
    picture = Image.open(run_folder / "curves.png")
    assert picture.format == "PNG" and picture.size == (840, 520)
    loss, miou, acc, lr = (line_pixels(p) for p in panels(picture.convert("RGB")))
    assert loss.any() and miou.any() and acc.any() and lr.any()
    records = [json.loads(line) for line in (run_folder / "metrics.jsonl").read_text().splitlines()]
    assert np.array_equal(np.asarray(picture.convert("RGB")), plots.draw_curves(records))  # the whole history


def test_tensorboard_events_hold_every_epoch(run_folder):
    events = read_events(run_folder)
    records = [json.loads(line) for line in (run_folder / "metrics.jsonl").read_text().splitlines()]
    classes = json.loads((run_folder / "config.json").read_text()).get("classes") or \
        ["background", "circle", "square", "triangle", "ring", "cross"]
    scalars = {(step, tag): value for step, tag, value in events if not isinstance(value, tuple)}
    for record in records:
        epoch = record["epoch"]
        assert scalars[(epoch, "train/loss")] == pytest.approx(record["train_loss"], rel=1e-6)
        assert scalars[(epoch, "train/lr")] == pytest.approx(record["lr"], rel=1e-6)
        for key in ("pixel_acc", "mean_acc", "miou", "fwiou"):
            assert scalars[(epoch, f"val/{key}")] == pytest.approx(record["val"][key], rel=1e-6)
        ious = record["val"]["per_class_iou"]
        logged = {tag.split("/", 1)[1]: v for (step, tag), v in scalars.items()
                  if step == epoch and tag.startswith("val_iou/")}
        assert len(logged) == sum(iou is not None for iou in ious) > 0
        assert set(logged) <= set(classes)
        images = [v for step, tag, v in events if step == epoch and tag == "predictions"]
        grid = Image.open(run_folder / "predictions" / f"epoch_{epoch:03d}.png")
        assert images == [("image", grid.width, grid.height)]


def test_tensorboard_without_the_package_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX now raises ImportError
    code = train_mod.main(["--net", "unet", "--epochs", "1", "--output-dir", str(tmp_path / "r"), "--tensorboard"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pip install tensorboardX" in err
    assert not (tmp_path / "r").exists()


def test_evaluate_confusion_png(run_folder, tmp_path, monkeypatch, capsys):
    seen = []
    draw = plots.draw_confusion
    monkeypatch.setattr(plots, "draw_confusion", lambda matrix, names: seen.append((matrix, names)) or draw(matrix, names))
    target = tmp_path / "confusion.png"
    assert evaluate_mod.main(["--checkpoint", str(run_folder / "checkpoint_last.npz"), "--output",
                              str(tmp_path / "m.json"), "--confusion-png", str(target)]) == 0
    result = json.loads((tmp_path / "m.json").read_text())
    (matrix, names), = seen
    assert list(names) == result["classes"] and len(names) == 6
    assert np.trace(matrix) / matrix.sum() == pytest.approx(result["pixel_acc"])  # the matrix the metrics came from
    picture = Image.open(target)
    assert picture.format == "PNG"
    assert np.array_equal(np.asarray(picture.convert("RGB")), draw(matrix, names))
    assert evaluate_mod.main(["--checkpoint", str(run_folder / "checkpoint_last.npz"), "--confusion-png",
                              str(tmp_path)]) == 2
    assert "--confusion-png" in capsys.readouterr().err
