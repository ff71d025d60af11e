"""Losses against NumPy references, stability at extreme logits, weighting and the kind switch."""
import numpy as np
import pytest

from unet_perf.compat import v1
from unet_perf.errors import UserError
from unet_perf.model.losses import bce, compute_loss, soft_dice


def _run(tensor):
    with v1.Session() as sess:
        return sess.run(tensor)


def _np_bce(logits, masks):
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return -(masks * np.log(probs) + (1 - masks) * np.log(1 - probs))


def _np_dice(logits, masks):
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    axes = (1, 2, 3)
    inter = (probs * masks).sum(axis=axes)
    total = probs.sum(axis=axes) + masks.sum(axis=axes)
    return 1.0 - np.mean((2 * inter + 1.0) / (total + 1.0))


@pytest.fixture
def sample():
    rng = np.random.RandomState(3)
    logits = rng.randn(2, 8, 8, 1).astype(np.float32) * 3
    masks = (rng.rand(2, 8, 8, 1) > 0.4).astype(np.float32)
    weights = rng.uniform(0.5, 10.0, size=(2, 8, 8, 1)).astype(np.float32)
    return logits, masks, weights


def test_bce_matches_numpy_and_weighted_average(sample):
    logits, masks, weights = sample
    plain, weighted = _run([bce(logits, masks), bce(logits, masks, weights)])
    ce = _np_bce(logits, masks)
    assert plain == pytest.approx(ce.mean(), rel=1e-5)
    assert weighted == pytest.approx((weights * ce).sum() / weights.sum(), rel=1e-5)


def test_uniform_weights_equal_plain_bce(sample):
    logits, masks, _ = sample
    plain, uniform = _run([bce(logits, masks), bce(logits, masks, np.full_like(masks, 7.0))])
    assert uniform == pytest.approx(plain, rel=1e-6)


def test_bce_is_stable_at_extreme_logits():
    logits = np.array([200.0, -200.0, 200.0, -200.0], np.float32).reshape(1, 2, 2, 1)
    masks = np.array([1.0, 0.0, 0.0, 1.0], np.float32).reshape(1, 2, 2, 1)
    value = _run(bce(logits, masks))
    assert np.isfinite(value)
    assert value == pytest.approx(100.0, rel=1e-5)  # two pixels right (0), two wrong (200 each)


def test_soft_dice_matches_numpy_and_bounds(sample):
    logits, masks, _ = sample
    perfect = np.where(masks > 0, 50.0, -50.0).astype(np.float32)
    value, best, worst = _run([soft_dice(logits, masks), soft_dice(perfect, masks), soft_dice(-perfect, masks)])
    assert value == pytest.approx(_np_dice(logits, masks), rel=1e-5)
    assert best < 0.02
    assert worst > 0.95


def test_compute_loss_kinds(sample):
    logits, masks, weights = sample
    b, d, both = _run([compute_loss(logits, masks, weights, "bce"), compute_loss(logits, masks, weights, "dice"),
                       compute_loss(logits, masks, weights, "bce_dice")])
    assert both == pytest.approx(b + d, rel=1e-6)
    assert d == pytest.approx(_np_dice(logits, masks), rel=1e-5)
    with pytest.raises(UserError, match="--loss"):
        compute_loss(logits, masks, None, "focal")


# --- --num_classes 1 stays the sigmoid loss; C >= 2 is a softmax over the classes -------------------------------

def test_c1_loss_is_the_sigmoid_cross_entropy_mean_bitwise(sample):
    import tensorflow as tf
    logits, masks, _ = sample
    reference = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=masks, logits=logits))
    values = _run([reference, compute_loss(logits, masks, None, "bce"), compute_loss(logits, masks, None, "ce")])
    assert values[0].tobytes() == values[1].tobytes() == values[2].tobytes()
    both, alias = _run([compute_loss(logits, masks, None, "bce_dice"), compute_loss(logits, masks, None, "ce_dice")])
    assert both.tobytes() == alias.tobytes()


def _training_op_types(cfg):
    """Op types of cfg's training graph, the loop body's functions included (control flow v2 keeps them there)."""
    from unet_perf.training import assembly
    graph_def = assembly.build(cfg, assembly.cached_batch_source(cfg)).graph.as_graph_def()
    nodes = list(graph_def.node) + [node for function in graph_def.library.function for node in function.node_def]
    return {node.op for node in nodes}


def test_only_multiclass_training_graphs_have_a_softmax(tiny_config):
    softmax_ops = {"Softmax", "LogSoftmax", "SparseSoftmaxCrossEntropyWithLogits", "SoftmaxCrossEntropyWithLogits"}
    assert not _training_op_types(tiny_config(loss="bce_dice")) & softmax_ops
    assert _training_op_types(tiny_config(loss="bce_dice", num_classes=3)) & softmax_ops == {
        "SparseSoftmaxCrossEntropyWithLogits", "Softmax"}


IGNORE = 255.0


@pytest.fixture
def classes_sample():
    """Logits [3, 6, 6, 4], class ids with about 20% unlabelled pixels, and a weight map."""
    rng = np.random.RandomState(5)
    logits = (rng.randn(3, 6, 6, 4) * 2).astype(np.float32)
    ids = rng.randint(0, 4, (3, 6, 6, 1)).astype(np.float32)
    ids[rng.rand(3, 6, 6, 1) < 0.2] = IGNORE
    weights = rng.uniform(0.5, 10.0, size=(3, 6, 6, 1)).astype(np.float32)
    return logits, ids, weights


def _np_softmax(logits):
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _np_softmax_ce(logits, ids, pixel_weights=None):
    """Weighted mean of -log p_y over the labelled pixels (weights: per pixel [B, h, w, 1] or None)."""
    labelled = ids[..., 0] != IGNORE
    probs = _np_softmax(logits)
    y = np.where(labelled, ids[..., 0], 0).astype(int)
    ce = -np.log(np.take_along_axis(probs, y[..., None], axis=-1)[..., 0])
    weight = labelled * (1.0 if pixel_weights is None else pixel_weights[..., 0])
    return (weight * ce).sum() / weight.sum()


def _np_dice_classes(logits, ids, background=True):
    labelled = (ids[..., 0] != IGNORE)[..., None]
    probs = _np_softmax(logits) * labelled
    truth = (ids == np.arange(logits.shape[-1])) * labelled
    inter = (probs * truth).sum(axis=(1, 2))
    total = probs.sum(axis=(1, 2)) + truth.sum(axis=(1, 2))
    dice = (2 * inter + 1.0) / (total + 1.0)
    return 1.0 - (dice if background else dice[:, 1:]).mean()


def test_softmax_ce_matches_numpy_over_labelled_pixels(classes_sample):
    logits, ids, weights = classes_sample
    plain, weighted, alias = _run([compute_loss(logits, ids, None, "bce"), compute_loss(logits, ids, weights, "ce"),
                                   compute_loss(logits, ids, None, "ce")])
    assert plain == pytest.approx(_np_softmax_ce(logits, ids), rel=1e-5)
    assert weighted == pytest.approx(_np_softmax_ce(logits, ids, weights), rel=1e-5)
    assert alias == plain


def test_class_weights_give_the_weighted_mean_and_uniform_weights_the_plain_loss(classes_sample):
    logits, ids, _ = classes_sample
    class_weights = [0.5, 2.0, 1.0, 4.0]
    per_pixel = np.where(ids == IGNORE, 0.0, np.take(class_weights, np.where(ids == IGNORE, 0, ids).astype(int)))
    weighted, uniform, plain = _run([compute_loss(logits, ids, None, "ce", class_weights=class_weights),
                                     compute_loss(logits, ids, None, "ce", class_weights=[3.0] * 4),
                                     compute_loss(logits, ids, None, "ce")])
    assert weighted == pytest.approx(_np_softmax_ce(logits, ids, per_pixel), rel=1e-5)
    assert weighted != pytest.approx(plain, rel=1e-3)
    assert uniform == pytest.approx(plain, rel=1e-6)
    with pytest.raises(ValueError, match="class weights"):
        compute_loss(logits, ids, None, "ce", class_weights=[1.0, 2.0])


def test_soft_dice_over_classes_with_and_without_background(classes_sample):
    logits, ids, _ = classes_sample
    with_bg, without_bg, both = _run([
        compute_loss(logits, ids, None, "dice"), compute_loss(logits, ids, None, "dice", dice_background=False),
        compute_loss(logits, ids, None, "ce_dice", dice_background=False)])
    assert with_bg == pytest.approx(_np_dice_classes(logits, ids), rel=1e-5)
    assert without_bg == pytest.approx(_np_dice_classes(logits, ids, background=False), rel=1e-5)
    assert with_bg != pytest.approx(without_bg, rel=1e-3)
    assert both == pytest.approx(_np_softmax_ce(logits, ids) + without_bg, rel=1e-5)
    perfect = np.where(ids == np.arange(4), 30.0, -30.0).astype(np.float32)
    assert _run(compute_loss(perfect, ids, None, "dice")) < 0.05


@pytest.mark.parametrize("kind", ["ce", "dice", "ce_dice"])
def test_unlabelled_pixels_change_neither_the_loss_nor_its_gradient(classes_sample, kind):
    import tensorflow as tf
    logits, ids, weights = classes_sample
    unlabelled = np.broadcast_to(ids == IGNORE, logits.shape)
    other = np.where(unlabelled, logits * -3.0 + 7.0, logits).astype(np.float32)  # only unlabelled pixels differ
    results = []
    for values in (logits, other):
        tensor = tf.constant(values)
        loss = compute_loss(tensor, ids, weights if kind != "dice" else None, kind, class_weights=None)
        results.append(_run([loss, tf.gradients(loss, tensor)[0]]))
    (loss_a, grad_a), (loss_b, grad_b) = results
    assert loss_a == loss_b
    np.testing.assert_array_equal(grad_a, grad_b)
    assert not grad_a[unlabelled].any()  # no gradient at all where there is no label
    assert np.abs(grad_a[~unlabelled]).max() > 0


def test_no_labelled_pixel_gives_a_finite_zero_cross_entropy(classes_sample):
    logits, ids, _ = classes_sample
    assert _run(compute_loss(logits, np.full_like(ids, IGNORE), None, "ce")) == 0.0


@pytest.mark.parametrize("kind,class_weights", [("ce", None), ("ce", [0.5, 2.0, 1.0, 4.0]), ("ce_dice", None)])
def test_worker_shares_with_the_global_normaliser_equal_the_whole_batch(classes_sample, kind, class_weights):
    """N x B == 1 x N*B: each of 2 workers normalises its share by the mean over workers of weight_sum (what
    assembly.make_loss_fn all-reduces); the mean of their losses is the whole batch's loss."""
    from unet_perf.model.losses import weight_sum
    logits, ids, weights = classes_sample
    logits, ids, weights = [np.concatenate([a, a[:1]]) for a in (logits, ids, weights)]  # 4 images: 2 shares of 2
    ids[2:][np.random.RandomState(0).rand(*ids[2:].shape) < 0.5] = IGNORE  # the second share has fewer labels
    weights = None if class_weights else weights  # --class_weights and --weight_map exclude each other
    share = [slice(0, 2), slice(2, 4)]

    def part(array, r):
        return None if array is None else array[share[r]]

    whole = compute_loss(logits, ids, weights, kind, class_weights=class_weights)
    sums = [weight_sum(part(ids, r), 4, part(weights, r), class_weights) for r in range(2)]
    mean_sum = (sums[0] + sums[1]) / 2.0
    global_norm = [compute_loss(part(logits, r), part(ids, r), part(weights, r), kind, weight_total=mean_sum,
                                class_weights=class_weights) for r in range(2)]
    local_norm = [compute_loss(part(logits, r), part(ids, r), part(weights, r), kind, class_weights=class_weights)
                  for r in range(2)]
    whole, global_norm, local_norm = _run([whole, global_norm, local_norm])
    assert np.mean(global_norm) == pytest.approx(whole, rel=1e-6)
    assert abs(np.mean(local_norm) - whole) > 1e-3 * abs(whole)  # per-share normalisation would differ


def test_loss_fn_takes_class_weights_from_the_argument_or_an_explicit_config_list(tiny_config):
    import dataclasses
    import tensorflow as tf
    from unet_perf.training.assembly import make_loss_fn
    cfg = tiny_config(num_classes=3, dropout=0.0)
    rng = np.random.RandomState(2)
    batch = (tf.constant(rng.rand(2, 32, 32, 1).astype(np.float32)),
             tf.constant(rng.randint(0, 3, (2, 32, 32, 1)).astype(np.float32)))
    step = tf.constant(0, tf.int64)
    plain = make_loss_fn(cfg, False)(batch, step)
    given = make_loss_fn(cfg, False, class_weights=[1.0, 1.0, 5.0])(batch, step)
    listed = make_loss_fn(dataclasses.replace(cfg, class_weights="1,1,5"), False)(batch, step)
    with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        plain, given, listed = sess.run([plain, given, listed])
    assert given == listed and given != pytest.approx(plain, rel=1e-4)
    with pytest.raises(ValueError, match="auto"):  # the caller computes 'auto' from the training set
        make_loss_fn(dataclasses.replace(cfg, class_weights="auto"), False)
    make_loss_fn(dataclasses.replace(cfg, class_weights="auto"), False, class_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="num_classes 3"):
        make_loss_fn(cfg, False, class_weights=[1.0, 2.0])
