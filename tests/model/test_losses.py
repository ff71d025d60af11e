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
