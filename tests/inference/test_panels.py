"""unet_perf.inference.panels: the probe's TensorBoard strips, evaluate's error overlays and preview's grid."""
import cv2
import numpy as np

from unet_perf.inference import panels


def test_stack_tiles_puts_gaps_of_the_fill_value_between_tiles():
    a, b = np.zeros((2, 3), np.uint8), np.ones((2, 1), np.uint8)
    stacked = panels.stack_tiles([a, b, a], gap=2, fill=9)
    assert stacked.shape == (2, 3 + 2 + 1 + 2 + 3) and stacked.dtype == np.uint8
    np.testing.assert_array_equal(stacked[:, 3:5], 9)
    np.testing.assert_array_equal(stacked[:, 5], 1)
    assert panels.stack_tiles([a.T, a.T], axis=0).shape == (6, 2)  # no gap: plain concatenation


def test_prediction_panels_are_pngs_of_image_truth_and_probability():
    raws = np.full((2, 4, 5), 7, np.uint8)
    masks = np.zeros((2, 4, 5), np.uint8)
    masks[:, :2] = 1
    prob = np.zeros((2, 4, 5, 1), np.float32)
    prob[1, :, :, 0] = 0.5
    found = panels.prediction_panels(raws, masks, prob)
    assert len(found) == 2
    shape, png = found[1]
    strip = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert shape == strip.shape == (4, 15)
    np.testing.assert_array_equal(strip[:, :5], 7)
    np.testing.assert_array_equal(strip[:, 5:10], np.where(masks[1], 255, 0))
    np.testing.assert_array_equal(strip[:, 10:], 128)  # 0.5 -> 127.5, rounded half up


def test_error_overlay_colours_the_two_error_kinds():
    image = np.full((2, 3), 100, np.uint8)
    gt = np.array([[1, 1, 0], [0, 1, 1]], np.uint8)
    prob = np.array([[0.9, 0.1, 0.2], [0.8, 0.9, 0.9]], np.float32)
    strip = panels.error_overlay(image, gt, prob)
    assert strip.shape == (2, 4 * 3 + 3 * panels.GAP, 3)
    assert tuple(strip[0, 3]) == (panels.GAP_GRAY,) * 3
    errors = strip[:, -3:]
    assert tuple(errors[0, 1]) == panels.FALSE_MEMBRANE  # interior predicted as membrane
    assert tuple(errors[1, 0]) == panels.MISSED_MEMBRANE  # membrane predicted as interior
    assert tuple(errors[0, 0]) == (100, 100, 100) and tuple(errors[0, 2]) == (100, 100, 100)
    predicted = strip[:, 2 * (3 + panels.GAP):2 * (3 + panels.GAP) + 3, 0]
    np.testing.assert_array_equal(predicted, np.where(prob > 0.5, 255, 0))


def test_augmentation_grid_tints_the_mask_green():
    images = np.random.RandomState(0).rand(2, 8, 8).astype(np.float32)
    masks = np.zeros((2, 8, 8), np.float32)
    masks[:, :4] = 1.0
    grid = panels.augmentation_grid(images, masks)
    gap = panels.GAP
    assert grid.shape == (2 * 8 + gap, 2 * 8 + gap, 3)
    np.testing.assert_array_equal(grid[8:8 + gap], panels.GAP_WHITE)  # between the rows
    left, right = grid[8 + gap:, :8], grid[8 + gap:, 8 + gap:]  # the second row
    np.testing.assert_array_equal(left[:, :, 0], np.round(images[1] * 255.0))
    np.testing.assert_array_equal(left[4:], right[4:])  # no mask: the tinted copy is the plain image
    assert (right[:4, :, 1].astype(int) - right[:4, :, 2]).min() > 0  # mask rows tinted green
