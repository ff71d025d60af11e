"""The augmentation engines (xla, graph, opencv): same draws, same output within interpolation tolerance, exact
where the map is exact (identity, crops, flips, borders at integer positions), how the engine is chosen, and that
the engine description names why XLA is off (no silent fallback)."""
import dataclasses
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from unet_perf import compat
from unet_perf.input import augment, geometry
from unet_perf.input import opencv_engine
from unet_perf.compat import v1
from unet_perf.config import Config
from unet_perf.data.classes import IGNORE_LABEL
from unet_perf.errors import UserError
from unet_perf.input.draws import draw

ALL_OFF = dict(flip=False, rotate_deg=0.0, scale_range=0.0, shear=0.0, translate=0.0, elastic=False,
               brightness=0.0, contrast=0.0, gamma=0.0, noise=0.0)
ENGINES = ["graph", "opencv"] + (["xla"] if compat.xla_jit_available() else [])


def make_cfg(**overrides):
    base = dict(input_scale=1.0)
    base.update(overrides)
    return dataclasses.replace(Config(), **base)


def smooth_batch(batch, size, seed=0):
    """Images with structure at several scales (interpolation differences stay small), masks from a threshold."""
    rng = np.random.RandomState(seed)
    images = np.stack([cv2.GaussianBlur(rng.rand(size, size).astype(np.float32), (0, 0), 2.0) for _ in range(batch)])
    images = (255 * (images - images.min()) / (images.max() - images.min())).astype(np.uint8)
    masks = (images > np.median(images)).astype(np.uint8)
    return images, masks


def run(images, masks, cfg, out_size, engine, seed=(0, 0), weights=None):
    outputs = augment.augment_batch(tf.constant(images), tf.constant(masks),
                                    None if weights is None else tf.constant(weights), cfg, out_size,
                                    tf.constant(seed, tf.int64), engine=engine)
    for output in outputs:
        if output is not None:
            assert output.shape.as_list() == [len(images), out_size[0], out_size[1], 1]
    with v1.Session() as sess:
        values = sess.run([output for output in outputs if output is not None])
    values = [value[..., 0] for value in values]
    return values[0], values[1], (values[2] if weights is not None else None)


def away_from_edges(masks):
    """Pixels whose 3x3 neighbourhood in the mask is uniform (where nearest sampling cannot flip)."""
    kernel = np.ones((3, 3), np.uint8)
    return np.stack([cv2.erode(m, kernel) == cv2.dilate(m, kernel) for m in masks.astype(np.uint8)])


@pytest.mark.parametrize("engine", [e for e in ENGINES if e != "graph"])
@pytest.mark.parametrize("border,mask_interp", [("reflect", "nearest"), ("nearest", "nearest"),
                                                ("constant", "nearest"), ("reflect", "bilinear")])
def test_full_augmentation_matches_the_graph_engine(engine, border, mask_interp):
    images, masks = smooth_batch(6, 64)
    weights = np.random.RandomState(3).rand(6, 64, 64).astype(np.float32)
    cfg = make_cfg(border=border, mask_interp=mask_interp, rotate_deg=30.0, scale_range=0.2, translate=0.2,
                   elastic_sigma=4.0)
    reference = run(images, masks, cfg, (48, 48), "graph", seed=(2, 7), weights=weights)
    other = run(images, masks, cfg, (48, 48), engine, seed=(2, 7), weights=weights)
    assert np.abs(reference[0] - other[0]).mean() < 0.01
    inside = away_from_edges(reference[1])
    assert inside.mean() > 0.3
    assert (reference[1] == other[1])[inside].mean() > 0.999
    assert (reference[1] == other[1]).mean() > 0.97
    assert np.abs(reference[2] - other[2]).mean() < 0.02


@pytest.mark.parametrize("engine", ENGINES)
def test_everything_off_is_exact_identity(engine):
    images, masks = smooth_batch(3, 24)
    weights = np.random.RandomState(1).rand(3, 24, 24).astype(np.float32)
    for cfg in (make_cfg(augment=False), make_cfg(augment=True, **ALL_OFF)):
        image, mask, weight = run(images, masks, cfg, (24, 24), engine, weights=weights)
        np.testing.assert_array_equal(image, images.astype(np.float32) / np.float32(255.0))
        np.testing.assert_array_equal(mask, masks.astype(np.float32))
        np.testing.assert_allclose(weight, weights, rtol=1e-6)


def test_opencv_dihedral_and_crop_are_exact():
    rng = np.random.RandomState(4)
    images = rng.randint(0, 256, (12, 20, 20)).astype(np.uint8)
    masks = (rng.rand(12, 20, 20) > 0.5).astype(np.uint8)
    cfg = make_cfg(augment=True, **dict(ALL_OFF, flip=True))
    image, mask, _ = run(images, masks, cfg, (20, 20), "opencv", seed=(0, 11))
    reference = run(images, masks, cfg, (20, 20), "graph", seed=(0, 11))
    np.testing.assert_array_equal(image, reference[0])
    np.testing.assert_array_equal(mask, reference[1])
    crop = run(images, masks, make_cfg(augment=False), (8, 8), "opencv", seed=(3, 1))
    np.testing.assert_array_equal(crop[0], run(images, masks, make_cfg(augment=False), (8, 8), "graph",
                                               seed=(3, 1))[0])


@pytest.mark.parametrize("border,pad_mode", [("reflect", "reflect"), ("nearest", "edge"), ("constant", "constant")])
def test_opencv_border_modes_equal_numpy_padding(border, pad_mode):
    """A 32x32 tile centred on a 20x20 slice reaches 6 px beyond every edge, at integer positions."""
    images, masks = smooth_batch(2, 20)
    image, mask, _ = run(images, masks, make_cfg(augment=False, border=border), (32, 32), "opencv")
    for sample in range(2):
        np.testing.assert_array_equal(image[sample], np.pad(images[sample], 6, pad_mode) / np.float32(255.0))
        np.testing.assert_array_equal(mask[sample], np.pad(masks[sample], 6, pad_mode))


# --- class maps (--num_classes >= 2): nearest sampling keeps the ids, outside the image is unlabelled --------------

def class_map_batch(batch, size):
    """Images and C = 3 class maps (ids 0..2 by intensity band) with an unlabelled square (IGNORE_LABEL) in each."""
    images, _ = smooth_batch(batch, size)
    labels = np.digitize(images, np.percentile(images, [40, 75])).astype(np.uint8)
    labels[:, 20:30, 20:30] = IGNORE_LABEL
    return images, labels


def source_neighbours(labels, cfg, out_size, seed):
    """[4, B, h, w]: the 4 source pixels around each output pixel's position in the graph engines' map (folded like
    sampling.fold_border under reflect; IGNORE_LABEL where outside the image under the constant border)."""
    batch, height, width = labels.shape
    x, y = geometry.coordinate_map(cfg, (height, width), out_size, draw(cfg, batch, out_size,
                                                                          tf.constant(seed, tf.int64)))
    with v1.Session() as sess:
        x, y = sess.run([x, y])
    corners = []
    for coord, length in ((x, width), (y, height)):
        last = length - 1.0
        if cfg.border == "reflect":
            coord = np.clip(last - np.abs(last - np.abs(coord)), 0.0, last)
            low = np.minimum(np.floor(coord), length - 2)
        else:
            low = np.floor(coord)
        corners.append((low.astype(int), low.astype(int) + 1))
    rows = np.arange(batch)[:, None, None]
    found = []
    for cx in corners[0]:
        for cy in corners[1]:
            inside = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
            values = labels[rows, np.clip(cy, 0, height - 1), np.clip(cx, 0, width - 1)]
            found.append(np.where(inside, values, IGNORE_LABEL))
    return np.stack(found).astype(np.float32)


@pytest.mark.parametrize("border", ["reflect", "constant"])
def test_engines_give_the_same_class_maps_on_the_same_draws(border):
    images, labels = class_map_batch(6, 64)
    cfg = make_cfg(num_classes=3, border=border, rotate_deg=30.0, scale_range=0.2, translate=0.2, elastic_sigma=4.0)
    seed = (5, 5)
    maps = {engine: run(images, labels, cfg, (48, 48), engine, seed=seed)[1] for engine in ENGINES}
    neighbours = source_neighbours(labels, cfg, (48, 48), seed)
    for engine, values in maps.items():
        assert set(np.unique(values)) == {0.0, 1.0, 2.0, float(IGNORE_LABEL)}, engine
        # nearest sampling: every output pixel is one of its 4 source neighbours (ids and 255 alike), never a blend
        assert (neighbours == values[None]).any(axis=0).all(), engine
    if "xla" in maps:  # the same ops with and without XLA: exactly equal
        np.testing.assert_array_equal(maps["xla"], maps["graph"])
    # OpenCV builds its map with cv2.gemm (the graph map to ~1e-3 px, test_opencv_map_equals_the_graph_map) and
    # decides "outside" per rounded position rather than by the constant border's fade >= 0.5, so a pixel whose
    # position lies within that distance of a rounding boundary may take the other neighbour: measured on this
    # config over 40 draws, at most 2 pixels of 13,824 (1.4e-4) differ, none for most draws.
    assert (maps["opencv"] != maps["graph"]).mean() <= 1e-3
    if border == "constant":  # outside the image is unlabelled (255), not class 0
        outside = (source_neighbours(np.zeros_like(labels), cfg, (48, 48), seed) == IGNORE_LABEL).all(axis=0)
        assert outside.mean() > 0.01
        for values in maps.values():
            assert (values[outside] == IGNORE_LABEL).all()


@pytest.mark.parametrize("engine", ENGINES)
def test_constant_border_pads_class_maps_with_the_unlabelled_value(engine):
    """A 32x32 tile centred on a 20x20 slice reaches 6 px beyond every edge: C = 3 pads with IGNORE_LABEL."""
    images, labels = class_map_batch(2, 20)
    labels[:, 2:5, 2:5] = 2
    _, mask, _ = run(images, labels, make_cfg(augment=False, border="constant", num_classes=3), (32, 32), engine)
    for sample in range(2):
        np.testing.assert_array_equal(mask[sample], np.pad(labels[sample], 6, "constant",
                                                           constant_values=IGNORE_LABEL))


def test_opencv_map_equals_the_graph_map():
    cfg = make_cfg(rotate_deg=25.0, scale_range=0.2, shear=0.1, translate=0.1, elastic_sigma=6.0)
    draws = draw(cfg, 4, (40, 36), tf.constant([1, 2], tf.int64))
    x, y = geometry.coordinate_map(cfg, (50, 60), (40, 36), draws)
    a, b, c, d = geometry.linear_part(draws["uniforms"], cfg)
    centre_x, centre_y = geometry.tile_centre(draws["uniforms"], cfg, (50, 60), (40, 36))
    with v1.Session() as sess:
        x, y, affine, offsets = sess.run([x, y, tf.stack([a, b, c, d, centre_x, centre_y], 1), draws["elastic"]])
    for sample in range(4):
        map_x, map_y = opencv_engine.coordinate_maps(affine[sample], offsets[sample], (40, 36))
        np.testing.assert_allclose(map_x, x[sample], atol=1e-3)
        np.testing.assert_allclose(map_y, y[sample], atol=1e-3)


def test_opencv_engine_is_deterministic_and_seeded():
    images, masks = smooth_batch(4, 40)
    cfg = make_cfg()
    first = run(images, masks, cfg, (32, 32), "opencv", seed=(5, 9))
    again = run(images, masks, cfg, (32, 32), "opencv", seed=(5, 9))
    other = run(images, masks, cfg, (32, 32), "opencv", seed=(5, 10))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    assert set(np.unique(first[1])) <= {0.0, 1.0} and 0.0 <= first[0].min() and first[0].max() <= 1.0


def test_opencv_weights_move_with_the_image():
    images, masks = smooth_batch(3, 40)
    cfg = make_cfg(brightness=0.0, contrast=0.0, gamma=0.0, noise=0.0, rotate_deg=30.0)
    image, _, weight = run(images, masks, cfg, (24, 24), "opencv", seed=(2, 2), weights=images.astype(np.float32))
    # the image is rounded to uint8 after sampling, the weights are not
    np.testing.assert_allclose(weight / 255.0, image, atol=0.6 / 255.0)


def test_resolve_engine_flags_and_aliases(monkeypatch):
    assert augment.resolve_engine(make_cfg(augment_engine="opencv")) == "opencv"
    assert augment.resolve_engine(make_cfg(augment_engine="graph", xla_augment="off")) == "graph"
    assert augment.resolve_engine(make_cfg(xla_augment="on")) == "xla"
    assert augment.resolve_engine(make_cfg(xla_augment="off")) == "graph"
    monkeypatch.setattr(compat, "xla_jit_available", lambda: False)
    assert augment.resolve_engine(make_cfg()) == "opencv"
    monkeypatch.setattr(compat, "xla_jit_available", lambda: True)
    assert augment.resolve_engine(make_cfg()) == "xla"


@pytest.mark.parametrize("xla_augment,engine", [("on", "graph"), ("on", "opencv"), ("off", "xla")])
def test_contradictory_engine_flags_are_a_user_error(xla_augment, engine):
    with pytest.raises(UserError, match="--xla_augment"):
        make_cfg(xla_augment=xla_augment, augment_engine=engine).validate()
    make_cfg(xla_augment="off", augment_engine="opencv").validate()


def test_engine_description_names_the_reason_xla_is_off(monkeypatch):
    assert augment.describe_engine(Config(xla_augment="off")) == "graph"
    assert augment.describe_engine(Config(augment_engine="opencv")) == "opencv"
    monkeypatch.setattr(compat, "_XLA_JIT_STATUS", [(False, "InvalidArgumentError: no XLA kernels")])
    assert augment.describe_engine(Config(xla_augment="auto")) == \
        "opencv (XLA unavailable: InvalidArgumentError: no XLA kernels)"
    monkeypatch.setattr(compat, "_XLA_JIT_STATUS", [(True, "")])
    assert augment.describe_engine(Config(xla_augment="auto")) == "xla"


def test_xla_probe_reports_why_it_failed(monkeypatch):
    def broken(fn):
        raise RuntimeError("XLA compilation is not supported here\nsecond line")
    monkeypatch.setattr(compat, "_XLA_JIT_STATUS", [])
    monkeypatch.setattr(compat, "xla_function", broken)
    assert compat.xla_jit_status() == (False, "RuntimeError: XLA compilation is not supported here")
    assert compat.xla_jit_available() is False


def test_opencv_engine_keeps_the_bundled_openblas_to_one_thread():
    # cv2.gemm builds the coordinate maps; OpenBLAS threads left on spin on every other core after each product
    library = opencv_engine.bundled_openblas()
    if library is None or (os.cpu_count() or 1) < 2:
        pytest.skip("this OpenCV ships no OpenBLAS of its own, or one core only: nothing to limit")
    images, masks = smooth_batch(2, 40)
    run(images, masks, make_cfg(), (32, 32), "opencv")
    assert library.openblas_get_num_threads() == 1
