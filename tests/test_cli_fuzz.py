"""Fuzzing the command-line tools: bad values for every flag of train, evaluate and predict, and
corrupt or mismatched files for every input.

Every call goes in-process through ``main(argv)`` on tiny data. Whatever is drawn, a tool must
end with exit status 0 or 2 (1 only for a diverging loss, 130 for an interrupt; neither is drawn
here), never print a Python traceback, say ``error:`` naming the flag or the file when it
refuses, write nothing when it refuses, and leave every byte of an earlier run's folder as it was.
"""
import contextlib
import hashlib
import io
import itertools
import traceback
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from segnets import evaluate as evaluate_mod
from segnets import predict as predict_mod
from segnets import train as train_mod

TINY = ["--device", "cpu", "--width", "2", "--epochs", "1", "--batch-size", "4", "--crop-size", "32",
        "--data-opt", "image_size=32", "--data-opt", "num_train=4", "--data-opt", "num_val=2",
        "--model-opt", "fc_kernel=1"]
_counter = itertools.count()


def folder_hashes(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An earlier finished run, good inputs, and a shelf of bad files of every kind."""
    root = tmp_path_factory.mktemp("fuzz")
    earlier = root / "earlier"
    assert train_mod.main(["--net", "fcn8s", *TINY, "--output-dir", str(earlier)]) == 0
    image = root / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(image)
    bad = root / "bad"
    bad.mkdir()
    files = {
        "missing": bad / "missing.npz",
        "folder": bad / "a-folder",
        "empty": bad / "empty.bin",
        "random": bad / "random.bin",
        "text": bad / "text.txt",
        "truncated-ckpt": bad / "truncated.npz",
        "plain-npz": bad / "plain.npz",
        "object-npz": bad / "object.npz",
        "truncated-png": bad / "truncated.png",
        "float-tif": bad / "float.tif",
        "int32-tif": bad / "int32.tif",
        "rgb-as-ckpt": image,
    }
    files["folder"].mkdir()
    files["empty"].write_bytes(b"")
    files["random"].write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())
    files["text"].write_text("not a checkpoint\n" * 20)
    files["truncated-ckpt"].write_bytes((earlier / "checkpoint_last.npz").read_bytes()[:5000])
    np.savez(files["plain-npz"], weights=np.zeros(3, np.float32))
    np.savez(files["object-npz"], thing=np.array([{"a": 1}], dtype=object))
    files["truncated-png"].write_bytes(image.read_bytes()[:60])
    data = make_bad_data(root / "data", image)
    Image.fromarray(np.full((8, 8), 7.5, np.float32)).save(files["float-tif"])
    Image.fromarray(np.full((8, 8), 10**6, np.int32)).save(files["int32-tif"])
    return {"root": root, "earlier": earlier, "hashes": folder_hashes(earlier), "image": image, "bad": files,
            "data": data}


def make_bad_data(root, image):
    """Data folders with one fault each: {name: folder}."""
    rng = np.random.default_rng(2)

    def folder(name, n=4, size=16, mask=lambda i: rng.integers(0, 2, (16, 16))):
        (root / name / "images").mkdir(parents=True)
        (root / name / "masks").mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / "images" / f"s{i}.png")
            Image.fromarray(np.asarray(mask(i), np.uint8)).save(root / name / "masks" / f"s{i}.png")
        return root / name

    cases = {}
    cases["void"] = folder("void", mask=lambda i: np.full((16, 16), 255))
    cases["overlap"] = folder("overlap")
    (cases["overlap"] / "train.txt").write_text("s0\ns1\ns2\n")
    (cases["overlap"] / "val.txt").write_text("s2\ns3\n")
    cases["size"] = folder("size", mask=lambda i: np.zeros((16, 8 + i)))
    cases["labels"] = folder("labels", mask=lambda i: np.full((16, 16), 9))
    (cases["labels"] / "classes.txt").write_text("a\nb\n")
    cases["truncated"] = folder("truncated")
    (cases["truncated"] / "images" / "s1.png").write_bytes(image.read_bytes()[:80])
    cases["unlisted"] = folder("unlisted")
    (cases["unlisted"] / "val.txt").write_text("s9\n")
    cases["no-masks"] = folder("no-masks")
    for p in (cases["no-masks"] / "masks").iterdir():
        p.unlink()
    cases["empty"] = root / "empty"
    cases["empty"].mkdir()
    cases["a-file"] = image
    idx = root / "idx"
    idx.mkdir()
    (idx / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + bytes(2 * 28 * 28))
    (idx / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + bytes([1, 2]))
    (idx / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08")
    (idx / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + bytes([1, 12]))
    cases["idx"] = idx
    return cases


def call(main, argv):
    """(status, stderr) of ``main(argv)``; argparse's SystemExit counts as the status it carries."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            status = main(argv)
        except SystemExit as e:
            status = e.code
        except BaseException:  # noqa: BLE001 - any escaping exception is what the test looks for
            return "traceback", traceback.format_exc()
    return status, err.getvalue()


def check(world, main, argv, names, fresh):
    status, err = call(main, [str(a) for a in argv])
    assert "Traceback" not in err, f"{argv}:\n{err}"
    assert status in (0, 2), f"exit status {status} for {argv}:\n{err}"
    if status == 2:
        lines = [line for line in err.splitlines() if "error:" in line]
        assert lines, f"no error: line for {argv}:\n{err}"
        assert any(str(name) in err for name in names), f"error names none of {names} for {argv}:\n{err}"
        assert not fresh.exists() or not any(fresh.iterdir()), f"{argv} refused but wrote {list(fresh.iterdir())}"
    assert folder_hashes(world["earlier"]) == world["hashes"], f"{argv} changed the earlier run's files"
    return status


# ---------------------------------------------------------------------------- bad values
def bad_int(minimum=1):
    return st.one_of(st.integers(-10**6, minimum - 1).map(str), st.sampled_from(["", "1.5", "nan", "inf", "x", "1e3", "--"]))


def bad_float(low_ok=0.0, below=None):
    values = [st.floats(max_value=low_ok, exclude_max=True, allow_nan=False).map(repr),
              st.sampled_from(["nan", "inf", "-inf", "NaN", "", "abc", "1,5"])]
    if below is not None:
        values.append(st.floats(min_value=below, allow_nan=False).map(repr))
    return st.one_of(*values)


def junk_text():
    return st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=0, max_size=12)


TRAIN_VALUES = {
    "--epochs": bad_int(), "--batch-size": bad_int(), "--width": bad_int(), "--crop-size": bad_int(),
    "--seed": st.one_of(bad_int(0), st.just(str(2**32))),
    "--lr": bad_float(), "--weight-decay": bad_float(), "--momentum": bad_float(below=1.0),
    "--net": junk_text(), "--dataset": junk_text(), "--optimizer": junk_text(), "--lr-schedule": junk_text(),
    "--class-weights": junk_text(), "--device": junk_text(), "--threads": bad_int(), "--distributed": junk_text(),
}
OPTION_KEYS = ["image_size", "num_train", "num_val", "max_shapes", "fc_kernel", "pad100", "padding",
               "batch_norm", "learn_upsampling", "nonsense"]
OPTION_VALUES = st.one_of(st.integers(-3, 3).map(str), st.sampled_from(["", "x", "nan", "1e9", "true", "none", "same"]))
CRF_PAIRS = st.one_of(st.sampled_from(["iterations=-1", "iterations=1.5", "w1=-2", "w2=nan", "theta_alpha=0",
                                       "theta_beta=inf", "theta_gamma=-1", "method=fast", "sxy=3", "w1", "=1"]),
                      st.builds("{}={}".format, st.sampled_from(["iterations", "w1", "theta_alpha", "method"]),
                                OPTION_VALUES))
FILE_KINDS = ["missing", "folder", "empty", "random", "text", "truncated-ckpt", "plain-npz", "object-npz",
              "truncated-png", "rgb-as-ckpt"]


@st.composite
def train_case(draw, world):
    """One bad thing in otherwise good tiny arguments: (argv, names the error may cite, fresh folder)."""
    fresh = world["root"] / f"fresh-{next(_counter)}"
    args = ["--net", "fcn8s", *TINY, "--output-dir", fresh]
    kind = draw(st.sampled_from(["value", "option", "file", "output", "resume", "data"]))
    if kind == "data":
        name = draw(st.sampled_from(sorted(world["data"])))
        dataset = draw(st.sampled_from(["folder", "voc", "idx-scenes"] if name in ("empty", "a-file", "idx")
                                       else ["folder"]))
        data_dir = world["data"][name]
        return ["--net", "unet", "--dataset", dataset, "--data-dir", data_dir, "--width", "2", "--epochs", "1",
                "--batch-size", "2", "--crop-size", "16", "--output-dir", fresh], [data_dir], fresh
    if kind == "value":
        flag = draw(st.sampled_from(sorted(TRAIN_VALUES)))
        value = draw(TRAIN_VALUES[flag])
        return args + [flag, value], [flag], fresh
    if kind == "option":
        flag = draw(st.sampled_from(["--data-opt", "--model-opt"]))
        pair = f"{draw(st.sampled_from(OPTION_KEYS))}={draw(OPTION_VALUES)}"
        pair = draw(st.sampled_from([pair, pair.replace("=", ""), "=3"]))
        return args + [flag, pair], [flag, pair.split("=")[0] or "="], fresh
    if kind == "file":
        flag = draw(st.sampled_from(["--init-weights", "--resume"]))
        path = world["bad"][draw(st.sampled_from(FILE_KINDS))]
        return args + [flag, path], [flag, path], fresh
    if kind == "output":  # the earlier run's folder, a file, a folder under a file
        target = draw(st.sampled_from([world["earlier"], world["image"], world["image"] / "sub"]))
        return ["--net", draw(st.sampled_from(["unet", "fcn8s"])), *TINY, "--output-dir", target], \
            ["--output-dir", target], fresh
    # resume the earlier run with a flag it may not change, or a bad value for one it may
    ckpt = world["earlier"] / "checkpoint_best.npz"
    flag, value = draw(st.sampled_from([("--width", "8"), ("--lr", "0.5"), ("--net", "unet"),
                                        ("--epochs", "-5"), ("--epochs", "0"), ("--model-opt", "fc_kernel=3")]))
    return ["--resume", ckpt, flag, value], [flag, ckpt], fresh


@st.composite
def evaluate_case(draw, world):
    fresh = world["root"] / f"fresh-{next(_counter)}"
    args = ["--checkpoint", world["earlier"] / "checkpoint_last.npz", "--output", fresh / "eval.json"]
    kind = draw(st.sampled_from(["batch", "split", "dataset", "option", "checkpoint", "output", "crf", "png"]))
    if kind == "crf":
        pair = draw(CRF_PAIRS)
        return args + ["--crf-opt", pair], ["--crf-opt"], fresh
    if kind == "png":
        target = draw(st.sampled_from([world["bad"]["folder"], world["image"] / "sub.png"]))
        return args + ["--confusion-png", target], ["--confusion-png", target], fresh
    if kind == "batch":
        return args + ["--batch-size", draw(bad_int())], ["--batch-size"], fresh
    if kind == "split":
        return args + ["--split", draw(junk_text())], ["--split"], fresh
    if kind == "dataset":
        return args + ["--dataset", draw(st.sampled_from(["voc", "folder", "idx-scenes", "nope"])),
                       "--data-dir", world["bad"]["folder"]], ["--dataset", "folder", world["bad"]["folder"]], fresh
    if kind == "option":
        pair = f"{draw(st.sampled_from(OPTION_KEYS))}={draw(OPTION_VALUES)}"
        return args + ["--data-opt", pair], ["--data-opt", pair.split("=")[0]], fresh
    if kind == "checkpoint":
        path = world["bad"][draw(st.sampled_from(FILE_KINDS))]
        return ["--checkpoint", path, "--output", fresh / "eval.json"], ["--checkpoint", path], fresh
    target = draw(st.sampled_from([world["bad"]["folder"], world["image"] / "sub.json"]))
    return ["--checkpoint", world["earlier"] / "checkpoint_last.npz", "--output", target], ["--output", target], fresh


@st.composite
def predict_case(draw, world):
    fresh = world["root"] / f"fresh-{next(_counter)}"
    ckpt = world["earlier"] / "checkpoint_last.npz"
    kind = draw(st.sampled_from(["alpha", "checkpoint", "image", "output", "device", "crf", "onnx"]))
    if kind == "onnx":
        path = world["bad"][draw(st.sampled_from(FILE_KINDS))]
        return ["--onnx", path, world["image"], "--output-dir", fresh], ["--onnx", path], fresh
    if kind == "crf":
        return ["--checkpoint", ckpt, world["image"], "--output-dir", fresh, "--crf-opt", draw(CRF_PAIRS)], \
            ["--crf-opt"], fresh
    if kind == "alpha":
        value = draw(st.one_of(bad_float(), st.floats(min_value=1.0, exclude_min=True, allow_nan=False).map(repr)))
        return ["--checkpoint", ckpt, world["image"], "--output-dir", fresh, "--alpha", value], ["--alpha"], fresh
    if kind == "checkpoint":
        path = world["bad"][draw(st.sampled_from(FILE_KINDS))]
        return ["--checkpoint", path, world["image"], "--output-dir", fresh], ["--checkpoint", path], fresh
    if kind == "image":
        path = world["bad"][draw(st.sampled_from(["missing", "folder", "empty", "random", "text", "truncated-png",
                                                  "float-tif", "int32-tif", "plain-npz"]))]
        return ["--checkpoint", ckpt, world["image"], path, "--output-dir", fresh], [path], fresh
    if kind == "device":
        return ["--checkpoint", ckpt, world["image"], "--output-dir", fresh, "--device", draw(junk_text())], \
            ["--device"], fresh
    target = draw(st.sampled_from([world["image"], world["image"] / "sub"]))
    return ["--checkpoint", ckpt, world["image"], "--output-dir", target], ["--output-dir", target], fresh


@settings(max_examples=45)
@given(data=st.data())
def test_train_fuzz(world, data):
    argv, names, fresh = data.draw(train_case(world))
    check(world, train_mod.main, argv, names, fresh)


@settings(max_examples=20)
@given(data=st.data())
def test_evaluate_fuzz(world, data):
    argv, names, fresh = data.draw(evaluate_case(world))
    check(world, evaluate_mod.main, argv, names, fresh)


@settings(max_examples=20)
@given(data=st.data())
def test_predict_fuzz(world, data):
    argv, names, fresh = data.draw(predict_case(world))
    check(world, predict_mod.main, argv, names, fresh)
