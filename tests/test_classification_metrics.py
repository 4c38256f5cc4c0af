"""Classification metrics on a worked example (arithmetic in the comments), edge cases, and the
confusion-matrix PNG."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from regionmir.anatomy import ANATOMY_NAMES
from regionmir.classification_metrics import (
    accuracy,
    classification_report,
    confusion_matrix,
    per_class_accuracy,
    plot_confusion_matrix,
)

# Six samples, four classes; class 3 never occurs in the targets.
#   true: 0 0 0 1 1 2
#   pred: 0 0 1 1 0 2
Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
Y_PRED = np.array([0, 0, 1, 1, 0, 2])
NAMES = ["a", "b", "c", "d"]


def test_accuracy():
    # Correct: samples 0, 1, 3, 5 -> 4 / 6.
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)


def test_confusion_matrix_rows_are_true_columns_are_predicted():
    expected = np.array(
        [
            [2, 1, 0, 0],  # true 0: twice right, once called 1
            [1, 1, 0, 0],  # true 1: once called 0, once right
            [0, 0, 1, 0],
            [0, 0, 0, 0],  # no true 3
        ]
    )
    cm = confusion_matrix(Y_TRUE, Y_PRED, 4)
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64


def test_per_class_accuracy_is_nan_for_absent_classes():
    # 2/3, 1/2, 1/1, and class 3 has no targets -> NaN (undefined, not 0).
    result = per_class_accuracy(Y_TRUE, Y_PRED, 4)
    np.testing.assert_allclose(result[:3], [2 / 3, 1 / 2, 1.0])
    assert math.isnan(result[3])


def test_classification_report_worked_example():
    report = classification_report(Y_TRUE, Y_PRED, NAMES)
    # precision = diagonal / column sum: a 2/3, b 1/2, c 1/1; recall as above;
    # F1 = 2PR/(P+R): a 2/3, b 1/2, c 1 -> macro F1 = (2/3 + 1/2 + 1) / 3 = 13/18,
    # balanced accuracy = mean recall over present classes = 13/18 as well.
    assert report["num_samples"] == 6
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["balanced_accuracy"] == pytest.approx(13 / 18)
    assert report["macro_f1"] == pytest.approx(13 / 18)
    assert list(report["per_class"]) == ["a", "b", "c"]  # "d" has no targets: omitted
    assert report["per_class"]["a"] == {
        "support": 3,
        "accuracy": pytest.approx(2 / 3),
        "precision": pytest.approx(2 / 3),
        "f1": pytest.approx(2 / 3),
    }
    # Off-diagonal cells (0,1) and (1,0) hold one each; ties keep row-major order.
    assert report["top_confusions"] == [
        {"true": "a", "predicted": "b", "count": 1},
        {"true": "b", "predicted": "a", "count": 1},
    ]


def test_report_precision_is_none_for_a_never_predicted_class_and_errors_into_absent_classes_count():
    # true [0, 0, 1], pred [0, 3, 0]: class 1 is never predicted (precision None, F1 0);
    # class 3 has no targets but receives a wrong prediction, which lowers class 0's accuracy.
    report = classification_report(np.array([0, 0, 1]), np.array([0, 3, 0]), NAMES)
    assert report["per_class"]["b"] == {"support": 1, "accuracy": 0.0, "precision": None, "f1": 0.0}
    assert report["per_class"]["a"]["accuracy"] == pytest.approx(0.5)
    assert report["per_class"]["a"]["precision"] == pytest.approx(0.5)  # 1 right of 2 called "a"
    assert "d" not in report["per_class"]
    assert {"true": "a", "predicted": "d", "count": 1} in report["top_confusions"]


@pytest.mark.parametrize(
    "y_true, y_pred, message",
    [
        ([0, 1], [0], "equal length"),
        ([], [], "no samples"),
        ([0.0, 1.0], [0.0, 1.0], "integer"),
        ([0, 4], [0, 1], "outside"),
        ([0, 1], [-1, 1], "outside"),
    ],
)
def test_bad_inputs_raise(y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(np.array(y_true), np.array(y_pred), 4)


def test_plot_confusion_matrix_writes_a_png_of_the_expected_size(tmp_path):
    rng = np.random.default_rng(0)
    num_classes = len(ANATOMY_NAMES)
    y_true = rng.integers(0, num_classes, size=2000)
    y_true = y_true[y_true != 5]  # one anatomy without samples: its row must be drawn grey
    # 80 % right, the rest a random class, so the diagonal is dark and the off-diagonal pale.
    y_pred = np.where(rng.random(y_true.size) < 0.8, y_true, rng.integers(0, num_classes, size=y_true.size))
    cm = confusion_matrix(y_true, y_pred, num_classes)

    path = plot_confusion_matrix(cm, ANATOMY_NAMES, tmp_path / "plots" / "confusion.png")
    assert path.exists()
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        width, height = image.size
        pixels = np.asarray(image)
    grid = num_classes * 24  # 36 classes -> 24 px cells
    assert grid + 200 < width < grid + 800 and grid + 100 < height < grid + 600  # grid plus labels
    assert np.all(pixels == (8, 48, 107), axis=2).any()  # the darkest Blues: the colour bar's 100 %
    assert np.all(pixels == (232, 232, 232), axis=2).any()  # the empty row


def test_plot_confusion_matrix_small_and_rejects_mismatched_names(tmp_path):
    cm = np.array([[5, 0], [1, 4]])
    path = plot_confusion_matrix(cm, ["left lung", "right lung"], tmp_path / "small.png", cell_size=60)
    with Image.open(path) as image:
        assert image.size[0] > 2 * 60 and image.size[1] > 2 * 60
    with pytest.raises(ValueError, match="names"):
        plot_confusion_matrix(cm, ["only one"], tmp_path / "bad.png")
