"""Segmentation losses on float32 logits [B, h, w, 1] and binary masks of the same shape.

- bce: sigmoid cross-entropy (numerically stable form). With a per-pixel weight map w (the U-Net border weights)
  it is the weighted average sum(w * ce) / sum(w): uniform weights give exactly the plain BCE, and the loss stays
  on the same scale as the unweighted one, so the learning rate does not need retuning when --weight_map is on.
- soft_dice: 1 - (2 * sum(p * m) + 1) / (sum(p) + sum(m) + 1) per image (p = sigmoid(logits)), averaged over the
  batch; the +1 smoothing keeps empty masks finite.
- bce_dice: their sum.

With several workers each computes its share of the global batch and the gradients are averaged: the plain BCE and
the Dice (a mean of per-pixel or per-image terms over equal shares) are then exactly the global-batch losses. The
weighted BCE's normaliser is a sum over the batch, so the caller passes `weight_total` = the mean over workers of
their sum(w); the mean over workers of sum_r(w * ce) / weight_total is then sum(w * ce) / sum(w) of the global batch.
"""
import tensorflow as tf

from unet_perf.errors import UserError

LOSS_KINDS = ("bce", "dice", "bce_dice")
_DICE_SMOOTH = 1.0


def bce(logits, masks, weights=None, weight_total=None):
    """Mean sigmoid cross-entropy, or sum(w * ce) / normaliser with weights (normaliser: weight_total when given,
    else sum(w) of this batch)."""
    logits = tf.cast(logits, tf.float32)
    masks = tf.cast(masks, tf.float32)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=masks, logits=logits)
    if weights is None:
        return tf.reduce_mean(ce)
    weights = tf.cast(weights, tf.float32)
    total = tf.reduce_sum(weights) if weight_total is None else weight_total
    return tf.reduce_sum(weights * ce) / total


def soft_dice(logits, masks):
    probs = tf.sigmoid(tf.cast(logits, tf.float32))
    masks = tf.cast(masks, tf.float32)
    axes = list(range(1, len(probs.shape)))
    intersection = tf.reduce_sum(probs * masks, axis=axes)
    total = tf.reduce_sum(probs, axis=axes) + tf.reduce_sum(masks, axis=axes)
    return 1.0 - tf.reduce_mean((2.0 * intersection + _DICE_SMOOTH) / (total + _DICE_SMOOTH))


def compute_loss(logits, masks, weights=None, kind="bce", weight_total=None):
    """Scalar float32 loss of kind bce | dice | bce_dice (the weight map only affects the BCE term; weight_total:
    see bce)."""
    if kind == "bce":
        return bce(logits, masks, weights, weight_total)
    if kind == "dice":
        return soft_dice(logits, masks)
    if kind == "bce_dice":
        return bce(logits, masks, weights, weight_total) + soft_dice(logits, masks)
    raise UserError("--loss must be one of {}, got {!r}".format(", ".join(LOSS_KINDS), kind))
