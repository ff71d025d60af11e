"""Segmentation losses on float32 logits [B, h, w, C] and masks float32 [B, h, w, 1].

--num_classes 1 (C = 1): masks are binary {0, 1} (1 = cell interior) and the model is a sigmoid.
- bce: sigmoid cross-entropy (numerically stable form). With a per-pixel weight map w (the U-Net border weights)
  it is the weighted average sum(w * ce) / sum(w): uniform weights give exactly the plain BCE, and the loss stays
  on the same scale as the unweighted one, so the learning rate does not need retuning when --weight_map is on.
- soft_dice: 1 - (2 * sum(p * m) + 1) / (sum(p) + sum(m) + 1) per image (p = sigmoid(logits)), averaged over the
  batch; the +1 smoothing keeps empty masks finite.
- bce_dice: their sum.

C >= 2: masks hold class ids 0..C-1, and data.classes.IGNORE_LABEL (255) on unlabelled pixels, which every term
leaves out (no loss, no gradient); the model is a softmax over the C channels.
- bce (cross-entropy): softmax cross-entropy as the weighted mean sum(v * ce) / sum(v) over the pixels, where
  v = (labelled) * (class weight of the pixel's class, --class_weights) * (weight map): with neither it is the mean
  over the labelled pixels, and uniform weights give exactly that plain mean.
- soft_dice: per image and class (p = softmax(logits), m = one-hot of the ids, both zero on unlabelled pixels) the
  smoothed Dice as above, averaged over the classes (1..C-1 only with dice_background false), then over the batch.
- bce_dice: their sum.
The loss kinds ce and ce_dice are the same as bce and bce_dice (cross-entropy: sigmoid for C = 1, softmax above).

With several workers each computes its share of the global batch and the gradients are averaged: the plain BCE and
the Dice (a mean of per-pixel or per-image terms over equal shares) are then exactly the global-batch losses. The
weighted cross-entropy's normaliser is a sum over the batch, so the caller passes `weight_total` = the mean over
workers of their `weight_sum(...)`; the mean over workers of sum_r(v * ce) / weight_total is then sum(v * ce) /
sum(v) of the global batch. For C >= 2 this holds for the unlabelled pixels too (their count differs by share).
"""
import tensorflow as tf

from unet_perf.errors import UserError

LOSS_KINDS = ("bce", "dice", "bce_dice", "ce", "ce_dice")
_ALIASES = {"ce": "bce", "ce_dice": "bce_dice"}  # cross-entropy is sigmoid (C = 1) or softmax (C >= 2)
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


def _class_ids(masks, num_classes):
    """(ids int32 [B, h, w] with unlabelled pixels set to class 0, labelled float32 [B, h, w] in {0, 1})."""
    ids = tf.cast(tf.cast(masks, tf.float32)[..., 0], tf.int32)
    labelled = tf.logical_and(ids >= 0, ids < num_classes)  # data.classes.IGNORE_LABEL (255) is the only id >= C
    return tf.where(labelled, ids, tf.zeros_like(ids)), tf.cast(labelled, tf.float32)


def pixel_weights(masks, num_classes, weights=None, class_weights=None):
    """float32 [B, h, w]: the weight of each pixel in the softmax cross-entropy (C >= 2): 0 on unlabelled pixels,
    else its class weight (1 without class_weights) times its weight-map value (1 without weights)."""
    ids, labelled = _class_ids(masks, num_classes)
    value = labelled
    if class_weights is not None:
        value = value * tf.gather(tf.constant(list(class_weights), tf.float32), ids)
    if weights is not None:
        value = value * tf.cast(weights, tf.float32)[..., 0]
    return value


def weight_sum(masks, num_classes, weights=None, class_weights=None):
    """This batch's normaliser of the cross-entropy (see the module doc; with several workers the caller averages
    it over them and passes the mean as weight_total). C = 1: sum(weights)."""
    if num_classes == 1:
        return tf.reduce_sum(tf.cast(weights, tf.float32))
    return tf.reduce_sum(pixel_weights(masks, num_classes, weights, class_weights))


def softmax_ce(logits, masks, weights=None, weight_total=None, class_weights=None):
    """Softmax cross-entropy of logits [B, h, w, C] against class ids: sum(v * ce) / normaliser with v from
    pixel_weights (normaliser: weight_total when given, else sum(v) of this batch, at least 1e-12 so that a
    batch without any labelled pixel gives 0, not NaN)."""
    logits = tf.cast(logits, tf.float32)
    num_classes = logits.shape.as_list()[-1]
    ids, _ = _class_ids(masks, num_classes)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ids, logits=logits)
    value = pixel_weights(masks, num_classes, weights, class_weights)
    total = tf.reduce_sum(value) if weight_total is None else weight_total
    return tf.reduce_sum(value * ce) / tf.maximum(total, 1e-12)


def soft_dice_multiclass(logits, masks, background=True):
    """1 - the smoothed soft Dice per image and class, averaged over the classes (0..C-1, or 1..C-1 without
    background) and then over the batch; unlabelled pixels count neither in the prediction nor in the label."""
    logits = tf.cast(logits, tf.float32)
    num_classes = logits.shape.as_list()[-1]
    ids, labelled = _class_ids(masks, num_classes)
    probs = tf.nn.softmax(logits) * labelled[..., None]
    truth = tf.one_hot(ids, num_classes, dtype=tf.float32) * labelled[..., None]
    intersection = tf.reduce_sum(probs * truth, axis=[1, 2])  # [B, C]
    total = tf.reduce_sum(probs, axis=[1, 2]) + tf.reduce_sum(truth, axis=[1, 2])
    dice = (2.0 * intersection + _DICE_SMOOTH) / (total + _DICE_SMOOTH)
    if not background:
        dice = dice[:, 1:]
    return 1.0 - tf.reduce_mean(dice)


def compute_loss(logits, masks, weights=None, kind="bce", weight_total=None, class_weights=None,
                 dice_background=True):
    """Scalar float32 loss of kind bce | dice | bce_dice (ce, ce_dice: the same) for logits [B, h, w, C]: sigmoid
    for C = 1, softmax for C >= 2 (class_weights: a list of C floats or None; dice_background: see
    soft_dice_multiclass). The weight map and the class weights only affect the cross-entropy term; weight_total:
    see the module doc."""
    if kind not in LOSS_KINDS:
        raise UserError("--loss must be one of {}, got {!r}".format(", ".join(LOSS_KINDS), kind))
    kind = _ALIASES.get(kind, kind)
    num_classes = int(logits.shape[-1])  # static: a tensor or a numpy array
    if class_weights is not None and (num_classes == 1 or len(class_weights) != num_classes):
        raise ValueError("{} class weights for logits of {} classes (C = 1 takes none)".format(
            len(class_weights), num_classes))

    def cross_entropy():
        if num_classes == 1:
            return bce(logits, masks, weights, weight_total)
        return softmax_ce(logits, masks, weights, weight_total, class_weights)

    def dice():
        if num_classes == 1:
            return soft_dice(logits, masks)
        return soft_dice_multiclass(logits, masks, dice_background)

    if kind == "bce":
        return cross_entropy()
    if kind == "dice":
        return dice()
    return cross_entropy() + dice()
