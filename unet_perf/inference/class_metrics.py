"""Metrics of multi-class segmentation (--num_classes C >= 2), numpy only.

Label maps are uint8 [H,W] class ids 0..C-1 with data.classes.IGNORE_LABEL (255) for unlabelled pixels; those are
left out of every count. Class 0 is the background: the means (mean_dice, mean_iou) are over the foreground
classes 1..C-1, and a class absent from both the truth and the prediction has no score (NaN) and is left out of
them. A set of slices is scored from the sum of their confusion matrices (each pixel counts once, whatever slice
it is on); evaluate also reports every slice on its own.

`soft_dice_nvidia` is the "Dice" NVIDIA's UNet_Medical reports (utils/model_fn.py, `eval_dice_score`), to compare
with their published figures.
"""
import numpy as np

NVIDIA_EPS = 1e-6
SUMMARY_KEYS = ("mean_dice", "mean_iou", "pixel_accuracy")  # report order of the set's headline scores


def primary_metric(num_classes):
    """The validation score that chooses best/: V_rand for the membrane task (C = 1), mean Dice for C >= 2."""
    return "v_rand" if num_classes == 1 else "mean_dice"


def class_map(probabilities):
    """uint8 [..., H, W] class ids: the argmax of softmax probabilities [..., H, W, C]."""
    return np.argmax(np.asarray(probabilities), axis=-1).astype(np.uint8)


def confusion_matrix(truth, predicted, num_classes):
    """int64 [C, C] pixel counts: row = true class, column = predicted class; unlabelled truth pixels (any value
    >= C, i.e. IGNORE_LABEL) are left out."""
    truth = np.asarray(truth).ravel().astype(np.int64)
    predicted = np.asarray(predicted).ravel().astype(np.int64)
    if truth.shape != predicted.shape:
        raise ValueError("truth and prediction differ in size: {} and {}".format(truth.size, predicted.size))
    labelled = truth < num_classes
    pairs = truth[labelled] * num_classes + np.clip(predicted[labelled], 0, num_classes - 1)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_scores(confusion):
    """(Dice [C], IoU [C]) float64 from a confusion matrix; NaN for a class absent from truth and prediction."""
    confusion = np.asarray(confusion, np.float64)
    hits = np.diag(confusion)
    in_truth = confusion.sum(axis=1)
    in_prediction = confusion.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2.0 * hits / (in_truth + in_prediction)
        iou = hits / (in_truth + in_prediction - hits)
    return dice, iou


def _foreground_mean(values):
    foreground = np.asarray(values, np.float64)[1:]
    foreground = foreground[~np.isnan(foreground)]
    return float(foreground.mean()) if foreground.size else float("nan")


def scores_of(confusion):
    """Dict: dice_per_class, iou_per_class (lists, NaN for absent classes), mean_dice, mean_iou (over classes
    1..C-1 that have a score), pixel_accuracy (NaN without labelled pixels), confusion_matrix (nested lists)."""
    confusion = np.asarray(confusion, np.int64)
    dice, iou = per_class_scores(confusion)
    total = int(confusion.sum())
    return {
        "dice_per_class": [float(value) for value in dice],
        "iou_per_class": [float(value) for value in iou],
        "mean_dice": _foreground_mean(dice),
        "mean_iou": _foreground_mean(iou),
        "pixel_accuracy": float(np.trace(confusion)) / total if total else float("nan"),
        "confusion_matrix": confusion.tolist(),
    }


def soft_dice_nvidia(probabilities, labels, num_classes, eps=NVIDIA_EPS):
    """NVIDIA UNet_Medical's reported Dice: the mean over images and over ALL classes (background included) of
    (2 Σ p·t + eps) / (Σ p² + Σ t² + eps), softmax probabilities p [N,H,W,C] against one-hot truth t of labels
    [N,H,W] (their dice_coef over pixels, averaged over the batch, then 1 - mean dice loss over classes).
    Unlabelled pixels (>= C) are left out of both sums (their data has none)."""
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels)
    count = probabilities.shape[0]
    probs = probabilities.reshape(count, -1, num_classes)
    flat = labels.reshape(count, -1)
    labelled = (flat < num_classes)[..., None]
    truth = (flat[..., None] == np.arange(num_classes)) & labelled
    probs = np.where(labelled, probs, 0.0)
    intersection = np.sum(probs * truth, axis=1)
    union = np.sum(probs * probs + truth, axis=1)  # t is 0/1: t*t == t
    return float(np.mean((2.0 * intersection + eps) / (union + eps)))


def evaluate_class_slices(probabilities, labels, num_classes):
    """Score slices of a C-class model. probabilities: [H,W,C] softmax maps per slice; labels: uint8 [H,W] per
    slice (IGNORE_LABEL = unlabelled).

    Returns scores_of(the summed confusion matrix) plus "dice_nvidia" (soft_dice_nvidia of the slices; a mean of
    per-slice values, so slices of different sizes are fine) and "slices": scores_of each slice on its own."""
    if len(probabilities) != len(labels):
        raise ValueError("{} predictions for {} ground-truth slices".format(len(probabilities), len(labels)))
    if not len(probabilities):
        raise ValueError("no slices to evaluate")
    slices, total, nvidia = [], np.zeros((num_classes, num_classes), np.int64), []
    for prob, label in zip(probabilities, labels):
        prob = np.asarray(prob)
        if prob.shape != np.asarray(label).shape + (num_classes,):
            raise ValueError("expected probabilities [H,W,{}] for labels {}, got {}".format(
                num_classes, np.asarray(label).shape, prob.shape))
        confusion = confusion_matrix(label, class_map(prob), num_classes)
        total += confusion
        slices.append(scores_of(confusion))
        nvidia.append(soft_dice_nvidia(prob[None], np.asarray(label)[None], num_classes))
    result = scores_of(total)
    result["dice_nvidia"] = float(np.mean(nvidia))
    result["slices"] = slices
    return result


def flat_scores(scores):
    """The scalars of one scores_of dict for logs and TensorBoard: mean_dice, mean_iou, pixel_accuracy,
    dice_class_<k>, iou_class_<k>."""
    flat = dict((key, float(scores[key])) for key in SUMMARY_KEYS)
    for name, values in (("dice", scores["dice_per_class"]), ("iou", scores["iou_per_class"])):
        flat.update(("{}_class_{}".format(name, k), float(value)) for k, value in enumerate(values))
    return flat


def labelled_accuracy(probabilities, labels, num_classes):
    """Fraction of labelled pixels whose argmax class is the true class (the probe's train accuracy, C >= 2)."""
    return scores_of(confusion_matrix(labels, class_map(probabilities), num_classes))["pixel_accuracy"]

