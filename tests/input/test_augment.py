"""The fused augmentation: exact identity/crop/dihedral/rescale, binary masks, seeding, elastic sigma, borders,
intensity, weight maps, static shapes, and agreement of the XLA and plain graphs."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from unet_perf.input import augment, geometry
from unet_perf.input import sampling
from unet_perf.compat import v1
from unet_perf.config import Config
from unet_perf.input.draws import batch_seed, draw

ALL_OFF = dict(flip=False, rotate_deg=0.0, scale_range=0.0, shear=0.0, translate=0.0, elastic=False,
               brightness=0.0, contrast=0.0, gamma=0.0, noise=0.0)


def make_cfg(**overrides):
    base = dict(input_scale=1.0, xla_augment="off")
    base.update(overrides)
    return dataclasses.replace(Config(), **base)


def random_batch(batch, height, width, seed=0):
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, (batch, height, width)).astype(np.uint8)
    masks = (rng.rand(batch, height, width) > 0.7).astype(np.uint8)
    return images, masks


def run(images, masks, cfg, out_size, seed=(0, 0), weights=None, xla=False):
    """Augment numpy arrays in the test's graph with the XLA or the plain-ops engine; returns numpy (image, mask,
    weights or None) [B, h, w]."""
    outputs = augment.augment_batch(tf.constant(images), tf.constant(masks),
                                     None if weights is None else tf.constant(weights), cfg, out_size,
                                     tf.constant(seed, tf.int64), engine="xla" if xla else "graph")
    with v1.Session() as sess:
        values = sess.run([output for output in outputs if output is not None])
    values = [value[..., 0] for value in values]
    return values[0], values[1], (values[2] if weights is not None else None)


def dihedral_variants(array):
    """The 8 flips/90° turns of a [H, W] array."""
    variants = []
    for transposed in (array, array.T):
        for k in range(4):
            variants.append(np.rot90(transposed, k))
    return variants


@pytest.mark.parametrize("xla", [False, True])
def test_everything_off_is_bit_exact_identity(xla):
    images, masks = random_batch(3, 20, 28)
    weights = np.random.RandomState(1).rand(3, 20, 28).astype(np.float32)
    for cfg in (make_cfg(augment=False), make_cfg(augment=True, **ALL_OFF)):
        image, mask, weight = run(images, masks, cfg, (20, 28), weights=weights, xla=xla)
        np.testing.assert_array_equal(image, images.astype(np.float32) / np.float32(255.0))
        np.testing.assert_array_equal(mask, masks.astype(np.float32))
        np.testing.assert_array_equal(weight, weights)


def test_random_crop_is_an_exact_window_of_the_source():
    images, masks = random_batch(6, 30, 40)
    image, mask, _ = run(images, masks, make_cfg(augment=False), (16, 16), seed=(3, 7))
    offsets = set()
    for sample in range(6):
        matches = [(top, left) for top in range(30 - 15) for left in range(40 - 15)
                   if np.array_equal(np.round(image[sample] * 255), images[sample, top:top + 16, left:left + 16])]
        assert len(matches) == 1, "sample {} is not a window of its source".format(sample)
        top, left = matches[0]
        np.testing.assert_array_equal(mask[sample], masks[sample, top:top + 16, left:left + 16])
        offsets.add(matches[0])
    assert len(offsets) > 1  # the crop position is random


@pytest.mark.parametrize("xla", [False, True])
def test_dihedral_equals_numpy_flips_and_rotations_exactly(xla):
    images, masks = random_batch(16, 24, 24)
    image, mask, _ = run(images, masks, make_cfg(augment=True, **dict(ALL_OFF, flip=True)), (24, 24),
                         seed=(0, 11), xla=xla)
    seen = set()
    for sample in range(16):
        source = images[sample].astype(np.float32) / np.float32(255.0)
        kinds = [k for k, variant in enumerate(dihedral_variants(source)) if np.array_equal(variant, image[sample])]
        assert kinds, "sample {} is not a flip/90° turn of its source".format(sample)
        np.testing.assert_array_equal(mask[sample], dihedral_variants(masks[sample].astype(np.float32))[kinds[0]])
        seen.add(kinds[0])
    assert len(seen) >= 3  # several of the 8 transforms occur in 16 draws


def test_input_scale_half_averages_pixel_pairs():
    """input_scale 0.5: output pixel j samples source position 2j + 0.5; on a 2x-upsampled image that is exact."""
    rng = np.random.RandomState(2)
    small = rng.randint(0, 256, (2, 16, 16)).astype(np.uint8)
    big = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)
    small_masks = (rng.rand(2, 16, 16) > 0.5).astype(np.uint8)
    big_masks = np.repeat(np.repeat(small_masks, 2, axis=1), 2, axis=2)
    image, mask, _ = run(big, big_masks, make_cfg(augment=False, input_scale=0.5), (16, 16))
    np.testing.assert_allclose(image, small / 255.0, atol=1e-6)
    np.testing.assert_array_equal(mask, small_masks)


@pytest.mark.parametrize("border", ["reflect", "nearest", "constant"])
@pytest.mark.parametrize("mask_interp", ["nearest", "bilinear"])
def test_masks_stay_binary_and_images_in_unit_range(border, mask_interp):
    images, masks = random_batch(4, 40, 40)
    cfg = make_cfg(border=border, mask_interp=mask_interp, rotate_deg=40.0, scale_range=0.3, translate=0.3,
                   elastic_sigma=6.0)
    image, mask, _ = run(images, masks, cfg, (32, 32), seed=(1, 2))
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert 0.5 < mask.mean() / masks.mean() < 1.5  # the mask moved with the image, not wiped or filled


def test_same_seed_same_batch_and_different_seed_different_batch():
    images, masks = random_batch(4, 32, 32)
    cfg = make_cfg(input_scale=0.8)
    first = run(images, masks, cfg, (24, 24), seed=(5, 9))
    again = run(images, masks, cfg, (24, 24), seed=(5, 9))
    other_batch = run(images, masks, cfg, (24, 24), seed=(5, 10))
    other_seed = run(images, masks, cfg, (24, 24), seed=(6, 9))
    for index in (0, 1):
        np.testing.assert_array_equal(first[index], again[index])
    assert not np.array_equal(first[0], other_batch[0])
    assert not np.array_equal(first[0], other_seed[0])


def test_elastic_displacement_at_grid_points_has_configured_sigma():
    """Only the elastic part on: the map minus the identity, read at the 3x3 control points, is N(0, sigma)."""
    sigma, grid, size, batch = 7.0, 3, 33, 200
    cfg = make_cfg(**dict(ALL_OFF, elastic=True, elastic_sigma=sigma, elastic_grid=grid))
    draws = draw(cfg, batch, (size, size), tf.constant([4, 2], tf.int64))
    x, y = geometry.coordinate_map(cfg, (size, size), (size, size), draws)
    with v1.Session() as sess:
        x, y = sess.run([x, y])
    points = [0, size // 2, size - 1]  # where the control points sit (corners and centre)
    columns, rows = np.meshgrid(np.arange(size), np.arange(size))
    dx = (x - columns)[:, points][:, :, points]
    dy = (y - rows)[:, points][:, :, points]
    samples = np.concatenate([dx.ravel(), dy.ravel()])  # 2 * 9 * batch independent N(0, sigma) draws
    n = samples.size
    # std of a sample std is sigma / sqrt(2n); of a sample mean sigma / sqrt(n): allow 4 of each
    assert abs(samples.std() - sigma) < 4 * sigma / np.sqrt(2 * n)
    assert abs(samples.mean()) < 4 * sigma / np.sqrt(n)
    # between control points the field is smooth: neighbouring pixels move by much less than sigma
    assert np.abs(np.diff(x - columns, axis=2)).max() < sigma / 2


def test_cubic_weights_interpolate_the_control_points():
    weights = geometry.cubic_weights(9, 3)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(weights[[0, 4, 8]], np.eye(3), atol=1e-6)
    np.testing.assert_allclose(weights, weights[::-1, ::-1], atol=1e-6)  # symmetric about the centre
    # Keys' cubic (a = -0.5) reproduces quadratics exactly where all four taps are inside the grid
    dense = geometry.cubic_weights(51, 6)  # control points at rows 0, 10, ..., 50
    quadratic = np.arange(6.0) ** 2
    interior = slice(10, 41)
    np.testing.assert_allclose((dense @ quadratic)[interior], (np.arange(51) / 10.0)[interior] ** 2, atol=1e-4)


def test_border_folding():
    coords = tf.constant([-3.0, -0.5, 0.0, 5.0, 9.0, 10.5, 12.0])
    reflect, _ = sampling.fold_border(coords, 10, "reflect")
    nearest, _ = sampling.fold_border(coords, 10, "nearest")
    constant, fade = sampling.fold_border(coords, 10, "constant")
    with v1.Session() as sess:
        reflect, nearest, constant, fade = sess.run([reflect, nearest, constant, fade])
    np.testing.assert_allclose(reflect, [3.0, 0.5, 0.0, 5.0, 9.0, 7.5, 6.0])
    np.testing.assert_allclose(nearest, [0.0, 0.0, 0.0, 5.0, 9.0, 9.0, 9.0])
    np.testing.assert_allclose(constant, [0.0, 0.0, 0.0, 5.0, 9.0, 9.0, 9.0])
    np.testing.assert_allclose(fade, [0.0, 0.5, 1.0, 1.0, 1.0, 0.0, 0.0])


def bilinear_of_zero_padded(image, xs, ys, pad=16):
    """numpy reference: bilinear samples of `image` [H, W] padded with zeros, at columns xs x rows ys."""
    padded = np.pad(image.astype(np.float64), pad)
    x, y = np.asarray(xs) + pad, np.asarray(ys) + pad
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[None, :], (y - y0)[:, None]
    top = padded[y0][:, x0] * (1 - fx) + padded[y0][:, x0 + 1] * fx
    bottom = padded[y0 + 1][:, x0] * (1 - fx) + padded[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.mark.parametrize("xla", [False, True])
def test_constant_border_samples_a_zero_padded_source(xla):
    """input_scale 0.5 on a 16 px source with a 16 px output: the 32 px window is centred on the slice, output
    pixel j samples source position 2j - 7.5, so rows/columns 0-3 and 12-15 lie wholly outside the source."""
    images, masks = random_batch(2, 16, 16, seed=3)
    masks[:] = 1  # an all-ones mask shows where the border cuts it
    image, mask, _ = run(images, masks, make_cfg(augment=False, input_scale=0.5, border="constant"), (16, 16),
                         xla=xla)
    positions = 2.0 * np.arange(16) - 7.5
    outside = (positions < 0) | (positions > 15)
    for sample in range(2):
        np.testing.assert_allclose(image[sample], bilinear_of_zero_padded(images[sample] / 255.0, positions,
                                                                           positions), atol=1e-6)
        assert not image[sample][outside].any() and not image[sample][:, outside].any()
        np.testing.assert_array_equal(mask[sample], np.outer(~outside, ~outside).astype(np.float32))


def test_brightness_shifts_each_image_uniformly_and_leaves_masks_alone():
    images, masks = random_batch(4, 16, 16)
    images = (images // 2 + 64).astype(np.uint8)  # 64..191: a shift of <= 0.2 never clips
    cfg = make_cfg(augment=True, **dict(ALL_OFF, brightness=0.2))
    image, mask, _ = run(images, masks, cfg, (16, 16), seed=(0, 3))
    shift = image - images / 255.0
    per_sample = shift.reshape(4, -1)
    np.testing.assert_allclose(per_sample, per_sample[:, :1] * np.ones_like(per_sample), atol=1e-5)
    assert np.all(np.abs(per_sample[:, 0]) <= 0.2) and np.abs(per_sample[:, 0]).max() > 0.01
    np.testing.assert_array_equal(mask, masks)


def test_noise_is_zero_mean_with_bounded_std():
    images = np.full((4, 32, 32), 128, np.uint8)
    masks = np.zeros((4, 32, 32), np.uint8)
    cfg = make_cfg(augment=True, **dict(ALL_OFF, noise=0.05))
    image, _, _ = run(images, masks, cfg, (32, 32), seed=(0, 4))
    residual = (image - 128 / 255.0).reshape(4, -1)
    stds = residual.std(axis=1)
    assert np.all(stds <= 0.05 * 1.15) and stds.max() > 0.005
    assert np.all(np.abs(residual.mean(axis=1)) < 4 * stds / np.sqrt(residual.shape[1]) + 1e-6)
    assert not np.allclose(residual[0], residual[1])  # samples do not share one noise pattern


def test_weight_map_moves_with_the_image():
    images, masks = random_batch(3, 40, 40)
    weights = images.astype(np.float32)  # a weight map equal to the image must come out equal to it
    cfg = make_cfg(augment=True, brightness=0.0, contrast=0.0, gamma=0.0, noise=0.0, rotate_deg=30.0)
    image, _, weight = run(images, masks, cfg, (24, 24), seed=(2, 2), weights=weights)
    np.testing.assert_allclose(weight / 255.0, image, atol=1e-5)


def test_outputs_have_static_shapes_and_dtypes():
    images, masks = random_batch(2, 30, 30)
    outputs = augment.augment_batch(tf.constant(images), tf.constant(masks), tf.zeros([2, 30, 30]),
                                    make_cfg(), (16, 16), batch_seed(0, 5), engine="graph")
    for output in outputs:
        assert output.shape.as_list() == [2, 16, 16, 1]
        assert output.dtype == tf.float32


def test_xla_and_plain_graphs_agree():
    images, masks = random_batch(4, 48, 48)
    cfg = make_cfg(input_scale=0.75)
    plain = run(images, masks, cfg, (32, 32), seed=(1, 1), xla=False)
    compiled = run(images, masks, cfg, (32, 32), seed=(1, 1), xla=True)
    np.testing.assert_allclose(compiled[0], plain[0], atol=1e-4)
    assert np.mean(compiled[1] == plain[1]) > 0.999  # a mask pixel may flip where rounding sits at 0.5
