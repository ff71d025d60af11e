"""data.weights: the U-Net border weight map w_c + w0*exp(-(d1+d2)^2 / 2 sigma^2)."""
import math

import cv2
import numpy as np

from unet_perf.data.synthetic import membranes
from unet_perf.data.weights import border_weight_map, border_weight_maps, class_weights


def _two_cells(gap=1, side=40):
    mask = np.ones((side, side), np.uint8)
    mask[:, side // 2: side // 2 + gap] = 0  # a vertical membrane splits two cells
    return mask


def test_class_weights_balance_totals_and_average_one():
    mask = _two_cells(gap=4)
    wc = class_weights(mask)
    membrane, interior = wc[mask == 0], wc[mask == 1]
    assert math.isclose(membrane.sum(), interior.sum(), rel_tol=1e-5)
    assert math.isclose((membrane[0] + interior[0]) / 2.0, 1.0, rel_tol=1e-6)
    assert membrane[0] > interior[0]


def test_thin_membrane_between_two_cells_gets_w0():
    mask = _two_cells(gap=1)
    weights = border_weight_map(mask, w0=10.0, sigma=5.0)
    wc = class_weights(mask)
    # d1 = d2 = 1 on the membrane: w = w_c + 10 * exp(-4 / 50)
    expected = wc[0, 20] + 10.0 * math.exp(-4.0 / 50.0)
    np.testing.assert_allclose(weights[:, 20], expected, rtol=1e-4)
    assert weights[0, 20] > wc[0, 20] + 9.0


def test_border_term_decays_with_gap_and_is_absent_inside_cells():
    mask = _two_cells(gap=11)
    weights = border_weight_map(mask, w0=10.0, sigma=5.0)
    wc = class_weights(mask)
    centre = 20 + 5  # 6 px to each cell: d1 + d2 = 12
    assert math.isclose(weights[5, centre] - wc[5, centre], 10.0 * math.exp(-144.0 / 50.0), rel_tol=1e-3)
    np.testing.assert_allclose(weights[mask == 1], wc[mask == 1])


def test_far_from_any_second_cell_tends_to_class_weight():
    mask = np.zeros((120, 120), np.uint8)
    mask[:, :10] = 1
    mask[:, 110:] = 1  # two cells 100 px apart
    weights = border_weight_map(mask, w0=10.0, sigma=5.0)
    wc = class_weights(mask)
    assert abs(weights[60, 60] - wc[60, 60]) < 1e-6
    assert weights[60, 10] - wc[60, 10] < 1e-3  # next to one cell, the other is 100 px away


def test_single_cell_has_no_border_term():
    mask = np.zeros((50, 50), np.uint8)
    mask[10:40, 10:40] = 1
    weights = border_weight_map(mask, w0=10.0, sigma=5.0)
    np.testing.assert_allclose(weights, class_weights(mask))


def test_diagonal_touch_is_two_cells_with_4_connectivity():
    mask = np.zeros((20, 20), np.uint8)
    mask[:10, :10] = 1
    mask[10:, 10:] = 1
    weights = border_weight_map(mask, w0=10.0, sigma=5.0)
    assert weights[9, 10] - class_weights(mask)[9, 10] > 9.0


def test_one_class_slices_and_balance_off():
    assert np.all(border_weight_map(np.ones((8, 8), np.uint8)) == 1.0)
    assert np.all(border_weight_map(np.zeros((8, 8), np.uint8)) == 1.0)
    weights = border_weight_map(_two_cells(), w0=10.0, sigma=5.0, balance=False)
    assert weights.dtype == np.float32
    assert weights[0, 0] == 1.0 and weights[0, 20] > 10.0


def test_window_matches_full_image_computation():
    """The per-cell bounding-box window gives the same map as brute force over the whole image."""
    mask = membranes(1, 96, seed=1).masks[0]
    count, labels = cv2.connectedComponents(mask, connectivity=4)
    distances = np.stack([cv2.distanceTransform((labels != c).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
                          for c in range(1, count)])
    distances.sort(axis=0)
    border = 10.0 * np.exp(-np.square(distances[0] + distances[1]) / 50.0)
    expected = class_weights(mask) + np.where(mask == 0, border, 0.0)
    np.testing.assert_allclose(border_weight_map(mask, 10.0, 5.0), expected, atol=10.0 * 1e-3)


def test_stacked_maps():
    masks = membranes(2, 64, seed=0).masks
    stacked = border_weight_maps(masks, 10.0, 5.0)
    assert stacked.shape == (2, 64, 64) and stacked.dtype == np.float32
    np.testing.assert_array_equal(stacked[1], border_weight_map(masks[1], 10.0, 5.0))


def test_weight_maps_are_the_same_bits_every_time():
    # OpenCV's precise distance transform varies in the last bit from call to call; the maps must not (a
    # --deterministic run with --weight_map has to repeat itself).
    mask = membranes(1, 96, seed=3).masks[0]
    maps, ballast = [], []
    for call in range(10):
        ballast.append(np.empty(call * 24 + 8, np.uint8))  # moves where the next buffers land, as a busy program does
        maps.append(border_weight_map(mask, w0=10.0, sigma=5.0))
    for other in maps[1:]:
        np.testing.assert_array_equal(other, maps[0])


def test_distances_off_by_an_ulp_become_exact():
    from unet_perf.data.weights import exact_distances

    squared = np.arange(0, 5000, dtype=np.float64)
    exact = np.sqrt(squared).astype(np.float32)
    for direction in (np.inf, -np.inf):  # what the precise transform returns on some calls
        noisy = np.nextafter(exact, np.float32(direction)).astype(np.float32)
        noisy[0] = 0.0
        np.testing.assert_array_equal(exact_distances(noisy), exact)
