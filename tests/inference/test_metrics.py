"""ISBI metrics: hand-computed cases and agreement with scikit-image's reference implementations."""
import math

import numpy as np
import pytest

from unet_perf.inference import metrics

skimage_metrics = pytest.importorskip("skimage.metrics")


def two_cells(height=8, width=9):
    """GT mask: two cells (columns 0-3 and 5-8) separated by a one-pixel membrane at column 4."""
    mask = np.ones((height, width), np.uint8)
    mask[:, 4] = 0
    return mask


# --- pixel metrics -------------------------------------------------------------------------------------------

def test_pixel_metrics_count_the_membrane_class():
    gt = np.array([[1, 0, 0, 1]], np.uint8)           # membrane at columns 1, 2
    prob = np.array([[0.9, 0.2, 0.7, 0.1]], np.float32)  # predicted membrane at columns 1, 3
    assert metrics.pixel_error(prob, gt) == pytest.approx(0.5)
    assert metrics.dice(prob, gt) == pytest.approx(2 * 1 / (2 + 2))
    assert metrics.iou(prob, gt) == pytest.approx(1 / 3)


def test_pixel_metrics_perfect_and_empty():
    gt = two_cells()
    assert metrics.pixel_error(gt.astype(np.float32), gt) == 0.0
    assert metrics.dice(gt.astype(np.float32), gt) == 1.0
    all_interior = np.ones((4, 4), np.uint8)
    assert metrics.dice(np.ones((4, 4)), all_interior) == 1.0  # no membrane anywhere: nothing to miss
    assert metrics.iou(np.zeros((4, 4)), all_interior) == 0.0


# --- V_rand / V_info on label images, hand-computed -----------------------------------------------------------

def test_perfect_split_scores_one():
    gt = metrics.gt_segments(two_cells())
    proposal = gt.copy()
    proposal[:, 4] = 7  # the proposal may cover GT background with anything: it is excluded
    assert metrics.v_rand(gt, proposal) == pytest.approx(1.0)
    assert metrics.v_info(gt, proposal) == pytest.approx(1.0)


def test_one_merge():
    gt = metrics.gt_segments(two_cells())          # two cells of m = 32 pixels
    merged = np.ones_like(gt)
    # Σp² = 2m², Σs² = 2m², Σt² = (2m)² -> 2·2m² / 6m² = 2/3; I = 0 -> V_info = 0
    assert metrics.v_rand(gt, merged) == pytest.approx(2.0 / 3.0)
    assert metrics.v_info(gt, merged) == pytest.approx(0.0, abs=1e-12)


def test_one_split():
    gt = np.ones((4, 6), np.int32)                 # one cell of 24 pixels
    split = np.ones_like(gt)
    split[:, 3:] = 2                               # two halves of 12
    # Σp² = 2·12², Σs² = 24², Σt² = 2·12² -> 2·288 / (576 + 288) = 2/3; I = 0 -> 0
    assert metrics.v_rand(gt, split) == pytest.approx(2.0 / 3.0)
    assert metrics.v_info(gt, split) == pytest.approx(0.0, abs=1e-12)


def test_boundary_pixels_are_singletons():
    gt = metrics.gt_segments(two_cells())          # two cells, m = 32, n = 64
    all_boundary = np.zeros_like(gt)
    m, n = 32, 64
    # every pixel its own segment: Σp² = n, Σt² = n, Σs² = 2m²
    assert metrics.v_rand(gt, all_boundary) == pytest.approx(2.0 * n / (2 * m * m + n))
    # H(T) = H(S,T) = log n, so I = H(S) = log 2
    assert metrics.v_info(gt, all_boundary) == pytest.approx(2 * math.log(2) / (math.log(2) + math.log(n)))


def test_ground_truth_without_cells_is_nan():
    gt = np.zeros((5, 5), np.int32)
    assert math.isnan(metrics.v_rand(gt, np.ones_like(gt)))
    assert math.isnan(metrics.v_info(gt, np.ones_like(gt)))


# --- the ISBI procedure: thresholds, thinning, components -----------------------------------------------------

def test_isbi_perfect_prediction():
    gt = two_cells()
    scores = metrics.isbi_scores(gt.astype(np.float32), gt)
    assert scores["v_rand"] == pytest.approx(1.0)
    assert scores["v_info"] == pytest.approx(1.0)
    assert scores["pixel_error"] == 0.0
    assert len(scores["v_rand_per_threshold"]) == 11
    # threshold 1.0: nothing is above it, every GT pixel becomes a singleton
    assert scores["v_rand_per_threshold"][-1] == pytest.approx(2.0 * 64 / (2 * 32 * 32 + 64))


def test_isbi_merge_when_membrane_is_missed():
    gt = two_cells()
    prob = np.ones(gt.shape, np.float32)  # no membrane predicted: one big cell
    scores = metrics.isbi_scores(prob, gt)
    assert scores["v_rand"] == pytest.approx(2.0 / 3.0)
    assert scores["v_info_per_threshold"][5] == pytest.approx(0.0, abs=1e-9)
    # the best V_info comes from threshold 1.0, where every pixel is a singleton: I = H(S) = log 2
    assert scores["v_info"] == pytest.approx(2 * math.log(2) / (math.log(2) + math.log(64)))


def test_isbi_split_by_false_membrane_line():
    gt = np.ones((6, 10), np.uint8)       # one cell
    prob = np.ones(gt.shape, np.float32)
    prob[:, 4] = 0.0                      # a false 1-px membrane line cuts it in two (at every threshold)
    scores = metrics.isbi_scores(prob, gt)
    left, right, line = 6 * 4, 6 * 5, 6
    expected = 2.0 * (left ** 2 + right ** 2 + line) / (60 ** 2 + left ** 2 + right ** 2 + line)
    assert scores["v_rand"] == pytest.approx(expected)
    assert scores["v_rand"] < 0.75


def test_thinning_leaves_one_pixel_dams():
    prob = np.ones((20, 20), np.float32)
    prob[:, 8:13] = 0.0                   # a 5-px wide membrane band between two cells
    labels = metrics.thinned_proposal(prob, 0.5)
    assert set(np.unique(labels[:, :8]).tolist()) == {labels[0, 0]}
    assert set(np.unique(labels[:, 13:]).tolist()) == {labels[0, 19]}
    assert labels[0, 0] != labels[0, 19] and labels[0, 0] > 0
    boundary_columns = np.where((labels == 0).all(axis=0))[0]
    assert len(boundary_columns) == 1 and 8 <= boundary_columns[0] <= 12
    assert (labels == 0).sum() == 20      # exactly the dam, no frame around the image


def test_thick_membranes_cost_nothing_after_thinning():
    """A proposal with thicker membranes than the GT scores 1 (the point of thinning)."""
    gt = np.ones((16, 21), np.uint8)
    gt[:, 10] = 0
    prob = np.ones(gt.shape, np.float32)
    prob[:, 8:13] = 0.0                   # a saturated 5-px band: the dam must fall on its medial line
    scores = metrics.isbi_scores(prob, gt)
    assert scores["v_rand"] == pytest.approx(1.0)
    assert scores["v_info"] == pytest.approx(1.0)
    assert scores["pixel_error"] > 0


def test_evaluate_slices_takes_the_best_threshold_of_the_mean():
    gt = two_cells()
    perfect = gt.astype(np.float32)
    merged = np.ones(gt.shape, np.float32)
    result = metrics.evaluate_slices([perfect, merged], [gt, gt])
    assert result["v_rand"] == pytest.approx((1.0 + 2.0 / 3.0) / 2)
    assert result["pixel_error"] == pytest.approx(0.5 * 8 / 72)
    assert len(result["slices"]) == 2
    assert 0.0 <= result["v_rand_threshold"] < 1.0
    # per-slice values at the set's threshold average to the set's score; each slice's own best is kept
    assert np.mean([s["v_rand"] for s in result["slices"]]) == pytest.approx(result["v_rand"])
    assert result["slices"][0]["v_rand_best"] == pytest.approx(1.0)


def test_evaluate_slices_uses_one_threshold_for_all_slices():
    gt = two_cells()
    low = np.where(gt > 0, 0.35, 0.0).astype(np.float32)   # cells found only below threshold 0.35
    high = np.where(gt > 0, 1.0, 0.6).astype(np.float32)   # membrane found only above threshold 0.6
    result = metrics.evaluate_slices([low, high], [gt, gt])
    assert result["slices"][0]["v_rand_best"] == pytest.approx(1.0)
    assert result["slices"][1]["v_rand_best"] == pytest.approx(1.0)
    assert result["v_rand"] < 1.0  # no single threshold is perfect for both


# --- agreement with scikit-image --------------------------------------------------------------------------

def random_segmentation(rng, shape, cells):
    """Random Voronoi-like labels 1..cells with ~15% background (0) pixels sprinkled in."""
    points = rng.integers(0, min(shape), size=(cells, 2))
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    distance = (yy[..., None] - points[:, 0]) ** 2 + (xx[..., None] - points[:, 1]) ** 2
    labels = np.argmin(distance, axis=-1).astype(np.int32) + 1
    labels[rng.random(shape) < 0.15] = 0
    return labels


def sizes(labels):
    return np.unique(labels, return_counts=True)[1].astype(np.float64)


def with_singletons(proposal, gt):
    """The proposal as scikit-image should see it: every boundary pixel (0) inside GT foreground a new label."""
    out = proposal.astype(np.int64).copy()
    holes = (proposal == 0) & (gt > 0)
    out[holes] = out.max() + 1 + np.arange(int(holes.sum()))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_v_rand_matches_skimage_adapted_rand_error(seed):
    rng = np.random.default_rng(seed)
    gt = random_segmentation(rng, (40, 50), 12)
    proposal = random_segmentation(rng, (40, 50), 9)
    ours = metrics.v_rand(gt, proposal)
    # skimage prunes GT label 0 and counts ordered pairs n(n-1): with X = Σc_ij², A = Σa_i² (GT sizes), B = Σb_j²
    # (proposal sizes) in pixel counts, its "precision" is (X-n)/(A-n), its "recall" (X-n)/(B-n) (named the other
    # way round from the challenge) and are = 1 - F. Ours counts n² pairs (each pixel with itself too):
    # V_rand = 2X / (A + B).
    reference = with_singletons(proposal, gt)
    are, precision, recall = skimage_metrics.adapted_rand_error(gt, reference, ignore_labels=(0,))
    foreground = gt > 0
    n = float(foreground.sum())
    a2 = np.sum(sizes(gt[foreground]) ** 2)
    b2 = np.sum(sizes(reference[foreground]) ** 2)
    x = precision * (a2 - n) + n
    assert recall == pytest.approx((x - n) / (b2 - n))
    assert are == pytest.approx(1 - 2 * precision * recall / (precision + recall))
    assert ours == pytest.approx(2 * x / (a2 + b2), rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_v_info_matches_skimage_variation_of_information(seed):
    rng = np.random.default_rng(100 + seed)
    gt = random_segmentation(rng, (40, 50), 10)
    proposal = random_segmentation(rng, (40, 50), 14)
    ours = metrics.v_info(gt, proposal)
    reference = with_singletons(proposal, gt)
    # skimage returns [H(test|true) (false splits), H(true|test) (false merges)] over GT foreground, in bits.
    h_test_given_true, h_true_given_test = skimage_metrics.variation_of_information(gt, reference,
                                                                                    ignore_labels=(0,))
    foreground = gt > 0
    n = foreground.sum()
    p_gt = sizes(gt[foreground]) / n
    p_test = sizes(reference[foreground]) / n
    h_gt = -np.sum(p_gt * np.log2(p_gt))
    h_test = -np.sum(p_test * np.log2(p_test))
    mutual = h_gt - h_true_given_test
    assert mutual == pytest.approx(h_test - h_test_given_true)  # both ways give I(S;T)
    assert ours == pytest.approx(2 * mutual / (h_gt + h_test), rel=1e-9)


def test_isbi_slice_scores_sensibly_when_the_data_is_present():
    import os

    import cv2

    from support import SHARED_DATA

    if not os.path.isdir(SHARED_DATA):
        pytest.skip("../shared/data/isbi2012 is absent")
    from unet_perf.data.sources import load_pairs

    gt = load_pairs(SHARED_DATA).masks[0]
    assert metrics.isbi_scores(gt.astype(np.float32), gt)["v_rand"] == pytest.approx(1.0)
    blurred = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), 2)
    scores = metrics.isbi_scores(blurred, gt)
    assert scores["v_rand"] > 0.99 and scores["v_info"] > 0.99  # thinning forgives thicker, blurred membranes
    merged = np.ones_like(blurred)
    assert metrics.isbi_scores(merged, gt)["v_rand"] < 0.2       # one giant segment


def test_evaluate_slices_reports_every_metric_key():
    gt = two_cells()
    result = metrics.evaluate_slices([gt.astype(np.float32), np.ones(gt.shape, np.float32)], [gt, gt])
    for key in metrics.METRIC_KEYS + metrics.THRESHOLD_KEYS:
        assert isinstance(result[key], float) and math.isfinite(result[key]), key
    assert metrics.METRIC_KEYS == ("v_rand", "v_info") + metrics.PIXEL_KEYS
    assert result["pixel_error"] == pytest.approx(np.mean([s["pixel_error"] for s in result["slices"]]))
