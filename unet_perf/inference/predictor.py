"""The TensorFlow side of inference: the inference graph, restoring a checkpoint into it, and `Predictor`.

`build_predictor(cfg, batch_size)` adds a [B,t,t,1] placeholder and the probability tensor ([B,t,t,1] P(interior)
for --num_classes 1, [B,t,t,C] softmax for C >= 2) to the current default graph (reusing the "unet" variables, so the trainer validates in its own session); `Predictor.from_model_dir`
builds a graph and a session, restores a checkpoint and predicts whole images through inference.tiling.
"""
import dataclasses

from unet_perf.compat import v1
from unet_perf.config import PRECISIONS
from unet_perf.errors import UserError
from unet_perf.inference.model_dir import load_config, resolve_checkpoint
from unet_perf.inference.tiling import predict_image
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
