"""Overlap-tile inference for images of any size (U-Net paper, Sec. 2 / Fig. 2).

Two parts:
- a pure numpy tiler, `predict_tiled(predict_batch_fn, image, tile, overlap, batch_size, tta)`: mirror-extends
  the borders, cuts tiles of the training size with `overlap` pixels shared between neighbours, runs them in
  fixed-size batches, blends them with a smooth window and optionally averages the 8 dihedral transforms (TTA);
- the graph part: `build_predictor(cfg, batch_size)` adds a [B,t,t,1] placeholder and the probability tensor
  to the current default graph (reusing the "unet" variables, so the trainer validates in its own session), and
  `Predictor.from_model_dir(model_dir)` builds a graph, a session and restores a checkpoint.

An image is first resized by cfg.input_scale (the fixed rescale of training), normalised over the WHOLE image
(so tiles agree for "standard"), tiled at cfg.crop_size, and the probability map is resized back.
"""
import dataclasses
import json
import os

import cv2
import numpy as np

from unet_perf.storage import run_dir
from unet_perf.storage.checkpoints import check_compatible, latest_checkpoint
from unet_perf.compat import v1
from unet_perf.config import NORMALIZE_MODES, PRECISIONS, Config
from unet_perf.errors import UserError
from unet_perf.model.network import unet
from unet_perf.data.normalization import STD_FLOOR

DIHEDRAL = 8


# --- preprocessing: the network's input scale and normalisation, in numpy ------------------------------

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


# --- numpy tiler --------------------------------------------------------------------------------------------

def dihedral(array, k):
    """The k-th of the 8 dihedral transforms of the two leading axes: k%4 quarter turns, then a flip if k>=4."""
    out = np.rot90(array, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


def inverse_dihedral(array, k):
    out = array[:, ::-1] if k >= 4 else array
    return np.rot90(out, -(k % 4), axes=(0, 1))


def blend_window(tile, kind="cosine"):
    """Positive 2D weights peaking at the tile centre: tile edges (least context) count least when blending."""
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
    line = np.maximum(line, 1e-6)
    return np.outer(line, line).astype(np.float32)


def _tile_starts(length, tile, stride):
    count = max(1, int(np.ceil((length - tile) / float(stride))) + 1)
    return [k * stride for k in range(count)], (count - 1) * stride + tile


def predict_tiled(predict_batch_fn, image_float, tile, overlap, batch_size, tta=False, window="cosine"):
    """Predict a [H,W] normalised float image with tiles of `tile`x`tile`; returns float32 [H,W].

    predict_batch_fn(float32 [batch_size, tile, tile, 1]) -> [batch_size, tile, tile(, 1)] probabilities; it is
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
    rows, covered_h = _tile_starts(height + 2 * margin, tile, stride)
    cols, covered_w = _tile_starts(width + 2 * margin, tile, stride)
    padded = np.pad(image, ((margin, covered_h - height - margin), (margin, covered_w - width - margin)),
                    mode="reflect" if min(height, width) > 1 else "edge")
    weights = blend_window(tile, window)
    total = np.zeros(padded.shape, np.float64)
    weight_sum = np.zeros(padded.shape, np.float64)
    transforms = list(range(DIHEDRAL)) if tta else [0]
    items = [(r, c, k) for r in rows for c in cols for k in transforms]
    for first in range(0, len(items), batch_size):
        chunk = items[first:first + batch_size]
        batch = np.zeros((batch_size, tile, tile, 1), np.float32)
        for slot, (r, c, k) in enumerate(chunk):
            batch[slot, :, :, 0] = dihedral(padded[r:r + tile, c:c + tile], k)
        probs = np.asarray(predict_batch_fn(batch), np.float32).reshape(batch_size, tile, tile)
        for slot, (r, c, k) in enumerate(chunk):
            prob = inverse_dihedral(probs[slot], k)
            total[r:r + tile, c:c + tile] += prob * weights / len(transforms)
            weight_sum[r:r + tile, c:c + tile] += weights / len(transforms)
    out = total / weight_sum
    return out[margin:margin + height, margin:margin + width].astype(np.float32)


def default_overlap(tile):
    """A quarter of the tile, even (so the mirrored margin is overlap/2 on both sides)."""
    return (tile // 4) // 2 * 2


def predict_image(predict_batch_fn, image, cfg, batch_size, overlap=None, tta=False):
    """Full inference of one [H,W] image in 0..255 units: rescale by cfg.input_scale, normalise (cfg.normalize),
    tile at cfg.crop_size, resize the probability map back to [H,W]. Returns float32 P(interior) in [0,1]."""
    image = np.asarray(image, np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise UserError("expected a grayscale image, got an array of shape {}".format(image.shape))
    height, width = image.shape
    scaled = rescale(image, cfg.input_scale)
    tile = cfg.crop_size
    overlap = default_overlap(tile) if overlap is None else int(overlap)
    prob = predict_tiled(predict_batch_fn, normalize_array(scaled, cfg.normalize), tile, overlap, batch_size, tta)
    if prob.shape != (height, width):
        prob = cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(prob, 0.0, 1.0)


# --- graph part ---------------------------------------------------------------------------------------------

def build_predictor(cfg, batch_size, height=None, width=None, input_name="input", output_name="probability"):
    """Add the inference graph to the current default graph.

    Returns (input placeholder float32 [batch_size, height, width, 1] of NORMALISED images, probability tensor
    float32 [batch_size, height, width, 1] = sigmoid of the U-Net logits). height/width default to cfg.crop_size.
    The model reuses the "unet" variables (AUTO_REUSE) and computes in cfg.precision.
    """
    height = height or cfg.crop_size
    width = width or cfg.crop_size
    images = v1.placeholder(v1.float32, [batch_size, height, width, 1], name=input_name)
    logits = unet(images, cfg, training=False)
    probability = v1.identity(v1.math.sigmoid(v1.cast(logits, v1.float32)), name=output_name)
    return images, probability


def load_config(model_dir):
    """The Config the model was trained with (`<model_dir>/config.json`); unknown keys are ignored."""
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise UserError("--model_dir {} is a file; pass the directory written by python -m unet_perf.train (the "
                        "one holding config.json)".format(model_dir))
    if not os.path.isdir(model_dir):
        raise UserError("--model_dir {} does not exist; train a model first (python -m unet_perf.train "
                        "--model_dir {})".format(model_dir, model_dir))
    path = os.path.join(model_dir, run_dir.CONFIG_FILE)
    if not os.path.isfile(path):
        raise UserError("{} is missing; --model_dir must be a directory written by python -m unet_perf.train"
                        .format(path))
    try:
        with open(path) as handle:
            values = json.load(handle)
    except (OSError, ValueError) as err:
        raise UserError("{} is not readable JSON ({}); retrain or restore the file".format(path, err))
    known = {field.name for field in dataclasses.fields(Config)}
    return Config(**{key: value for key, value in values.items() if key in known})


def resolve_checkpoint(model_dir, checkpoint=None):
    """Checkpoint prefix to restore. checkpoint: None (best/ if present, else latest), "best", "latest", a
    directory holding a `checkpoint` state file, or a checkpoint prefix (path without .index)."""
    best_dir = os.path.join(model_dir, run_dir.BEST_DIR)
    if checkpoint in (None, "", "best", "latest"):
        candidates = {"best": [best_dir], "latest": [model_dir]}.get(checkpoint, [best_dir, model_dir])
        for directory in candidates:
            if os.path.isdir(directory):
                found = latest_checkpoint(directory)
                if found:
                    return found
        raise UserError("no checkpoint in {} (looked for a `checkpoint` state file in {}); train first or pass "
                        "--checkpoint PREFIX".format(model_dir, " and ".join(candidates)))
    if os.path.isdir(checkpoint):
        found = latest_checkpoint(checkpoint)
        if not found:
            raise UserError("--checkpoint {} holds no `checkpoint` state file; pass a checkpoint prefix such as "
                            "{}/model.ckpt-100".format(checkpoint, checkpoint))
        return found
    if not os.path.isfile(checkpoint + ".index"):
        raise UserError("--checkpoint {}: no {}.index; pass best, latest, a directory or a checkpoint prefix"
                        .format(checkpoint, checkpoint))
    return checkpoint


def with_precision(cfg, precision):
    if precision is None:
        return cfg
    if precision not in PRECISIONS:
        raise UserError("--precision must be one of {}, got {!r}".format(", ".join(PRECISIONS), precision))
    return dataclasses.replace(cfg, precision=precision)


def restore(sess, prefix, model_dir, cfg, weights="ema"):
    """Restore the graph's variables from `prefix`; a checkpoint of another architecture is a UserError.

    weights "ema" loads the checkpoint's EMA weights into the model when it has them (see unet_perf.model.ema), "raw" the
    trained weights. Returns the weights actually loaded: "ema" or "raw".
    """
    from unet_perf.model.ema import restore_map

    variables = v1.global_variables()
    shapes = check_compatible(prefix, variables, model_dir, cfg)
    var_list, used_average = restore_map(variables, prefix, weights, names=set(shapes))
    v1.train.Saver(var_list=var_list).restore(sess, prefix)
    return "ema" if used_average else "raw"


class Predictor(object):
    """A session holding the inference graph: `predict(image) -> P(interior) [H,W]`."""

    def __init__(self, sess, cfg, images, probability, overlap=None, tta=False):
        self.sess = sess
        self.cfg = cfg
        self.images = images
        self.probability = probability
        self.batch_size = int(images.shape[0])
        self.overlap = overlap
        self.tta = tta

    @classmethod
    def from_model_dir(cls, model_dir, checkpoint=None, precision=None, batch_size=4, overlap=None, tta=False,
                       session_config=None, weights="ema", cfg=None):
        """cfg: the model's config when the caller has loaded it already (else read from model_dir)."""
        cfg = with_precision(cfg if cfg is not None else load_config(model_dir), precision)
        prefix = resolve_checkpoint(model_dir, checkpoint)
        graph = v1.Graph()
        with graph.as_default():
            images, probability = build_predictor(cfg, batch_size)
            sess = v1.Session(graph=graph, config=session_config)
            loaded = restore(sess, prefix, model_dir, cfg, weights)
        predictor = cls(sess, cfg, images, probability, overlap, tta)
        predictor.checkpoint = prefix
        predictor.weights = loaded
        return predictor

    def predict_batch(self, batch):
        return self.sess.run(self.probability, {self.images: batch})

    def predict(self, image, overlap=None, tta=None):
        return predict_image(self.predict_batch, image, self.cfg, self.batch_size,
                             self.overlap if overlap is None else overlap, self.tta if tta is None else tta)

    def close(self):
        self.sess.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
