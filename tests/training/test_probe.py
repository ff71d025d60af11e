"""unet_perf.training.probe (the training probe's tiles and accuracy) and inference.rescale, which it shares with
inference."""
import numpy as np
import pytest

from unet_perf.data.sources import Pairs
from unet_perf.inference.tiling import normalize_array, rescale
from unet_perf.training.probe import centre_crop, pixel_accuracy, probe_tiles


def _pairs(count, height, width):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (count, height, width)).astype(np.uint8)
    masks = (rng.rand(count, height, width) > 0.5).astype(np.uint8)
    return Pairs(images, masks, [str(i) for i in range(count)])


def test_rescale_rounds_each_side_and_keeps_scale_one_untouched():
    image = np.arange(30, dtype=np.float32).reshape(5, 6)
    assert rescale(image, 1.0) is image
    assert rescale(image, 0.5).shape == (2, 3)  # round(2.5) = 2 (half to even), round(3.0) = 3
    assert rescale(image, 0.01).shape == (1, 1)  # never empty
    mask = np.array([[0, 1], [1, 0]], np.uint8)
    assert set(np.unique(rescale(mask, 3.0, interpolation=0)).tolist()) == {0, 1}  # nearest: still binary


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_probe_tiles_are_centre_crops_of_the_rescaled_slices(tiny_config, scale):
    cfg = tiny_config(crop_size=8, input_scale=scale, normalize="symmetric")
    pairs = _pairs(2, 20, 24)
    images, raws, masks = probe_tiles(cfg, pairs, 3)  # more tiles than slices: they repeat
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.float32
    assert raws.shape == masks.shape == (3, 8, 8) and raws.dtype == np.uint8
    np.testing.assert_array_equal(raws[2], raws[0])
    scaled = rescale(pairs.images[1].astype(np.float32), scale)
    top, left = (scaled.shape[0] - 8) // 2, (scaled.shape[1] - 8) // 2
    window = scaled[top:top + 8, left:left + 8]
    np.testing.assert_array_equal(raws[1], np.clip(window, 0, 255).astype(np.uint8))
    np.testing.assert_allclose(images[1, :, :, 0], normalize_array(window, "symmetric"), atol=1e-6)
    assert set(np.unique(masks).tolist()) <= {0, 1}


def test_centre_crop_mirror_pads_a_short_side():
    array = np.arange(12).reshape(3, 4)
    crop = centre_crop(array, 5)
    assert crop.shape == (5, 5)
    np.testing.assert_array_equal(crop[1:4, 0], array[:, 0])  # the 3 rows sit in the middle
    np.testing.assert_array_equal(crop[0], crop[1])  # "symmetric" padding repeats the edge row


def test_pixel_accuracy_thresholds_at_one_half():
    prob = np.array([0.2, 0.6, 0.5, 0.9], np.float32).reshape(1, 2, 2, 1)
    masks = np.array([0, 1, 1, 0], np.uint8).reshape(1, 2, 2)
    assert pixel_accuracy(prob, masks) == 0.5  # 0.5 is not interior; 0.9 over membrane is wrong
