"""The command-line tools never overwrite a run, read every image depth right, and say what is wrong.

Runs use tiny data (shapes at 32x32, 4-8 images, width 2-4) through ``main(argv)`` in-process.
"""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segnets import checkpoint as ckpt
from segnets import evaluate as evaluate_mod
from segnets import predict as predict_mod
from segnets import run as run_mod
from segnets import train as train_mod
from segnets.data import DataError, FolderDataset
from segnets.data.base import read_image
from segnets.data.idx_scenes import parse_idx


def tiny(out, net="fcn8s", epochs=1, extra=()):
    return ["--net", net, "--device", "cpu", "--width", "2", "--epochs", str(epochs), "--batch-size", "4",
            "--crop-size", "32", "--data-opt", "image_size=32", "--data-opt", "num_train=8",
            "--data-opt", "num_val=4", *(["--model-opt", "fc_kernel=1"] if net != "unet" else []),
            "--output-dir", str(out), *extra]


def hashes(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def epochs_logged(folder):
    return [json.loads(line)["epoch"] for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    """A finished fcn8s run of three epochs (its best checkpoint is from an epoch before the last or the last)."""
    out = tmp_path_factory.mktemp("three") / "run"
    assert train_mod.main(tiny(out, epochs=3, extra=["--lr", "0.01"])) == 0
    return out


def copy_run(source, target):
    target.mkdir(parents=True)
    for path in source.rglob("*"):
        if path.is_file():
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / path.relative_to(source)).write_bytes(path.read_bytes())
    return target


# ---------------------------------------------------------------------------- the run folder
def test_a_new_run_never_writes_into_another_runs_folder(tmp_path, three_epochs, capsys):
    out = copy_run(three_epochs, tmp_path / "reuse")
    before = hashes(out)
    assert train_mod.main(tiny(out, net="unet")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(out) in err and "another run" in err and "--overwrite" in err
    assert "fcn8s on shapes, 3 epoch(s)" in err
    assert hashes(out) == before


def test_overwrite_says_what_it_deletes_and_leaves_only_the_new_run(tmp_path, three_epochs, capsys):
    out = copy_run(three_epochs, tmp_path / "reuse")
    assert train_mod.main(tiny(out, net="unet", extra=["--overwrite"])) == 0
    err = capsys.readouterr().err
    assert "--overwrite: deleted" in err and "checkpoint_best.npz" in err and "predictions/epoch_003.png" in err
    assert epochs_logged(out) == [1]
    assert json.loads((out / "config.json").read_text())["net"] == "unet"
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["epoch_001.png"]


def test_an_empty_or_unrelated_folder_is_fine(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    assert train_mod.main(tiny(out)) == 0
    assert (out / "notes.txt").read_text() == "my notes" and (out / "checkpoint_last.npz").is_file()


def test_default_folders_are_unique_even_when_started_in_the_same_second(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_mod.time, "strftime", lambda fmt: "20261130-120000")
    settings = {"output_dir": None, "net": "unet", "dataset": "shapes"}
    folders = [run_mod.claim_output_dir(dict(settings), run_mod.OutputPlan([])) for _ in range(3)]
    assert [str(f) for f in folders] == [os.path.join("runs", name) for name in
                                         ("unet-shapes-20261130-120000", "unet-shapes-20261130-120000-2",
                                          "unet-shapes-20261130-120000-3")]
    assert all(f.is_dir() for f in folders)


def test_two_runs_of_one_net_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_mod.time, "strftime", lambda fmt: "20261130-120000")
    args = tiny("x")[:-2]  # no --output-dir
    assert train_mod.main(args) == 0 and train_mod.main(args) == 0
    runs = sorted(os.listdir(tmp_path / "runs"))
    assert runs == ["fcn8s-shapes-20261130-120000", "fcn8s-shapes-20261130-120000-2"]
    for name in runs:
        assert epochs_logged(tmp_path / "runs" / name) == [1]
        config = json.loads((tmp_path / "runs" / name / "config.json").read_text())
        assert config["output_dir"] == os.path.join("runs", name)


def test_resuming_another_nets_checkpoint_copied_into_a_run_folder_is_refused(tmp_path, three_epochs, capsys):
    out = copy_run(three_epochs, tmp_path / "run")
    other = tmp_path / "other"
    assert train_mod.main(tiny(other, net="unet")) == 0
    (out / "unet.npz").write_bytes((other / "checkpoint_last.npz").read_bytes())
    before = hashes(out)
    capsys.readouterr()
    assert train_mod.main(["--resume", str(out / "unet.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "another run" in err and str(out) in err
    assert hashes(out) == before


def test_resuming_from_checkpoint_best_refuses_to_drop_later_epochs_unless_overwrite(tmp_path, three_epochs, capsys):
    out = copy_run(three_epochs, tmp_path / "run")
    (out / "checkpoint_best.npz").write_bytes((out / "checkpoint_last.npz").read_bytes())  # made older below
    meta = ckpt.load_checkpoint(out / "checkpoint_last.npz")
    older = dict(meta["meta"], epoch=1, progress=None)
    ckpt.save_checkpoint(out / "checkpoint_best.npz", older, meta["model"], meta["optimizer"],
                         meta.get("scheduler"), meta["loader"])
    before = hashes(out)
    assert train_mod.main(["--resume", str(out / "checkpoint_best.npz")]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl loses epochs 2-3" in err and "checkpoint_last.npz (at epoch 3) is replaced" in err
    assert "--overwrite" in err and "--output-dir" in err
    assert hashes(out) == before
    assert train_mod.main(["--resume", str(out / "checkpoint_best.npz"), "--overwrite"]) == 0
    assert "--overwrite: --resume" in capsys.readouterr().err
    assert epochs_logged(out) == [1, 2, 3]  # epochs 2 and 3 trained again
    assert ckpt.load_checkpoint(out / "checkpoint_last.npz")["meta"]["epoch"] == 3


def test_resuming_into_a_new_folder_carries_the_history_over(tmp_path, three_epochs, capsys):
    source = copy_run(three_epochs, tmp_path / "run")
    meta = ckpt.load_checkpoint(source / "checkpoint_last.npz")
    ckpt.save_checkpoint(source / "epoch2.npz", dict(meta["meta"], epoch=2, progress=None), meta["model"],
                         meta["optimizer"], meta.get("scheduler"), meta["loader"])
    ckpt.save_checkpoint(source / "checkpoint_best.npz", dict(meta["meta"], epoch=1, progress=None), meta["model"])
    before = hashes(source)
    branch = tmp_path / "branch"
    capsys.readouterr()
    assert train_mod.main(["--resume", str(source / "epoch2.npz"), "--output-dir", str(branch)]) == 0
    said = capsys.readouterr().out
    assert "carried over" in said and "metrics.jsonl (epochs 1-2), checkpoint_best.npz (epoch 1), 2 previews" in said
    assert epochs_logged(branch) == [1, 2, 3]
    for name in ("epoch_001.png", "epoch_002.png"):
        assert (branch / "predictions" / name).read_bytes() == (source / "predictions" / name).read_bytes()
    assert hashes(source) == before  # the source run is left as it was
    branch_id = json.loads((branch / "config.json").read_text())["run_id"]
    assert branch_id != json.loads((source / "config.json").read_text())["run_id"]  # a run of its own
    assert ckpt.read_meta(branch / "checkpoint_last.npz")["settings"]["run_id"] == branch_id
    # a checkpoint_best.npz later than the resumed epoch is not carried over
    ckpt.save_checkpoint(source / "checkpoint_best.npz", dict(meta["meta"], epoch=3, progress=None), meta["model"])
    assert train_mod.main(["--resume", str(source / "epoch2.npz"), "--output-dir", str(tmp_path / "b2")]) == 0
    assert "no checkpoint_best.npz until val mIoU beats" in capsys.readouterr().out


def test_output_dir_that_is_a_file_or_under_a_file_is_refused(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out in (a_file, a_file / "sub"):
        assert train_mod.main(tiny(out)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --output-dir") and "is a file" in err
    assert a_file.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_output_dir_that_is_not_writable_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert train_mod.main(tiny(locked / "run")) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------------------- flags
@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--batch-size", "-2"), ("--epochs", "0"),
                                        ("--epochs", "-1"), ("--lr", "-1"), ("--lr", "nan"), ("--lr", "inf"),
                                        ("--momentum", "-5"), ("--momentum", "1"), ("--weight-decay", "-1"),
                                        ("--weight-decay", "nan"), ("--width", "0"), ("--crop-size", "-3"),
                                        ("--seed", "-1")])
def test_bad_numeric_flags_are_refused_at_parse_time(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as stop:
        train_mod.main(tiny(tmp_path / "run", extra=[flag, value]))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {flag}: expected" in err and repr(value) in err
    assert not (tmp_path / "run").exists()


def test_resume_with_bad_epochs_is_refused_and_the_config_kept(three_epochs, capsys):
    before = hashes(three_epochs)
    with pytest.raises(SystemExit):
        train_mod.main(["--resume", str(three_epochs / "checkpoint_last.npz"), "--epochs", "-5"])
    assert "--epochs" in capsys.readouterr().err and hashes(three_epochs) == before


def test_evaluate_and_predict_flags_and_outputs(tmp_path, three_epochs, capsys):
    checkpoint = str(three_epochs / "checkpoint_last.npz")
    with pytest.raises(SystemExit):
        evaluate_mod.main(["--checkpoint", checkpoint, "--batch-size", "0"])
    assert "--batch-size" in capsys.readouterr().err
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert evaluate_mod.main(["--checkpoint", checkpoint, "--output", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --output") and "is a folder" in err
    assert "pixel acc" not in capsys.readouterr().out  # refused before the metrics were computed
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    for alpha in ("5", "-1", "nan"):
        with pytest.raises(SystemExit):
            predict_mod.main(["--checkpoint", checkpoint, str(image), "--output-dir", str(tmp_path / "p"),
                              "--alpha", alpha])
        assert "--alpha" in capsys.readouterr().err
    assert predict_mod.main(["--checkpoint", checkpoint, str(image), "--output-dir", str(image)]) == 2
    assert capsys.readouterr().err.startswith("error: --output-dir")


# ---------------------------------------------------------------------------- messages
def test_files_that_are_not_checkpoints_are_named_for_what_they_are(tmp_path, three_epochs):
    random_file = tmp_path / "random.npz"
    random_file.write_bytes(os.urandom(200).replace(b"PK", b"pk"))
    plain = tmp_path / "plain.npz"
    np.savez(plain, weights=np.zeros(3))
    cut = tmp_path / "cut.npz"
    cut.write_bytes((three_epochs / "checkpoint_last.npz").read_bytes()[:3000])
    with pytest.raises(ckpt.CheckpointError, match="is not an .npz file") as e:
        ckpt.load_checkpoint(random_file)
    assert "allow_pickle" not in str(e.value)
    with pytest.raises(ckpt.CheckpointError, match=r"plain \.npz of 1 array\(s\) \(weights\)"):
        ckpt.load_checkpoint(plain)
    with pytest.raises(ckpt.CheckpointError, match="is a folder, not a file.*checkpoint_last.npz"):
        ckpt.load_checkpoint(three_epochs)
    with pytest.raises(ckpt.CheckpointError, match="damaged"):
        ckpt.load_checkpoint(cut)
    assert ckpt.read_meta(three_epochs / "checkpoint_last.npz")["epoch"] == 3
    assert ckpt.read_meta(plain) is None and ckpt.read_meta(cut) is None


def test_idx_file_with_a_wrong_dimension_count_byte_says_so():
    header = bytes([0, 0, 0x08, 1]) + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2  # 1 dim, 3 sizes
    raw = header + bytes(2 * 28 * 28)
    with pytest.raises(DataError, match=r"dimension-count byte \(the 4th.*says 1 dimension\(s\); an idx3 file has 3"):
        parse_idx(raw, "train-images-idx3-ubyte", ndim=3)
    good = bytes([0, 0, 0x08, 3]) + header[4:] + bytes(2 * 28 * 28)
    assert parse_idx(good, "x", ndim=3).shape == (2, 28, 28)


def test_nan_loss_in_the_first_epoch_does_not_claim_a_last_good_epoch(tmp_path, monkeypatch, capsys):
    real = train_mod.compute_loss
    monkeypatch.setattr(train_mod, "compute_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    assert train_mod.main(tiny(tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert "epoch 1, iteration 1" in err and "no epoch had finished" in err and "last good" not in err


# ---------------------------------------------------------------------------- image depths and data checks
def write_png16(path, values):
    Image.fromarray(values.astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I;16")  # a real 16-bit greyscale PNG


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    grey8 = np.arange(256, dtype=np.uint16).reshape(16, 16)
    write_png16(tmp_path / "g16.png", grey8 * 257)  # 0..65535: the same picture as grey8
    image = read_image(tmp_path / "g16.png")
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], grey8)
    np.testing.assert_array_equal(image[..., 1], image[..., 2])


def test_32_bit_images_are_scaled_or_refused(tmp_path):
    Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif")[..., 0],
                                  np.round(np.linspace(0, 1, 64) * 255).reshape(8, 8).astype(np.uint8))
    Image.fromarray(np.full((4, 4), 300.0, np.float32)).save(tmp_path / "big.tif")
    with pytest.raises(DataError, match=r"big.tif: a 32-bit float image .* values 300..300"):
        read_image(tmp_path / "big.tif")
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "i.tif")
    with pytest.raises(DataError, match="i.tif: a 32-bit integer image"):
        read_image(tmp_path / "i.tif")


def test_predict_reads_a_16_bit_png_as_the_same_8_bit_picture(tmp_path, three_epochs):
    rng = np.random.default_rng(0)
    grey8 = rng.integers(0, 256, (20, 24)).astype(np.uint16)
    Image.fromarray(np.repeat(grey8[..., None], 3, axis=2).astype(np.uint8)).save(tmp_path / "g8.png")
    write_png16(tmp_path / "g16.png", grey8 * 257)
    out = tmp_path / "out"
    assert predict_mod.main(["--checkpoint", str(three_epochs / "checkpoint_last.npz"), str(tmp_path / "g8.png"),
                             str(tmp_path / "g16.png"), "--output-dir", str(out)]) == 0
    assert (out / "g8_mask.png").read_bytes() == (out / "g16_mask.png").read_bytes()
    assert (out / "g8_overlay.png").read_bytes() == (out / "g16_overlay.png").read_bytes()


def make_folder_data(root, n=6, size=16, masks=None, sixteen_bit=False):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        grey = rng.integers(0, 256, (size, size))
        if sixteen_bit:
            write_png16(root / "images" / f"s{i}.png", grey * 257)
        else:
            Image.fromarray(np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)).save(root / "images" / f"s{i}.png")
        mask = masks(i) if masks else (grey > 128).astype(np.uint8)
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"s{i}.png")
    return root


def test_folder_dataset_reads_16_bit_images_like_8_bit_ones(tmp_path):
    eight = FolderDataset(make_folder_data(tmp_path / "a"), "train")
    sixteen = FolderDataset(make_folder_data(tmp_path / "b", sixteen_bit=True), "train")
    for i in range(len(eight)):
        np.testing.assert_array_equal(sixteen[i][0], eight[i][0])


def folder_args(data, out, extra=()):
    return ["--net", "unet", "--dataset", "folder", "--data-dir", str(data), "--width", "2", "--epochs", "1",
            "--batch-size", "2", "--crop-size", "16", "--output-dir", str(out), *extra]


def test_train_and_val_lists_that_share_stems_are_refused(tmp_path, capsys):
    data = make_folder_data(tmp_path / "data")
    (data / "train.txt").write_text("s0\ns1\ns2\ns3\n")
    (data / "val.txt").write_text("s3\ns4\ns2\n")
    assert train_mod.main(folder_args(data, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "2 of the 3 val images are in the training split too (s2, s3)" in err
    assert not (tmp_path / "run").exists()


def test_all_void_masks_are_refused_naming_the_split(tmp_path, capsys):
    data = make_folder_data(tmp_path / "data", masks=lambda i: np.full((16, 16), 255))
    (data / "classes.txt").write_text("background\nthing\n")
    assert train_mod.main(folder_args(data, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "no pixel of the train split is labelled" in err and "ignore value 255" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option", ["num_train=1e9", "num_train=inf", "num_val=2.5", "image_size=1e9"])
def test_generated_data_sizes_that_cannot_fit_in_memory_are_refused(tmp_path, capsys, option):
    assert train_mod.main(tiny(tmp_path / "run", extra=["--data-opt", option])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --dataset shapes") and option.split("=")[0] in err
    assert not (tmp_path / "run").exists()
