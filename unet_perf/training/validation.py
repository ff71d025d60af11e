"""Validation during training: predict the held-out slices with the inference path and score them.

    validator = Validator(cfg, val_pairs)   # while the trainer builds its graph (adds the predictor graph)
    ...
    metrics = validator.run(sess)           # {"v_rand", "v_info", "dice", "iou", "pixel_error", thresholds}
                                            # C >= 2: {"mean_dice", "mean_iou", "pixel_accuracy",
                                            #          "dice_class_<k>", "iou_class_<k>"}

`inference_graphs` builds everything the trainer evaluates inside the training graph: the validator and the probe.
"""
import numpy as np

from unet_perf.compat import v1
from unet_perf.inference.predictor import build_predictor
from unet_perf.inference.streaming import predict_array
from unet_perf.inference.metrics import METRIC_KEYS, THRESHOLD_KEYS, evaluate_slices
from unet_perf.inference.class_metrics import evaluate_class_slices, flat_scores


class Validator(object):
    """Scores the held-out slices `val_pairs` (Pairs of images uint8 [N,H,W], masks uint8 {0,1}, or class ids
    with 255 = unlabelled for --num_classes >= 2) with the
    overlap-tile inference (no TTA, for speed). Build it inside the trainer's graph: the predictor reuses the
    "unet" variables, so `run(sess)` sees the weights the training session holds."""

    def __init__(self, cfg, val_pairs, batch_size=4, overlap=None, tta=False):
        if len(val_pairs.images) == 0:
            raise ValueError("no validation slices")
        self.cfg = cfg
        self.images = np.asarray(val_pairs.images)
        self.masks = np.asarray(val_pairs.masks)
        self.batch_size = batch_size
        self.overlap = overlap
        self.tta = tta
        with v1.name_scope("validation"):
            self.input, self.probability = build_predictor(cfg, batch_size, input_name="input",
                                                           output_name="probability")

    def predict(self, sess):
        """P(interior) float32 [N,H,W] of the held-out slices ([N,H,W,C] class probabilities for C >= 2)."""
        def predict_batch(batch):
            return sess.run(self.probability, {self.input: batch})

        return np.stack([predict_array(predict_batch, image, self.cfg, self.batch_size, overlap=self.overlap,
                                       tta=self.tta) for image in self.images])

    def run(self, sess):
        """Dict of floats: v_rand, v_info (best threshold of the slice means), dice, iou, pixel_error (means),
        v_rand_threshold, v_info_threshold. C >= 2: mean_dice, mean_iou, pixel_accuracy, dice_class_<k> and
        iou_class_<k> (unet_perf.inference.class_metrics; NaN for a class in neither truth nor prediction)."""
        if self.cfg.num_classes > 1:
            return flat_scores(evaluate_class_slices(self.predict(sess), self.masks, self.cfg.num_classes))
        scores = evaluate_slices(self.predict(sess), self.masks)
        return {key: float(scores[key]) for key in METRIC_KEYS + THRESHOLD_KEYS}


class InferenceGraphs(object):
    """What the trainer adds to the training graph: the probe predictor and the validator (or None)."""

    def __init__(self, probe_input, probe_prob, validator):
        self.probe_input = probe_input
        self.probe_prob = probe_prob
        self.validator = validator


def inference_graphs(cfg, val, probe_count):
    """A builder for assembly.build(extras=...): the probe predictor (fixed training tiles in inference mode, for the
    train accuracy and the summary images; run in its own cheap Session.run) and the validator of the held-out
    slices `val` (None when there are none)."""
    from unet_perf.model.ema import reading_average

    def build():
        with reading_average(cfg):  # with --ema, validation and best/ judge the averaged weights
            probe_input, probe_prob = build_predictor(cfg, probe_count, input_name="probe_input",
                                                      output_name="probe_probability")
            validator = Validator(cfg, val) if val is not None and len(val.images) else None
        return InferenceGraphs(probe_input, probe_prob, validator)
    return build
