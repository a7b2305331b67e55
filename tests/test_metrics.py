"""ConfusionMatrix and the FCN paper's four numbers, against confusion matrices counted by hand."""
import math

import numpy as np
import pytest

import minigrad as mg
from segnets.metrics import ConfusionMatrix

# target / pred, with one ignored pixel (255) whose prediction must not count.
TARGET = np.array([[0, 0, 1], [1, 2, 255]])
PRED = np.array([[0, 1, 1], [1, 0, 2]])
# counted by hand: rows = target, columns = prediction
#   target 0: predicted 0 once, 1 once;  target 1: predicted 1 twice;  target 2: predicted 0 once
HAND_MATRIX = [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_matrix_counted_by_hand_with_ignore():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    assert cm.matrix.tolist() == HAND_MATRIX and cm.matrix.dtype == np.int64


def test_the_four_fcn_numbers_by_hand():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    scores = cm.compute()
    # t = (2, 2, 1), predicted totals = (2, 3, 0), n_ii = (1, 2, 0); unions = 2+2-1, 2+3-2, 1+0-0 = (3, 3, 1)
    assert scores["pixel_acc"] == pytest.approx(3 / 5)
    assert scores["per_class_acc"] == pytest.approx([1 / 2, 1, 0])
    assert scores["mean_acc"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert scores["per_class_iou"] == pytest.approx([1 / 3, 2 / 3, 0])
    assert scores["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert scores["fwiou"] == pytest.approx((2 * 1 / 3 + 2 * 2 / 3 + 1 * 0) / 5)


def test_absent_classes_are_nan_and_left_out_of_the_means():
    cm = ConfusionMatrix(5)
    pred = PRED.copy()
    pred[0, 0] = 4  # class 4: predicted once, never in the target -> IoU 0 (counted), accuracy NaN
    cm.update(pred, TARGET)
    scores = cm.compute()
    # class 3 occurs nowhere: NaN for both; class 0 now has n_00 = 0, t_0 = 2, predicted 0 once (the class-2 pixel)
    iou, acc = scores["per_class_iou"], scores["per_class_acc"]
    assert math.isnan(iou[3]) and math.isnan(acc[3]) and math.isnan(acc[4]) and iou[4] == 0
    assert iou[:3] == pytest.approx([0 / 3, 2 / 3, 0 / 1])
    assert scores["miou"] == pytest.approx((0 + 2 / 3 + 0 + 0) / 4)        # 4 classes occur
    assert scores["mean_acc"] == pytest.approx((0 + 1 + 0) / 3)            # 3 classes in the target
    assert scores["pixel_acc"] == pytest.approx(2 / 5)
    assert scores["fwiou"] == pytest.approx((2 * 0 + 2 * 2 / 3 + 1 * 0) / 5)


def test_perfect_prediction_and_empty_matrix():
    cm = ConfusionMatrix(4)
    assert all(math.isnan(cm.compute()[k]) for k in ("pixel_acc", "mean_acc", "miou", "fwiou"))
    target = np.array([0, 1, 1, 3, 255])
    cm.update(np.array([0, 1, 1, 3, 2]), target)
    scores = cm.compute()
    assert (scores["pixel_acc"], scores["mean_acc"], scores["miou"], scores["fwiou"]) == (1, 1, 1, 1)
    cm.reset()
    assert cm.matrix.sum() == 0


def reference_matrix(preds, targets, num_classes, ignore):
    """An independent count: np.add.at over flattened pixels."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for pred, target in zip(preds, targets):
        keep = target.ravel() != ignore
        np.add.at(matrix, (target.ravel()[keep], pred.ravel()[keep]), 1)
    return matrix


def test_updates_accumulate_like_one_big_update(rng):
    preds = [rng.integers(0, 6, size=shape) for shape in [(2, 7, 9), (3, 5, 4), (11,)]]
    targets = [np.where(rng.random(p.shape) < 0.2, 255, rng.integers(0, 6, size=p.shape)) for p in preds]
    many, one = ConfusionMatrix(6), ConfusionMatrix(6)
    for pred, target in zip(preds, targets):
        many.update(pred, target)
    one.update(np.concatenate([p.ravel() for p in preds]), np.concatenate([t.ravel() for t in targets]))
    assert np.array_equal(many.matrix, one.matrix)
    assert np.array_equal(many.matrix, reference_matrix(preds, targets, 6, 255))
    assert many.compute() == one.compute()


def test_other_ignore_index_and_int_types():
    cm = ConfusionMatrix(3, ignore_index=-1)
    cm.update(np.array([2, 0, 1], np.uint8), np.array([2, -1, 1], np.int32))
    assert cm.matrix.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 1]]
    cm.update(np.array([[7, 9]]), np.array([[-1, -1]]))  # a batch of ignored pixels only counts nothing
    assert cm.matrix.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 1]]


def test_update_errors_are_readable():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"pred has shape \(2, 3\) but target has shape \(3, 2\)"):
        cm.update(np.zeros((2, 3), np.int64), np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match=r"target has values in \[0, 7\].*outside the 3 classes"):
        cm.update(np.zeros(3, np.int64), np.array([0, 7, 255]))
    with pytest.raises(ValueError, match=r"pred has values in \[0, 3\]"):
        cm.update(np.array([0, 3, 9]), np.array([0, 1, 255]))  # 9 sits on an ignored pixel: fine; 3 is not
    with pytest.raises(TypeError, match="pred must be an integer array, got float"):
        cm.update(np.zeros(3), np.zeros(3, np.int64))
    assert cm.matrix.sum() == 0  # nothing was counted by the failed updates


def test_format_table_names_classes_and_shows_absent_as_dash():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    table = cm.format_table(["background", "cat", "dog", "unicorn"])
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()}
    assert rows["cat"] == ["66.67", "100.00", "2"] and rows["unicorn"] == ["-", "-", "0"]
    assert "mean IoU" in table and "33.33" in table
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        cm.format_table(["a", "b", "c"])


@pytest.mark.gpu
@pytest.mark.skipif(not mg.gpu_available(), reason="needs CuPy and an NVIDIA GPU (pip install -e .[gpu])")
def test_counts_on_the_gpu_match_the_cpu(rng):
    cp = mg.backend.cupy()
    pred = rng.integers(0, 5, size=(4, 33, 17))
    target = np.where(rng.random(pred.shape) < 0.1, 255, rng.integers(0, 5, size=pred.shape))
    gpu, cpu = ConfusionMatrix(5, device="gpu"), ConfusionMatrix(5)
    gpu.update(cp.asarray(pred), cp.asarray(target))
    gpu.update(pred, target)  # NumPy input is moved to the matrix's device
    cpu.update(pred, target)
    cpu.update(pred, target)
    assert isinstance(gpu._counts, cp.ndarray)
    assert np.array_equal(gpu.matrix, cpu.matrix) and gpu.compute() == cpu.compute()
