"""The TensorFlow side of inference: the inference graph, restoring a checkpoint into it, and `Predictor`.

`build_predictor(cfg, batch_size)` adds a [B,t,t,1] placeholder and the probability tensor ([B,t,t,1] P(interior)
for --num_classes 1, [B,t,t,C] softmax for C >= 2) to the current default graph (reusing the "unet" variables, so the trainer validates in its own session); `Predictor.from_model_dir`
builds a graph and a session, restores a checkpoint and predicts images band by band (inference.streaming): a
whole in-memory image with `predict`, a page source of any size row band by row band with `predict_source`.
"""
import dataclasses

from unet_perf.compat import v1
from unet_perf.config import PRECISIONS
from unet_perf.errors import UserError
from unet_perf.inference.model_dir import load_config, resolve_checkpoint
from unet_perf.inference.streaming import predict_array, predict_source
from unet_perf.model.network import unet
from unet_perf.storage.checkpoints import check_compatible


def build_predictor(cfg, batch_size, height=None, width=None, input_name="input", output_name="probability"):
    """Add the inference graph to the current default graph.

    Returns (input placeholder float32 [batch_size, height, width, 1] of NORMALISED images, probability tensor):
    C = 1: float32 [batch_size, height, width, 1] = sigmoid of the U-Net logits (P(interior));
    C >= 2: float32 [batch_size, height, width, C] = softmax over the C class logits.
    height/width default to cfg.crop_size. The model reuses the "unet" variables (AUTO_REUSE) and computes in
    cfg.precision; the sigmoid/softmax is always fp32.
    """
    height = height or cfg.crop_size
    width = width or cfg.crop_size
    images = v1.placeholder(v1.float32, [batch_size, height, width, 1], name=input_name)
    logits = v1.cast(unet(images, cfg, training=False), v1.float32)
    squash = v1.math.sigmoid if cfg.num_classes == 1 else v1.nn.softmax
    probability = v1.identity(squash(logits), name=output_name)
    return images, probability


def with_precision(cfg, precision):
    if precision is None:
        return cfg
    if precision not in PRECISIONS:
        raise UserError("--precision must be one of {}, got {!r}".format(", ".join(PRECISIONS), precision))
    return dataclasses.replace(cfg, precision=precision)


def restore(sess, prefix, model_dir, cfg, weights="ema"):
    """Restore the graph's variables from `prefix`; a checkpoint of another architecture is a UserError.

    weights "ema" loads the checkpoint's EMA weights into the model when it has them (see unet_perf.model.ema),
    "raw" the trained weights. Returns the weights actually loaded: "ema" or "raw".
    """
    from unet_perf.model.ema import restore_map

    variables = v1.global_variables()
    shapes = check_compatible(prefix, variables, model_dir, cfg)
    var_list, used_average = restore_map(variables, prefix, weights, names=set(shapes))
    v1.train.Saver(var_list=var_list).restore(sess, prefix)
    return "ema" if used_average else "raw"


class Predictor(object):
    """A session holding the inference graph: `predict(image)` -> P(interior) [H,W] (C = 1) or the class
    probabilities [H,W,C] (C >= 2)."""

    def __init__(self, sess, cfg, images, probability, overlap=None, tta=False, blend="cosine"):
        self.sess = sess
        self.cfg = cfg
        self.images = images
        self.probability = probability
        self.batch_size = int(images.shape[0])
        self.tile = int(images.shape[1])
        self.overlap = overlap
        self.tta = tta
        self.blend = blend

    @classmethod
    def from_model_dir(cls, model_dir, checkpoint=None, precision=None, batch_size=4, overlap=None, tta=False,
                       session_config=None, weights="ema", cfg=None, tile_size=None, blend="cosine"):
        """cfg: the model's config when the caller has loaded it already (else read from model_dir); tile_size:
        the tile side (default the model's crop_size; the U-Net is fully convolutional); blend: cosine or
        gaussian (inference.tiling.blend_window)."""
        cfg = with_precision(cfg if cfg is not None else load_config(model_dir), precision)
        prefix = resolve_checkpoint(model_dir, checkpoint)
        graph = v1.Graph()
        with graph.as_default():
            images, probability = build_predictor(cfg, batch_size, tile_size, tile_size)
            sess = v1.Session(graph=graph, config=session_config)
            loaded = restore(sess, prefix, model_dir, cfg, weights)
        predictor = cls(sess, cfg, images, probability, overlap, tta, blend)
        predictor.checkpoint = prefix
        predictor.weights = loaded
        return predictor

    def predict_batch(self, batch):
        return self.sess.run(self.probability, {self.images: batch})

    def predict(self, image, overlap=None, tta=None):
        """The probability map of an in-memory [H,W] image in 0..255 units (what tiling.predict_image gives)."""
        return predict_array(self.predict_batch, image, self.cfg, self.batch_size, **self._options(overlap, tta))

    def predict_source(self, source, sink, overlap=None, tta=None):
        """Stream a page source (inference.image_io) through the model: `sink` gets the probability rows top to
        bottom; memory O(width x tile). Returns the engine's buffer sizes (inference.streaming.predict_source)."""
        return predict_source(self.predict_batch, source, self.cfg, self.batch_size, sink,
                              **self._options(overlap, tta))

    def _options(self, overlap, tta):
        return dict(tile=self.tile, overlap=self.overlap if overlap is None else overlap,
                    tta=self.tta if tta is None else tta, blend=self.blend)

    def close(self):
        self.sess.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
