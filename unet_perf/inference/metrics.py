"""Segmentation metrics of the ISBI 2012 challenge (numpy + OpenCV only).

Label convention: ground-truth masks are uint8 {0,1} with 1 = cell interior, 0 = membrane; predictions are
P(interior) in [0,1].

Pixel metrics (`pixel_error`, `dice`, `iou`) treat the MEMBRANE (mask 0) as the positive class, with the
prediction binarised at 0.5 (membrane where P(interior) <= 0.5).

Segmentation metrics follow the challenge's "foreground-restricted scoring after border thinning" (Fiji
trainableSegmentation RandError / VariationOfInformation, as the ISBI 2012 challenge scored submissions):

1. Ground-truth segments S_i = 4-connected components of the interior (mask 1); the membrane (mask 0) is the GT
   background and is excluded: n = number of GT interior pixels.
2. Proposal at threshold th: seeds = 4-connected components of P(interior) > th. Thinning: the seeds grow
   breadth-first, all at the same speed (cv2.watershed on a flat image), through the membrane pixels until
   they meet: every pixel joins its nearest segment (4-neighbour path length) except 1-pixel dams where two
   segments meet, i.e. the boundary band is thinned to its medial line. The dams (and everything when there
   is no seed) are the proposal boundary, label 0.
3. p_ij = |S_i ∩ T_j| / n over GT interior pixels; each proposal boundary pixel is its own singleton segment.
4. V_rand = 2 Σ p_ij² / (Σ s_i² + Σ t_j²)  (F-score of split precision Σp²/Σt² and merge recall Σp²/Σs²);
   V_info = 2 I(S;T) / (H(S) + H(T))      (F-score of I/H(T) and I/H(S)).
5. Thresholds 0.0..1.0 step 0.1; each slice scored per threshold; the per-threshold scores are averaged over
   slices and the best threshold (max of the mean) is reported, as the challenge's script does.

A slice whose ground truth has no interior pixel cannot be scored: V_rand/V_info are NaN there and the slice
means ignore NaNs.
"""
import cv2
import numpy as np

DEFAULT_THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(11))
PIXEL_THRESHOLD = 0.5  # P(interior) above it = interior, for the pixel metrics
# The scores of a set of slices, in report order (evaluate's table, the validation lines and TensorBoard), and the
# thresholds at which the set's V_rand and V_info are best.
PIXEL_KEYS = ("dice", "iou", "pixel_error")
METRIC_KEYS = ("v_rand", "v_info") + PIXEL_KEYS
THRESHOLD_KEYS = ("v_rand_threshold", "v_info_threshold")


# --- pixel metrics of the membrane class -------------------------------------------------------------------

def _membrane_sets(prob_interior, gt_mask, threshold):
    predicted = np.asarray(prob_interior) <= threshold
    truth = np.asarray(gt_mask) == 0
    if predicted.shape != truth.shape:
        raise ValueError("prediction {} and ground truth {} differ in shape".format(predicted.shape, truth.shape))
    return predicted, truth


def pixel_error(prob_interior, gt_mask, threshold=PIXEL_THRESHOLD):
    """Fraction of pixels whose binarised class differs from the ground truth."""
    predicted, truth = _membrane_sets(prob_interior, gt_mask, threshold)
    return float(np.mean(predicted != truth))


def dice(prob_interior, gt_mask, threshold=PIXEL_THRESHOLD):
    """Dice/F1 of the membrane class: 2|P∩G| / (|P| + |G|); 1.0 when both are empty."""
    predicted, truth = _membrane_sets(prob_interior, gt_mask, threshold)
    total = int(predicted.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * float(np.logical_and(predicted, truth).sum()) / total


def iou(prob_interior, gt_mask, threshold=PIXEL_THRESHOLD):
    """Intersection over union of the membrane class; 1.0 when both are empty."""
    predicted, truth = _membrane_sets(prob_interior, gt_mask, threshold)
    union = int(np.logical_or(predicted, truth).sum())
    if union == 0:
        return 1.0
    return float(np.logical_and(predicted, truth).sum()) / union


# --- segmentations -----------------------------------------------------------------------------------------

def gt_segments(gt_mask):
    """int32 labels of the 4-connected cell interiors (mask 1); 0 = membrane (excluded from scoring)."""
    binary = (np.asarray(gt_mask) > 0).astype(np.uint8)
    _, labels = cv2.connectedComponents(binary, connectivity=4, ltype=cv2.CV_32S)
    return labels


def thinned_proposal(prob_interior, threshold):
    """int32 proposal labels at `threshold`, boundaries thinned to 1 px (see the module doc); 0 = boundary."""
    prob = np.asarray(prob_interior, dtype=np.float32)
    seeds = (prob > threshold).astype(np.uint8)
    count, markers = cv2.connectedComponents(seeds, connectivity=4, ltype=cv2.CV_32S)
    if count <= 1:  # no seed: everything is boundary
        return np.zeros(prob.shape, np.int32)
    # cv2.watershed floods in the order of the colour DIFFERENCE between neighbours; on a flat image every
    # priority is 0 and its queue is FIFO, i.e. a breadth-first growth of all seeds at once.
    # It also marks the outer frame of the image as boundary: pad by one pixel and crop it off again.
    relief = np.zeros(prob.shape[:2] + (3,), np.uint8)
    relief = cv2.copyMakeBorder(relief, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    markers = cv2.copyMakeBorder(markers, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.watershed(relief, markers)
    labels = markers[1:-1, 1:-1]
    return np.where(labels > 0, labels, 0).astype(np.int32)


def _overlaps(gt_labels, proposal_labels):
    """Overlap counts over GT foreground: (pair counts c_ij, GT sizes a_i, proposal sizes b_j, n), zeros dropped.

    Proposal boundary pixels (label 0) are singletons: each adds a pair count 1 and a proposal size 1.
    """
    gt_labels = np.asarray(gt_labels).ravel()
    proposal_labels = np.asarray(proposal_labels).ravel()
    if gt_labels.shape != proposal_labels.shape:
        raise ValueError("ground truth and proposal differ in size")
    foreground = gt_labels > 0
    gt_fg = gt_labels[foreground].astype(np.int64)
    prop_fg = proposal_labels[foreground].astype(np.int64)
    if prop_fg.size and prop_fg.min() < 0:
        raise ValueError("proposal labels must be >= 0")
    n = gt_fg.size
    inside = prop_fg > 0
    singletons = np.ones(n - int(np.count_nonzero(inside)), np.float64)
    gt_fg, prop_in = _compact(gt_fg), _compact(prop_fg[inside])
    width = int(prop_in.max()) + 1 if prop_in.size else 1
    pairs = np.bincount(gt_fg[inside] * width + prop_in)
    prop_sizes = np.bincount(prop_in)
    gt_sizes = np.bincount(gt_fg)
    return (np.concatenate([pairs[pairs > 0].astype(np.float64), singletons]),
            gt_sizes[gt_sizes > 0].astype(np.float64),
            np.concatenate([prop_sizes[prop_sizes > 0].astype(np.float64), singletons]), n)


def _compact(labels):
    """Labels as small non-negative ids for bincount (component labels already are: kept as they are)."""
    if labels.size and labels.max() > 4 * labels.size + 1024:
        return np.unique(labels, return_inverse=True)[1].ravel()
    return labels


def _rand_score(pairs, gt_sizes, prop_sizes, n):
    if n == 0:
        return float("nan")
    # normalising by n² cancels in the ratio, so work with counts
    return float(2.0 * np.sum(pairs ** 2) / (np.sum(gt_sizes ** 2) + np.sum(prop_sizes ** 2)))


def _entropy(counts, n):
    p = counts / float(n)
    return float(-np.sum(p * np.log(p)))


def _info_score(pairs, gt_sizes, prop_sizes, n):
    if n == 0:
        return float("nan")
    h_gt, h_prop, h_joint = _entropy(gt_sizes, n), _entropy(prop_sizes, n), _entropy(pairs, n)
    if h_gt + h_prop <= 0:
        return 1.0
    return float(2.0 * (h_gt + h_prop - h_joint) / (h_gt + h_prop))


def v_rand(gt_labels, proposal_labels):
    """Foreground-restricted Rand F-score: 2Σp_ij² / (Σs_i² + Σt_j²) of two label images (0 = GT background /
    proposal boundary). NaN when the GT has no foreground."""
    return _rand_score(*_overlaps(gt_labels, proposal_labels))


def v_info(gt_labels, proposal_labels):
    """Foreground-restricted information-theoretic F-score: 2I(S;T) / (H(S) + H(T)). 1.0 when both are one
    segment (no information to share, no error); NaN when the GT has no foreground."""
    return _info_score(*_overlaps(gt_labels, proposal_labels))


# --- ISBI procedure ----------------------------------------------------------------------------------------

def isbi_scores(prob_interior, gt_mask, thresholds=DEFAULT_THRESHOLDS):
    """Score one slice: V_rand and V_info per threshold (after thinning) and the best of each, plus the pixel
    metrics at 0.5. Returns a dict of floats and per-threshold lists."""
    prob = np.asarray(prob_interior, dtype=np.float32)
    gt = np.asarray(gt_mask)
    if prob.ndim != 2 or prob.shape != gt.shape:
        raise ValueError("expected two [H,W] arrays of one shape, got {} and {}".format(prob.shape, gt.shape))
    truth = gt_segments(gt)
    rand_scores, info_scores = [], []
    for threshold in thresholds:
        overlaps = _overlaps(truth, thinned_proposal(prob, threshold))
        rand_scores.append(_rand_score(*overlaps))
        info_scores.append(_info_score(*overlaps))
    return {
        "v_rand": _nanmax(rand_scores),
        "v_info": _nanmax(info_scores),
        "v_rand_per_threshold": rand_scores,
        "v_info_per_threshold": info_scores,
        "thresholds": [float(t) for t in thresholds],
        "dice": dice(prob, gt),
        "iou": iou(prob, gt),
        "pixel_error": pixel_error(prob, gt),
    }


def _nanmax(values):
    values = np.asarray(values, np.float64)
    return float(np.max(values[~np.isnan(values)])) if np.any(~np.isnan(values)) else float("nan")


def _nanmean(values):
    values = np.asarray(values, np.float64)
    return float(np.mean(values[~np.isnan(values)])) if np.any(~np.isnan(values)) else float("nan")


def evaluate_slices(probs, gts, thresholds=DEFAULT_THRESHOLDS):
    """Score a set of slices the way the challenge does: per-threshold scores averaged over slices, best
    threshold of the mean for V_rand and V_info (each its own threshold); pixel metrics averaged per slice.

    Returns {"v_rand", "v_info", "v_rand_threshold", "v_info_threshold", "dice", "iou", "pixel_error",
    "slices": [per-slice dicts from isbi_scores]}. In each slice dict "v_rand"/"v_info" are re-set to the value
    at the set's best threshold (so the mean of the slices is the set's score) and the slice's own best over
    thresholds moves to "v_rand_best"/"v_info_best".
    """
    if len(probs) != len(gts):
        raise ValueError("{} predictions for {} ground-truth slices".format(len(probs), len(gts)))
    if not len(probs):
        raise ValueError("no slices to evaluate")
    slices = [isbi_scores(prob, gt, thresholds) for prob, gt in zip(probs, gts)]
    result = {"slices": slices}
    for key in ("v_rand", "v_info"):
        per_threshold = np.array([s[key + "_per_threshold"] for s in slices], np.float64)
        means = [_nanmean(per_threshold[:, k]) for k in range(len(thresholds))]
        valid = [k for k, value in enumerate(means) if not np.isnan(value)]
        best = max(valid, key=lambda k: means[k]) if valid else 0
        result[key] = means[best] if valid else float("nan")
        result[key + "_threshold"] = float(thresholds[best])
        for index, slice_scores in enumerate(slices):
            slice_scores[key + "_best"] = slice_scores[key]
            slice_scores[key] = float(per_threshold[index, best])
    for key in PIXEL_KEYS:
        result[key] = _nanmean([s[key] for s in slices])
    return result
