"""Multi-class (--num_classes C >= 2) scores against plain numpy references, the C-channel tiler, class colours
in the panels, and the validator of a C = 3 model in a training graph."""
import numpy as np
import pytest

from unet_perf.data.classes import IGNORE_LABEL
from unet_perf.inference import class_metrics, panels, tiling

from support import make_tiny_config


def random_maps(seed, shape=(3, 24, 20), num_classes=4, ignored=0.1):
    """(truth with IGNORE_LABEL holes, prediction) class maps; the prediction agrees on about half the pixels."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, num_classes, shape).astype(np.uint8)
    predicted = np.where(rng.random(shape) < 0.5, truth, rng.integers(0, num_classes, shape)).astype(np.uint8)
    truth[rng.random(shape) < ignored] = IGNORE_LABEL
    return truth, predicted


def reference_scores(truth, predicted, num_classes):
    """Per-class Dice and IoU from boolean masks of the labelled pixels, one class at a time."""
    labelled = truth != IGNORE_LABEL
    dice, iou = [], []
    for k in range(num_classes):
        t, p = (truth == k) & labelled, (predicted == k) & labelled
        both, either = np.sum(t & p), np.sum(t | p)
        dice.append(2.0 * both / (t.sum() + p.sum()) if either else np.nan)
        iou.append(both / float(either) if either else np.nan)
    return np.array(dice), np.array(iou)


@pytest.mark.parametrize("seed", [0, 1])
def test_confusion_matrix_and_per_class_scores_match_a_pixel_loop(seed):
    truth, predicted = random_maps(seed)
    confusion = class_metrics.confusion_matrix(truth, predicted, 4)
    expected = np.zeros((4, 4), np.int64)
    for t, p in zip(truth.ravel(), predicted.ravel()):
        if t != IGNORE_LABEL:
            expected[t, p] += 1  # row = truth
    np.testing.assert_array_equal(confusion, expected)
    dice, iou = class_metrics.per_class_scores(confusion)
    ref_dice, ref_iou = reference_scores(truth, predicted, 4)
    np.testing.assert_allclose(dice, ref_dice)
    np.testing.assert_allclose(iou, ref_iou)
    scores = class_metrics.scores_of(confusion)
    assert scores["mean_dice"] == pytest.approx(np.mean(ref_dice[1:]))  # foreground classes only
    assert scores["mean_iou"] == pytest.approx(np.mean(ref_iou[1:]))
    labelled = truth != IGNORE_LABEL
    assert scores["pixel_accuracy"] == pytest.approx(np.mean(truth[labelled] == predicted[labelled]))


def test_absent_class_has_no_score_and_stays_out_of_the_means():
    truth = np.array([[0, 1, 1, IGNORE_LABEL]], np.uint8)
    predicted = np.array([[0, 1, 0, 2]], np.uint8)  # class 2 only where the truth is unlabelled
    scores = class_metrics.scores_of(class_metrics.confusion_matrix(truth, predicted, 3))
    assert np.isnan(scores["dice_per_class"][2]) and np.isnan(scores["iou_per_class"][2])
    assert scores["dice_per_class"][1] == pytest.approx(2 * 1 / 3.0)
    assert scores["mean_dice"] == pytest.approx(2 * 1 / 3.0) and scores["mean_iou"] == pytest.approx(0.5)
    assert scores["pixel_accuracy"] == pytest.approx(2 / 3.0)
    assert scores["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]


def nvidia_dice_transcribed(probs, labels, num_classes, eps=1e-6):
    """UNet_Medical utils/model_fn.py line by line: flatten to [N, pixels, C], dice_coef over axis 1, mean over
    the batch, dice_loss = mean(1 - dice) over classes, reported score = 1 - dice_loss."""
    flat_p = probs.reshape(probs.shape[0], -1, num_classes)
    flat_t = np.eye(num_classes)[labels.reshape(labels.shape[0], -1)]
    intersection = np.sum(flat_p * flat_t, axis=1)
    union = np.sum(flat_p * flat_p + flat_t * flat_t, axis=1)
    dice = np.mean((2.0 * intersection + eps) / (union + eps), axis=0)
    return 1.0 - np.mean(1.0 - dice)


def test_soft_dice_is_the_one_nvidia_reports():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 12, 10, 3))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, 3, (2, 12, 10))
    labels[0][labels[0] == 2] = 1  # class 2 absent from image 0: its term is p-driven, not skipped
    assert class_metrics.soft_dice_nvidia(probs, labels, 3) == pytest.approx(nvidia_dice_transcribed(probs, labels, 3))
    one_hot = np.eye(3)[labels]
    assert class_metrics.soft_dice_nvidia(one_hot, labels, 3) == pytest.approx(1.0)


def test_evaluate_class_slices_sums_confusions_over_slices():
    truth, predicted = random_maps(5, shape=(2, 16, 16), num_classes=3)
    probs = [np.eye(3, dtype=np.float32)[p] for p in predicted]
    scores = class_metrics.evaluate_class_slices(probs, list(truth), 3)
    total = sum(class_metrics.confusion_matrix(t, p, 3) for t, p in zip(truth, predicted))
    assert scores["confusion_matrix"] == total.tolist()
    assert len(scores["slices"]) == 2 and scores["slices"][1]["confusion_matrix"] == \
        class_metrics.confusion_matrix(truth[1], predicted[1], 3).tolist()
    flat = class_metrics.flat_scores(scores)
    assert set(flat) == {"mean_dice", "mean_iou", "pixel_accuracy", "dice_class_0", "dice_class_1",
                         "dice_class_2", "iou_class_0", "iou_class_1", "iou_class_2"}
    assert class_metrics.primary_metric(1) == "v_rand" and class_metrics.primary_metric(3) == "mean_dice"


# --- the tiler with C channels --------------------------------------------------------------------------------

def test_tiler_blends_constant_class_probabilities_to_the_constant():
    constant = np.array([0.2, 0.5, 0.3], np.float32)
    cfg = make_tiny_config(crop_size=16, input_scale=0.5)  # rescaled, tiled with overlap, resized back

    def fn(batch):
        return np.broadcast_to(constant, batch.shape[:3] + (3,)).copy()

    out = tiling.predict_image(fn, np.zeros((45, 60), np.uint8), cfg, batch_size=3, overlap=6, tta=True)
    assert out.shape == (45, 60, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.broadcast_to(constant, out.shape), atol=1e-6)


def test_tta_averages_every_class_channel_over_the_eight_transforms():
    tile = 8
    ramps = np.stack([np.tile(np.arange(tile, dtype=np.float32), (tile, 1)) * (k + 1) for k in range(3)], -1)

    def fn(batch):  # a fixed, not rotation-invariant map per channel, whatever the input
        return np.broadcast_to(ramps, batch.shape[:3] + (3,)).copy()

    out = tiling.predict_tiled(fn, np.zeros((tile, tile)), tile, 0, batch_size=4, tta=True)
    expected = np.mean([tiling.inverse_dihedral(ramps, k) for k in range(tiling.DIHEDRAL)], axis=0)
    assert out.shape == (tile, tile, 3)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert not np.allclose(expected[..., 0], ramps[..., 0])  # TTA changed something


# --- class colours --------------------------------------------------------------------------------------------

def test_palette_uses_the_class_colors_of_the_model_else_distinct_defaults():
    np.testing.assert_array_equal(panels.class_palette(2, "1,2,3;4,5,6"), [[1, 2, 3], [4, 5, 6]])
    palette = panels.class_palette(30)
    assert palette.shape == (30, 3) and len({tuple(c) for c in palette.tolist()}) == 30


def test_class_overlay_tints_each_class_and_appends_a_legend():
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    image = np.full((20, 30), 100, np.uint8)
    classes = np.zeros((20, 30), np.uint8)
    classes[:, 10:20], classes[:, 20:] = 1, IGNORE_LABEL
    overlay = panels.class_overlay(image, classes, palette)
    assert overlay.shape[0] > 20 + 3 * panels.LEGEND_ROW - 1 and overlay.shape[2] == 3
    assert overlay[5, 15, 2] > overlay[5, 15, 1]  # class 1 tinted red (BGR)
    np.testing.assert_array_equal(overlay[5, 25], [100, 100, 100])  # unlabelled: untinted
    assert overlay[5, 5, 0] < 100  # class 0 tinted black
    coloured = panels.class_colours(classes, palette)
    np.testing.assert_array_equal(coloured[0, 25], [panels.UNLABELLED_GRAY] * 3)
    panel_shape, _ = panels.prediction_panels(image[None], classes[None], np.eye(3)[classes.clip(0, 2)][None])[0]
    assert panel_shape == (20, 90, 3)  # image | truth | prediction in colour


def test_preview_grid_tints_class_maps_with_the_palette():
    palette = np.array([[0, 0, 0], [0, 0, 255]], np.uint8)
    masks = np.zeros((1, 6, 6), np.float32)
    masks[0, :, 3:] = 1
    grid = panels.augmentation_grid(np.full((1, 6, 6), 0.5), masks, palette)
    right = grid[:, 6 + panels.GAP:]
    assert right[2, 5, 0] > right[2, 5, 2]  # class 1 blue (BGR)


# --- validation of a C = 3 model in the training graph ---------------------------------------------------------

def test_validator_of_a_three_class_model_reports_class_scores():
    from unet_perf.compat import v1
    from unet_perf.data.sources import Pairs
    from unet_perf.model.network import unet
    from unet_perf.training.validation import Validator

    cfg = make_tiny_config(dropout=0.0, num_classes=3)
    rng = np.random.default_rng(4)
    masks = rng.integers(0, 3, (2, 40, 48)).astype(np.uint8)
    masks[:, :4] = IGNORE_LABEL
    pairs = Pairs(rng.integers(0, 256, (2, 40, 48)).astype(np.uint8), masks, ["a", "b"])
    unet(v1.zeros([2, 32, 32, 1]), cfg, training=True)
    validator = Validator(cfg, pairs, batch_size=2)
    with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        scores = validator.run(sess)
        probs = validator.predict(sess)
    assert probs.shape == (2, 40, 48, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)  # softmax survives blending and resizing
    reference = class_metrics.flat_scores(class_metrics.evaluate_class_slices(list(probs), list(masks), 3))
    assert set(scores) == set(reference)
    for key, value in reference.items():
        assert scores[key] == pytest.approx(value, nan_ok=True)
