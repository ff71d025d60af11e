"""The training probe: fixed centre tiles of the first training slices, predicted in inference mode.

The trainer runs the probe at each checkpoint and at the end: its pixel accuracy is `Final Train Accuracy` and
its predictions are the TensorBoard images (unet_perf.inference.panels.prediction_panels). The backends fetch no
per-batch predictions, so the probe is the one look at what the network outputs during training.
"""
import cv2
import numpy as np

from unet_perf.inference.tiling import normalize_array, rescale
from unet_perf.inference.metrics import PIXEL_THRESHOLD


def probe_tiles(cfg, pairs, count):
    """`count` centre tiles of the first training slices, preprocessed like inference: rescale by
    cfg.input_scale, normalise the whole slice, centre crop (mirror padding when the slice is smaller).
    Returns (normalised images float32 [n,c,c,1], raw images uint8 [n,c,c], masks uint8 [n,c,c])."""
    crop = cfg.crop_size
    images, raws, masks = [], [], []
    for index in range(count):
        image = rescale(pairs.images[index % len(pairs.images)].astype(np.float32), cfg.input_scale)
        mask = rescale(pairs.masks[index % len(pairs.masks)], cfg.input_scale, cv2.INTER_NEAREST)
        normalised = centre_crop(normalize_array(image, cfg.normalize), crop)
        images.append(normalised[..., None])
        raws.append(np.clip(centre_crop(image, crop), 0, 255).astype(np.uint8))
        masks.append(centre_crop(mask, crop))
    return np.stack(images).astype(np.float32), np.stack(raws), np.stack(masks)


def centre_crop(array, size):
    """The central size x size window of a [H,W] array, mirror-padded first where a side is shorter."""
    pad_y = max(0, size - array.shape[0])
    pad_x = max(0, size - array.shape[1])
    if pad_y or pad_x:
        array = np.pad(array, ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2)), "symmetric")
    top = (array.shape[0] - size) // 2
    left = (array.shape[1] - size) // 2
    return array[top:top + size, left:left + size]


def pixel_accuracy(prob, masks):
    """Fraction of pixels where (prob [n,h,w,1] > 0.5) equals the binary mask [n,h,w]."""
    return float(np.mean((np.asarray(prob)[..., 0] > PIXEL_THRESHOLD) == (np.asarray(masks) > 0)))
