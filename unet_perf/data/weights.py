"""The U-Net paper's border weight map (Ronneberger et al. 2015, eq. 2), computed once per slice on the host.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))    on membrane pixels (mask == 0)
    w(x) = w_c(x)                                                 on cell pixels (mask == 1)

- Cells are the 4-connected components of mask == 1, so two cells that touch only diagonally through a thin
  membrane stay separate cells.
- d1, d2: Euclidean distance to the nearest and the second-nearest cell. The border term is applied on membrane
  pixels only (inside a cell d1 = 0 and the term would just blur the cell's own edge); with one cell or none,
  d2 is infinite and the border term vanishes.
- w_c balances class frequencies: with f0, f1 the membrane and interior shares of the slice, w_c = 2*f1 on
  membrane and 2*f0 on interior, so both classes carry equal total weight and the mean of the two class weights is
  1. A slice with only one class gets w_c = 1.
With --num_classes C >= 2 (class-id maps, 255 = unlabelled; class_border_weight_map):
- w_c is the inverse class frequency normalised to mean 1 over the classes present in the slice (for two classes
  exactly 2*f1 / 2*f0 as above);
- the objects are the 4-connected components of each foreground class c >= 1, d1/d2 the distances to the nearest
  and second-nearest object of that class; the border term (max over the classes) lies on class-0 pixels, so it
  separates touching objects of the same class;
- unlabelled pixels weigh 0.
Each cell's distances are computed with cv2.distanceTransform on its bounding box grown by the distance beyond
which the border term is below 1e-3 * w0 (far pixels cannot change the result), so a 512^2 slice takes a few ms
to tens of ms.
"""
import math

import cv2
import numpy as np

from unet_perf.data.classes import IGNORE_LABEL

NEGLIGIBLE = 1e-3  # border terms below NEGLIGIBLE * w0 are dropped (they set the per-cell window)


def border_weight_map(mask, w0=10.0, sigma=5.0, balance=True, num_classes=1):
    """float32 [H,W] weight map of one uint8 {0,1} mask (1 = cell interior), or of a class-id map when
    num_classes >= 2; see the module doc string. A binary mask is the two-class map 0 membrane / 1 interior, so both
    go through class_border_weight_map."""
    if num_classes == 1:
        mask, num_classes = (np.asarray(mask) > 0).astype(np.uint8), 2
    return class_border_weight_map(mask, num_classes, w0, sigma, balance)


def border_weight_maps(masks, w0=10.0, sigma=5.0, balance=True, num_classes=1):
    """float32 [N,H,W]: border_weight_map of every slice of uint8 masks [N,H,W]."""
    masks = np.asarray(masks)
    out = np.empty(masks.shape, np.float32)
    for index in range(masks.shape[0]):
        out[index] = border_weight_map(masks[index], w0, sigma, balance, num_classes)
    return out


def class_border_weight_map(labels, num_classes, w0=10.0, sigma=5.0, balance=True):
    """float32 [H,W] weight map of one uint8 class-id map (0..C-1, IGNORE_LABEL unlabelled); see the module doc."""
    labels = np.asarray(labels)
    weights = multi_class_weights(labels, num_classes) if balance else np.ones(labels.shape, np.float32)
    if w0 != 0:
        if sigma <= 0:
            raise ValueError("sigma must be positive, got {}".format(sigma))
        reach = sigma * math.sqrt(2.0 * math.log(1.0 / NEGLIGIBLE))
        border = np.zeros(labels.shape, np.float32)
        for label in range(1, num_classes):
            objects = (labels == label).astype(np.uint8)
            if objects.any():
                d1, d2 = _two_nearest_cell_distances(objects, reach)
                np.maximum(border, w0 * np.exp(-np.square(d1 + d2) / (2.0 * sigma * sigma)), out=border)
        weights = (weights + np.where(labels == 0, border, 0.0)).astype(np.float32)
    return np.where(labels == IGNORE_LABEL, 0.0, weights).astype(np.float32)


def multi_class_weights(labels, num_classes):
    """float32 [H,W] w_c of a class-id map: 1/f_c normalised to mean 1 over the classes present (f over the
    labelled pixels); 1 when one class or none is present. Two classes give class_weights' 2*f_other exactly."""
    labelled = labels[labels != IGNORE_LABEL]
    counts = np.bincount(labelled.ravel(), minlength=num_classes)[:num_classes]
    present = np.flatnonzero(counts)
    if len(present) < 2:
        return np.ones(labels.shape, np.float32)
    lookup = np.ones(IGNORE_LABEL + 1, np.float64)
    if len(present) == 2:  # mean 1 over two classes: w_a = 2 f_b, w_b = 2 f_a (class_weights' arithmetic)
        low, high = present
        f_high = float(np.mean(labelled == high))
        lookup[low], lookup[high] = 2.0 * f_high, 2.0 * (1.0 - f_high)
    else:
        inverse = labelled.size / counts[present].astype(np.float64)
        lookup[present] = inverse / inverse.mean()
    return lookup[labels].astype(np.float32)


def class_weights(interior):
    """float32 [H,W] frequency-balancing weights w_c (2*f1 on membrane, 2*f0 on interior; 1 for one class)."""
    f1 = float(interior.mean()) if interior.size else 0.0
    f0 = 1.0 - f1
    if f0 == 0.0 or f1 == 0.0:
        return np.ones(interior.shape, np.float32)
    return np.where(interior > 0, 2.0 * f0, 2.0 * f1).astype(np.float32)


def exact_distances(distance):
    """float32 Euclidean distances between pixel centres, made exact: OpenCV's precise transform gives them to
    within an ulp that varies from call to call (its SIMD path depends on where its buffers land), which made the
    weight maps differ between identical runs. A squared distance is an integer, so rounding it and taking the
    correctly rounded square root gives the same bits every time."""
    return np.sqrt(np.round(np.square(distance.astype(np.float64)))).astype(np.float32)


def _two_nearest_cell_distances(interior, reach):
    """(d1, d2) float32 [H,W]: distances to the nearest and second-nearest cell, inf beyond `reach` px."""
    height, width = interior.shape
    count, labels, stats, _ = cv2.connectedComponentsWithStats(interior, connectivity=4, ltype=cv2.CV_32S)
    d1 = np.full((height, width), np.inf, np.float32)
    d2 = np.full((height, width), np.inf, np.float32)
    grow = int(math.ceil(reach)) + 1
    for cell in range(1, count):
        x, y, w, h = stats[cell, :4]
        top, bottom = max(0, y - grow), min(height, y + h + grow)
        left, right = max(0, x - grow), min(width, x + w + grow)
        outside = (labels[top:bottom, left:right] != cell).astype(np.uint8)
        distance = exact_distances(cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE))
        near, second = d1[top:bottom, left:right], d2[top:bottom, left:right]
        # second-nearest = min(old second, max(old nearest, new)); nearest = min(old nearest, new)
        np.minimum(second, np.maximum(near, distance), out=second)
        np.minimum(near, distance, out=near)
    return d1, d2
