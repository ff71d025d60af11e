"""NVIDIA UNet_Medical's accuracy protocol for `benchmarks/accuracy.py --folds K`.

Their split (utils/data_loader.py `_get_val_train_indices`): the slice indices 0..N-1 shuffled by numpy's legacy
global generator seeded with 0, rotated right by fold * N/5 (a deque rotation), the first 80% train, the rest
validate. With their N = 30 and 5 folds each slice is held out exactly once, 6 per fold (nvidia_fold reproduces
these sets; ../shared/data/isbi2012 has 24 labelled slices, so there a fold holds out 4 or 5).

Their reported "Dice" is 1 - their soft Dice loss on the validation fold: per image and per class (both classes,
membrane and interior) (2 sum p*t + eps) / (sum p^2 + sum t^2 + eps) of the softmax probabilities against the one-hot
labels, averaged over images and classes (inference.class_metrics.soft_dice_nvidia). They compute it at 388 x 388:
images and labels are resized from 512 to 388 (labels bilinear, then thresholded at 0.5). This benchmark reports it
both at the slices' own 512 x 512 (the model predicts the full slice) and after resampling probabilities and labels
to 388 x 388 the way their loader resamples labels.
"""
import cv2
import numpy as np

NVIDIA_SIZE = 388  # the output side of their valid-convolution U-Net, where their Dice is computed
NVIDIA_DICE = {"TF1 A100 1 GPU": 0.8908, "TF1 V100 1 GPU": 0.8910, "TF2 A100 1 GPU": 0.8900,
               "TF2 V100 1 GPU": 0.8901}  # FP32/TF32 rows of their README (../shared/reference/anchors.md)
NVIDIA_RANGE = (0.8900, 0.8942)  # over their 1-8 GPU, FP32 and AMP rows


def nvidia_fold(count, fold, folds=5):
    """(train indices, validation indices), each sorted, of fold `fold` of `folds` over `count` slices.

    NVIDIA's loader shuffles with numpy's legacy generator seeded 0 and rotates right by fold * count/5 before
    holding out the last fifth: fold k holds out chunk (4 - k) of the shuffled order. Here the shuffled order is cut
    into `folds` near-equal contiguous chunks (numpy.array_split) and fold k holds out chunk (folds - 1 - k): for 30
    slices and 5 folds exactly NVIDIA's sets, for other counts each slice is still held out exactly once."""
    if not 0 <= fold < folds <= count:
        raise ValueError("fold {} of {} does not fit {} slices".format(fold, folds, count))
    order = np.random.RandomState(0).permutation(count)  # == np.random.seed(0); np.random.shuffle(np.arange(count))
    held_out = np.array_split(order, folds)[folds - 1 - fold]
    return sorted(set(order.tolist()) - set(held_out.tolist())), sorted(held_out.tolist())


def two_class_probabilities(prob):
    """[H, W, 2] (membrane, interior) probabilities from a sigmoid model's P(interior) [H, W] or a 2-class softmax."""
    prob = np.asarray(prob, np.float32)
    if prob.ndim == 3:
        return prob
    return np.stack([1.0 - prob, prob], axis=-1)


def nvidia_resample(probs, labels, size=NVIDIA_SIZE):
    """Probabilities [H, W, C] and {0, 1} labels resized to size x size as NVIDIA's loader resizes labels
    (bilinear, then labels thresholded at 0.5)."""
    probs = cv2.resize(np.asarray(probs, np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    labels = cv2.resize(np.asarray(labels, np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    return probs, (labels >= 0.5).astype(np.uint8)
