"""Fused augmentation: one coordinate map per sample, one sampling pass for image, mask and weight map.

The map (input.geometry) sends every output pixel of a tile to a source position: crop, shift, scale, flips
and 90° turns, rotation, shear, zoom and the U-Net paper's elastic displacement in one formula, so cropping and
rescaling cost nothing extra. Intensity (gamma, contrast, brightness) is a per-sample 256-entry table applied to
the sampled bytes and noise one Gaussian field per batch, shifted per sample (input.intensity). All random numbers
are drawn with stateless ops outside any compiled part, from a per-batch seed (input.draws): every engine sees the
same draws, and results never depend on thread scheduling.

Engines (resolve_engine, --augment_engine): "xla" compiles the map and the sampling with XLA; "graph" runs the
same ops without XLA (both: unet_perf.input.graph_engine); "opencv" (unet_perf.input.opencv_engine) takes the
same draws and per-sample parameters from TensorFlow and does the per-pixel work with cv2.remap in a
tf.numpy_function: the fast path where XLA is off.
"""
import tensorflow as tf

from unet_perf import compat
from unet_perf.input import graph_engine, opencv_engine
from unet_perf.input.draws import draw, worker_rows

ENGINES = ("xla", "graph", "opencv")  # what resolve_engine answers; --augment_engine also takes "auto"
_XLA_ALIASES = {"on": "xla", "off": "graph"}  # --xla_augment on|off, kept as aliases of --augment_engine


def resolve_engine(cfg):
    """The augmentation engine cfg selects on this machine: "xla", "graph" (plain TensorFlow ops) or "opencv".

    --augment_engine xla|graph|opencv is taken as given. With auto (the default), --xla_augment on|off keep
    their meaning (on = xla, off = graph); otherwise XLA where this TensorFlow build compiles it, else OpenCV
    (the fast host engine; config.validate rejects contradictory pairs of the two flags).
    """
    engine = getattr(cfg, "augment_engine", "auto")
    if engine != "auto":
        return engine
    if cfg.xla_augment in _XLA_ALIASES:
        return _XLA_ALIASES[cfg.xla_augment]
    return "xla" if compat.xla_jit_available() else "opencv"


def augment_batch(images, masks, weights, cfg, out_size, seed, engine=None, crop_centres=None,
                  worker_index=0, num_workers=1):
    """Augment one batch with one fused coordinate map and one sampling pass.

    images, masks: uint8 [B, H, W] (masks in {0, 1}, or class ids and IGNORE_LABEL for C >= 2); weights: float32
    [B, H, W] or None; out_size: (h, w); seed: int64 [2] (see draws.batch_seed); engine: "xla", "graph" or
    "opencv" (None = resolve_engine(cfg)); crop_centres: float32 [B, 2] source (x, y) of each crop centre, or
    None to draw random crops (see geometry.tile_centre).
    worker_index, num_workers: with num_workers > 1 the B images are this worker's rows of a global batch of
    B*num_workers: the random numbers are drawn for the global batch and this worker's rows kept, so each sample is
    augmented exactly as one worker with the whole batch would augment it.
    All engines use the same draws and the same map; they differ by interpolation rounding (see input.opencv_engine).
    Masks are sampled nearest (--mask_interp bilinear only for C = 1): class ids pass unchanged; under the constant
    border, pixels outside the image get 0 for C = 1 and IGNORE_LABEL (unlabelled) for C >= 2.
    Returns (images float32 [B, h, w, 1] in [0, 1], masks float32 [B, h, w, 1] (the mask values),
    weights float32 [B, h, w, 1] or None), all with static shapes.
    """
    images = tf.convert_to_tensor(images, tf.uint8)
    masks = tf.convert_to_tensor(masks, tf.uint8)
    if weights is not None:
        weights = tf.convert_to_tensor(weights, tf.float32)
    batch, height, width = images.shape.as_list()
    if height < 2 or width < 2:
        raise ValueError("augment_batch needs images of at least 2x2 pixels, got {}x{}".format(height, width))
    out_size = (int(out_size[0]), int(out_size[1]))
    if engine is None:
        engine = resolve_engine(cfg)
    if engine not in ENGINES:
        raise ValueError("augment_batch engine must be one of {}, got {!r}".format(ENGINES, engine))
    draws = draw(cfg, batch * num_workers, out_size, tf.convert_to_tensor(seed, tf.int64))
    if num_workers > 1:
        draws = worker_rows(draws, worker_index, batch)
    if crop_centres is not None:
        draws["crop_centres"] = tf.convert_to_tensor(crop_centres, tf.float32)
    if engine == "opencv":
        stage = opencv_engine.opencv_stage(cfg, (height, width), out_size)
    else:
        stage = graph_engine.graph_stage(cfg, (height, width), out_size, xla=engine == "xla")
    outputs = stage({"images": images, "masks": masks, "weights": weights, "draws": draws})
    outputs = [outputs["image"], outputs["mask"]] + ([outputs["weights"]] if weights is not None else [])
    for output in outputs:
        output.set_shape([batch, out_size[0], out_size[1], 1])
    return outputs[0], outputs[1], (outputs[2] if weights is not None else None)


def describe_engine(cfg):
    """resolve_engine(cfg) for logs; when auto had to do without XLA it says why, e.g. "opencv (XLA unavailable:
    ...)" (the engines differ several-fold in speed, so a silent fallback would hide a slow run)."""
    engine = resolve_engine(cfg)
    chosen_by_user = getattr(cfg, "augment_engine", "auto") != "auto" or cfg.xla_augment in _XLA_ALIASES
    if engine == "xla" or chosen_by_user:
        return engine
    return "{} (XLA unavailable: {})".format(engine, compat.xla_jit_status()[1])
