"""Pictures for people: image, ground truth and prediction side by side (numpy + OpenCV, uint8 out).

- `prediction_panels`: the TensorBoard strips of the training probe (image | ground truth | prediction);
- `error_overlay`: evaluate's strip per slice (image | ground truth | prediction | errors coloured);
- `augmentation_grid`: preview's grid of augmented pairs (image | image with the mask tinted green).
"""
import cv2
import numpy as np

GAP = 4  # pixels between the tiles of a strip or grid
GAP_GRAY = 128  # strips on a gray background
GAP_WHITE = 255  # the preview grid on white
FALSE_MEMBRANE = (0, 0, 255)   # BGR red: predicted membrane where the ground truth has cell interior
MISSED_MEMBRANE = (255, 0, 0)  # BGR blue: ground-truth membrane predicted as interior
MASK_TINT = np.array([0, 255, 0], np.float32)  # BGR green
MASK_TINT_ALPHA = 0.35


def stack_tiles(tiles, axis=1, gap=0, fill=GAP_GRAY):
    """Arrays of one height (axis=1: left to right) or one width (axis=0: top to bottom) joined with `gap`
    pixels of value `fill` between neighbours."""
    parts = []
    for index, tile in enumerate(tiles):
        if index and gap:
            shape = list(tile.shape)
            shape[axis] = gap
            parts.append(np.full(shape, fill, tile.dtype))
        parts.append(tile)
    return np.concatenate(parts, axis=axis)


def binary_to_gray(binary):
    """uint8 255 where `binary` is true, else 0."""
    return np.where(binary, 255, 0).astype(np.uint8)


def gray_to_bgr(gray):
    return cv2.cvtColor(np.asarray(gray, np.uint8), cv2.COLOR_GRAY2BGR)


def prediction_panels(raws, masks, prob):
    """(shape, PNG bytes) per tile: image | ground truth | prediction side by side (uint8 gray).

    raws uint8 [n,h,w], masks {0,1} [n,h,w], prob P(interior) [n,h,w,1]."""
    panels = []
    for raw, mask, p in zip(raws, masks, np.asarray(prob)[..., 0]):
        row = stack_tiles([raw, binary_to_gray(mask > 0), np.clip(p * 255.0 + 0.5, 0, 255).astype(np.uint8)])
        ok, encoded = cv2.imencode(".png", row)
        if ok:
            panels.append((row.shape, encoded.tobytes()))
    return panels


def error_overlay(image, gt_mask, prob, threshold=0.5):
    """One BGR strip: image | ground truth | prediction (P(interior) > threshold) | image with the errors
    coloured (FALSE_MEMBRANE, MISSED_MEMBRANE)."""
    gray = gray_to_bgr(image)
    predicted = prob > threshold
    truth = np.asarray(gt_mask) > 0
    errors = gray.copy()
    errors[truth & ~predicted] = FALSE_MEMBRANE
    errors[~truth & predicted] = MISSED_MEMBRANE
    tiles = [gray, gray_to_bgr(binary_to_gray(truth)), gray_to_bgr(binary_to_gray(predicted)), errors]
    return stack_tiles(tiles, gap=GAP, fill=GAP_GRAY)


def augmentation_grid(images, masks):
    """uint8 BGR grid: one row per sample, image | image with the mask tinted green.

    images float [n,h,w] in [0,1], masks [n,h,w] (> 0.5 = interior)."""
    rows = []
    for image, mask in zip(images, masks):
        gray = np.repeat(np.clip(image, 0.0, 1.0)[..., None] * 255.0, 3, axis=2)
        tinted = np.where(mask[..., None] > 0.5, gray * (1 - MASK_TINT_ALPHA) + MASK_TINT * MASK_TINT_ALPHA, gray)
        row = [np.round(gray).astype(np.uint8), np.round(tinted).astype(np.uint8)]
        rows.append(stack_tiles(row, gap=GAP, fill=GAP_WHITE))
    return stack_tiles(rows, axis=0, gap=GAP, fill=GAP_WHITE)
