"""Datasets: shapes (embedded), voc, folder, idx-scenes; their loading and their errors.

Every file fixture is written by the test itself into tmp_path.
"""
import gzip
import os

import numpy as np
import pytest
from PIL import Image

from segnets.data import DATASETS, DataError, build_dataset
from segnets.data.idx_scenes import FASHION_CLASSES, parse_idx
from segnets.data.shapes import SHAPE_CLASSES
from segnets.data.voc import VOC_CLASSES, voc_palette

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


# ---------------------------------------------------------------- file writers
def write_rgb(path, array, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8), "RGB").save(path, format=fmt)


def write_palette_png(path, labels, palette=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.fromarray(np.asarray(labels, np.uint8), "P")
    img.putpalette((voc_palette() if palette is None else palette).ravel().tolist())
    img.save(path)


def write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(f"{line}\n" for line in lines))


def labels_for(k, shape=(12, 16)):
    """A distinctive mask: class 0 background, a block of class k % 21, a void (255) border row."""
    labels = np.zeros(shape, np.uint8)
    labels[3:8, 4:11] = k % 21
    labels[0, :] = 255
    return labels


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    stems = [f"2007_{k:06d}" for k in range(5)]
    for k, stem in enumerate(stems):
        write_rgb(str(root / "JPEGImages" / f"{stem}.jpg"), np.full((12, 16, 3), 40 * k), fmt="JPEG")
        write_palette_png(str(root / "SegmentationClass" / f"{stem}.png"), labels_for(k + 1))
    write_lines(str(root / "ImageSets" / "Segmentation" / "train.txt"), stems[:3])
    write_lines(str(root / "ImageSets" / "Segmentation" / "val.txt"), stems[3:])
    return root


def make_folder(root, stems, image_ext=".png", classes=None, max_label=4, shape=(10, 14)):
    for k, stem in enumerate(stems):
        write_rgb(os.path.join(root, "images", stem + image_ext), np.full(shape + (3,), 10 * k))
        mask = np.zeros(shape, np.uint8)
        mask[2:5, 3:9] = k % (max_label + 1)
        mask[-1, -1] = 255
        os.makedirs(os.path.join(root, "masks"), exist_ok=True)
        Image.fromarray(mask, "L").save(os.path.join(root, "masks", stem + ".png"))
    if classes is not None:
        write_lines(os.path.join(root, "classes.txt"), classes)
    return root


# ---------------------------------------------------------------- registry
def test_registry_names_and_unknown_name():
    assert DATASETS == ["shapes", "voc", "folder", "idx-scenes"]
    with pytest.raises(ValueError, match="unknown dataset 'cityscapes'"):
        build_dataset("cityscapes", "train")
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        build_dataset("shapes", "test")


# ---------------------------------------------------------------- shapes
def test_shapes_items_follow_the_contract():
    data = build_dataset("shapes", "train", num_train=7, num_val=3, image_size=48)
    assert (len(data), data.name, data.num_classes, data.ignore_index) == (7, "shapes", 6, 255)
    assert data.classes == SHAPE_CLASSES and data.classes[0] == "background"
    image, mask = data[6]
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert mask.shape == (48, 48) and mask.dtype == np.int64
    assert len(build_dataset("shapes", "val", num_val=3)) == 3
    assert build_dataset("shapes", "train", image_size=(40, 56))[0][0].shape == (40, 56, 3)
    with pytest.raises(IndexError):
        data[7]


def test_shapes_is_deterministic_in_seed_split_and_index():
    a, b = build_dataset("shapes", "train", seed=3), build_dataset("shapes", "train", seed=3)
    for i in (5, 0, 17):  # any order gives the same item
        assert np.array_equal(a[i][0], b[i][0]) and np.array_equal(a[i][1], b[i][1])
    other_seed = build_dataset("shapes", "train", seed=4)
    val = build_dataset("shapes", "val", seed=3)
    assert not np.array_equal(a[0][0], other_seed[0][0])
    assert not np.array_equal(a[0][0], val[0][0])
    assert not np.array_equal(a[0][0], a[1][0])


def test_shapes_cache_returns_the_generated_items_as_fresh_copies():
    cached, uncached = build_dataset("shapes", "val", seed=2), build_dataset("shapes", "val", seed=2, cache=False)
    image, mask = cached[4]
    image[:] = 0
    mask[:] = 3  # the caller scribbles on its copy
    again, fresh = cached[4], uncached[4]
    assert np.array_equal(again[0], fresh[0]) and np.array_equal(again[1], fresh[1])
    assert again[1].dtype == np.int64


def test_shapes_every_class_appears_and_background_does_not_dominate_everything():
    data = build_dataset("shapes", "train")
    counts = np.bincount(np.concatenate([data[i][1].ravel() for i in range(30)]), minlength=6)
    assert (counts > 0).all(), counts
    foreground = counts[1:] / counts[1:].sum()
    assert foreground.min() > 0.08, foreground  # no shape class is rare
    assert 0.5 < counts[0] / counts.sum() < 0.95


def test_shapes_colour_does_not_give_the_class_away():
    """A nearest-mean-colour classifier fitted on 100 images is no better than chance on 100 others."""
    data = build_dataset("shapes", "train")

    def foreground_pixels(indices):
        colours, labels = [], []
        for i in indices:
            image, mask = data[i]
            colours.append(image[mask > 0].astype(np.float64))
            labels.append(mask[mask > 0])
        return np.concatenate(colours), np.concatenate(labels)

    colours, labels = foreground_pixels(range(100))
    centroids = np.stack([colours[labels == k].mean(axis=0) for k in range(1, 6)])
    test_colours, test_labels = foreground_pixels(range(100, 200))
    nearest = np.argmin(((test_colours[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1) + 1
    accuracy = (nearest == test_labels).mean()
    majority = np.bincount(test_labels).max() / test_labels.size
    assert accuracy < majority + 0.05, (accuracy, majority)


def test_shapes_have_thin_parts_and_occlusion():
    """Rings and crosses have pixels whose 3x3 neighbourhood leaves the class: thin parts exist."""
    data = build_dataset("shapes", "train")
    thin = {4: 0, 5: 0}
    for i in range(40):
        mask = data[i][1]
        for k in thin:
            inside = mask == k
            # pixels of class k with class-k neighbours on neither side, horizontally or vertically
            padded = np.pad(inside, 1)
            no_left_right = ~padded[1:-1, :-2] & ~padded[1:-1, 2:]
            no_up_down = ~padded[:-2, 1:-1] & ~padded[2:, 1:-1]
            thin[k] += int((inside & (no_left_right | no_up_down)).sum())
    assert thin[4] > 0 and thin[5] > 0, thin


# ---------------------------------------------------------------- voc
def test_voc_loads_indices_names_and_splits(voc_root):
    for data_dir in (voc_root, voc_root.parent.parent):  # VOC2012 itself or the directory above VOCdevkit
        train = build_dataset("voc", "train", data_dir=str(data_dir))
        assert len(train) == 3 and train.classes == VOC_CLASSES and train.num_classes == 21
    image, mask = train[1]
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8
    assert mask.dtype == np.int64 and np.array_equal(mask, labels_for(2).astype(np.int64))
    assert len(build_dataset("voc", "val", data_dir=str(voc_root))) == 2
    train.validate()


def test_voc_reads_palette_indices_not_colours(voc_root):
    """A palette PNG whose palette is scrambled still gives its indices."""
    scrambled = np.random.default_rng(0).integers(0, 256, size=(256, 3)).astype(np.uint8)
    write_palette_png(str(voc_root / "SegmentationClass" / "2007_000000.png"), labels_for(7), scrambled)
    assert np.array_equal(build_dataset("voc", "train", data_dir=str(voc_root))[0][1], labels_for(7))


def test_voc_palette_is_the_standard_colour_map():
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert palette[15].tolist() == [192, 128, 128]      # person
    assert palette[20].tolist() == [0, 64, 128]         # tvmonitor
    assert palette[255].tolist() == [224, 224, 192]     # void
    assert len({tuple(c) for c in palette}) == 256


def test_voc_errors_name_the_file(voc_root):
    masks = voc_root / "SegmentationClass"
    os.remove(masks / "2007_000001.png")
    write_palette_png(str(masks / "2007_000002.png"), labels_for(3, shape=(12, 15)))  # 15 wide, image 16
    data = build_dataset("voc", "train", data_dir=str(voc_root))
    with pytest.raises(DataError, match=r"2007_000001\.png: missing mask"):
        data[1]
    with pytest.raises(DataError, match=r"2007_000002\.png.*16x12.*15x12"):
        data[2]
    out_of_range = labels_for(1)
    out_of_range[5, 5] = 30
    write_palette_png(str(masks / "2007_000000.png"), out_of_range)
    with pytest.raises(DataError, match=r"2007_000000\.png.*\[30\] outside the 21 classes"):
        data[0]
    with pytest.raises(DataError, match="3 problem") as problems:
        data.validate()
    assert "2007_000001.png" in str(problems.value) and "2007_000002.png" in str(problems.value)


def test_voc_unreadable_and_truncated_images(voc_root):
    jpegs = voc_root / "JPEGImages"
    (jpegs / "2007_000000.jpg").write_bytes(b"this is not a jpeg")
    full = (jpegs / "2007_000001.jpg").read_bytes()
    (jpegs / "2007_000001.jpg").write_bytes(full[: len(full) // 2])
    data = build_dataset("voc", "train", data_dir=str(voc_root))
    with pytest.raises(DataError, match=r"2007_000000\.jpg: unreadable or truncated image"):
        data[0]
    with pytest.raises(DataError, match=r"2007_000001\.jpg: unreadable or truncated image"):
        data[1]


def test_voc_missing_or_empty_split_and_wrong_directory(voc_root, tmp_path):
    split_dir = voc_root / "ImageSets" / "Segmentation"
    write_lines(str(split_dir / "val.txt"), ["", "  "])
    with pytest.raises(DataError, match=r"val\.txt: empty split"):
        build_dataset("voc", "val", data_dir=str(voc_root))
    os.remove(split_dir / "train.txt")
    with pytest.raises(DataError, match=r"train\.txt: missing split file"):
        build_dataset("voc", "train", data_dir=str(voc_root))
    with pytest.raises(DataError, match="not a Pascal VOC 2012 directory"):
        build_dataset("voc", "train", data_dir=str(tmp_path / "nothing"))
    with pytest.raises(DataError, match="no data directory"):
        build_dataset("voc", "train")


# ---------------------------------------------------------------- folder
def test_folder_with_classes_and_split_files(tmp_path):
    stems = [f"img{k}" for k in range(6)]
    make_folder(str(tmp_path), stems, image_ext=".jpg", classes=["background", "road", "car", "tree", "sky"])
    write_lines(str(tmp_path / "train.txt"), stems[:4])
    write_lines(str(tmp_path / "val.txt"), stems[4:])
    train = build_dataset("folder", "train", data_dir=str(tmp_path))
    assert train.classes == ["background", "road", "car", "tree", "sky"] and train.num_classes == 5
    assert train.stems == stems[:4] and len(build_dataset("folder", "val", data_dir=str(tmp_path))) == 2
    image, mask = train[3]
    assert image.shape == (10, 14, 3) and mask.dtype == np.int64
    assert mask[3, 4] == 3 and mask[-1, -1] == 255 and mask[0, 0] == 0
    train.validate()


def test_folder_without_txt_files_splits_80_20_and_counts_classes(tmp_path):
    stems = [f"s{k:02d}" for k in range(10)]
    make_folder(str(tmp_path), stems, max_label=6)
    train = build_dataset("folder", "train", data_dir=str(tmp_path), seed=1)
    val = build_dataset("folder", "val", data_dir=str(tmp_path), seed=1)
    assert (len(train), len(val)) == (8, 2)
    assert sorted(train.stems + val.stems) == stems
    assert train.stems == build_dataset("folder", "train", data_dir=str(tmp_path), seed=1).stems
    assert train.stems != build_dataset("folder", "train", data_dir=str(tmp_path), seed=2).stems
    assert train.num_classes == 7 and train.classes[-1] == "class_6"  # largest label 6, 255 excluded


def test_folder_palette_masks_and_one_split_file(tmp_path):
    make_folder(str(tmp_path), ["a", "b", "c"])
    write_palette_png(str(tmp_path / "masks" / "b.png"), np.full((10, 14), 3, np.uint8))
    write_lines(str(tmp_path / "train.txt"), ["a", "b"])
    val = build_dataset("folder", "val", data_dir=str(tmp_path))
    assert val.stems == ["c"]  # only train.txt: val is what it does not list
    assert (build_dataset("folder", "train", data_dir=str(tmp_path))[1][1] == 3).all()


def test_folder_errors_name_the_file(tmp_path):
    make_folder(str(tmp_path), ["a", "b", "c", "d"], classes=["background", "x", "y"])
    write_lines(str(tmp_path / "train.txt"), ["a", "b", "c"])
    write_lines(str(tmp_path / "val.txt"), ["d"])
    os.remove(tmp_path / "masks" / "b.png")
    Image.fromarray(np.zeros((10, 14, 3), np.uint8), "RGB").save(tmp_path / "masks" / "c.png")
    Image.fromarray(np.zeros((10, 14), np.uint8), "L").save(tmp_path / "masks" / "orphan.png")
    Image.fromarray(np.full((10, 14), 4, np.uint8), "L").save(tmp_path / "masks" / "d.png")
    train = build_dataset("folder", "train", data_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"b\.png: missing mask"):
        train[1]
    with pytest.raises(DataError, match=r"c\.png: mask has mode 'RGB'"):
        train[2]
    with pytest.raises(DataError, match=r"d\.png.*\[4\] outside the 3 classes"):
        build_dataset("folder", "val", data_dir=str(tmp_path))[0]
    with pytest.raises(DataError) as problems:
        train.validate()
    assert "orphan.png: mask without an image" in str(problems.value)
    assert "b.png" in str(problems.value) and "c.png" in str(problems.value)
    write_lines(str(tmp_path / "train.txt"), ["a", "zzz"])
    with pytest.raises(DataError, match=r"train\.txt: lists 1 stem\(s\) with no file in images/: \['zzz'\]"):
        build_dataset("folder", "train", data_dir=str(tmp_path))


def test_folder_missing_directories_and_empty_split(tmp_path):
    with pytest.raises(DataError, match=r"images: missing directory"):
        build_dataset("folder", "train", data_dir=str(tmp_path))
    make_folder(str(tmp_path), ["only"])
    with pytest.raises(DataError, match="empty val split"):
        build_dataset("folder", "val", data_dir=str(tmp_path))


# ---------------------------------------------------------------- idx-scenes
def idx_bytes(array, type_code=0x08):
    array = np.asarray(array)
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def fake_items(count, seed):
    """Item of class c: a centre block of intensity 100 + 10c (above the threshold) on a faint rim of 40."""
    labels = np.random.default_rng(seed).integers(0, 10, size=count).astype(np.uint8)
    items = np.zeros((count, 28, 28), np.uint8)
    items[:, 2:26, 2:26] = 40
    items[:, 6:22, 8:20] = (100 + 10 * labels)[:, None, None]
    return items, labels


def write_idx_dir(directory, gz=True, dotted=False, count=30):
    os.makedirs(directory, exist_ok=True)
    for prefix, seed in (("train", 0), ("t10k", 1)):
        items, labels = fake_items(count, seed)
        for kind, array in (("images", items), ("labels", labels)):
            ndim = 3 if kind == "images" else 1
            name = f"{prefix}-{kind}{'.' if dotted else '-'}idx{ndim}-ubyte"
            opener = gzip.open if gz else open
            with opener(os.path.join(directory, name + (".gz" if gz else "")), "wb") as f:
                f.write(idx_bytes(array))
    return directory


@pytest.mark.parametrize("gz,dotted", [(True, False), (False, True)])
def test_idx_scenes_labels_follow_intensity_and_class(tmp_path, gz, dotted):
    directory = write_idx_dir(str(tmp_path / "mnist"), gz=gz, dotted=dotted)
    data = build_dataset("idx-scenes", "train", data_dir=directory, num_train=12)
    assert data.classes == ["background"] + [str(d) for d in range(10)] and data.num_classes == 11
    items_seen = 0
    for i in range(len(data)):
        image, mask = data[i]
        assert image.shape == (64, 84, 3) and mask.shape == (64, 84)
        grey = image[..., 0].astype(np.int64)
        expected = np.where(grey > 0.25 * 255, (grey - 100) // 10 + 1, 0)
        assert np.array_equal(mask, expected)
        rim = (grey == 40).sum()                 # each item has 24*24 - 16*12 rim pixels unless covered
        items_seen += rim // (24 * 24 - 16 * 12)
        assert rim % (24 * 24 - 16 * 12) == 0    # items never overlap, so no rim is cut
    assert items_seen > len(data)                # one to three items: more than one on average
    val = build_dataset("idx-scenes", "val", data_dir=directory, num_val=4, canvas=(40, 60), threshold=0.1)
    image, mask = val[0]
    assert image.shape == (40, 60, 3)
    assert np.array_equal(mask > 0, image[..., 0] > 25.5)  # the faint rim (40) is labelled now


def test_idx_scenes_deterministic_and_names_from_path(tmp_path):
    directory = write_idx_dir(str(tmp_path / "my-fashion-files"))
    a = build_dataset("idx-scenes", "train", data_dir=directory, seed=5)
    b = build_dataset("idx-scenes", "train", data_dir=directory, seed=5)
    assert np.array_equal(a[3][1], b[3][1]) and not np.array_equal(a[3][1], a[4][1])
    assert a.classes[1:] == FASHION_CLASSES
    assert build_dataset("idx-scenes", "train", data_dir=directory, fashion=False).classes[1] == "0"


def test_idx_parsing_errors_name_the_file(tmp_path):
    items, labels = fake_items(5, 0)
    assert np.array_equal(parse_idx(idx_bytes(items)), items)
    wide = np.arange(6, dtype=np.int32).reshape(2, 3) - 3
    assert np.array_equal(parse_idx(idx_bytes(wide, 0x0C)), wide)  # big-endian ints are read right
    with pytest.raises(DataError, match="not an IDX file"):
        parse_idx(b"\x1f\x8b\x08\x00" + bytes(20), "x.idx")
    with pytest.raises(DataError, match=r"x\.idx: truncated: header says dims \(5, 28, 28\)"):
        parse_idx(idx_bytes(items)[:-7], "x.idx")
    directory = write_idx_dir(str(tmp_path / "d"), gz=False)
    path = os.path.join(directory, "train-images-idx3-ubyte")
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: truncated"):
        build_dataset("idx-scenes", "train", data_dir=directory)
    with open(os.path.join(directory, "t10k-labels-idx1-ubyte"), "wb") as f:
        f.write(idx_bytes(labels[:3]))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: 3 labels for the 30 images"):
        build_dataset("idx-scenes", "val", data_dir=directory)
    os.remove(path)
    with pytest.raises(DataError, match=r"missing IDX file \(looked for train-images-idx3-ubyte"):
        build_dataset("idx-scenes", "train", data_dir=directory)
    gz_dir = write_idx_dir(str(tmp_path / "g"))
    gz_path = os.path.join(gz_dir, "train-images-idx3-ubyte.gz")
    with open(gz_path, "r+b") as f:
        f.truncate(os.path.getsize(gz_path) // 2)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: truncated or corrupt gzip"):
        build_dataset("idx-scenes", "train", data_dir=gz_dir)


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason=f"{FASHION_DIR} is missing (Debian's dataset-fashion-mnist)")
def test_real_fashion_mnist_files_load():
    val = build_dataset("idx-scenes", "val", data_dir=FASHION_DIR, num_val=20)
    assert val.classes == ["background"] + FASHION_CLASSES
    assert len(val.items) == 10000
    masks = [val[i][1] for i in range(20)]
    assert all(m.shape == (64, 84) for m in masks)
    labels = np.unique(np.concatenate([m.ravel() for m in masks]))
    assert labels[0] == 0 and labels.max() <= 10 and len(labels) >= 5
    train = build_dataset("idx-scenes", "train", data_dir=FASHION_DIR, num_train=3)
    assert len(train.items) == 60000 and train[2][0].shape == (64, 84, 3)
