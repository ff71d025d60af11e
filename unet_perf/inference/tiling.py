"""Overlap-tile inference in numpy, for images of any size (U-Net paper, Sec. 2 / Fig. 2); no TensorFlow here.

`predict_tiled(predict_batch_fn, image, tile, overlap, batch_size, tta)` mirror-extends the borders, cuts tiles of
the training size with `overlap` pixels shared between neighbours, runs them in fixed-size batches, blends them
with a smooth window and optionally averages the 8 dihedral transforms (TTA). `predict_image` wraps it with the
network's preprocessing: an image is first resized by cfg.input_scale (the fixed rescale of training), normalised
over the WHOLE image (so tiles agree for "standard"), tiled at cfg.crop_size, and the map is resized back.
These whole-image functions are the reference: predict, evaluate and validation run the band-by-band engine
(inference.streaming, which reuses the helpers here and matches predict_image within 1e-5).
"""
import cv2
import numpy as np

from unet_perf.config import NORMALIZE_MODES
from unet_perf.data.normalization import STD_FLOOR
from unet_perf.errors import UserError

DIHEDRAL = 8



def rescale(array, scale, interpolation=cv2.INTER_LINEAR):
    """`array` [H,W] resized by `scale` (cfg.input_scale, the fixed rescale of training; each side rounded, at
    least 1 px); the array itself when scale is 1. Masks want interpolation=cv2.INTER_NEAREST."""
    if scale == 1.0:
        return array
    height, width = array.shape[:2]
    size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    return cv2.resize(array, size, interpolation=interpolation)


def normalize_array(image, mode):
    """Numpy twin of unet_perf.input.pipeline.normalize for one image (any shape) in 0..255 units; float32."""
    image = np.asarray(image, np.float32)
    if mode == "unit":
        return image / np.float32(255.0)
    if mode == "symmetric":
        return image / np.float32(127.5) - np.float32(1.0)
    if mode == "standard":
        return ((image - image.mean()) / max(float(image.std()), STD_FLOOR * 255.0)).astype(np.float32)
    raise ValueError("unknown normalisation {!r}; expected one of {}".format(mode, NORMALIZE_MODES))


def dihedral(array, k):
    """The k-th of the 8 dihedral transforms of the two leading axes: k%4 quarter turns, then a flip if k>=4."""
    out = np.rot90(array, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


def inverse_dihedral(array, k):
    out = array[:, ::-1] if k >= 4 else array
    return np.rot90(out, -(k % 4), axes=(0, 1))


def blend_window(tile, kind="cosine"):
    """Positive 2D weights peaking at the tile centre: tile edges (least context) count least when blending."""
    line = blend_line(tile, kind)
    return np.outer(line, line).astype(np.float32)


def blend_line(tile, kind="cosine"):
    """The 1D factor of blend_window (float64 [tile]): the window is its outer product with itself."""
    centres = np.arange(tile, dtype=np.float64) + 0.5
    if kind == "cosine":
        line = 0.5 - 0.5 * np.cos(2.0 * np.pi * centres / tile)  # Hann window sampled at pixel centres: > 0
    elif kind == "gaussian":
        sigma = tile / 8.0
        line = np.exp(-0.5 * ((centres - tile / 2.0) / sigma) ** 2)
    elif kind == "flat":
        line = np.ones(tile)
    else:
        raise ValueError("unknown window {!r}; expected cosine, gaussian or flat".format(kind))
    return np.maximum(line, 1e-6)


def tile_starts(length, tile, stride):
    """(start of every tile along an axis of `length`, tiles `stride` apart, the last one reaching past the end;
    the length the tiles cover)."""
    count = max(1, int(np.ceil((length - tile) / float(stride))) + 1)
    return [k * stride for k in range(count)], (count - 1) * stride + tile


def predict_tiled(predict_batch_fn, image_float, tile, overlap, batch_size, tta=False, window="cosine"):
    """Predict a [H,W] normalised float image with tiles of `tile`x`tile`; returns float32 [H,W] for one output
    channel, [H,W,C] for C channels (each channel blended and averaged alike).

    predict_batch_fn(float32 [batch_size, tile, tile, 1]) -> [batch_size, tile, tile(, C)] probabilities; it is
    always called with exactly `batch_size` tiles (the last batch is padded with zeros), as a static-shape graph
    needs. Borders are extended by mirroring (overlap // 2 pixels, more when the image is smaller than a tile),
    neighbours share `overlap` pixels, and tiles are blended with `blend_window(tile, window)`.
    tta=True averages the 8 dihedral transforms of every tile (each inverted before blending).
    """
    image = np.asarray(image_float, np.float32)
    if image.ndim != 2:
        raise ValueError("expected a [H,W] image, got shape {}".format(image.shape))
    if not 0 <= overlap < tile:
        raise UserError("--overlap {} must be in [0, tile size {})".format(overlap, tile))
    height, width = image.shape
    stride = tile - overlap
    margin = overlap // 2
    rows, covered_h = tile_starts(height + 2 * margin, tile, stride)
    cols, covered_w = tile_starts(width + 2 * margin, tile, stride)
    padded = np.pad(image, ((margin, covered_h - height - margin), (margin, covered_w - width - margin)),
                    mode="reflect" if min(height, width) > 1 else "edge")
    weights = blend_window(tile, window)[..., None]
    total = None  # [H', W', channels] once the first batch tells the channel count
    weight_sum = np.zeros(padded.shape + (1,), np.float64)
    transforms = list(range(DIHEDRAL)) if tta else [0]
    items = [(r, c, k) for r in rows for c in cols for k in transforms]
    for first in range(0, len(items), batch_size):
        chunk = items[first:first + batch_size]
        batch = np.zeros((batch_size, tile, tile, 1), np.float32)
        for slot, (r, c, k) in enumerate(chunk):
            batch[slot, :, :, 0] = dihedral(padded[r:r + tile, c:c + tile], k)
        probs = np.asarray(predict_batch_fn(batch), np.float32).reshape(batch_size, tile, tile, -1)
        if total is None:
            total = np.zeros(padded.shape + probs.shape[-1:], np.float64)
        for slot, (r, c, k) in enumerate(chunk):
            prob = inverse_dihedral(probs[slot], k)
            total[r:r + tile, c:c + tile] += prob * weights / len(transforms)
            weight_sum[r:r + tile, c:c + tile] += weights / len(transforms)
    out = (total / weight_sum)[margin:margin + height, margin:margin + width].astype(np.float32)
    return out[..., 0] if out.shape[-1] == 1 else out


def resize_channels(prob, height, width):
    """A [h,w] or [h,w,C] map resized (bilinear) to [height,width](,C), one channel at a time (for any C)."""
    size = (width, height)
    if prob.ndim == 2:
        return cv2.resize(prob, size, interpolation=cv2.INTER_LINEAR)
    return np.stack([cv2.resize(np.ascontiguousarray(prob[..., k]), size, interpolation=cv2.INTER_LINEAR)
                     for k in range(prob.shape[-1])], axis=-1)


def default_overlap(tile):
    """A quarter of the tile, even (so the mirrored margin is overlap/2 on both sides)."""
    return (tile // 4) // 2 * 2


def predict_image(predict_batch_fn, image, cfg, batch_size, overlap=None, tta=False, window="cosine"):
    """Full inference of one [H,W] image in 0..255 units: rescale by cfg.input_scale, normalise (cfg.normalize),
    tile at cfg.crop_size, resize the probability map back to [H,W]. Returns float32 in [0,1]: P(interior) [H,W]
    for --num_classes 1, the class probabilities [H,W,C] for C >= 2 (each channel resized alike)."""
    image = np.asarray(image, np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise UserError("expected a grayscale image, got an array of shape {}".format(image.shape))
    height, width = image.shape
    scaled = rescale(image, cfg.input_scale)
    tile = cfg.crop_size
    overlap = default_overlap(tile) if overlap is None else int(overlap)
    prob = predict_tiled(predict_batch_fn, normalize_array(scaled, cfg.normalize), tile, overlap, batch_size, tta,
                         window)
    if prob.shape[:2] != (height, width):
        prob = resize_channels(prob, height, width)
    return np.clip(prob, 0.0, 1.0)
